"""Benchmark pc3d.ops against every installed peer.

    python bench/ops.py [--repeats 5] [--threads 2] [--sizes small,large] [--ops fps,knn,chamfer]

Cases (k = 32 neighbours):
  small:  B=32, N=1024 points, 64 centres   (Point-MAE grouping, every training step)
  medium: B=8,  N=2048 points, 128 centres  (where knn's auto switches to the KD-tree on CPU)
  large:  B=8,  N=8192 points, 512 centres

"pc3d (auto)" is what pc3d code gets (knn on CPU: the brute force below 2,048 points per cloud or 128
queries, else one KD-tree for the batch); "pc3d (torch)" forces the pure-torch path.

FPS samples the centres; kNN searches the k nearest of each centre; Chamfer-L2 is
forward + backward between two (B, N, 3) clouds. Peers are timed when importable:
pytorch3d, torch-cluster, scipy cKDTree (kNN, workers=-1, tree build included; one tree per cloud as
the scipy docs show it, and one 4-D tree for the whole batch with the clouds apart in the 4th coordinate),
open3d KDTreeFlann (kNN, per-query loop), and the naive references (a plain torch
FPS loop, cdist+topk, cdist Chamfer).

Each case runs in a fresh `spawn` child: median wall time over --repeats runs after
one warm-up, and the child's peak RSS increase over its baseline after imports and
input creation (ru_maxrss; CPU memory only). Other processes on the machine skew
both; the header prints the load average before and after.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_name, peak_rss_mib  # noqa: E402

SIZES = {
    "small": {"batch": 32, "points": 1024, "centres": 64, "k": 32},
    "medium": {"batch": 8, "points": 2048, "centres": 128, "k": 32},
    "large": {"batch": 8, "points": 8192, "centres": 512, "k": 32},
}


# --------------------------------------------------------------------------- implementations
# Each maker gets (size dict, inputs dict) and returns a zero-argument callable.


def _fps_pc3d(size, x):
    from pc3d.ops import farthest_point_sample
    return lambda: farthest_point_sample(x["points"], size["centres"], backend="torch")


def _fps_naive(size, x):
    import torch

    def run():
        pts = x["points"]
        b, n, _ = pts.shape
        out = torch.zeros(b, size["centres"], dtype=torch.long)
        dist = torch.full((b, n), float("inf"))
        cur = torch.zeros(b, dtype=torch.long)
        rows = torch.arange(b)
        for i in range(size["centres"]):
            out[:, i] = cur
            d = ((pts - pts[rows, cur].unsqueeze(1)) ** 2).sum(-1)
            dist = torch.minimum(dist, d)
            cur = dist.argmax(-1)
        return out
    return run


def _fps_pytorch3d(size, x):
    from pytorch3d.ops import sample_farthest_points
    return lambda: sample_farthest_points(x["points"], K=size["centres"], random_start_point=False)


def _fps_torch_cluster(size, x):
    import torch
    import torch_cluster
    b, n, _ = x["points"].shape
    flat = x["points"].reshape(b * n, 3)
    batch = torch.arange(b).repeat_interleave(n)
    return lambda: torch_cluster.fps(flat, batch, ratio=size["centres"] / n, random_start=False)


def _knn_pc3d(size, x):
    from pc3d.ops import knn
    return lambda: knn(x["centres"], x["points"], size["k"], backend="torch")


def _knn_pc3d_auto(size, x):
    import scipy.spatial  # noqa: F401  (imported before the RSS baseline, as in the scipy rows)

    from pc3d.ops import knn
    return lambda: knn(x["centres"], x["points"], size["k"])


def _knn_naive(size, x):
    import torch
    return lambda: torch.cdist(x["centres"], x["points"]).topk(size["k"], dim=-1, largest=False)


def _knn_scipy(size, x):
    from scipy.spatial import cKDTree
    pts, cen = x["points"].numpy(), x["centres"].numpy()

    def run():
        return [cKDTree(pts[b]).query(cen[b], k=size["k"], workers=-1) for b in range(len(pts))]
    return run


def _knn_scipy_one_tree(size, x):
    import numpy as np
    from scipy.spatial import cKDTree
    b, n, _ = x["points"].shape
    m = x["centres"].shape[1]
    gap = 4.0 * float(x["points"].abs().max()) + 1.0  # clouds b * gap apart in a 4th coordinate
    points = np.concatenate([x["points"].reshape(-1, 3).numpy(), np.repeat(np.arange(b) * gap, n)[:, None]], 1)
    centres = np.concatenate([x["centres"].reshape(-1, 3).numpy(), np.repeat(np.arange(b) * gap, m)[:, None]], 1)

    def run():
        return cKDTree(points, balanced_tree=False, compact_nodes=False).query(centres, k=size["k"], workers=-1)
    return run


def _knn_open3d(size, x):
    import numpy as np
    import open3d as o3d
    pts, cen = x["points"].numpy().astype(np.float64), x["centres"].numpy().astype(np.float64)

    def run():
        out = []
        for b in range(len(pts)):
            cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts[b]))
            tree = o3d.geometry.KDTreeFlann(cloud)
            out.append([tree.search_knn_vector_3d(c, size["k"]) for c in cen[b]])
        return out
    return run


def _knn_pytorch3d(size, x):
    from pytorch3d.ops import knn_points
    return lambda: knn_points(x["centres"], x["points"], K=size["k"])


def _knn_torch_cluster(size, x):
    import torch
    import torch_cluster
    b, n, _ = x["points"].shape
    m = x["centres"].shape[1]
    px, py = x["points"].reshape(b * n, 3), x["centres"].reshape(b * m, 3)
    bx, by = torch.arange(b).repeat_interleave(n), torch.arange(b).repeat_interleave(m)
    return lambda: torch_cluster.knn(px, py, size["k"], bx, by)


def _chamfer_pc3d(size, x):
    from pc3d.ops import chamfer_l2

    def run():
        loss = chamfer_l2(x["a"], x["b"], backend="torch")
        loss.backward()
    return run


def _chamfer_naive(size, x):
    import torch

    def run():
        d2 = torch.cdist(x["a"], x["b"]) ** 2
        loss = (d2.min(dim=2).values.mean(dim=1) + d2.min(dim=1).values.mean(dim=1)).mean()
        loss.backward()
    return run


def _chamfer_pytorch3d(size, x):
    from pytorch3d.loss import chamfer_distance

    def run():
        loss, _ = chamfer_distance(x["a"], x["b"])
        loss.backward()
    return run


# op -> [(implementation name, module it needs or None, maker)]
IMPLEMENTATIONS = {
    "fps": [("pc3d (torch)", None, _fps_pc3d), ("naive torch loop", None, _fps_naive),
            ("pytorch3d", "pytorch3d", _fps_pytorch3d), ("torch-cluster", "torch_cluster", _fps_torch_cluster)],
    "knn": [("pc3d (auto)", None, _knn_pc3d_auto), ("pc3d (torch)", None, _knn_pc3d),
            ("naive cdist+topk", None, _knn_naive),
            ("scipy cKDTree (workers=-1)", "scipy", _knn_scipy),
            ("scipy cKDTree, one tree for the batch", "scipy", _knn_scipy_one_tree),
            ("open3d KDTreeFlann", "open3d", _knn_open3d),
            ("pytorch3d", "pytorch3d", _knn_pytorch3d), ("torch-cluster", "torch_cluster", _knn_torch_cluster)],
    "chamfer": [("pc3d (torch)", None, _chamfer_pc3d), ("naive cdist", None, _chamfer_naive),
                ("pytorch3d", "pytorch3d", _chamfer_pytorch3d)],
}
OP_TITLES = {"fps": "FPS", "knn": "kNN k=32", "chamfer": "Chamfer-L2 fwd+bwd"}


def naive_chamfer_bytes(size: dict) -> int:
    """cdist output, its square, and three B x N x N buffers in backward (float32)."""
    return 5 * size["batch"] * size["points"] * size["points"] * 4


# --------------------------------------------------------------------------- child process



def run_case(op: str, impl: str, size_name: str, threads: int, repeats: int) -> dict:
    """Runs in a fresh spawn child: build inputs, time, report peak RSS growth."""
    import torch

    torch.set_num_threads(threads)
    maker = next(m for name, _, m in IMPLEMENTATIONS[op] if name == impl)
    size = SIZES[size_name]
    g = torch.Generator().manual_seed(0)
    b, n = size["batch"], size["points"]
    inputs = {"points": torch.rand(b, n, 3, generator=g)}
    inputs["centres"] = inputs["points"][:, :size["centres"]].contiguous()
    if op == "chamfer":
        inputs["a"] = torch.rand(b, n, 3, generator=g).requires_grad_()
        inputs["b"] = torch.rand(b, n, 3, generator=g).requires_grad_()
    fn = maker(size, inputs)
    baseline = peak_rss_mib()
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if op == "chamfer":
            inputs["a"].grad = inputs["b"].grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return {"ms": statistics.median(times), "rss_mib": peak_rss_mib() - baseline}


# --------------------------------------------------------------------------- driver


def _available(module: str | None) -> bool:
    return module is None or importlib.util.find_spec(module) is not None



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each child")
    parser.add_argument("--sizes", default="small,large", help=f"comma list of {sorted(SIZES)}")
    parser.add_argument("--ops", default="fps,knn,chamfer", help=f"comma list of {sorted(IMPLEMENTATIONS)}")
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    op_names = [o for o in args.ops.split(",") if o]
    for s in sizes:
        if s not in SIZES:
            parser.error(f"--sizes: unknown size {s!r}; expected {sorted(SIZES)}")
    for o in op_names:
        if o not in IMPLEMENTATIONS:
            parser.error(f"--ops: unknown op {o!r}; expected {sorted(IMPLEMENTATIONS)}")

    import torch

    load_before = os.getloadavg()
    print(f"# pc3d.ops benchmark\n\n`python bench/ops.py --repeats {args.repeats} --threads {args.threads}`  ")
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} torch threads, "
          f"python {platform.python_version()}  ")
    print(f"load average before: {load_before[0]:.2f} (other processes may share the cores)\n")
    missing = sorted({mod for op in op_names for _, mod, _ in IMPLEMENTATIONS[op] if mod and not _available(mod)})
    if missing:
        print(f"not installed (skipped): {', '.join(missing)}\n")

    ctx = mp.get_context("spawn")
    rows = []
    for op in op_names:
        for size_name in sizes:
            size = SIZES[size_name]
            label = (f"B={size['batch']} N={size['points']}" + ("" if op == "chamfer" else f" S={size['centres']}"))
            group = []
            for impl, module, _ in IMPLEMENTATIONS[op]:
                if not _available(module):
                    continue
                if op == "chamfer" and impl == "naive cdist" and size["points"] > 4096:
                    gib = naive_chamfer_bytes(size) / 2 ** 30
                    group.append({"impl": impl, "skip": f"skipped (would allocate ~{gib:.0f} GB)"})
                    continue
                with ctx.Pool(processes=1, maxtasksperchild=1) as pool:
                    result = pool.apply(run_case, (op, impl, size_name, args.threads, args.repeats))
                group.append({"impl": impl, **result})
                print(f"  {OP_TITLES[op]:20s} {label:22s} {impl:28s} {result['ms']:10.1f} ms", file=sys.stderr)
            best = min((r["ms"] for r in group if "ms" in r), default=None)
            for r in group:
                rows.append((OP_TITLES[op], label, r, best))

    print("| op | size | implementation | median ms | x best | peak RSS +MiB |")
    print("|---|---|---|---:|---:|---:|")
    for title, label, r, best in rows:
        if "skip" in r:
            print(f"| {title} | {label} | {r['impl']} | {r['skip']} | | |")
        else:
            print(f"| {title} | {label} | {r['impl']} | {r['ms']:.1f} | {r['ms'] / best:.2f} | {r['rss_mib']:.0f} |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
