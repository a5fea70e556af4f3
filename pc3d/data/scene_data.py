"""The ``data=scannet`` / ``data=s3dis`` nodes: one folder of scans for scene pretraining, the scene probe and
(ScanNet) detection.

``root`` is a prepared scene folder (``pc3d prep scannet|s3dis``) or, for ScanNet, a folder in the
preprocessed numpy layout (``<scene>_vert_all.npy`` + labels + ``_bbox.npy``). Segmentation scans come
from the folder's splits (``splits.json``, which the user may edit; the numpy layout uses the
default rule: the last scene is val). Detection keeps its own scene lists (``train``/``val``).

Scans of a prepared folder are read lazily: :meth:`SceneData.scenes` gives one :class:`StoredScene`
per scan, which reads its folder when its arrays are used and keeps only the last scan read (per
process, so each DataLoader worker holds one). A split of 1,500 ScanNet scans costs the memory of a
few scans, not of all of them. The numpy layout is converted in memory (normals are estimated on load):
prepare it first for more than a handful of scans.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pc3d.data.detection_data import DetectionData, DetectionDataset, scannet_data
from pc3d.data.scene_dataset import SceneViewDataset
from pc3d.data.scenes import (SCANNET20_CLASSES, Scene, load_scenes, read_scene, read_scene_manifest, read_scene_splits,
                              scene_class_names)
from pc3d.errors import ConfigError, DataFormatError

__all__ = ["SceneData", "StoredScene", "s3dis_scenes", "scannet_scenes", "stored_scenes"]

_LAST: dict[Path, Scene] = {}


class StoredScene:
    """One scan of a prepared scene folder, read from disk when its arrays are used.

    Has the :class:`~pc3d.data.scenes.Scene` attributes (``name``, ``points``, ``colors``, ``normals``,
    ``segment``, ``instance``, ``len()``): the first array asked for reads and validates the folder
    (:func:`~pc3d.data.scenes.read_scene`), the others come from that read. The last scan read is kept per
    process; reading another releases it.
    """

    def __init__(self, folder: Path, num_points: int, num_classes: int) -> None:
        self.folder, self.name = Path(folder), Path(folder).name
        self.num_points, self.num_classes = int(num_points), int(num_classes)

    def __len__(self) -> int:
        return self.num_points

    def __repr__(self) -> str:
        return f"StoredScene({str(self.folder)!r}, {self.num_points} points)"

    def load(self) -> Scene:
        """The whole scan (read now unless it is the last one read in this process)."""
        scene = _LAST.get(self.folder)
        if scene is None:
            scene = read_scene(self.folder, self.num_classes)
            if len(scene) != self.num_points:
                raise DataFormatError(f"{self.folder / 'points.npy'}: {len(scene)} points, its manifest.json says "
                                      f"{self.num_points}")
            _LAST.clear()
            _LAST[self.folder] = scene
        return scene

    points = property(lambda self: self.load().points, doc="``(N, 3)`` float32")
    colors = property(lambda self: self.load().colors, doc="``(N, 3)`` float32 in [0, 1]")
    normals = property(lambda self: self.load().normals, doc="``(N, 3)`` float32")
    segment = property(lambda self: self.load().segment, doc="``(N,)`` int64")
    instance = property(lambda self: self.load().instance, doc="``(N,)`` int64")


def stored_scenes(root: str | os.PathLike, split: str) -> list[StoredScene]:
    """The scans of ``split`` of the prepared folder ``root``, unread (:class:`StoredScene`); only ``manifest.json``
    and ``splits.json`` are read here."""
    root = Path(root)
    manifest = read_scene_manifest(root)
    splits = read_scene_splits(root)
    if split not in splits:
        raise ConfigError(f"split {split!r} not in {root / 'splits.json'} (available: {', '.join(splits)})")
    num_classes = len(manifest["class_names"])
    return [StoredScene(root / name, manifest["scenes"][name]["points"], num_classes) for name in splits[split]]


@dataclass
class SceneData:
    """Scans of one folder, by split.

    Attributes:
        root: the folder.
        pretrain_splits: splits whose scans self-supervised pretraining uses (labels unused).
        probe_train, probe_val: splits the scene probe trains and reports on.
        crop_points, repeats, elastic: MSM view sampling (see :class:`SceneViewDataset`).
        detection_train, detection_val, num_points: scene lists for ``pc3d detect`` (val
            ``None`` = the train scenes, a fitting check).
        seed: sample order/augmentation seed.
    """

    root: Path
    pretrain_splits: list[str]
    probe_train: str = "train"
    probe_val: str = "val"
    crop_points: int = 102400
    repeats: int = 1
    elastic: list[list[float]] = field(default_factory=lambda: [[0.2, 0.4], [0.8, 1.6]])
    detection_train: list[str] | None = None
    detection_val: list[str] | None = None
    num_points: int = 40000
    seed: int = 0
    dataset: str = "scannet"

    def __post_init__(self) -> None:
        self._scenes: dict[str, list[Scene]] = {}

    @property
    def class_names(self) -> list[str]:
        return scene_class_names(self.root)

    def scenes(self, split: str) -> list[Scene] | list[StoredScene]:
        """The scans of ``split``: :class:`StoredScene` (read when used) for a prepared folder, scenes converted
        once in memory for the numpy layout."""
        if split not in self._scenes:
            if (self.root / "manifest.json").is_file():
                self._scenes[split] = stored_scenes(self.root, split)
            else:
                self._scenes[split] = load_scenes(self.root, split)
        return self._scenes[split]

    def view_dataset(self, voxel_size: float, input_features: Sequence[str] = ("color", "normal"),
                     augment: bool = True) -> SceneViewDataset:
        """MSM's paired views of every scan of ``pretrain_splits``, voxels holding ``input_features``."""
        names, scans = set(), []
        for split in self.pretrain_splits:
            for scene in self.scenes(split):
                if scene.name not in names:
                    names.add(scene.name)
                    scans.append(scene)
        return SceneViewDataset(scans, voxel_size=voxel_size, crop_points=self.crop_points, repeats=self.repeats,
                                augment=augment, seed=self.seed, elastic=self.elastic, input_features=input_features)

    def detection(self) -> DetectionData:
        """The same folder as a ScanNet detection dataset (18 classes, axis-aligned boxes)."""
        if self.dataset != "scannet":
            raise ConfigError(f"data.root={self.root} holds {self.dataset} scans; detection reads ScanNet (data=scannet)")
        if not self.detection_train:
            raise ConfigError("data.detection_train: name the ScanNet scenes to train the detector on")
        return scannet_data(self.root, self.detection_train, self.detection_val, num_points=self.num_points,
                            seed=self.seed)

    def pretrain_dataset(self, augment: bool = True) -> DetectionDataset:
        """Scene points for point methods (``method=point_mae data=scannet``): the detection scenes."""
        return self.detection().pretrain_dataset(augment=augment)


def _prepared_benchmark(path: Path) -> tuple[str, str]:
    """``(dataset, benchmark)`` of the folder at ``path``: from its manifest, or ScanNet-20 for the numpy layout."""
    if not (path / "manifest.json").is_file():
        return "scannet", "scannet20"
    manifest = read_scene_manifest(path)
    dataset = str(manifest.get("dataset", "scannet"))
    params = manifest.get("params") if isinstance(manifest.get("params"), dict) else {}
    if dataset != "scannet":
        return dataset, dataset
    benchmark = str(params.get("benchmark", "scannet20"))
    if benchmark == "scannet20" and list(manifest["class_names"]) != list(SCANNET20_CLASSES):
        benchmark = f"{len(manifest['class_names'])} classes"
    return dataset, benchmark


def scannet_scenes(root: str | os.PathLike, pretrain_splits: Sequence[str] = ("train",), probe_train: str = "train",
                   probe_val: str = "val", crop_points: int = 102400, repeats: int = 1,
                   elastic: Sequence[Sequence[float]] = ((0.2, 0.4), (0.8, 1.6)),
                   train: Sequence[str] | None = None, val: Sequence[str] | None = None,
                   num_points: int = 40000, seed: int = 0, benchmark: str = "scannet20") -> SceneData:
    """``configs/data/scannet.yaml``: a ScanNet folder (prepared or numpy layout); ``benchmark`` (``scannet20`` |
    ``scannet200``) must be the one the folder was prepared for."""
    path = Path(root)
    if not path.is_dir():
        raise DataFormatError(f"data.root={root}: directory not found")
    dataset, found = _prepared_benchmark(path)
    if dataset != "scannet":
        raise ConfigError(f"data.root={root} holds {dataset} scans; use data={dataset}")
    if found != benchmark:
        raise ConfigError(f"data.benchmark={benchmark} but data.root={root} was prepared for {found} "
                          f"(pc3d prep scannet benchmark={benchmark} src=... dst=...)")
    if isinstance(pretrain_splits, str):
        pretrain_splits = [pretrain_splits]
    if not pretrain_splits:
        raise ConfigError("data.pretrain_splits is empty")
    return SceneData(path, list(pretrain_splits), probe_train, probe_val, int(crop_points), int(repeats),
                     [list(map(float, pair)) for pair in elastic],
                     None if train is None else list(train), None if val is None else list(val),
                     int(num_points), int(seed))


def s3dis_scenes(root: str | os.PathLike, pretrain_splits: Sequence[str] = ("train",), probe_train: str = "train",
                 probe_val: str = "val", val_area: int = 5, crop_points: int = 102400, repeats: int = 1,
                 elastic: Sequence[Sequence[float]] = ((0.2, 0.4), (0.8, 1.6)), seed: int = 0) -> SceneData:
    """``configs/data/s3dis.yaml``: a prepared S3DIS folder (``pc3d prep s3dis``) under the Area-5 protocol: the
    probe's ``probe_val`` split is exactly the rooms of ``Area_<val_area>``, and no split that pretraining or the
    probe trains on holds one of them (checked against ``splits.json``)."""
    path = Path(root)
    if not (path / "manifest.json").is_file():
        raise DataFormatError(f"data.root={root}: not a prepared S3DIS folder (pc3d prep s3dis src=... dst=...)")
    manifest = read_scene_manifest(path)
    if manifest.get("dataset") != "s3dis":
        raise ConfigError(f"data.root={root} holds {manifest.get('dataset')} scans, data=s3dis needs pc3d prep s3dis")
    if isinstance(pretrain_splits, str):
        pretrain_splits = [pretrain_splits]
    if not pretrain_splits:
        raise ConfigError("data.pretrain_splits is empty")
    splits, held_out = read_scene_splits(path), f"Area_{val_area}_"
    area = sorted(name for name in manifest["scenes"] if name.startswith(held_out))
    for split in (probe_val, probe_train, *pretrain_splits):
        if split not in splits:
            raise ConfigError(f"split {split!r} not in {path / 'splits.json'} (available: {', '.join(splits)})")
    if sorted(splits[probe_val]) != area or not area:
        raise ConfigError(f"{path / 'splits.json'}: split {probe_val!r} must be exactly the {len(area)} rooms of "
                          f"Area_{val_area} (the S3DIS Area-{val_area} protocol; pc3d prep s3dis val_area={val_area} "
                          "force=true resets it)")
    leaked = sorted({n for split in (probe_train, *pretrain_splits) for n in splits[split] if n.startswith(held_out)})
    if leaked:
        raise ConfigError(f"{path / 'splits.json'}: {leaked[0]} of the held-out Area_{val_area} is in a training split")
    return SceneData(path, list(pretrain_splits), probe_train, probe_val, int(crop_points), int(repeats),
                     [list(map(float, pair)) for pair in elastic], None, None, seed=int(seed), dataset="s3dis")
