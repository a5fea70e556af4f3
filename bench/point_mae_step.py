"""Point-MAE training-step benchmark at the paper config on CPU (or CUDA).

    python bench/point_mae_step.py [--batch 32] [--points 1024] [--steps 5] [--threads 2]
                                   [--variants fast,reference]

Times forward + backward + AdamW on a random unit-sphere batch and reports median
s/step, samples/s, forward/backward split and peak RSS. Each variant runs in its own
subprocess so peak memory is per variant:
  fast       pc3d defaults (tokenizer on visible patches only)
  reference  embed_visible_only=False (the original code's order of operations)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def run_variant(variant: str, batch: int, points: int, steps: int, threads: int, device: str) -> dict:
    import torch

    from pc3d.encoders import PointViT
    from pc3d.methods import PointMAE
    from pc3d.train import build_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    encoder = PointViT(embed_dim=384, depth=12, num_heads=6, drop_path_rate=0.1, num_groups=64, group_size=32)
    model = PointMAE(encoder, mask_ratio=0.6, decoder_depth=4, decoder_num_heads=6,
                     embed_visible_only=(variant == "fast")).to(dev).train()
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    cloud = torch.randn(batch, points, 3, device=dev)
    cloud = cloud / cloud.norm(dim=-1, keepdim=True) * torch.rand(batch, points, 1, device=dev) ** (1 / 3)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, fwd, bwd = [], [], []
    for i in range(steps + 2):
        sync()
        t0 = time.perf_counter()
        loss = model({"points": cloud})["loss"]
        sync()
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        sync()
        t3 = time.perf_counter()
        if i >= 2:  # two warm-up steps
            times.append(t3 - t0)
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    step_s = statistics.median(times)
    result = {
        "variant": variant, "device": device, "threads": threads, "batch": batch, "points": points,
        "s_per_step": round(step_s, 4), "samples_per_s": round(batch / step_s, 2),
        "forward_s": round(statistics.median(fwd), 4), "backward_s": round(statistics.median(bwd), 4),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "rss_before_gb": round(rss_before / 2**20, 2),
    }
    if dev.type == "cuda":
        result["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", default="fast,reference")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.child, args.batch, args.points, args.steps, args.threads, args.device)))
        return
    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--child", variant, "--batch", str(args.batch), "--points",
               str(args.points), "--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print("| variant | s/step | samples/s | forward s | backward s | peak RSS GB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['s_per_step']} | {r['samples_per_s']} | {r['forward_s']} | "
              f"{r['backward_s']} | {r['peak_rss_gb']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
