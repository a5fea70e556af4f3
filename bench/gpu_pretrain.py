"""CUDA pretraining check: the paper-size Point-MAE through the real CLI/Trainer, fp32 vs bf16 vs compiled.

    python bench/gpu_pretrain.py [--steps 300] [--batch 128] [--variants fp32,bf16,bf16_compile] [--out DIR]

Data: the embedded synthetic shapes (generated, no download), 1024 points, 64 × 32 patches,
encoder 384/12/6, decoder 4 — the reference model. Each variant is one ``pc3d pretrain`` run
(``device=cuda``) in its own subprocess; samples/s is the run's own ``metrics.json`` value
over the whole loop (for the compiled variant that includes compilation: raise ``--steps``
to amortise it) and peak GPU memory comes from ``torch.cuda.max_memory_allocated``. Prints one JSON document and writes it to
``--out/gpu_pretrain.json``. Needs a CUDA machine; CI never runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {
    "fp32": ["trainer.precision=fp32"],
    "bf16": ["trainer.precision=bf16"],
    "bf16_compile": ["trainer.precision=bf16", "trainer.compile=true"],
}
CHILD = r"""
import json, sys, torch
from pc3d.cli import main
args, out = sys.argv[1:-1], sys.argv[-1]
torch.cuda.reset_peak_memory_stats()
rc = main(args)
json.dump({"rc": rc, "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}, open(out, "w"))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default=os.environ.get("OUT", "runs/gpu_pretrain"))
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/gpu_pretrain.py needs CUDA (torch.cuda.is_available() is False)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": args.steps,
               "batch": args.batch, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = [f"data.root={tmp}/synth", "data.train_per_class=64", "data.test_per_class=4"]
        for name in args.variants.split(","):
            run = Path(tmp) / name
            cli = ["pretrain", *data, *VARIANTS[name], "device=cuda", f"trainer.max_steps={args.steps}",
                   f"trainer.batch_size={args.batch}", "trainer.checkpoint_every=100000", "trainer.log_every=50",
                   f"out_dir={run}"]
            status = run.parent / f"{name}.status.json"
            subprocess.run([sys.executable, "-c", CHILD, *cli, str(status)], check=False,
                           env=dict(os.environ, PC3D_PROGRESS="0"))
            record = json.loads(status.read_text()) if status.exists() else {"rc": "crashed"}
            if (run / "metrics.json").exists():
                record.update(json.loads((run / "metrics.json").read_text()))
                losses = [json.loads(x) for x in (run / "losses.jsonl").read_text().splitlines()]
                record["loss_first"], record["loss_last"] = losses[0]["loss"], losses[-1]["loss"]
            results["variants"][name] = record
            print(name, record, flush=True)
    if "fp32" in results["variants"]:
        base = results["variants"]["fp32"].get("samples_per_s")
        for record in results["variants"].values():
            if base and record.get("samples_per_s"):
                record["speedup_vs_fp32"] = record["samples_per_s"] / base
    text = json.dumps(results, indent=1)
    (out / "gpu_pretrain.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
