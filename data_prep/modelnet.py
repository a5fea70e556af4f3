"""ModelNet-style trees → the prepared object cache (the conversion is :mod:`pc3d.data.modelnet`).

    pc3d prep modelnet src=SRC dst=DST [num_points=1024] [num_surface_points=8192] [seed=0] [force=true]
    python -m data_prep.modelnet SRC DST [--num-points 1024] [--num-surface-points 8192] [--seed 0] [--force]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from data_prep import run_converter
from pc3d.data.modelnet import prepare_modelnet, prepare_modelnet_tree, scan_tree

__all__ = ["main", "prep_command", "prepare_modelnet", "scan_tree"]


def _summary(result: tuple[dict[str, Any], bool], dst: str) -> str:
    manifest, rebuilt = result
    return (f"{'prepared' if rebuilt else 'up to date:'} {manifest['num_shapes']} shapes, "
            f"{len(manifest['classes'])} classes, {manifest['num_points']} points each -> {dst}")


def prep_command(cfg) -> dict[str, Any]:
    """``pc3d prep modelnet`` (``configs/prep/modelnet.yaml``)."""
    result = prepare_modelnet_tree(cfg.src, cfg.dst, num_points=cfg.num_points,
                                   num_surface_points=cfg.num_surface_points, seed=cfg.seed, force=cfg.force)
    print(_summary(result, str(cfg.dst)))
    return result[0]


def main(argv: list[str] | None = None) -> int:
    """``python -m data_prep.modelnet SRC DST [...]``; returns the exit status (2 on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.modelnet",
                                     description="Convert a ModelNet-style tree into a pc3d object cache.")
    parser.add_argument("src", help="tree SRC/<class>/<split>/*.{off,pcd,ply,txt,npy,npz}")
    parser.add_argument("dst", help="output cache directory")
    parser.add_argument("--num-points", type=int, default=1024)
    parser.add_argument("--num-surface-points", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    return run_converter(lambda: prepare_modelnet_tree(args.src, args.dst, num_points=args.num_points,
                                                       num_surface_points=args.num_surface_points, seed=args.seed,
                                                       force=args.force),
                         lambda result: _summary(result, args.dst))


if __name__ == "__main__":
    sys.exit(main())
