"""The contracts: a new encoder kind plugs into every evaluator through its spec alone; methods declare
their hooks; runs share one skeleton; the layers import downwards only."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pc3d.data.detection_data import synthetic_rooms_data
from pc3d.data.features import INPUT_FEATURES
from pc3d.data.object_data import synthetic_shapes_data
from pc3d.data.scenes import load_scenes
from pc3d.encoders.base import Encoder, EncoderOutput, EncoderSpec, FeatureLevel, max_mean_pool
from pc3d.ops.dense_grid import DenseGrid

REPO = Path(__file__).resolve().parents[1]


class TinyGridEncoder(Encoder):
    """Two Conv3d levels on dense grids of colour + occupancy cells: the dense-grid case of the contract."""

    def __init__(self, width: int = 16, cell_size: float = 0.1, input_features: tuple[str, ...] = ("rgb", "alpha")):
        super().__init__()
        self.width, self.cell_size, self.input_features = width, cell_size, tuple(input_features)
        self.stem = nn.Conv3d(sum(INPUT_FEATURES[f] for f in input_features), width, 3, padding=1)
        self.down = nn.Conv3d(width, 2 * width, 2, stride=2)
        self.mix = nn.Conv3d(2 * width, 2 * width, 3, padding=1)

    @property
    def spec(self) -> EncoderSpec:
        return EncoderSpec("grid", (self.width, 2 * self.width), (self.cell_size, 2 * self.cell_size),
                           4 * self.width, self.input_features, self.cell_size)

    def forward(self, grid: DenseGrid) -> EncoderOutput:
        grid = grid.pad_to(2)
        fine = F.relu(self.stem(grid.values))
        coarse = F.relu(self.mix(F.relu(self.down(fine))))
        coarse_valid = F.max_pool3d(grid.valid[:, None].float(), 2)[:, 0] > 0
        levels = [FeatureLevel.from_dense(fine, grid.valid, self.cell_size, grid.origin),
                  FeatureLevel.from_dense(coarse, coarse_valid, 2 * self.cell_size, grid.origin)]
        return EncoderOutput(levels, max_mean_pool(levels[-1].features, levels[-1].valid))


def _grid_encoder(cell_size: float, width: int = 16) -> TinyGridEncoder:
    torch.manual_seed(0)
    return TinyGridEncoder(width=width, cell_size=cell_size)


# ------------------------------------------------------------- every evaluator, no branch for it
def test_dense_grid_encoder_trains_the_detection_head(tmp_path):
    from pc3d.eval.detect import build_detector, detect_scenes, detection_dataset, score
    from pc3d.train import Trainer, TrainerConfig

    data = synthetic_rooms_data(train_scenes=4, val_scenes=2, num_points=4096)
    detector = build_detector(_grid_encoder(0.25), data, {"level": -1, "num_heading_bins": 12, "hidden_dim": 32,
                                                          "focal_gamma": 2.0, "focal_alpha": 0.25})
    assert detector.head.shared[0].in_features == 32  # sized from the spec's level width
    config = TrainerConfig(max_steps=60, batch_size=2, lr=3e-3, warmup_steps=2, checkpoint_every=100, device="cpu")
    Trainer(detector, detection_dataset(detector, data, "train", augment=False, seed=0), config, tmp_path).fit()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "losses.jsonl").read_text().splitlines()]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    detections = detect_scenes(detector, data, {"score_threshold": 0.05, "nms_iou": 0.25, "max_boxes": 64}, 0,
                               torch.device("cpu"))
    assert len(detections) == 2 and all(d.boxes.shape[1] == 7 for d in detections)
    for found, room in zip(detections, data.val):  # boxes come out in the scene frame
        if len(found.boxes):
            assert (found.boxes[:, :2].mean(0) - torch.from_numpy(room.points[:, :2].mean(0))).abs().max() < 3.0
    metrics = score(data, detections)
    assert 0.0 <= metrics["mAP25"] <= 1.0


def test_dense_grid_encoder_runs_the_scene_probe(shared_data):
    from pc3d.eval.scene_probe import run_scene_probe, scene_point_features

    root = shared_data / "scannet"
    train, val = load_scenes(root, "train"), load_scenes(root, "val")
    encoder = _grid_encoder(0.1)
    features = scene_point_features(encoder, val[0])
    assert features.shape == (len(val[0]), 16 + 32) and torch.isfinite(features).all()
    # a point's fine feature is its own cell's: same cell → same trilinear neighbourhood weights differ,
    # but nearest sampling gives identical rows for points of one cell
    nearest = scene_point_features(encoder, val[0], interpolation="nearest")
    cells = np.floor((val[0].points - val[0].points.min(0)) / 0.1).astype(np.int64)
    _, first, inverse = np.unique(cells, axis=0, return_index=True, return_inverse=True)
    torch.testing.assert_close(nearest[:, :16], nearest[first[inverse.ravel()], :16])
    metrics = run_scene_probe(encoder, train, val, ["c%d" % i for i in range(20)], "linear", steps=100)
    assert 0.0 < metrics["miou"] <= 1.0 and metrics["feature_dim"] == 48
    assert {"effective_rank/level0", "effective_rank/level1"} <= set(metrics)


def test_dense_grid_encoder_runs_the_object_probe_and_fine_tuning(tmp_path):
    from pc3d.eval import ProbeSplits, extract_global_features, svm_probe
    from pc3d.eval.finetune import build_classifier, classifier_dataset, evaluate_split
    from pc3d.data.object_dataset import ObjectDataset
    from pc3d.train import Trainer, TrainerConfig

    data = synthetic_shapes_data(root=str(tmp_path / "shapes"), train_per_class=12, test_per_class=4, num_points=512)
    encoder = _grid_encoder(2 / 12, width=8)
    order = np.concatenate([data.fit, data.val])
    features = extract_global_features(encoder, data.points(order), batch_size=16)
    assert features.shape == (len(order), 32)
    fit, val = len(data.fit), len(order)
    splits = ProbeSplits(features[:fit], data.labels(data.fit), features[fit:val], data.labels(data.val))
    probe = svm_probe(splits, data.class_names, Cs=[1.0])
    assert probe["val_accuracy"] > 2.0 / len(data.class_names)  # random grid features beat chance

    model = build_classifier(encoder, len(data.class_names), {"hidden_dims": [32], "dropout": 0.0,
                                                              "label_smoothing": 0.0})
    train_set = ObjectDataset(data.cache.points, data.cache.labels, num_points=512, augment=True, seed=0,
                              indices=data.fit)
    config = TrainerConfig(max_steps=80, batch_size=16, lr=5e-3, warmup_steps=2, checkpoint_every=100, device="cpu")
    fit_metrics = Trainer(model, classifier_dataset(model, train_set), config, tmp_path / "ft").fit()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "ft" / "losses.jsonl").read_text().splitlines()]
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses
    metrics = evaluate_split(model, data, data.val, "val", batch_size=16)
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and np.isfinite(fit_metrics["final_loss"])


# ------------------------------------------------------------- encoder contract
def test_encoders_record_their_arguments_but_not_runtime_choices():
    from pc3d.encoders import PointViT, SparseUNet

    vit = PointViT(embed_dim=32, depth=1, num_heads=2, num_groups=8, group_size=8, feature_layers=(0,))
    assert vit.init_config["feature_layers"] == [0] and vit.init_config["embed_dim"] == 32
    assert vit.spec.level_channels == (32, 32) and vit.spec.global_channels == 64 and vit.spec.input == "points"
    unet = SparseUNet(channels=(8, 16, 16, 16, 16), dec_channels=(16, 16, 16, 8), blocks=(1,) * 5,
                      dec_blocks=(1,) * 4, head_dim=8, backend="torch")
    assert "backend" not in unet.init_config and unet.init_config["channels"] == [8, 16, 16, 16, 16]
    assert unet.spec.level_channels == (8, 16, 16, 16, 16)
    assert unet.spec.level_strides == pytest.approx((0.02, 0.04, 0.08, 0.16, 0.32))
    assert unet.spec.in_channels == 6 and unet.spec.input_features == ("color", "normal")
    assert TinyGridEncoder().init_config == {"width": 16, "cell_size": 0.1, "input_features": ["rgb", "alpha"]}
    with pytest.raises(ValueError, match="input_features"):
        SparseUNet(in_channels=4)


def test_spconv_run_encoder_loads_and_runs_where_spconv_is_absent(tmp_path, monkeypatch):
    """A run with encoder.backend=spconv stored the choice in its config (as pc3d did before); a machine
    without spconv loads the same architecture and runs it on the torch path."""
    from pc3d.encoders import SparseUNet
    from pc3d.hub import load_encoder, save_encoder
    from pc3d.ops import backends
    from pc3d.ops.sparse_conv import SparseVoxels
    from pc3d.train.checkpoint import save_checkpoint

    config = {"_target_": "pc3d.encoders.SparseUNet", "channels": [8, 16, 16, 16, 16],
              "dec_channels": [16, 16, 16, 8], "blocks": [1] * 5, "dec_blocks": [1] * 4, "stem_kernel": 3,
              "voxel_size": 0.1, "window_size": 32, "head_dim": 8, "backend": "spconv"}
    torch.manual_seed(0)
    encoder = SparseUNet(**{k: v for k, v in config.items() if k not in ("_target_", "backend")})
    save_checkpoint(tmp_path / "run", 1, {"model": {f"encoder.{k}": v for k, v in encoder.state_dict().items()},
                                          "config": {"encoder": config}})
    save_encoder(encoder, tmp_path / "enc.safetensors", config)
    monkeypatch.setattr(backends, "is_installed", lambda name: name == "torch")
    coords = torch.tensor([[0, x, y, z] for x in range(4) for y in range(4) for z in range(2)], dtype=torch.int32)
    voxels = SparseVoxels(torch.randn(len(coords), 6), coords, 1)
    expected = encoder.eval()(voxels).global_feature
    for source in (tmp_path / "run", tmp_path / "enc.safetensors"):
        loaded, stored = load_encoder(source)
        assert "backend" not in stored and loaded.backend == "auto"
        torch.testing.assert_close(loaded(voxels).global_feature, expected)
    spconv_only = SparseUNet(**{k: v for k, v in config.items() if k != "_target_"})
    from pc3d.errors import ConfigError

    with pytest.raises(ConfigError, match="spconv is not installed"):  # asking for it explicitly still fails
        spconv_only(voxels)


def test_feature_level_dense_round_trip_and_cells():
    features = torch.randn(2, 5, 3, 4, 2)
    valid = torch.rand(2, 3, 4, 2) > 0.3
    origin = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    level = FeatureLevel.from_dense(features, valid, 0.5, origin)
    assert level.grid_shape == (3, 4, 2) and level.features.shape == (2, 24, 5)
    dense, dense_valid = level.to_dense()
    assert torch.equal(dense, features) and torch.equal(dense_valid, valid)
    # the token of cell (i, j, k) sits at origin + (index + 0.5) * stride and maps back to its cell
    torch.testing.assert_close(level.coords[0, 2 * 4 * 2 + 1 * 2 + 1], origin[0] + torch.tensor([2.5, 1.5, 1.5]) * 0.5)
    cells = level.cell_index(level.coords.reshape(-1, 3), torch.arange(2).repeat_interleave(24))
    index = torch.stack(torch.meshgrid(*[torch.arange(n) for n in (3, 4, 2)], indexing="ij"), -1).reshape(-1, 3)
    assert torch.equal(cells, index.repeat(2, 1))
    with pytest.raises(ValueError, match="grid shape"):
        FeatureLevel(features=torch.zeros(1, 2, 3), coords=torch.zeros(1, 2, 3)).to_dense()


def test_input_adapter_builds_each_declared_input():
    from pc3d.encoders import PointViT, SparseUNet
    from pc3d.encoders.inputs import encoder_input
    from pc3d.ops.sparse_conv import SparseVoxels

    rng = np.random.default_rng(0)
    samples = [{"points": torch.from_numpy(rng.uniform(0, 1, (300, 3)).astype(np.float32) + shift),
                "colors": torch.full((300, 3), 0.75)} for shift in (0.0, 5.0)]
    points = encoder_input(PointViT(embed_dim=32, depth=1, num_heads=2).spec, samples)
    assert points.shape == (2, 300, 3)
    unet = SparseUNet(channels=(8, 16, 16, 16, 16), dec_channels=(16, 16, 16, 8), blocks=(1,) * 5,
                      dec_blocks=(1,) * 4, head_dim=8, voxel_size=0.25)
    voxels = encoder_input(unet.spec, samples)
    assert isinstance(voxels, SparseVoxels) and voxels.batch_size == 2
    torch.testing.assert_close(voxels.origin, torch.stack([s["points"].amin(0) for s in samples]))
    torch.testing.assert_close(voxels.features[:, :3], torch.full((len(voxels), 3), 0.5))  # 0.75 → [-1, 1]
    # normals: the data has none, so PCA normals of the points, averaged per voxel
    from pc3d.ops.normals import estimate_normals
    from pc3d.ops.voxelize import voxel_mean, voxelize

    first = samples[0]["points"]
    cells, inverse = voxelize(first, 0.25)
    expected = voxel_mean(torch.from_numpy(estimate_normals(first.numpy())).float(), inverse, len(cells))
    torch.testing.assert_close(voxels.features[voxels.coords[:, 0] == 0, 3:], expected)
    grid = encoder_input(TinyGridEncoder(cell_size=0.25).spec, samples)
    assert isinstance(grid, DenseGrid) and grid.values.shape == (2, 4, 4, 4, 4)
    occupied = grid.values[:, 3] > 0
    torch.testing.assert_close(grid.values[:, :3].permute(0, 2, 3, 4, 1)[occupied], torch.full((int(occupied.sum()), 3), 0.75))


# ------------------------------------------------------------- method / training contract
def test_declared_no_decay_names_and_per_group_learning_rates(tmp_path):
    from pc3d.encoders import PointViT
    from pc3d.methods import PointMAE
    from pc3d.train import TrainableModel, Trainer, TrainerConfig
    from pc3d.train.model import param_groups

    model = PointMAE(PointViT(embed_dim=32, depth=1, num_heads=2, num_groups=8, group_size=8, cls_token=True),
                     decoder_depth=1, decoder_num_heads=2)
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model, 0.05)
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert {"mask_token", "encoder.cls_token", "encoder.cls_pos"} <= undecayed
    assert "encoder.blocks.blocks.0.attn.qkv.weight" in {names[id(p)] for p in decay["params"]}

    class TwoSpeeds(TrainableModel):
        def __init__(self):
            super().__init__()
            self.slow, self.fast = nn.Linear(2, 1), nn.Linear(2, 1)

        def param_groups(self, weight_decay):
            return [{"params": list(self.slow.parameters()), "lr_scale": 0.1, "weight_decay": 0.0},
                    {"params": list(self.fast.parameters()), "lr_scale": 1.0, "weight_decay": 0.0}]

        def forward(self, batch):
            return {"loss": (self.slow(batch["x"]) + self.fast(batch["x"])).square().mean()}

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"x": torch.ones(2) * i}

    trainer = Trainer(TwoSpeeds(), Data(), TrainerConfig(max_steps=3, batch_size=4, lr=1e-2, warmup_steps=0,
                                                         device="cpu"), tmp_path)
    slow, fast = trainer.optimizer.param_groups
    assert slow["lr"] == pytest.approx(0.1 * fast["lr"]) and fast["lr"] == pytest.approx(1e-2)
    trainer.fit()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * trainer.optimizer.param_groups[1]["lr"])


def test_trainer_moves_nested_batches_and_calls_declared_hooks(tmp_path):
    from dataclasses import dataclass

    from pc3d.data.base import SampleDataset
    from pc3d.train import TrainableModel, Trainer, TrainerConfig

    @dataclass
    class Camera:
        matrix: torch.Tensor
        name: str

    seen, steps, artifacts = [], [], []

    class Model(TrainableModel):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, batch):
            seen.append(batch)
            return {"loss": (self.w * batch["nested"]["values"][0].sum() + batch["camera"].matrix.sum()).square()}

        def on_optimizer_step(self, step, total_steps):
            steps.append((step, total_steps))

        def log_artifacts(self, step, out_dir, writer):
            artifacts.append((step, out_dir.name, writer is not None))

    class Data(SampleDataset):
        epochs: list[int] = []

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"x": torch.tensor(float(i))}

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def collate(self, samples):
            return {"nested": {"values": [torch.stack([s["x"] for s in samples])]}, "camera": Camera(torch.eye(2), "c"),
                    "count": len(samples), "name": "scene"}

    config = TrainerConfig(max_steps=4, batch_size=2, lr=1e-3, warmup_steps=0, device="cpu", artifact_every=2)
    Trainer(Model(), Data(), config, tmp_path).fit()
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)] and artifacts == [(2, "artifacts", True), (4, "artifacts", True)]
    assert Data.epochs == [0, 1] and seen[0]["count"] == 2 and seen[0]["name"] == "scene"
    assert seen[0]["camera"].name == "c" and seen[0]["sample_seed"].dtype == torch.int64


def test_move_to_walks_containers_and_leaves_other_values():
    from pc3d.ops.sparse_conv import SparseVoxels
    from pc3d.utils.device import move_to

    voxels = SparseVoxels(torch.ones(2, 3), torch.zeros(2, 4, dtype=torch.int32) + torch.tensor([0, 0, 0, 1]) *
                          torch.arange(2)[:, None], 1, origin=torch.zeros(1, 3))
    batch = {"a": [torch.ones(1), (torch.zeros(2), 3)], "v": voxels, "seed": torch.arange(2), "s": "x"}
    moved = move_to(batch, "meta", keep_on_cpu=("seed",))
    assert moved["a"][0].device.type == "meta" and moved["a"][1][0].device.type == "meta" and moved["a"][1][1] == 3
    assert moved["v"].features.device.type == "meta" and moved["v"].origin.device.type == "meta"
    assert moved["seed"].device.type == "cpu" and moved["s"] == "x"


# ------------------------------------------------------------- layers
def _imports(path: Path) -> list[str]:
    """Modules ``path`` imports at module level (not inside functions)."""
    tree = ast.parse(path.read_text())
    found = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_nothing_in_the_package_imports_the_cli_or_data_prep():
    offenders = []
    for path in sorted((REPO / "pc3d").rglob("*.py")):
        if path.name == "cli.py":
            continue
        text = path.read_text()
        names = {n.module for n in ast.walk(ast.parse(text)) if isinstance(n, ast.ImportFrom) and n.module}
        names |= {a.name for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Import) for a in n.names}
        if any(n == "pc3d.cli" or n.startswith("data_prep") for n in names):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def test_module_level_imports_have_no_cycle():
    """Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, so an import edge also reaches the
    packages above its target — except those the importer lives in (already being initialised)."""
    modules = {_module_name(p): p for p in (REPO / "pc3d").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for target in _imports(path):
            if target in modules:
                edges |= {target, *(a for a in _ancestors(target) if a not in _ancestors(name))}
        graph[name] = edges - {name}
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph[node]):
            assert nxt not in trail, "import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt])
            if nxt not in done:
                visit(nxt, trail + [nxt])
        done.add(node)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
