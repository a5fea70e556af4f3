"""ShapeNet-55 / 34 (Point-BERT's ``ShapeNet55-34`` download) → the prepared object cache (:mod:`pc3d.data.shapenet`).

    pc3d prep shapenet55 src=ShapeNet55-34 dst=DST [num_points=8192] [seed=0] [force=true]
    pc3d prep shapenet34 src=ShapeNet55-34 dst=DST ...                 (the ShapeNet-34 lists)
    python -m data_prep.shapenet SRC DST [--benchmark shapenet55] [--num-points 8192] [--seed 0] [--force]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from data_prep import object_summary, run_converter
from pc3d.data.shapenet import BENCHMARKS, prepare_shapenet

__all__ = ["main", "prep_command"]


def prep_command(cfg) -> dict[str, Any]:
    """``pc3d prep shapenet55|shapenet34`` (``configs/prep/shapenet55.yaml``, ``shapenet34.yaml``)."""
    result = prepare_shapenet(cfg.src, cfg.dst, benchmark=cfg.benchmark, num_points=cfg.num_points, seed=cfg.seed,
                              force=cfg.force)
    print(object_summary(result, str(cfg.dst)))
    return result[0]


def main(argv: list[str] | None = None) -> int:
    """``python -m data_prep.shapenet SRC DST [...]``; returns the exit status (2 on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.shapenet",
                                     description="Convert ShapeNet-55/34 (shapenet_pc/ + lists) into a pc3d object cache.")
    parser.add_argument("src", help="the ShapeNet55-34 folder (shapenet_pc/, ShapeNet-55/, ShapeNet-34/)")
    parser.add_argument("dst", help="output cache directory")
    parser.add_argument("--benchmark", default="shapenet55", choices=sorted(BENCHMARKS))
    parser.add_argument("--num-points", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    return run_converter(lambda: prepare_shapenet(args.src, args.dst, benchmark=args.benchmark,
                                                  num_points=args.num_points, seed=args.seed, force=args.force),
                         lambda result: object_summary(result, args.dst))


if __name__ == "__main__":
    sys.exit(main())
