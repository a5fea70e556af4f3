"""ModelNet40 ``modelnet40_normal_resampled`` → the prepared object cache (:mod:`pc3d.data.modelnet40`).

    pc3d prep modelnet40 src=modelnet40_normal_resampled dst=DST [num_points=8192] [num_category=40] [seed=0]
        [allow_pickle=true] [force=true]
    python -m data_prep.modelnet40 SRC DST [--num-points 8192] [--num-category 40] [--seed 0] [--allow-pickle] [--force]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from data_prep import object_summary, run_converter
from pc3d.data.modelnet40 import prepare_modelnet40

__all__ = ["main", "prep_command"]


def prep_command(cfg) -> dict[str, Any]:
    """``pc3d prep modelnet40`` (``configs/prep/modelnet40.yaml``)."""
    result = prepare_modelnet40(cfg.src, cfg.dst, num_points=cfg.num_points, num_category=cfg.num_category,
                                seed=cfg.seed, allow_pickle=cfg.allow_pickle, force=cfg.force)
    print(object_summary(result, str(cfg.dst)))
    return result[0]


def main(argv: list[str] | None = None) -> int:
    """``python -m data_prep.modelnet40 SRC DST [...]``; returns the exit status (2 on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.modelnet40",
                                     description="Convert modelnet40_normal_resampled into a pc3d object cache.")
    parser.add_argument("src", help="modelnet40_normal_resampled/ (shape names, train/test lists, <class>/*.txt)")
    parser.add_argument("dst", help="output cache directory")
    parser.add_argument("--num-points", type=int, default=8192)
    parser.add_argument("--num-category", type=int, default=40, choices=(10, 40))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read Point-BERT's modelnet40_*_8192pts_fps.dat pickles (restricted unpickling)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    return run_converter(lambda: prepare_modelnet40(args.src, args.dst, num_points=args.num_points,
                                                    num_category=args.num_category, seed=args.seed,
                                                    allow_pickle=args.allow_pickle, force=args.force),
                         lambda result: object_summary(result, args.dst))


if __name__ == "__main__":
    sys.exit(main())
