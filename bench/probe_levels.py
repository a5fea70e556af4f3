"""Per-block probe accuracy of a checkpoint's encoder beside a random-init twin.

    python bench/probe_levels.py RUN_DIR --data-root DIR [--seed 0]

Exposes every block of a point-ViT as a level, probes each level's standardised
[max ‖ mean] features with the object SVM probe (C chosen on the val split), and
prints one row per block for the pretrained and the random-init encoder.
"""

from __future__ import annotations

import argparse

import numpy as np

from pc3d.data.object_data import modelnet_data
from pc3d.eval import ProbeSplits, extract_global_features, svm_probe
from pc3d.hub import build_encoder, load_encoder
from pc3d.utils.config import seed_everything


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = modelnet_data(args.data_root)
    pretrained, config = load_encoder(args.checkpoint)
    seed_everything(args.seed)
    encoders = {"pretrained": pretrained, "random": build_encoder(config)}
    order = np.concatenate([data.fit, data.val])
    labels, num_fit = data.labels(order), len(data.fit)
    table: dict[str, list[float]] = {}
    for name, encoder in encoders.items():
        depth = len(encoder.blocks.blocks)
        encoder.feature_layers = tuple(range(depth - 1))
        features = extract_global_features(encoder, data.points(order), levels="all")
        width = features.shape[1] // depth
        for block in range(depth):
            x = features[:, block * width:(block + 1) * width]
            splits = ProbeSplits(x[:num_fit], labels[:num_fit], x[num_fit:], labels[num_fit:])
            table.setdefault(name, []).append(svm_probe(splits, data.class_names, standardize=True)["val_accuracy"])
    print("| block | pretrained | random init |")
    print("|---|---|---|")
    for block, (p, r) in enumerate(zip(table["pretrained"], table["random"]), start=1):
        print(f"| {block} | {100 * p:.2f} % | {100 * r:.2f} % |")


if __name__ == "__main__":
    main()
