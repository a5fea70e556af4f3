"""Train a small Point-MAE with the Trainer in whatever process layout launched this script.

    python tests/helpers/ddp_worker.py OUT_DIR [STEPS] [OPTIMIZER] [FAULT]                        # one process
    torchrun --nproc_per_node=2 tests/helpers/ddp_worker.py OUT_DIR [STEPS] [OPTIMIZER] [FAULT]  # DDP (gloo)

OPTIMIZER: ``sgd`` (default) or ``adamw``. FAULT (DDP only, to prove the equivalence test
catches real bugs): ``none`` (default), ``skip_allreduce`` (every rank steps on its own
gradient: a DDP comm hook that returns the local bucket unreduced) or ``duplicate_split`` (every
rank trains on rank 0's slice of the global batch).

Every rank writes ``OUT_DIR/state_rank<r>.pt``: ``{"initial", "final", "first_grads", "tokens"}`` —
parameters before and after training, the gradients the optimiser used at step 1 (after DDP's
all-reduce and clipping) and the trained encoder's final tokens ``(8, 16, 32)`` on a fixed batch
(train mode: batch statistics, so directions that a BatchNorm cancels do not count). Rank 0 writes ``OUT_DIR/metrics.json``; the run itself goes to
``OUT_DIR/run``. Used by tests/test_distributed.py.
"""

import dataclasses
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

FAULTS = ("none", "skip_allreduce", "duplicate_split")


class DuplicateSplitTrainer(Trainer):
    """A broken split: every rank computes its batch slice as if it were rank 0."""

    def _batches_from(self, step):
        real = self.context
        self.context = dataclasses.replace(real, rank=0)
        try:
            batches = super()._batches_from(step)
            first = next(batches)  # the slice is chosen when the generator starts
        finally:
            self.context = real
        yield first
        yield from batches


def _unreduced(state, bucket):
    future = torch.futures.Future()
    future.set_result(bucket.buffer())
    return future


def main() -> None:
    out = Path(sys.argv[1])
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    optimizer = sys.argv[3] if len(sys.argv) > 3 else "sgd"
    fault = sys.argv[4] if len(sys.argv) > 4 else "none"
    if fault not in FAULTS:
        raise SystemExit(f"unknown fault {fault!r}")
    context = init_distributed("cpu")
    seed_everything(0)
    points, labels, _ = generate_synthetic_shapes(4, num_points=256, seed=3)
    dataset = ObjectDataset(points, labels, num_points=256, augment=True, seed=0)
    # drop-path off: it is the one random stream that is per rank, not per sample
    encoder = PointViT(embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0, num_groups=16, group_size=16)
    model = PointMAE(encoder, decoder_depth=1, decoder_num_heads=2, decoder_drop_path_rate=0.0)
    lr = 1e-3 if optimizer == "adamw" else 0.01
    config = TrainerConfig(max_steps=steps, batch_size=8, optimizer=optimizer, lr=lr, warmup_steps=1,
                           checkpoint_every=2, log_every=1, device="cpu", seed=0)
    trainer_class = DuplicateSplitTrainer if fault == "duplicate_split" else Trainer
    trainer = trainer_class(model, dataset, config, out / "run")
    if fault == "skip_allreduce":
        trainer.forward_model.register_comm_hook(None, _unreduced)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    first_grads: dict[str, torch.Tensor] = {}

    def keep_first_grads(opt, args, kwargs):
        if not first_grads:
            for group in opt.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        first_grads[names[id(p)]] = p.grad.detach().clone()

    trainer.optimizer.register_step_pre_hook(keep_first_grads)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    metrics = trainer.fit()
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    probe = torch.stack([dataset[i]["points"] for i in range(8)])
    with torch.no_grad():
        tokens = trainer.model.encoder.train()(probe).levels[-1].features
    rank = current_context().rank
    torch.save({"initial": initial, "final": final, "first_grads": first_grads, "tokens": tokens},
               out / f"state_rank{rank}.pt")
    if context.is_main:
        (out / "metrics.json").write_text(json.dumps(metrics))
    shutdown_distributed()


if __name__ == "__main__":
    main()
