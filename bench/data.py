"""Benchmark reading a prepared object cache at dataset scale: peak memory and items/s against the cache's size.

    python bench/data.py [--shapes 5000,50000] [--points 1024] [--num-points 1024] [--workers 0,2]
                         [--batch 128] [--readers lazy,mmap] [--root DIR] [--threads 1]

For each size in ``--shapes`` a cache of that many random shapes of ``--points`` points is written once
under ``--root`` (default ``$TMPDIR/pc3d-bench-data``; reused when present) with the streamed writer.
Each case (size x reader x workers) runs in a fresh ``spawn`` child that iterates ONE WHOLE EPOCH of
Point-MAE's pretraining dataset over it, as the Trainer does: ``ObjectDataset(augment=True)`` (a fresh
random ``--num-points`` subset + scale-and-translate per item), the Trainer's seeded batch order
(``epoch_batches``) and a ``DataLoader`` with ``num_workers``. Readers: ``lazy`` — what pc3d's data nodes
use (``load_object_cache(lazy=True)``: one ``os.pread`` per shape); ``mmap`` — ``np.load(mmap_mode="r")``,
for comparison (its touched pages stay in the process's resident set).

Reported per case: the time to the first batch (worker start-up: the Trainer makes a new DataLoader
every epoch), then items/s and ms per batch over the rest of the epoch, the main process's peak RSS
during the epoch (VmHWM after a reset once the dataset is built; ru_maxrss where that is unavailable)
and its growth over the RSS at the start of the epoch, and the largest worker's peak RSS (ru_maxrss of
the reaped children, which includes what they inherit from the main process). The summary gives, for each reader and worker count, the
ratio of peak RSS of the largest cache to that of the smallest (target: <= 1.2 for ``lazy``).

Timings must be taken alone on the machine; the header prints the load average before and after.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_name, peak_rss_mib, reset_peak_rss, rss_mib, rss_since_reset_mib  # noqa: E402


def make_cache(root: Path, shapes: int, points: int) -> Path:
    """A cache of ``shapes`` random clouds (10 classes, 80 % train), written once with the streamed writer."""
    import numpy as np

    from pc3d.data.prepared import load_object_cache, write_object_cache_streamed
    from pc3d.errors import DataFormatError

    folder = root / f"random-{shapes}x{points}"
    try:
        cache = load_object_cache(folder, lazy=True)
        if cache.points.shape == (shapes, points, 3):
            return folder
    except DataFormatError:
        pass
    rng = np.random.default_rng(0)

    def clouds():
        for _ in range(shapes):
            cloud = rng.normal(size=(points, 3)).astype(np.float32)
            yield cloud / np.linalg.norm(cloud, axis=1).max()

    train = int(shapes * 0.8)
    write_object_cache_streamed(folder, clouds(), num_shapes=shapes, num_points=points,
                                labels=np.arange(shapes) % 10, splits=["train"] * train + ["test"] * (shapes - train),
                                names=[f"shape{i:06d}" for i in range(shapes)],
                                class_names=[f"class{c}" for c in range(10)], force=True)
    return folder


def run_case(folder: str, reader: str, workers: int, num_points: int, batch: int, threads: int) -> dict:
    """Runs in a fresh spawn child: one epoch of the pretraining dataset over the cache, timed."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from pc3d.data.object_dataset import ObjectDataset
    from pc3d.data.prepared import load_object_cache
    from pc3d.train.trainer import epoch_batches

    torch.set_num_threads(threads)
    if "fork" in mp.get_all_start_methods():
        # this child was spawned and so defaults to spawning its DataLoader workers; the Trainer, run from a
        # shell on Linux, forks them
        mp.set_start_method("fork", force=True)
    cache = load_object_cache(folder, lazy=True)
    points = cache.points if reader == "lazy" else np.load(Path(folder) / "points.npy", mmap_mode="r")
    dataset = ObjectDataset(points, cache.labels, num_points=num_points, augment=True, seed=0,
                            indices=cache.split_indices("train"))
    dataset.set_epoch(0)
    batches = epoch_batches(len(dataset), batch, 0, 0)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    reset = reset_peak_rss()
    at_start = rss_mib() or 0.0
    start = time.perf_counter()
    first = None
    items = 0
    checksum = 0.0
    for item in loader:
        if first is None:  # worker start-up (a new DataLoader every epoch, as in the Trainer) is timed apart
            first = time.perf_counter()
        else:
            items += int(item["points"].shape[0])
        checksum += float(item["points"][0, 0, 0])
    end = time.perf_counter()
    del loader
    main_peak = rss_since_reset_mib() if reset else peak_rss_mib()
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0 if workers else 0.0
    steady = end - first
    return {"items_per_s": items / steady if steady > 0 else float("nan"),
            "ms_per_batch": 1e3 * steady / max(len(batches) - 1, 1), "first_batch_s": first - start,
            "main_rss_mib": main_peak, "main_growth_mib": main_peak - at_start, "worker_rss_mib": worker_peak,
            "checksum": checksum}


def _child(queue, *args) -> None:
    try:
        queue.put(run_case(*args))
    except BaseException as exc:  # reported by the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def run_isolated(ctx, *args) -> dict:
    """:func:`run_case` in a fresh, non-daemonic spawn child (its DataLoader may start workers)."""
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue, *args))
    child.start()
    result = queue.get()
    child.join()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="5000,50000", help="comma list of cache sizes (shapes)")
    parser.add_argument("--points", type=int, default=1024, help="points stored per shape")
    parser.add_argument("--num-points", type=int, default=1024, help="points per item (Point-MAE: 1024)")
    parser.add_argument("--workers", default="0,2", help="comma list of DataLoader num_workers")
    parser.add_argument("--readers", default="lazy,mmap", help="comma list of lazy, mmap")
    parser.add_argument("--batch", type=int, default=128, help="batch size (Point-MAE: 128)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each child")
    parser.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "pc3d-bench-data"),
                        help="where the generated caches are kept (reused)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.shapes.split(",") if s]
    workers = [int(w) for w in args.workers.split(",") if w]
    readers = [r for r in args.readers.split(",") if r]
    if any(r not in ("lazy", "mmap") for r in readers):
        parser.error("--readers: expected lazy and/or mmap")
    if min(sizes) * 0.8 < args.batch:
        parser.error("--shapes: every cache needs at least one batch of train shapes")

    import torch

    root = Path(args.root)
    folders = {n: make_cache(root, n, args.points) for n in sizes}
    load_before = os.getloadavg()
    print(f"# pc3d data loading benchmark\n\n`python bench/data.py --shapes {args.shapes} --points {args.points} "
          f"--num-points {args.num_points} --workers {args.workers} --readers {args.readers} --batch {args.batch}`  ")
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, python {platform.python_version()}  ")
    print(f"caches under {root} (points.npy: " + ", ".join(f"{n} shapes {n * args.points * 12 / 2**20:.0f} MiB"
                                                         for n in sizes) + ")  ")
    print(f"load average before: {load_before[0]:.2f} (other processes skew both timings and memory)\n")

    ctx = mp.get_context("spawn")
    results = {}
    for reader in readers:
        for w in workers:
            for n in sizes:
                result = run_isolated(ctx, str(folders[n]), reader, w, args.num_points, args.batch, args.threads)
                results[reader, w, n] = result
                print(f"  {reader:5s} workers={w} shapes={n:6d}: {result['items_per_s']:9.0f} items/s, main "
                      f"{result['main_rss_mib']:.0f} MiB, worker {result['worker_rss_mib']:.0f} MiB", file=sys.stderr)
    print("| reader | workers | shapes | first batch s | items/s | ms / batch | main peak RSS MiB | main +MiB in epoch "
          "| worker peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (reader, w, n), r in results.items():
        print(f"| {reader} | {w} | {n} | {r['first_batch_s']:.2f} | {r['items_per_s']:.0f} | {r['ms_per_batch']:.1f} | "
              f"{r['main_rss_mib']:.0f} | {r['main_growth_mib']:.0f} | {r['worker_rss_mib']:.0f} |")
    small, large = min(sizes), max(sizes)
    if small != large:
        print(f"\nPeak RSS of the {large}-shape cache over the {small}-shape cache (target <= 1.2 for lazy):\n")
        for reader in readers:
            for w in workers:
                a, b = results[reader, w, small], results[reader, w, large]
                main_ratio = b["main_rss_mib"] / a["main_rss_mib"]
                worker_ratio = b["worker_rss_mib"] / a["worker_rss_mib"] if w else float("nan")
                print(f"- {reader}, {w} workers: main {main_ratio:.2f}x" +
                      (f", worker {worker_ratio:.2f}x" if w else ""))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
