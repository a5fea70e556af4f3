"""Data layer: readers, transforms, the prepared object cache, datasets, synthetic shapes, 3DGS ``.ply``.

See DEVELOPERS.md ("Data contract") for the formats. The torch-based datasets
(``ObjectDataset``, ``stratified_split``) are imported lazily, so readers and
``data_prep`` start without importing torch.
"""

from typing import Any

from pc3d.data.gaussians import GaussianCloud, read_gaussian_ply, write_gaussian_ply
from pc3d.data.io import (
    SUPPORTED_SUFFIXES,
    PointCloud,
    read_npy,
    read_npz,
    read_off,
    read_pcd,
    read_ply,
    read_points,
    read_txt,
    sample_mesh_surface,
)
from pc3d.data.prepared import ObjectCache, load_object_cache, read_manifest, write_object_cache
from pc3d.data.synthetic_shapes import (
    SYNTHETIC_CLASSES,
    generate_synthetic_shapes,
    prepare_synthetic_shapes,
)
from pc3d.data.transforms import normalize_unit_sphere, random_subsample, scale_and_translate

__all__ = [
    "SUPPORTED_SUFFIXES",
    "PointCloud",
    "read_points",
    "read_pcd",
    "read_ply",
    "read_off",
    "read_npy",
    "read_npz",
    "read_txt",
    "sample_mesh_surface",
    "GaussianCloud",
    "read_gaussian_ply",
    "write_gaussian_ply",
    "normalize_unit_sphere",
    "random_subsample",
    "scale_and_translate",
    "ObjectCache",
    "write_object_cache",
    "load_object_cache",
    "read_manifest",
    "stratified_split",
    "ObjectDataset",
    "SYNTHETIC_CLASSES",
    "generate_synthetic_shapes",
    "prepare_synthetic_shapes",
]

_LAZY = {"ObjectDataset": "pc3d.data.object_dataset", "stratified_split": "pc3d.data.object_dataset"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
