"""SparseUNet (MSM's backbone, default config) speed and memory: torch vs spconv backends, CPU and CUDA.

    python bench/sparse_unet.py [--sizes 100000,400000] [--backends torch,spconv] [--devices cpu,cuda]
                                [--modes forward,train] [--repeats 3] [--threads N] [--out results.json]

Model: ``SparseUNet()`` defaults = MSM's reference config (channels 32/64/128/256/384, 2 residual
blocks per stage, stem kernel 5, serialized window attention in stages 3 and 4, windows of
1,024 voxels, decoder 256/128/96/64), 2 cm voxels, batch 1, 6 input channels, float32.

Input: a synthetic room (seeded, no data needed): floor and four 2.6 m walls with furniture
boxes (tables, cabinets: tops and sides), surfaces sampled at ~7,500 points/m² with 4 mm
noise and voxelised at 2 cm (``pc3d.ops.voxelize``), so surfaces are 1-2 voxels thick as in
real scans. The room is scaled until the voxel count is within 2 % of each ``--sizes``
target; the table reports the real count. The scene is built once in the parent and
loaded by every case.

Modes (each a fresh ``SparseVoxels`` per run, so kernel maps are rebuilt every time):
  forward  ``model.eval()``, ``torch.no_grad()``
  train    ``model.train()``, forward + backward of the sum of every level's feature mean
Median / min wall time over ``--repeats`` runs after one warm-up run (CUDA: synchronised).

Memory: every (size, backend, device, mode) case runs in its own ``spawn`` child.
  cpu   peak RSS growth: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the runs minus
        the same value once the model and the inputs exist (tracemalloc cannot see torch's
        allocations). It includes allocator slack and spconv's own buffers, and only counts
        growth above the child's earlier peak.
  cuda  ``torch.cuda.max_memory_allocated()`` during the runs minus ``memory_allocated()``
        before them (activations, kernel maps, workspaces; the caching allocator's reserve
        is not counted). spconv uses its default CUDA algorithm (implicit GEMM).
With both devices, a second table gives CUDA's speed-up (CPU ms / CUDA ms) and memory ratio
(CUDA MiB / CPU MiB) per case. ``--out`` writes every case as JSON (atomically).
Other processes on the machine skew CPU timings; the header prints the load average.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_name, peak_rss_mib  # noqa: E402

VOXEL = 0.02
WALL_HEIGHT = 2.6
POINTS_PER_M2 = 7500.0
NOISE = 0.004
# furniture as fractions of the room side: (x0, y0, width, depth) and an absolute height (m)
FURNITURE = [(0.10, 0.10, 0.30, 0.15, 0.75), (0.55, 0.60, 0.25, 0.25, 0.45), (0.15, 0.70, 0.12, 0.20, 1.80),
             (0.70, 0.15, 0.20, 0.10, 0.90), (0.40, 0.35, 0.18, 0.18, 0.72)]
MODES = ("forward", "train")


# --------------------------------------------------------------------------- synthetic room


def _rectangles(side: float) -> list[tuple[list[float], list[float], list[float], list[float]]]:
    """(origin, u, v, normal) of every surface of a ``side`` x ``side`` room."""
    h = WALL_HEIGHT
    rects = [([0, 0, 0], [side, 0, 0], [0, side, 0], [0, 0, 1]),  # floor
             ([0, 0, 0], [side, 0, 0], [0, 0, h], [0, 1, 0]), ([0, side, 0], [side, 0, 0], [0, 0, h], [0, -1, 0]),
             ([0, 0, 0], [0, side, 0], [0, 0, h], [1, 0, 0]), ([side, 0, 0], [0, side, 0], [0, 0, h], [-1, 0, 0])]
    for fx, fy, fw, fd, height in FURNITURE:
        x, y, w, d = fx * side, fy * side, fw * side, fd * side
        up = [0, 0, height]
        rects += [([x, y, height], [w, 0, 0], [0, d, 0], [0, 0, 1]),  # top
                  ([x, y, 0], [w, 0, 0], up, [0, -1, 0]), ([x, y + d, 0], [w, 0, 0], up, [0, 1, 0]),
                  ([x, y, 0], [0, d, 0], up, [-1, 0, 0]), ([x + w, y, 0], [0, d, 0], up, [1, 0, 0])]
    return rects


def room_voxels(side: float, seed: int = 0):
    """Voxels of a synthetic room: ``coords (V, 4)`` int32 ``[0, x, y, z]`` and ``features (V, 6)`` float32
    (colour in [-1, 1] ‖ normal)."""
    import torch

    from pc3d.ops.voxelize import voxel_mean, voxelize

    g = torch.Generator().manual_seed(seed)
    points, features = [], []
    for origin, u, v, normal in _rectangles(side):
        o, u, v = torch.tensor(origin), torch.tensor(u), torch.tensor(v)
        area = float(torch.linalg.cross(u, v).norm())
        n = max(int(area * POINTS_PER_M2), 1)
        ab = torch.rand(n, 2, generator=g)
        xyz = o + ab[:, :1] * u + ab[:, 1:] * v + NOISE * torch.randn(n, 3, generator=g)
        colour = torch.rand(3, generator=g) * 2 - 1 + 0.1 * torch.randn(n, 3, generator=g)
        points.append(xyz)
        features.append(torch.cat([colour, torch.tensor(normal, dtype=torch.float32).expand(n, 3)], 1))
    xyz, feats = torch.cat(points), torch.cat(features)
    grid, inverse = voxelize(xyz, VOXEL)
    coords = torch.cat([torch.zeros(len(grid), 1, dtype=torch.int32), grid.to(torch.int32)], 1)
    return coords, voxel_mean(feats, inverse, len(grid))


def room_with_voxels(target: int, seed: int = 0):
    """Scale the room until its voxel count is within 2 % of ``target``."""
    side = 3.0
    for _ in range(12):
        coords, features = room_voxels(side, seed)
        ratio = target / len(coords)
        if abs(ratio - 1) <= 0.02:
            break
        # voxels grow between linearly (walls) and quadratically (floor, furniture) with the side
        side *= ratio ** (0.5 if side > 4 else 0.7)
    return coords, features, side


# --------------------------------------------------------------------------- child process



def run_case(scene_path: str, backend: str, device: str, mode: str, repeats: int, threads: int | None) -> dict:
    """Runs in a fresh spawn child: load the scene, build the model, time, report peak memory growth."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)  # spconv's torch.cuda.amp imports
    if threads:
        torch.set_num_threads(threads)
    from pc3d.encoders.sparse_unet import SparseUNet
    from pc3d.ops.sparse_conv import SparseVoxels

    torch.manual_seed(0)
    dev = torch.device(device)
    scene = torch.load(scene_path)
    coords, features = scene["coords"].to(dev), scene["features"].to(dev)
    model = SparseUNet(backend=backend).to(dev)
    model.train(mode == "train")
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step():
        voxels = SparseVoxels(features, coords, 1)
        if mode == "forward":
            with torch.no_grad():
                return model(voxels)
        out = model(voxels)
        sum(level.features.mean() for level in out.levels).backward()
        model.zero_grad(set_to_none=True)
        return out

    sync()
    baseline_rss = peak_rss_mib()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        baseline_cuda = torch.cuda.memory_allocated()
    times = []
    for i in range(repeats + 1):  # the first run is a warm-up
        sync()
        start = time.perf_counter()
        out = step()
        sync()
        if i:
            times.append((time.perf_counter() - start) * 1e3)
    result = {"backend": backend, "device": device, "mode": mode, "voxels": len(coords),
              "level_voxels": [int(level.mask.sum()) for level in out.levels], "threads": torch.get_num_threads(),
              "median_ms": statistics.median(times), "min_ms": min(times), "repeats": repeats}
    if cuda:
        result["peak_mib"] = (torch.cuda.max_memory_allocated() - baseline_cuda) / 2**20
        result["memory"] = "cuda max_memory_allocated - memory_allocated before"
        result["gpu"] = torch.cuda.get_device_name(dev)
    else:
        result["peak_mib"] = peak_rss_mib() - baseline_rss
        result["memory"] = "ru_maxrss growth"
    return result


# --------------------------------------------------------------------------- driver



def _parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = 1000 if text.endswith("k") else 1
    return int(float(text.rstrip("k")) * scale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,400000", help="comma list of target voxel counts (100k ok)")
    parser.add_argument("--backends", default="torch,spconv", help="comma list of torch, spconv")
    parser.add_argument("--devices", default=None, help="comma list of cpu, cuda (default: cpu, and cuda if available)")
    parser.add_argument("--modes", default="forward,train", help=f"comma list of {list(MODES)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case after one warm-up (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each child "
                                                                    "(default: torch's default)")
    parser.add_argument("--out", default=None, help="write every case as JSON to this file")
    args = parser.parse_args(argv)

    import torch

    sizes = [_parse_size(s) for s in args.sizes.split(",") if s.strip()]
    backends = [b for b in args.backends.split(",") if b]
    modes = [m for m in args.modes.split(",") if m]
    devices = (args.devices.split(",") if args.devices
               else ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    for b in backends:
        if b not in ("torch", "spconv"):
            parser.error(f"--backends: unknown backend {b!r}; expected torch, spconv")
    for m in modes:
        if m not in MODES:
            parser.error(f"--modes: unknown mode {m!r}; expected {list(MODES)}")
    for d in devices:
        if d not in ("cpu", "cuda"):
            parser.error(f"--devices: unknown device {d!r}; expected cpu, cuda")
        if d == "cuda" and not torch.cuda.is_available():
            parser.error("--devices cuda: torch.cuda.is_available() is False")
    if args.repeats < 1 or any(s < 1000 for s in sizes):
        parser.error("--repeats must be >= 1 and every size >= 1000 voxels")
    skipped = []
    if "spconv" in backends and importlib.util.find_spec("spconv") is None:
        backends.remove("spconv")
        skipped.append("spconv (not installed)")

    command = "python bench/sparse_unet.py " + " ".join(sys.argv[1:] if argv is None else argv)
    load_before = os.getloadavg()
    print(f"# SparseUNet benchmark (default config, batch 1, {VOXEL * 100:g} cm voxels)\n\n`{command}`  ")
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads or torch.get_num_threads()} torch threads, python {platform.python_version()}"
          + (f", {torch.cuda.get_device_name(0)}" if "cuda" in devices else "") + "  ")
    print(f"load average before: {load_before[0]:.2f} (other processes may share the cores)\n")
    if skipped:
        print(f"skipped: {', '.join(skipped)}\n")

    ctx = mp.get_context("spawn")
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in sizes:
            coords, features, side = room_with_voxels(target)
            scene_path = str(Path(tmp) / f"scene_{target}.pt")
            torch.save({"coords": coords, "features": features}, scene_path)
            print(f"  scene for {target}: {len(coords)} voxels, room {side:.2f} m", file=sys.stderr)
            for device in devices:
                for backend in backends:
                    for mode in modes:
                        with ctx.Pool(processes=1, maxtasksperchild=1) as pool:
                            result = pool.apply(run_case, (scene_path, backend, device, mode, args.repeats,
                                                           args.threads))
                        result.update(target=target, room_side_m=round(side, 3))
                        cases.append(result)
                        print(f"  {len(coords):8d} {backend:7s} {device:5s} {mode:8s} {result['median_ms']:10.1f} ms "
                              f"{result['peak_mib']:8.0f} MiB", file=sys.stderr)

    print("| voxels | backend | device | mode | median ms | min ms | peak memory +MiB |")
    print("|---:|---|---|---|---:|---:|---:|")
    for c in cases:
        print(f"| {c['voxels']:,} | {c['backend']} | {c['device']} | {c['mode']} | {c['median_ms']:.1f} | "
              f"{c['min_ms']:.1f} | {c['peak_mib']:.0f} |")
    print("\nmemory: cpu = ru_maxrss growth (RSS peak), cuda = max_memory_allocated growth")
    if "cpu" in devices and "cuda" in devices:
        by_key = {(c["voxels"], c["backend"], c["mode"], c["device"]): c for c in cases}
        print("\n| voxels | backend | mode | CUDA speed-up (CPU ms / CUDA ms) | memory CUDA / CPU |")
        print("|---:|---|---|---:|---:|")
        for (voxels, backend, mode, device), c in by_key.items():
            if device != "cuda" or (voxels, backend, mode, "cpu") not in by_key:
                continue
            cpu = by_key[(voxels, backend, mode, "cpu")]
            c["speedup_vs_cpu"] = cpu["median_ms"] / c["median_ms"]
            c["memory_ratio_vs_cpu"] = c["peak_mib"] / cpu["peak_mib"] if cpu["peak_mib"] > 0 else math.nan
            print(f"| {voxels:,} | {backend} | {mode} | {c['speedup_vs_cpu']:.1f} | {c['memory_ratio_vs_cpu']:.2f} |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    if args.out:
        from pc3d.utils.atomic import atomic_write_json

        atomic_write_json(args.out, {"command": command, "cpu": cpu_name(), "cpus": os.cpu_count(),
                                     "torch": torch.__version__, "load_before": load_before[0],
                                     "load_after": os.getloadavg()[0], "cases": cases})
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
