"""Swin3D (NeRF-MAE's encoder) speed and peak memory: pc3d vs the original code, same weights, same outputs.

    python bench/swin3d.py [--models swin_t,swin_s] [--sizes 64,96,160] [--modes forward,fwd+bwd]
                           [--device cpu|cuda] [--batch 1] [--repeats 3] [--threads N]
                           [--original /path/to/NeRF-MAE] [--out results.json]

Model: the encoder only (patch partition + position embedding + 4 stages; no masking, no
decoder), as a downstream task runs it, float32, a seeded random ``(B, 4, S, S, S)`` grid.
pc3d: :class:`pc3d.encoders.Swin3D` (``from_preset``). Original: ``SwinTransformer_MAE3D_New``
of github.com/zubair-irshad/NeRF-MAE built as its run script does (``resolution=S``), decoder and
mask token deleted, given pc3d's weights through the hub's key table
(:func:`pc3d.hub.nerf_mae.to_original_state`), run as ``SwinTransformer_FPN_Pretrained_Skip``
does (patch partition, + pos_embed, stages, each output permuted channel-first). ``--original``
is a NeRF-MAE checkout (the folder holding ``nerf_mae/``; a folder with ``ref/nerf_mae/`` also
works); the original needs ``einops`` and torchvision's ``StochasticDepth`` / ``MLP`` /
``Permute`` (or stand-ins on the same path). Without ``--original`` only pc3d is timed.

Modes:
  forward  ``eval()``, ``torch.no_grad()``
  fwd+bwd  ``train()`` (stochastic depth 0.1 active), backward of the sum of the stage outputs'
           means; parameter gradients are reset between runs
Median / min wall time over ``--repeats`` runs after one warm-up (CUDA: synchronised).

Equal outputs: for every (model, size) one more child builds both models with the same weights
and reports the largest stage-output difference relative to that stage's largest value (eval,
float32; TF32 is switched off on CUDA for both).

Memory: every (implementation, model, size, mode) case runs in its own ``spawn`` child.
  cpu   peak RSS growth: the peak since just before the warm-up (Linux ``VmHWM``, reset through
        ``/proc/self/clear_refs``, so building the models does not hide it) minus the RSS then:
        activations, workspaces, allocator slack (coarse)
  cuda  ``torch.cuda.max_memory_allocated()`` during the runs minus ``memory_allocated()`` before
``--out`` writes every case as JSON (atomically). Other processes skew CPU timings; the header
prints the load average.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_name, peak_rss_mib, reset_peak_rss, rss_mib, rss_since_reset_mib  # noqa: E402

MODELS = ("swin_t", "swin_s", "swin_l")
MODES = ("forward", "fwd+bwd")


# --------------------------------------------------------------------------- the two implementations
def _original_root(path: str) -> Path:
    root = Path(path)
    for candidate in (root / "ref", root):
        if (candidate / "nerf_mae" / "model" / "mae" / "swin_mae3d.py").is_file():
            return candidate
    raise SystemExit(f"--original {path}: no nerf_mae/model/mae/swin_mae3d.py there (or under ref/)")


def _build(impl: str, model_name: str, size: int, original: str | None, device):
    """``(module, encode)``: ``encode(values (B, 4, S, S, S))`` → list of stage outputs ``(B, C, n, n, n)``."""
    import torch

    from pc3d.encoders.swin3d import SWIN3D_PRESETS, Swin3D
    from pc3d.ops.dense_grid import DenseGrid

    torch.manual_seed(0)
    encoder = Swin3D.from_preset(model_name)
    if impl == "pc3d":
        encoder = encoder.to(device)

        def encode(values):
            grid = DenseGrid(values, torch.ones(values.shape[0], *values.shape[2:], dtype=torch.bool,
                                                device=values.device), values.new_zeros(values.shape[0], 3), 1.0)
            return [level.to_dense()[0] for level in encoder(grid).levels]
        return encoder, encode

    import numpy as np

    from pc3d.hub.nerf_mae import to_original_state

    root = str(_original_root(original))
    if root not in sys.path:
        sys.path.insert(0, root)
    if not hasattr(np, "float"):
        np.float = float  # numpy < 1.24 alias the original's position embedding uses
    from nerf_mae.model.mae.swin_mae3d import SwinTransformer_MAE3D_New

    preset = SWIN3D_PRESETS[model_name]
    model = SwinTransformer_MAE3D_New(patch_size=[4, 4, 4], embed_dim=preset["embed_dim"],
                                      depths=list(preset["depths"]), num_heads=list(preset["num_heads"]),
                                      window_size=[4, 4, 4], stochastic_depth_prob=0.1, expand_dim=True,
                                      masking_prob=0.75, resolution=size, masking_strategy="random")
    for name in ("decoder4", "decoder3", "decoder2", "decoder1", "out", "mask_token"):
        delattr(model, name)
    model.load_state_dict(to_original_state(encoder, size), strict=True)
    model = model.to(device)

    def encode(values):
        x = model.patch_partition(values)
        x = x + model.pos_embed.type_as(x).to(x.device).clone().detach()
        outputs = []
        for stage in model.stages:
            x = stage(x)
            outputs.append(torch.permute(x, [0, 4, 1, 2, 3]).contiguous())
        return outputs
    return model, encode


def _setup(device_name: str, threads: int | None):
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return torch.device(device_name)


def _grid(batch: int, size: int, device):
    import torch

    return torch.rand(batch, 4, size, size, size, generator=torch.Generator().manual_seed(1)).to(device)


# --------------------------------------------------------------------------- child processes
def run_case(impl: str, model_name: str, size: int, mode: str, device_name: str, batch: int, repeats: int,
             threads: int | None, original: str | None) -> dict:
    """Runs in a fresh spawn child: build, warm up, time, report peak memory growth."""
    import torch

    device = _setup(device_name, threads)
    module, encode = _build(impl, model_name, size, original, device)
    values = _grid(batch, size, device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    module.train(mode == "fwd+bwd")

    def step():
        if mode == "forward":
            with torch.no_grad():
                encode(values)
            return
        for p in module.parameters():
            p.grad = None
        sum(out.float().mean() for out in encode(values)).backward()

    resettable = not cuda and reset_peak_rss()
    baseline = rss_mib() if resettable else peak_rss_mib()
    step()
    sync()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    else:
        peak = (rss_since_reset_mib() if resettable else peak_rss_mib()) - baseline
    return {"impl": impl, "model": model_name, "size": size, "mode": mode, "ms": statistics.median(times),
            "ms_min": min(times), "peak_mib": peak}


def compare_outputs(model_name: str, size: int, device_name: str, batch: int, threads: int | None,
                    original: str) -> dict:
    """Runs in a spawn child: both models, same weights and input, eval; the largest relative difference."""
    import torch

    device = _setup(device_name, threads)
    values = _grid(batch, size, device)
    outputs = {}
    for impl in ("original", "pc3d"):
        module, encode = _build(impl, model_name, size, original, device)
        module.eval()
        with torch.no_grad():
            outputs[impl] = [out.float().cpu() for out in encode(values)]
        del module, encode
    errors = [float((a - b).abs().max() / b.abs().max()) for a, b in zip(outputs["pc3d"], outputs["original"])]
    return {"model": model_name, "size": size, "max_rel_error": max(errors), "per_stage": errors}


# --------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="swin_t,swin_s", help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--sizes", default="64,96,160", help="grid edges in cells (multiples of 4)")
    parser.add_argument("--modes", default="forward,fwd+bwd", help=f"comma list of {', '.join(MODES)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each child")
    parser.add_argument("--original", default=None, help="NeRF-MAE checkout to time against (see docstring)")
    parser.add_argument("--out", default=None, help="write every case as JSON here")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    for m in models:
        if m not in MODELS:
            parser.error(f"--models: unknown {m!r}; expected {', '.join(MODELS)}")
    for m in modes:
        if m not in MODES:
            parser.error(f"--modes: unknown {m!r}; expected {', '.join(MODES)}")
    if any(s % 4 for s in sizes):
        parser.error("--sizes: grid edges must be multiples of 4 (the original's patch size)")
    if args.original:
        _original_root(args.original)

    import torch

    print(f"# Swin3D benchmark\n\n`python bench/swin3d.py {' '.join(argv if argv is not None else sys.argv[1:])}`  ")
    device_text = (torch.cuda.get_device_name(0) if args.device.startswith("cuda") and torch.cuda.is_available()
                   else cpu_name())
    print(f"{device_text}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads or torch.get_num_threads()} torch threads, python {platform.python_version()}, "
          f"batch {args.batch}  ")
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes may share the cores)\n")
    ctx = mp.get_context("spawn")

    def child(fn, *fn_args):
        with ctx.Pool(processes=1, maxtasksperchild=1) as pool:
            return pool.apply(fn, fn_args)

    impls = ["original", "pc3d"] if args.original else ["pc3d"]
    results, checks = [], {}
    for model in models:
        for size in sizes:
            if args.original:
                checks[(model, size)] = child(compare_outputs, model, size, args.device, args.batch, args.threads,
                                              args.original)
                print(f"  {model} {size}³ outputs: max rel diff {checks[(model, size)]['max_rel_error']:.2e}",
                      file=sys.stderr)
            for mode in modes:
                for impl in impls:
                    result = child(run_case, impl, model, size, mode, args.device, args.batch, args.repeats,
                                   args.threads, args.original)
                    results.append(result)
                    print(f"  {model} {size}³ {mode:8s} {impl:8s} {result['ms']:10.1f} ms {result['peak_mib']:8.0f} MiB",
                          file=sys.stderr)

    by_key = {(r["model"], r["size"], r["mode"], r["impl"]): r for r in results}
    memory = "peak CUDA +MiB" if args.device.startswith("cuda") else "peak RSS +MiB"
    if args.original:
        print(f"| model | grid | mode | original ms | pc3d ms | speed-up | original {memory} | pc3d {memory} | "
              "max rel diff |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    else:
        print(f"| model | grid | mode | pc3d ms | pc3d {memory} |")
        print("|---|---|---|---:|---:|")
    for model in models:
        for size in sizes:
            for mode in modes:
                mine = by_key[(model, size, mode, "pc3d")]
                if args.original:
                    theirs = by_key[(model, size, mode, "original")]
                    print(f"| {model} | {size}³ | {mode} | {theirs['ms']:.1f} | {mine['ms']:.1f} | "
                          f"{theirs['ms'] / mine['ms']:.2f} | {theirs['peak_mib']:.0f} | {mine['peak_mib']:.0f} | "
                          f"{checks[(model, size)]['max_rel_error']:.1e} |")
                else:
                    print(f"| {model} | {size}³ | {mode} | {mine['ms']:.1f} | {mine['peak_mib']:.0f} |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    if args.out:
        from pc3d.utils.atomic import atomic_write_json

        atomic_write_json(Path(args.out), {"cases": results, "equal_outputs": list(checks.values()),
                                           "device": device_text, "torch": torch.__version__, "batch": args.batch,
                                           "threads": args.threads or torch.get_num_threads()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
