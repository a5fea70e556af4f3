"""Few-shot evaluator (pc3d.eval.fewshot): fold sampling, errors, metrics, fold-by-fold resume."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import pc3d.train
from pc3d.cli import compose
from pc3d.data.object_data import synthetic_shapes_data
from pc3d.errors import ConfigError
from pc3d.eval.fewshot import (RESULT_FILE, fewshot_pools, fold_dir, fold_seed, parse_settings, run_fewshot,
                               sample_fold, train_fold)
from pc3d.eval.finetune import initial_encoder

NAMES = ["a", "b", "c", "d", "e"]
LABELS = np.concatenate([np.repeat(np.arange(5), 20), np.repeat(np.arange(5), 10)])  # 100 train, 50 test
TRAIN, TEST = np.arange(100), np.arange(100, 150)
TINY_ENCODER = {"_target_": "pc3d.encoders.PointViT", "embed_dim": 48, "depth": 1, "num_heads": 3,
                "num_groups": 16, "group_size": 16}
TINY = [*(f"encoder.{k}={v}" for k, v in TINY_ENCODER.items() if k != "_target_"), "fewshot.hidden_dims=[32,32]",
        "device=cpu"]
PROTOCOL = {"hidden_dims": [32, 32], "dropout": 0.5, "label_smoothing": 0.0, "eval_batch_size": 4,
            "keep_checkpoints": False}


def sample(**kw):
    args = dict(way=3, shot=4, queries=5, seed=0, fold=0, class_names=NAMES)
    args.update(kw)
    return sample_fold(LABELS, TRAIN, TEST, **args)


def test_fold_sampling_is_seeded_disjoint_and_counted():
    fold = sample()
    assert len(fold.classes) == 3 and len(fold.support) == 12 and len(fold.query) == 15
    assert set(TRAIN) >= set(fold.support) and set(TEST) >= set(fold.query)
    assert not set(fold.support) & set(fold.query)
    np.testing.assert_array_equal(LABELS[fold.support], fold.classes[fold.support_labels])
    np.testing.assert_array_equal(LABELS[fold.query], fold.classes[fold.query_labels])
    assert np.bincount(fold.support_labels).tolist() == [4, 4, 4]
    assert np.bincount(fold.query_labels).tolist() == [5, 5, 5]
    again = sample()
    assert all(np.array_equal(getattr(fold, k), getattr(again, k)) for k in vars(fold))
    assert not np.array_equal(fold.support, sample(fold=1).support)
    assert not np.array_equal(fold.support, sample(seed=1).support)
    assert sample(way=5).classes.tolist() == [0, 1, 2, 3, 4]
    # Overlapping pools: a shape is never both a support and a query of one fold.
    overlapping = sample_fold(LABELS, np.arange(150), np.arange(150), way=5, shot=10, queries=20, seed=0,
                              fold=0, class_names=NAMES)
    assert not set(overlapping.support) & set(overlapping.query) and len(overlapping.query) == 100


def test_too_many_ways_or_too_few_shapes_are_config_errors():
    with pytest.raises(ConfigError, match="6w4s needs 6 classes but the data has 5"):
        sample(way=6)
    with pytest.raises(ConfigError, match="6w4s needs 6 classes"):
        parse_settings([[5, 10], [6, 4]], 5)
    labels = LABELS.copy()
    labels[:19] = 1  # class "a" keeps one train shape
    with pytest.raises(ConfigError, match="class 'a' has 1 in the train split"):
        sample_fold(labels, TRAIN, TEST, way=2, shot=4, queries=5, seed=0, fold=0, class_names=NAMES)
    with pytest.raises(ConfigError, match="queries_per_class=11 but class 'a' has 10 shapes in the test split"):
        sample(queries=11)
    assert parse_settings([[5, 10], [2, 1]], 5) == [(5, 10), (2, 1)]
    for bad in ([[5]], [[1, 3]], [[2, 0]], [[2, 2], [2, 2]], []):
        with pytest.raises(ConfigError, match="fewshot.settings"):
            parse_settings(bad, 5)


def test_pools_fall_back_to_fit_and_val_without_a_test_split():
    with_test = SimpleNamespace(train=np.arange(10), fit=np.arange(8), val=np.arange(8, 10), test=np.arange(10, 12))
    assert fewshot_pools(with_test)[2:] == ("train", "test")
    without = SimpleNamespace(train=np.arange(10), fit=np.arange(8), val=np.arange(8, 10), test=np.arange(0))
    support, query, *names = fewshot_pools(without)
    assert names == ["fit", "val"] and support.tolist() == list(range(8)) and query.tolist() == [8, 9]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Tiny embedded synthetic shapes: 12 classes × (6 train + 2 test) clouds of 256 points."""
    root = tmp_path_factory.mktemp("synth")
    return [f"data.root={root}", "data.train_per_class=6", "data.test_per_class=2", "data.num_points=256"]


def test_train_fold_leaves_the_initial_encoder_unchanged(synth, tmp_path):
    data = synthetic_shapes_data(root=synth[0].split("=", 1)[1], train_per_class=6, test_per_class=2, num_points=256)
    encoder = initial_encoder("random", TINY_ENCODER, cls_token=True, seed=0)[0]
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    fold = sample_fold(data.cache.labels, data.train, data.test, way=3, shot=2, queries=2, seed=0, fold=0,
                       class_names=data.class_names)
    trainer = {"max_steps": 2, "batch_size": 32, "lr": 1e-3, "warmup_steps": 0}
    result = train_fold(encoder, fold, data, tmp_path / "fold", protocol=PROTOCOL, trainer_settings=trainer,
                        seed=fold_seed(0, 3, 2, 0), device="cpu")
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert result["steps"] == 2 and 0.0 <= result["accuracy"] <= 1.0 and len(result["query"]) == 6
    assert json.loads((tmp_path / "fold" / RESULT_FILE).read_text()) == result
    assert not (tmp_path / "fold" / "checkpoints").exists()  # keep_checkpoints=False


def test_run_fewshot_metrics_and_fold_by_fold_resume(synth, tmp_path, monkeypatch, capsys):
    out = tmp_path / "fs"
    args = ["checkpoint=random", *TINY, *synth, "fewshot.settings=[[3,2],[2,1]]", "fewshot.folds=2",
            "fewshot.queries_per_class=2", "trainer.max_steps=2", f"out_dir={out}"]
    metrics = run_fewshot(compose("fewshot", args))
    assert metrics["init"] == "random" and metrics["query_split"] == "test"
    for name in ("3w2s", "2w1s"):
        folds = [metrics[f"{name}_fold{i}"] for i in range(2)]
        assert metrics[f"{name}_mean"] == pytest.approx(np.mean(folds))
        assert metrics[f"{name}_std"] == pytest.approx(np.std(folds))  # population std
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert "3w2s" in capsys.readouterr().out

    calls = []
    original_fit = pc3d.train.Trainer.fit
    monkeypatch.setattr(pc3d.train.Trainer, "fit", lambda self: calls.append(self.run_dir) or original_fit(self))
    (fold_dir(out, 3, 2, 1) / RESULT_FILE).unlink()  # as if killed during that fold
    resumed = run_fewshot(compose("fewshot", args))
    assert calls == [fold_dir(out, 3, 2, 1)]  # only the unfinished fold trains again
    assert {k: v for k, v in resumed.items() if k != "wall_s"} == {k: v for k, v in metrics.items() if k != "wall_s"}

    # another seed draws other folds: refused before any fold is read (the run directory names the setting)
    with pytest.raises(ConfigError, match=r"holds a run with other settings: .*seed=1 \(the run has 0\)"):
        run_fewshot(compose("fewshot", [*args, "seed=1"]))

    calls.clear()
    again = run_fewshot(compose("fewshot", [*args, "resume=never"]))  # retrains every fold, identically
    assert len(calls) == 4 and again["3w2s_fold0"] == metrics["3w2s_fold0"]


def test_fewshot_setting_errors_leave_no_output(synth, tmp_path):
    out = tmp_path / "fs"
    with pytest.raises(ConfigError, match="13w2s needs 13 classes but the data has 12"):
        run_fewshot(compose("fewshot", ["checkpoint=random", *TINY, *synth, "fewshot.settings=[[13,2]]",
                                        f"out_dir={out}"]))
    with pytest.raises(ConfigError, match="queries_per_class=20 but class"):  # 2 test shapes per class
        run_fewshot(compose("fewshot", ["checkpoint=random", *TINY, *synth, "fewshot.settings=[[2,2]]",
                                        f"out_dir={out}"]))
    with pytest.raises(ConfigError, match="resume=/some/checkpoint.pt: few-shot runs resume fold by fold"):
        run_fewshot(compose("fewshot", ["checkpoint=random", *TINY, *synth, "resume=/some/checkpoint.pt",
                                        f"out_dir={out}"]))
    assert not out.exists()
