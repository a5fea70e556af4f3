"""ScanObjectNN h5 files → the prepared object cache (:mod:`pc3d.data.scanobjectnn`).

    pc3d prep scanobjectnn src=h5_files dst=DST variant=OBJ_BG|OBJ_ONLY|PB_T50_RS [num_points=2048] [force=true]
    python -m data_prep.scanobjectnn SRC DST [--variant PB_T50_RS] [--num-points 2048] [--seed 0] [--force]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from data_prep import object_summary, run_converter
from pc3d.data.scanobjectnn import VARIANTS, prepare_scanobjectnn

__all__ = ["main", "prep_command"]


def prep_command(cfg) -> dict[str, Any]:
    """``pc3d prep scanobjectnn`` (``configs/prep/scanobjectnn.yaml``)."""
    result = prepare_scanobjectnn(cfg.src, cfg.dst, variant=cfg.variant, num_points=cfg.num_points, seed=cfg.seed,
                                  force=cfg.force)
    print(object_summary(result, str(cfg.dst)))
    return result[0]


def main(argv: list[str] | None = None) -> int:
    """``python -m data_prep.scanobjectnn SRC DST [...]``; returns the exit status (2 on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.scanobjectnn",
                                     description="Convert a ScanObjectNN variant into a pc3d object cache.")
    parser.add_argument("src", help="the release's h5_files/ (main_split/, main_split_nobg/)")
    parser.add_argument("dst", help="output cache directory")
    parser.add_argument("--variant", default="PB_T50_RS", choices=sorted(VARIANTS))
    parser.add_argument("--num-points", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    return run_converter(lambda: prepare_scanobjectnn(args.src, args.dst, variant=args.variant,
                                                      num_points=args.num_points, seed=args.seed, force=args.force),
                         lambda result: object_summary(result, args.dst))


if __name__ == "__main__":
    sys.exit(main())
