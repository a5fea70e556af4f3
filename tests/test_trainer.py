import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from pc3d.errors import CheckpointError, ConfigError, Pc3dError
from pc3d.train import (Trainer, TrainerConfig, epoch_batches, latest_checkpoint, load_checkpoint, param_groups,
                        resolve_checkpoint, warmup_cosine_lr)
from pc3d.train.checkpoint import list_checkpoints


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, n=40):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class ToyMethod(nn.Module):
    """Regression with dropout so the RNG state matters for exact resume."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.Linear(16, 1))
        self.token = nn.Parameter(torch.zeros(3))

    def forward(self, batch):
        pred = self.net(batch["x"]).squeeze(-1) + self.token.sum()
        return {"loss": (pred - batch["y"]).square().mean()}


def config(**kw):
    base = dict(max_steps=12, batch_size=8, lr=1e-2, warmup_steps=2, checkpoint_every=4, keep_last=5,
                resume="auto", device="cpu", seed=3)
    base.update(kw)
    return TrainerConfig(**base)


def losses(run_dir):
    return [json.loads(x)["loss"] for x in (run_dir / "losses.jsonl").read_text().splitlines()]


def test_warmup_cosine_schedule_values():
    kw = dict(base_lr=1e-3, total_steps=100, warmup_steps=10, warmup_lr_init=1e-6, min_lr=1e-6)
    assert warmup_cosine_lr(0, **kw) == pytest.approx(1e-6)
    assert warmup_cosine_lr(5, **kw) == pytest.approx(1e-6 + 5 * (1e-3 - 1e-6) / 10)
    assert warmup_cosine_lr(10, **kw) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6) * (1 + math.cos(math.pi * 0.1)))
    assert warmup_cosine_lr(100, **kw) == pytest.approx(1e-6)
    assert warmup_cosine_lr(50, **kw) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))


def test_param_groups_exclude_biases_norms_and_tokens_from_decay():
    model = ToyMethod()
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    assert decayed == {id(model.net[0].weight), id(model.net[2].weight)}
    assert id(model.token) in {id(p) for p in no_decay["params"]}


def test_sgd_optimizer_is_nesterov_momentum_with_the_same_groups(tmp_path):
    trainer = Trainer(ToyMethod(), ToyDataset(), config(optimizer="sgd", momentum=0.8, weight_decay=0.1), tmp_path)
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["momentum"] == 0.8 and decay["nesterov"] and decay["weight_decay"] == 0.1
    assert no_decay["weight_decay"] == 0.0
    trainer.fit()
    assert losses(tmp_path)[-1] < losses(tmp_path)[0]
    with pytest.raises(ConfigError, match="trainer.optimizer='lamb'"):
        Trainer(ToyMethod(), ToyDataset(), config(optimizer="lamb"), tmp_path / "other")


def test_epoch_batches_are_seeded_full_and_differ_per_epoch():
    a = epoch_batches(50, 8, seed=1, epoch=0)
    assert len(a) == 6 and all(len(b) == 8 for b in a) and len(set(sum(a, []))) == 48
    assert a == epoch_batches(50, 8, seed=1, epoch=0)
    assert a != epoch_batches(50, 8, seed=1, epoch=1)
    assert a != epoch_batches(50, 8, seed=2, epoch=0)


def test_training_is_deterministic_and_loss_falls(tmp_path):
    torch.manual_seed(0)
    m1 = Trainer(ToyMethod(), ToyDataset(), config(max_steps=60, lr=5e-2), tmp_path / "a").fit()
    torch.manual_seed(0)
    m2 = Trainer(ToyMethod(), ToyDataset(), config(max_steps=60, lr=5e-2), tmp_path / "b").fit()
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    first = losses(tmp_path / "a")
    assert np.mean(first[-5:]) < 0.5 * np.mean(first[:5])
    assert m1["steps"] == 60 and m1["samples_per_s"] > 0 and m1["final_loss"] == pytest.approx(np.mean(first[-25:]))


def test_resume_continues_exactly(tmp_path):
    torch.manual_seed(0)
    Trainer(ToyMethod(), ToyDataset(), config(), tmp_path / "full").fit()
    reference = losses(tmp_path / "full")

    run = tmp_path / "killed"
    torch.manual_seed(0)
    Trainer(ToyMethod(), ToyDataset(), config(), run).fit()
    # simulate a kill after step 8: drop later checkpoints; the loss log has extra lines that must be discarded
    for path in list_checkpoints(run):
        if int(path.stem.split("_")[1]) > 8:
            path.unlink()
    torch.manual_seed(123)  # a fresh process would start from a different RNG state
    model = ToyMethod()
    metrics = Trainer(model, ToyDataset(), config(), run).fit()
    assert losses(run) == reference
    assert metrics["steps"] == 12


def test_corrupt_newest_checkpoint_is_skipped(tmp_path):
    torch.manual_seed(0)
    Trainer(ToyMethod(), ToyDataset(), config(), tmp_path).fit()
    newest = list_checkpoints(tmp_path)[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    path, state = latest_checkpoint(tmp_path)
    assert path != newest and state["step"] == 8
    with pytest.raises(CheckpointError, match=newest.name):
        load_checkpoint(newest)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a pc3d training checkpoint"):
        load_checkpoint(foreign)
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        resolve_checkpoint(tmp_path / "empty_run")


def test_keep_last_prunes_old_checkpoints(tmp_path):
    Trainer(ToyMethod(), ToyDataset(), config(keep_last=2), tmp_path).fit()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000008.pt", "step_00000012.pt"]


def test_nan_loss_stops_with_clear_error(tmp_path):
    class Exploding(ToyMethod):
        def forward(self, batch):
            return {"loss": super().forward(batch)["loss"] * float("nan")}

    with pytest.raises(Pc3dError, match="loss became nan at step 1"):
        Trainer(Exploding(), ToyDataset(), config(), tmp_path).fit()


def test_bad_trainer_settings(tmp_path):
    with pytest.raises(ConfigError, match="batch_size=64 is larger than the dataset"):
        Trainer(ToyMethod(), ToyDataset(40), config(batch_size=64), tmp_path)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        if torch.cuda.is_available():
            raise ConfigError("CUDA is not available (skipped on GPU machines)")
        Trainer(ToyMethod(), ToyDataset(), config(device="cuda"), tmp_path)


def test_cuda_refusal_when_cuda_is_reported_unavailable(tmp_path, monkeypatch):
    """The refusal itself, on any machine (a GPU machine included): CUDA reported missing."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=f"device='{name}' requested but CUDA is not available"):
            Trainer(ToyMethod(), ToyDataset(), config(device=name), tmp_path)
    assert not tmp_path.joinpath("checkpoints").exists()


def _tiny_point_mae():
    from pc3d.encoders import PointViT
    from pc3d.methods import PointMAE

    torch.manual_seed(0)
    encoder = PointViT(embed_dim=32, depth=1, num_heads=2, num_groups=16, group_size=16, drop_path_rate=0.0)
    return PointMAE(encoder, decoder_depth=1, decoder_num_heads=2, decoder_drop_path_rate=0.0)


def _synthetic_dataset():
    from pc3d.data import ObjectDataset, generate_synthetic_shapes

    points, labels, _ = generate_synthetic_shapes(2, num_points=256, seed=3)
    return ObjectDataset(points, labels, num_points=256, augment=True, seed=0)


def test_batches_carry_sample_seeds_that_depend_on_step_and_position_only(tmp_path):
    trainer = Trainer(ToyMethod(), ToyDataset(), config(), tmp_path)
    first = [next(trainer._batches_from(0))["sample_seed"] for _ in range(2)]
    assert torch.equal(first[0], first[1]) and first[0].dtype == torch.int64 and len(set(first[0].tolist())) == 8
    later = trainer._batches_from(3)
    assert not torch.equal(next(later)["sample_seed"], first[0])


def test_bf16_autocast_trains_point_mae_close_to_fp32(tmp_path):
    dataset = _synthetic_dataset()
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = config(max_steps=4, lr=1e-3, precision=precision, checkpoint_every=100)
        runs[precision] = Trainer(_tiny_point_mae(), dataset, cfg, tmp_path / precision).fit()
    fp32, bf16 = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert all(math.isfinite(x) for x in bf16) and bf16 != fp32  # bf16 really ran
    # bf16 rounds every matmul input to 8 mantissa bits (u = 2^-8 = 3.9e-3) on any CPU; machines differ
    # only in the float32 accumulation order, far below that. Measured: <= 3.2e-3 (0.8 u) over the 4
    # steps; the bound is ~13 u.
    assert max(abs(a - b) / a for a, b in zip(fp32, bf16)) < 0.05


def test_unknown_precision_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="trainer.precision='fp16'"):
        Trainer(ToyMethod(), ToyDataset(), config(precision="fp16"), tmp_path)


def test_torch_compile_opt_in_gives_the_eager_losses(tmp_path):
    """``compile="eager"`` traces the model with dynamo (cheap on CPU; inductor takes minutes here)."""
    dataset = _synthetic_dataset()
    Trainer(_tiny_point_mae(), dataset, config(max_steps=3, lr=1e-3), tmp_path / "plain").fit()
    trainer = Trainer(_tiny_point_mae(), dataset, config(max_steps=3, lr=1e-3, compile="eager"),
                      tmp_path / "compiled")
    assert trainer.forward_model is not trainer.model  # really wrapped
    trainer.fit()
    assert losses(tmp_path / "compiled") == losses(tmp_path / "plain")
