"""Gaussian rasterizer speed and memory: pc3d's tiled torch path vs a dense pixels x Gaussians renderer.

    python bench/rasterize.py [--width 200 --height 200 --gaussians 20000] [--sh-degree 3]
                              [--impls pc3d,dense,gsplat] [--repeats 3] [--threads 1] [--device cpu]

Scene (seeded, no data needed): ``--gaussians`` Gaussians uniform in the cube [-1, 1]^3 seen
from 3.5 units away by one camera whose focal length is the image width (the cube fills about
half the image); random rotations, scales log-uniform in [0.005, 0.03] (1-5 px standard
deviation), opacity logits uniform in [-2, 2], SH coefficients of ``--sh-degree``; a grey
background.

Implementations (each in a fresh ``spawn`` child):
  pc3d    ``rasterize_gaussians(..., backend="torch")``: tile binning, chunked compositing,
          recomputing analytic backward.
  dense   the same maths without tiles: every pixel against every visible Gaussian in depth
          order (alpha clamp, 1/255 skip, exclusive 1e-4 transmittance stop, radius-box
          rule), plain autograd; pixels in chunks under ``torch.utils.checkpoint`` so memory
          stays bounded (backward recomputes each chunk). Projection and SH are pc3d's, so
          the two differ only in how they composite.
  gsplat  ``backend="gsplat"`` (CUDA only, when installed).

Timings: median over ``--repeats`` after one warm-up; "fwd" renders without autograd,
"fwd+bwd" renders and back-propagates ``rgb.sum() + depth.sum() + alpha.sum()`` into every
Gaussian parameter. Memory: cpu = the child's peak RSS growth over its baseline after the
scene exists (ru_maxrss); cuda = ``max_memory_allocated`` growth. The last column is the max
|difference| of each image from pc3d's. Other processes on the machine skew CPU timings; the
header prints the load average.
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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_name, peak_rss_mib  # noqa: E402

IMPLS = ("pc3d", "dense", "gsplat")
DENSE_CHUNK = 1 << 22  # (pixels x Gaussians) entries per checkpointed block of the dense renderer


def make_scene(num: int, width: int, height: int, sh_degree: int, device: str) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    k = (sh_degree + 1) ** 2
    sh = 0.3 * torch.randn(num, k, 3, generator=g)
    sh[:, 0] = (torch.rand(num, 3, generator=g) - 0.5) / 0.28209479177387814  # DC: colours in [0, 1]
    scene = {
        "means": torch.rand(num, 3, generator=g) * 2 - 1,
        "quats": torch.randn(num, 4, generator=g),
        "log_scales": math.log(0.005) + math.log(6.0) * torch.rand(num, 3, generator=g),
        "opacity_logits": torch.rand(num, generator=g) * 4 - 2,
        "colors": sh,
    }
    view = torch.eye(4)
    view[2, 3] = 3.5
    f = float(width)
    scene["viewmats"] = view[None]
    scene["Ks"] = torch.tensor([[[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]])
    scene["background"] = torch.tensor([0.5, 0.5, 0.5])
    return {key: value.to(device) for key, value in scene.items()}


# --------------------------------------------------------------------------- renderers


def render_pc3d(scene: dict, width: int, height: int, backend: str = "torch"):
    from pc3d.ops import rasterize_gaussians

    out = rasterize_gaussians(scene["means"], scene["quats"], scene["log_scales"], scene["opacity_logits"],
                              scene["colors"], scene["viewmats"], scene["Ks"], width, height,
                              background=scene["background"], backend=backend)
    return out.rgb, out.depth, out.alpha


def _dense_block(px, py, mx, my, ca, cb, cc, opac, rx, ry, feat):
    """``(p,)`` pixels against ``(G,)`` depth-sorted Gaussians -> ``(p, 4)`` [rgb, depth] and ``(p,)`` T."""
    import torch

    from pc3d.ops import rasterize as rast

    dx = px[:, None] - mx[None, :]
    dy = py[:, None] - my[None, :]
    sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
    alpha = (opac * torch.exp(-sigma)).clamp_max(rast.ALPHA_MAX)
    ok = (dx.abs() <= rx) & (dy.abs() <= ry) & (sigma >= 0) & (alpha >= rast.ALPHA_THRESHOLD)
    alpha = torch.where(ok, alpha, 0.0)
    with torch.no_grad():
        keep = torch.cumprod(1.0 - alpha, dim=1) > rast.TRANSMITTANCE_MIN
    alpha = torch.where(keep, alpha, 0.0)
    trans = torch.cumprod(1.0 - alpha, dim=1)
    t_excl = torch.cat([torch.ones_like(trans[:, :1]), trans[:, :-1]], dim=1)
    return (alpha * t_excl) @ feat, trans[:, -1]


def render_dense(scene: dict, width: int, height: int):
    import torch
    from torch.utils.checkpoint import checkpoint

    from pc3d.ops import rasterize as rast

    means, quats, log_scales, logits, colors = (scene[k] for k in ("means", "quats", "log_scales",
                                                                   "opacity_logits", "colors"))
    opac = torch.sigmoid(logits)
    proj = rast._project(means, quats, log_scales, opac, scene["viewmats"], scene["Ks"], width, height,
                         0.01, 1e10, 0.3)
    rgb = rast._view_colors(colors, math.isqrt(colors.shape[1]) - 1, means, scene["viewmats"])[0]
    visible = (proj.radii_xy[0] > 0).all(dim=-1)
    order = torch.nonzero(visible, as_tuple=True)[0]
    order = order[torch.sort(proj.depths[0, order], stable=True).indices]
    m2, con, r = proj.means2d[0, order], proj.conics[0, order], proj.radii_xy[0, order].to(means.dtype)
    feat = torch.cat([rgb[order], proj.depths[0, order, None]], dim=1)
    jj, ii = torch.meshgrid(torch.arange(width, device=means.device), torch.arange(height, device=means.device),
                            indexing="xy")
    px, py = jj.flatten().to(means.dtype) + 0.5, ii.flatten().to(means.dtype) + 0.5
    step = max(1, DENSE_CHUNK // max(1, len(order)))
    outs, trans = [], []
    for p0 in range(0, px.numel(), step):
        o, t = checkpoint(_dense_block, px[p0:p0 + step], py[p0:p0 + step], m2[:, 0], m2[:, 1], con[:, 0],
                          con[:, 1], con[:, 2], opac[order], r[:, 0], r[:, 1], feat, use_reentrant=False)
        outs.append(o)
        trans.append(t)
    acc, t = torch.cat(outs).view(1, height, width, 4), torch.cat(trans).view(1, height, width, 1)
    return acc[..., :3] + t * scene["background"], acc[..., 3:4], 1.0 - t


RENDERERS = {"pc3d": render_pc3d, "dense": render_dense,
             "gsplat": lambda scene, w, h: render_pc3d(scene, w, h, backend="gsplat")}


# --------------------------------------------------------------------------- child process


def run_case(impl: str, args: dict) -> dict:
    """Runs in a fresh spawn child: build the scene, time fwd and fwd+bwd, report memory and the image."""
    import torch

    torch.set_num_threads(args["threads"])
    device = args["device"]
    width, height = args["width"], args["height"]
    scene = make_scene(args["gaussians"], width, height, args["sh_degree"], device)
    params = [scene[k] for k in ("means", "quats", "log_scales", "opacity_logits", "colors")]
    fn = RENDERERS[impl]

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def forward():
        with torch.no_grad():
            out = fn(scene, width, height)
        sync()
        return out

    def forward_backward():
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        rgb, depth, alpha = fn(scene, width, height)
        (rgb.sum() + depth.sum() + alpha.sum()).backward()
        sync()

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = peak_rss_mib()
    result = {}
    for name, step in (("fwd", forward), ("fwd+bwd", forward_backward)):
        step()  # warm-up
        times = []
        for _ in range(args["repeats"]):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        result[name] = statistics.median(times)
    if device.startswith("cuda"):
        result["mem_mib"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    else:
        result["mem_mib"] = peak_rss_mib() - base
    rgb = forward()[0]
    result["rgb"] = rgb.detach().cpu().numpy()
    return result


# --------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=200)
    parser.add_argument("--height", type=int, default=200)
    parser.add_argument("--gaussians", type=int, default=20000)
    parser.add_argument("--sh-degree", type=int, default=3, choices=range(4))
    parser.add_argument("--impls", default="pc3d,dense,gsplat", help=f"comma list of {list(IMPLS)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in each child")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    impls = [i for i in args.impls.split(",") if i]
    for impl in impls:
        if impl not in IMPLS:
            parser.error(f"--impls: unknown implementation {impl!r}; expected {list(IMPLS)}")
    if args.width < 1 or args.height < 1 or args.gaussians < 1 or args.repeats < 1:
        parser.error("--width, --height, --gaussians and --repeats must be positive")

    import torch

    skipped = []
    if "gsplat" in impls and (not args.device.startswith("cuda") or importlib.util.find_spec("gsplat") is None):
        impls.remove("gsplat")
        skipped.append("gsplat (CUDA and the gsplat package only)")
    cmd = " ".join(["python bench/rasterize.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"# Gaussian rasterizer benchmark\n\n`{cmd}`  ")
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} torch threads, "
          f"python {platform.python_version()}, device {args.device}  ")
    print(f"{args.width}x{args.height} image, {args.gaussians} Gaussians, SH degree {args.sh_degree}  ")
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes may share the cores)\n")
    if skipped:
        print(f"skipped: {', '.join(skipped)}\n")

    child_args = {"width": args.width, "height": args.height, "gaussians": args.gaussians,
                  "sh_degree": args.sh_degree, "repeats": args.repeats, "threads": args.threads,
                  "device": args.device}
    ctx = mp.get_context("spawn")
    results = {}
    for impl in impls:
        with ctx.Pool(processes=1, maxtasksperchild=1) as pool:
            results[impl] = pool.apply(run_case, (impl, child_args))
        r = results[impl]
        print(f"  {impl:8s} fwd {r['fwd']:.3f} s  fwd+bwd {r['fwd+bwd']:.3f} s", file=sys.stderr)

    ref = results.get("pc3d")
    mem = "peak CUDA +MiB" if args.device.startswith("cuda") else "peak RSS +MiB"
    print(f"| implementation | fwd s | fwd+bwd s | fwd x pc3d | fwd+bwd x pc3d | {mem} | max abs diff vs pc3d |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for impl, r in results.items():
        ratio_f = f"{r['fwd'] / ref['fwd']:.1f}" if ref else ""
        ratio_b = f"{r['fwd+bwd'] / ref['fwd+bwd']:.1f}" if ref else ""
        diff = f"{abs(r['rgb'] - ref['rgb']).max():.2e}" if ref else ""
        print(f"| {impl} | {r['fwd']:.3f} | {r['fwd+bwd']:.3f} | {ratio_f} | {ratio_b} | {r['mem_mib']:.0f} | {diff} |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
