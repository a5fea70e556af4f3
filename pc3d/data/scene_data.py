"""The ``data=scannet`` node: one ScanNet folder for scene pretraining, the scene probe and detection.

``root`` is a prepared scene folder (``pc3d prep scannet``) or a folder in the preprocessed
numpy layout (``<scene>_vert_all.npy`` + labels + ``_bbox.npy``). Segmentation scans come
from the folder's splits (``splits.json``, which the user may edit; the numpy layout uses the
default rule: the last scene is val). Detection keeps its own scene lists (``train``/``val``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pc3d.data.detection_data import DetectionData, DetectionDataset, scannet_data
from pc3d.data.scene_dataset import SceneViewDataset
from pc3d.data.scenes import Scene, load_scenes, scene_class_names
from pc3d.errors import ConfigError, DataFormatError


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

    def __post_init__(self) -> None:
        self._scenes: dict[str, list[Scene]] = {}

    @property
    def class_names(self) -> list[str]:
        return scene_class_names(self.root)

    def scenes(self, split: str) -> list[Scene]:
        """The scans of ``split`` (read once)."""
        if split not in self._scenes:
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
        if not self.detection_train:
            raise ConfigError("data.detection_train: name the ScanNet scenes to train the detector on")
        return scannet_data(self.root, self.detection_train, self.detection_val, num_points=self.num_points,
                            seed=self.seed)

    def pretrain_dataset(self, augment: bool = True) -> DetectionDataset:
        """Scene points for point methods (``method=point_mae data=scannet``): the detection scenes."""
        return self.detection().pretrain_dataset(augment=augment)


def scannet_scenes(root: str | os.PathLike, pretrain_splits: Sequence[str] = ("train",), probe_train: str = "train",
                   probe_val: str = "val", crop_points: int = 102400, repeats: int = 1,
                   elastic: Sequence[Sequence[float]] = ((0.2, 0.4), (0.8, 1.6)),
                   train: Sequence[str] | None = None, val: Sequence[str] | None = None,
                   num_points: int = 40000, seed: int = 0) -> SceneData:
    """``configs/data/scannet.yaml``: a ScanNet folder (prepared or numpy layout)."""
    path = Path(root)
    if not path.is_dir():
        raise DataFormatError(f"data.root={root}: directory not found")
    if isinstance(pretrain_splits, str):
        pretrain_splits = [pretrain_splits]
    if not pretrain_splits:
        raise ConfigError("data.pretrain_splits is empty")
    return SceneData(path, list(pretrain_splits), probe_train, probe_val, int(crop_points), int(repeats),
                     [list(map(float, pair)) for pair in elastic],
                     None if train is None else list(train), None if val is None else list(val),
                     int(num_points), int(seed))
