"""Data layer: readers, transforms, the prepared object cache, datasets, synthetic shapes, posed images,
3DGS ``.ply``.

See DEVELOPERS.md ("Data contract") for the formats. The torch-based datasets
(``ObjectDataset``, ``stratified_split``) and the posed-image readers
(``pc3d.data.cameras``: ``Camera``, ``PosedImages``, ``read_posed_images``, ...) are imported
lazily, so readers and ``data_prep`` start without importing torch or Pillow.
"""

from typing import Any

from pc3d.data.io import (
    SUPPORTED_SUFFIXES,
    PointCloud,
    read_npy,
    read_npz,
    read_numpy_pickle,
    read_off,
    read_pcd,
    read_ply,
    read_points,
    read_txt,
    sample_mesh_surface,
)
from pc3d.data.prepared import (LazyPoints, ObjectCache, load_object_cache, read_manifest, write_object_cache,
                                write_object_cache_streamed)
from pc3d.data.synthetic_shapes import (
    SYNTHETIC_CLASSES,
    generate_synthetic_shapes,
    prepare_synthetic_shapes,
)
from pc3d.data.transforms import normalize_unit_sphere, random_subsample, scale_and_translate

_CAMERA_NAMES = (
    "Camera",
    "PosedImages",
    "POSED_IMAGE_FORMATS",
    "camera_rays",
    "detect_posed_format",
    "read_posed_images",
    "read_blender",
    "read_instant_ngp",
    "read_llff",
    "read_colmap",
    "read_scannet_frames",
    "read_scannet_infos",
    "read_sunrgbd",
)

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
    "read_numpy_pickle",
    "sample_mesh_surface",
    "GaussianCloud",
    "read_gaussian_ply",
    "write_gaussian_ply",
    "normalize_unit_sphere",
    "random_subsample",
    "scale_and_translate",
    "LazyPoints",
    "ObjectCache",
    "write_object_cache",
    "write_object_cache_streamed",
    "load_object_cache",
    "read_manifest",
    "stratified_split",
    "ObjectDataset",
    "SYNTHETIC_CLASSES",
    "generate_synthetic_shapes",
    "prepare_synthetic_shapes",
    *_CAMERA_NAMES,
]

_LAZY = {"ObjectDataset": "pc3d.data.object_dataset", "stratified_split": "pc3d.data.object_dataset",
         **{name: "pc3d.data.gaussians" for name in ("GaussianCloud", "read_gaussian_ply", "write_gaussian_ply")},
         **{name: "pc3d.data.cameras" for name in _CAMERA_NAMES}}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
