"""Compare a run's per-step Point-MAE loss with the reference curve in 25-step windows.

    python bench/loss_windows.py RUN_DIR [RUN_DIR ...]

Reads ``RUN_DIR/losses.jsonl`` and prints, per window, the mean loss of each run beside
the reference (the original Point-MAE code on the ModelNet10 train split, batch 32,
245 steps, measured on pc3d's reference CPU machine) and the relative difference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# (first step, last step) -> mean masked Chamfer-L2 of the original code (issue #2).
REFERENCE = {(1, 25): 0.131, (26, 50): 0.0122, (76, 100): 0.0104, (176, 200): 0.0098, (221, 245): 0.0095}


def window_means(run_dir: Path) -> dict[tuple[int, int], float]:
    losses = {}
    for line in (run_dir / "losses.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            losses[record["step"]] = record["loss"]
    out = {}
    for first, last in REFERENCE:
        values = [losses[s] for s in range(first, last + 1) if s in losses]
        if len(values) == last - first + 1:
            out[(first, last)] = sum(values) / len(values)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    runs = {str(run): window_means(run) for run in args.runs}
    header = "| steps | reference | " + " | ".join(f"{Path(r).name} | Δ" for r in runs) + " |"
    print(header)
    print("|" + "---|" * (2 + 2 * len(runs)))
    for window, ref in REFERENCE.items():
        cells = []
        for means in runs.values():
            value = means.get(window)
            cells += ["–", "–"] if value is None else [f"{value:.4f}", f"{100 * (value - ref) / ref:+.1f} %"]
        print(f"| {window[0]}–{window[1]} | {ref:.4f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
