"""Point-MAE's few-shot fold pickles → pc3d's JSON fold file (:mod:`pc3d.data.fewshot_folds`), once, on request.

    pc3d prep fewshot_folds src=ModelNetFewshot dst=folds.json modelnet=modelnet40_normal_resampled allow_pickle=true
    python -m data_prep.fewshot_folds SRC DST --modelnet DIR --allow-pickle [--force]

Then: ``pc3d fewshot fewshot.folds_file=folds.json data=modelnet40 data.root=...``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from data_prep import run_converter
from pc3d.data.fewshot_folds import convert_point_mae_folds

__all__ = ["main", "prep_command"]


def _summary(content: dict[str, Any], dst: object) -> str:
    settings = content["settings"]
    return (f"converted {sum(len(v) for v in settings.values())} folds ({', '.join(sorted(settings))}) -> {dst}; "
            f"use fewshot.folds_file={dst}")


def prep_command(cfg) -> dict[str, Any]:
    """``pc3d prep fewshot_folds`` (``configs/prep/fewshot_folds.yaml``)."""
    content = convert_point_mae_folds(cfg.src, cfg.dst, cfg.modelnet, allow_pickle=cfg.allow_pickle,
                                      num_category=cfg.num_category, force=cfg.force)
    print(_summary(content, cfg.dst))
    return content


def main(argv: list[str] | None = None) -> int:
    """``python -m data_prep.fewshot_folds SRC DST --modelnet DIR --allow-pickle``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.fewshot_folds",
                                     description="Convert Point-MAE's few-shot fold pickles into a pc3d fold file.")
    parser.add_argument("src", help="ModelNetFewshot/ (<W>way_<K>shot/<i>.pkl)")
    parser.add_argument("dst", help="the .json fold file to write")
    parser.add_argument("--modelnet", required=True, help="modelnet40_normal_resampled/ the folds were drawn from")
    parser.add_argument("--num-category", type=int, default=40, choices=(10, 40))
    parser.add_argument("--allow-pickle", action="store_true", help="consent to open the pickles (restricted)")
    parser.add_argument("--force", action="store_true", help="replace a dst that is not a fold file")
    args = parser.parse_args(argv)
    return run_converter(lambda: convert_point_mae_folds(args.src, args.dst, args.modelnet,
                                                         allow_pickle=args.allow_pickle,
                                                         num_category=args.num_category, force=args.force),
                         lambda content: _summary(content, args.dst))


if __name__ == "__main__":
    sys.exit(main())
