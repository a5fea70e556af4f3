"""Fine-tuning evaluator: encoder + MLP head trained end to end for object classification (Point-MAE protocol).

Protocol (Pang et al., ``cfgs/finetune_modelnet.yaml``; defaults in ``configs/finetune.yaml`` and
``configs/trainer/finetune.yaml``): the encoder gets Point-MAE's class token — new and freshly
initialised when the checkpoint was pretrained without one, every other weight loaded strictly —
and the :class:`~pc3d.eval.classifier.ObjectClassifier` head (256-256-C, dropout 0.5). The whole
model is trained by the one :class:`~pc3d.train.Trainer` on the ``fit`` part of the train split
with scale-and-translate augmentation (AdamW 5e-4, weight decay 0.05, cosine over 300 epochs
with 10 warm-up epochs, batch 32, gradient clip 10; ``trainer.max_steps`` shortens it), into
``out_dir`` (checkpoints, ``resume=auto``). The final model is scored in eval mode on the
unaugmented ``val`` part and, when the data has one, the official ``test`` split. With
``finetune.vote`` it is also scored by Point-MAE's test-time voting: the logits of
``finetune.vote_passes`` scale-and-translate passes (seeded: pass ``p`` of item ``i`` draws from
``(seed, p, i)``) are averaged. Reported: the final model (Point-MAE's logs keep the best epoch
on the test set; pc3d selects nothing on the evaluation data).

Metric keys (stable) of :func:`run_finetune`:
    init                          "pretrained" or "random"
    val_accuracy, val_mean_class_accuracy, val_accuracy/<class>
    val_accuracy_vote, val_mean_class_accuracy_vote      (finetune.vote)
    test_*                        the same keys on the test split, when it exists
    train_final_loss              mean of the last 25 training losses
    steps, wall_s                 optimisation steps; seconds for the whole run
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pc3d.data.object_data import ObjectData
from pc3d.data.object_dataset import ObjectDataset
from pc3d.encoders.base import Encoder
from pc3d.encoders.inputs import EncoderInputDataset
from pc3d.errors import ConfigError
from pc3d.eval.classifier import ObjectClassifier
from pc3d.eval.object_probe import class_accuracies
from pc3d.hub.encoders import build_encoder, encoder_or_random, read_encoder_checkpoint
from pc3d.hub.weights import encoder_class, load_weights
from pc3d.utils.config import Setting, check_settings, seed_everything, to_plain
from pc3d.utils.device import move_to
from pc3d.utils.progress import get_logger, progress

log = get_logger(__name__)

#: Weights a fine-tuning encoder may lack in a checkpoint: Point-MAE pretrains without a class token.
CLASS_TOKEN_KEYS = ("cls_token", "cls_pos")

__all__ = ["CLASS_TOKEN_KEYS", "build_classifier", "check_protocol", "class_token_override", "classification_metrics",
           "classifier_dataset", "evaluate_split", "initial_encoder", "load_finetune_encoder", "predict_logits",
           "run_finetune", "vote_logits"]


def class_token_override(config: Mapping[str, Any], cls_token: bool) -> dict[str, Any]:
    """``{"cls_token": cls_token}`` for encoders that take a class token (``supports_cls_token``), else
    nothing: the protocol's class token is Point-MAE's; other encoders classify their pooled feature."""
    cls = encoder_class(config)
    if cls is not None and issubclass(cls, Encoder) and cls.supports_cls_token:
        return {"cls_token": bool(cls_token)}
    if cls_token:
        log.info("%s has no class token; the head reads its pooled global feature", config.get("_target_"))
    return {}


def load_finetune_encoder(path: str | Path, *, cls_token: bool,
                          format: str = "auto") -> tuple[nn.Module, dict[str, Any]]:
    """The encoder of a checkpoint (any :func:`~pc3d.hub.load_encoder` format) for fine-tuning.

    Built with ``cls_token`` (encoders that take one) and loaded strictly, except that exactly
    :data:`CLASS_TOKEN_KEYS` may be missing: they keep their fresh initialisation, as when
    Point-MAE fine-tunes a pretrained model that never had a class token.

    Returns:
        the encoder (on CPU) and its config node (``cls_token`` included).
    Raises:
        CheckpointError: unreadable file, or any other missing, unexpected or wrongly shaped
            weight (named).
    """
    checkpoint = read_encoder_checkpoint(path, format)
    checkpoint.config.update(class_token_override(checkpoint.config, cls_token))
    encoder = build_encoder(checkpoint.config)
    own = encoder.state_dict()
    # Filling exactly these keys with the encoder's own initial values keeps every other problem a
    # strict error, reported by the one weight loader with the names as the file spells them.
    fresh = {key: own[key] for key in CLASS_TOKEN_KEYS if key in own and key not in checkpoint.weights}
    load_weights(encoder, {**checkpoint.weights, **fresh}, strict=True, source=str(checkpoint.file),
                 target=checkpoint.config["_target_"], what="encoder weights", display=checkpoint.display)
    if fresh:
        log.info("%s: no %s in the checkpoint; initialised fresh for fine-tuning", checkpoint.file,
                 "/".join(sorted(fresh)))
    return encoder, dict(checkpoint.config)


def initial_encoder(checkpoint: str, encoder_config: Mapping[str, Any], *, cls_token: bool,
                    seed: int) -> tuple[nn.Module, dict[str, Any], str]:
    """The encoder fine-tuning starts from, after seeding every generator with ``seed``.

    ``checkpoint="random"`` builds ``encoder_config`` (with ``cls_token`` where the encoder takes
    one) from the seeded generator, as the probe's random baseline; anything else goes to
    :func:`load_finetune_encoder`. The global generators are left seeded, so the head built next
    is a function of ``seed`` too.

    Returns:
        encoder, its config node, and ``"pretrained"`` or ``"random"``.
    """
    if str(checkpoint) == "random":
        config = to_plain(encoder_config)
        return encoder_or_random("random", config, seed=seed, config_overrides=class_token_override(config, cls_token))
    seed_everything(seed)
    encoder, config = load_finetune_encoder(checkpoint, cls_token=cls_token)
    return encoder, config, "pretrained"


def build_classifier(encoder: nn.Module, num_classes: int, protocol: Mapping[str, Any]) -> ObjectClassifier:
    """:class:`ObjectClassifier` with the head settings of a ``finetune``/``fewshot`` config node."""
    return ObjectClassifier(encoder, num_classes, hidden_dims=tuple(int(x) for x in protocol["hidden_dims"]),
                            dropout=float(protocol["dropout"]), label_smoothing=float(protocol["label_smoothing"]))


def classifier_dataset(model: ObjectClassifier, dataset: ObjectDataset) -> EncoderInputDataset:
    """``dataset``'s shapes as inputs of ``model``'s encoder."""
    return EncoderInputDataset(dataset, model.encoder.spec)


def predict_logits(model: ObjectClassifier, dataset: ObjectDataset, *, batch_size: int,
                   device: torch.device | str) -> np.ndarray:
    """Class scores of every item of ``dataset`` in eval mode: ``(len(dataset), C)`` float32."""
    model = model.to(device).eval()  # outside inference mode: the parameters stay trainable tensors
    inputs = classifier_dataset(model, dataset)
    loader = DataLoader(inputs, batch_size=batch_size, shuffle=False, collate_fn=inputs.collate)
    with torch.inference_mode():
        chunks = [model.logits(move_to(batch["input"], device)).float().cpu()
                  for batch in progress(loader, desc="eval")]
    return torch.cat(chunks).numpy()


def classification_metrics(labels: np.ndarray, logits: np.ndarray, class_names: Sequence[str],
                           prefix: str, suffix: str = "", per_class: bool = True) -> dict[str, float]:
    """``<prefix>_accuracy<suffix>``, ``<prefix>_mean_class_accuracy<suffix>`` and (``per_class``)
    ``<prefix>_accuracy<suffix>/<class>`` of ``logits (S, C)`` against ``labels (S,)``."""
    predicted = logits.argmax(axis=1)
    accuracies = class_accuracies(labels, predicted, class_names)
    metrics = {f"{prefix}_accuracy{suffix}": float((predicted == labels).mean()),
               f"{prefix}_mean_class_accuracy{suffix}": float(np.mean(list(accuracies.values())))}
    if per_class:
        metrics.update({f"{prefix}_accuracy{suffix}/{name}": value for name, value in accuracies.items()})
    return metrics


def vote_logits(model: ObjectClassifier, data: ObjectData, indices: np.ndarray, *, passes: int, seed: int,
                batch_size: int = 64, device: torch.device | str = "cpu") -> np.ndarray:
    """Point-MAE's test-time voting: logits ``(S, C)`` averaged over ``passes`` augmented passes.

    Pass ``p`` is epoch ``p`` of an augmenting :class:`ObjectDataset` (scale-and-translate, fresh
    point order) over ``indices (S,)`` with ``seed``: item ``i`` draws from ``(seed, p, i)``, so the
    same seed gives the same votes.
    """
    voting = ObjectDataset(data.cache.points, data.cache.labels, num_points=data.num_points, augment=True,
                           seed=seed, indices=indices)
    total = None
    for vote in range(passes):
        voting.set_epoch(vote)
        logits = predict_logits(model, voting, batch_size=batch_size, device=device)
        total = logits if total is None else total + logits
    return total / passes


def evaluate_split(model: ObjectClassifier, data: ObjectData, indices: np.ndarray, prefix: str, *,
                   batch_size: int = 64, device: torch.device | str = "cpu", vote_passes: int = 0,
                   seed: int = 0) -> dict[str, float]:
    """Metrics of ``model`` on the shapes ``indices (S,)`` of ``data`` (see :func:`classification_metrics`).

    The plain score uses the stored clouds unaugmented; ``vote_passes > 0`` adds the ``*_vote``
    accuracies of :func:`vote_logits` with ``seed``.
    """
    labels = data.labels(indices)
    plain = ObjectDataset(data.cache.points, data.cache.labels, num_points=data.num_points, augment=False,
                          seed=seed, indices=indices)
    logits = predict_logits(model, plain, batch_size=batch_size, device=device)
    metrics = classification_metrics(labels, logits, data.class_names, prefix)
    if vote_passes > 0:
        votes = vote_logits(model, data, indices, passes=vote_passes, seed=seed, batch_size=batch_size, device=device)
        metrics.update(classification_metrics(labels, votes, data.class_names, prefix, suffix="_vote",
                                              per_class=False))
    return metrics


#: the head and evaluation settings fine-tuning and few-shot share
HEAD_SETTINGS = {"cls_token": Setting(bool), "hidden_dims": Setting("ints", 1), "dropout": Setting(float, 0.0, 1.0,
                                                                                                   open_high=True),
                 "label_smoothing": Setting(float, 0.0, 1.0, open_high=True), "eval_batch_size": Setting(int, 1)}
FINETUNE_SETTINGS = {**HEAD_SETTINGS, "vote": Setting(bool), "vote_passes": Setting(int, 1)}


def check_protocol(protocol: Mapping[str, Any], name: str, settings: Mapping[str, Setting]) -> None:
    """One-line errors for head/evaluation settings of the wrong type or out of range (``name``: the node;
    ``settings``: every key the node may hold, :data:`HEAD_SETTINGS` and the command's own)."""
    def number(key: str) -> float | None:
        value = protocol.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    if (batch := number("eval_batch_size")) is not None and batch < 1:
        raise ConfigError(f"{name}.eval_batch_size must be >= 1, got {protocol['eval_batch_size']}")
    if (dropout := number("dropout")) is not None and not 0.0 <= dropout < 1.0:
        raise ConfigError(f"{name}.dropout must be in [0, 1), got {protocol['dropout']}")
    widths = protocol.get("hidden_dims")
    if isinstance(widths, (list, tuple)) and any(isinstance(w, int) and w < 1 for w in widths):
        raise ConfigError(f"{name}.hidden_dims must be positive widths, got {list(widths)}")
    check_settings(name, protocol, settings)


def run_finetune(cfg) -> dict[str, Any]:
    """Fine-tune and evaluate (``configs/finetune.yaml``); returns the flat metrics of the module docstring.

    ``config.yaml`` (with the encoder node actually built) and ``metrics.json`` are written to
    ``out_dir`` once every input has been validated.
    """
    from pc3d.train import Trainer
    from pc3d.train.run import check_run, check_run_settings, check_sample, finish_run, report, resolve_device, start_run, trainer_config
    from pc3d.utils.config import call_target

    started = time.perf_counter()
    protocol = to_plain(cfg.finetune)
    check_protocol(protocol, "finetune", FINETUNE_SETTINGS)
    check_run_settings(cfg)
    vote_passes = int(protocol["vote_passes"]) if protocol["vote"] else 0
    if protocol["vote"] and vote_passes < 1:
        raise ConfigError(f"finetune.vote_passes must be >= 1 with finetune.vote=true, got {protocol['vote_passes']}")
    device = resolve_device(cfg.device)
    data = call_target(cfg.data, "data")
    encoder, encoder_config, init = initial_encoder(cfg.checkpoint, cfg.encoder, cls_token=protocol["cls_token"],
                                                    seed=cfg.seed)
    model = build_classifier(encoder, len(data.class_names), protocol)
    train_set = ObjectDataset(data.cache.points, data.cache.labels, num_points=data.num_points, augment=True,
                              seed=cfg.seed, indices=data.fit, class_names=data.class_names)
    # Checkpoints carry the encoder actually built, so load_encoder(out_dir) gives the fine-tuned encoder.
    run_config = {**to_plain(cfg), "encoder": encoder_config}
    state = check_run(run_config)
    check_sample(encoder, train_set[0])
    trainer = Trainer(model, classifier_dataset(model, train_set), trainer_config(cfg), cfg.out_dir,
                      run_config=run_config)
    out = start_run(run_config, state, step=trainer.step)  # only once every input has been validated
    fit = trainer.fit()

    metrics: dict[str, Any] = {"init": init}
    for split, indices in (("val", data.val), ("test", data.test)):
        if len(indices):
            metrics.update(evaluate_split(model, data, indices, split, batch_size=int(protocol["eval_batch_size"]),
                                          device=device, vote_passes=vote_passes, seed=cfg.seed))
    metrics.update(train_final_loss=fit["final_loss"], steps=fit["steps"], wall_s=time.perf_counter() - started)
    finish_run(out, metrics)
    line = f"finetune ({init}, {metrics['steps']} steps): "
    for split in ("val", "test"):
        if f"{split}_accuracy" in metrics:
            line += f"{split} accuracy {metrics[f'{split}_accuracy']:.4f} " \
                    f"(mean class {metrics[f'{split}_mean_class_accuracy']:.4f}"
            if vote_passes:
                line += f", vote {metrics[f'{split}_accuracy_vote']:.4f}"
            line += "); "
    report(line.rstrip("; ") + f" → {out}")
    return metrics
