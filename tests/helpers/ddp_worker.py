"""Train a small Point-MAE with the Trainer in whatever process layout launched this script.

    python tests/helpers/ddp_worker.py OUT_DIR [STEPS]                         # one process
    torchrun --nproc_per_node=2 tests/helpers/ddp_worker.py OUT_DIR [STEPS]   # DDP (gloo on CPU)

Every rank writes ``OUT_DIR/params_rank<r>.pt`` (its parameters after training) and rank 0
``OUT_DIR/metrics.json``; the run itself goes to ``OUT_DIR/run``. Used by tests/test_distributed.py.
"""

import json
import sys
from pathlib import Path

import torch

from pc3d.data import ObjectDataset
from pc3d.data.synthetic_shapes import generate_synthetic_shapes
from pc3d.encoders import PointViT
from pc3d.methods import PointMAE
from pc3d.train import Trainer, TrainerConfig
from pc3d.train.distributed import current_context, init_distributed, shutdown_distributed
from pc3d.utils.config import seed_everything


def main() -> None:
    out = Path(sys.argv[1])
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    context = init_distributed("cpu")
    seed_everything(0)
    points, labels, _ = generate_synthetic_shapes(4, num_points=256, seed=3)
    dataset = ObjectDataset(points, labels, num_points=256, augment=True, seed=0)
    # drop-path off: it is the one random stream that is per rank, not per sample
    encoder = PointViT(embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0, num_groups=16, group_size=16)
    model = PointMAE(encoder, decoder_depth=1, decoder_num_heads=2, decoder_drop_path_rate=0.0)
    config = TrainerConfig(max_steps=steps, batch_size=8, lr=1e-3, warmup_steps=1, checkpoint_every=2,
                           log_every=1, device="cpu", seed=0)
    metrics = Trainer(model, dataset, config, out / "run").fit()
    rank = current_context().rank
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"params_rank{rank}.pt")
    if context.is_main:
        (out / "metrics.json").write_text(json.dumps(metrics))
    shutdown_distributed()


if __name__ == "__main__":
    main()
