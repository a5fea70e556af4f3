"""Scenes with views: points, the scene's 3D Gaussians and posed RGB(-D) images of it (Gaussian2Scene's data).

A :class:`ViewedScene` is one scene as Gaussian2Scene pretrains on it: ``points (N, 3)`` with
``colors (N, 3)`` in [0, 1], the scene's 3D Gaussians (:class:`~pc3d.data.gaussians.GaussianCloud`,
whose centres supervise the predicted Gaussians) and :class:`SceneViews` — ``V`` posed RGB images
with their expected depth, in the rasterizer's camera conventions (``viewmats (V, 4, 4)``
world-to-camera, OpenCV axes; ``Ks (V, 3, 3)``).

The embedded default (``data=room_views``, no download) is the synthetic rooms of
:mod:`pc3d.data.synthetic_rooms`, coloured, turned into Gaussians and rendered:

* **Gaussians from points** (:func:`gaussians_from_points`): one isotropic Gaussian per surface
  point, its standard deviation the mean distance to its 3 nearest neighbours times
  ``scale_factor`` (3DGS's initialisation rule), opacity 0.95, the point's colour as SH degree 0.
  The views are rendered *from* these Gaussians, so for the embedded rooms they are the exact
  3DGS fit of the views (no fitting error); scanned scenes get theirs from ``pc3d prep gaussians``.
* **Cameras** (:func:`room_cameras`): inside the room's footprint (15 % margin), 1.2-1.8 m high,
  each looking at a random point 0.3-0.9 m above the floor at least 1.5 m away; pinhole with a
  horizontal field of view ``fov`` degrees, square pixels, the principal point at the centre.
* **Views** (:func:`render_views`): :func:`~pc3d.ops.rasterize.rasterize_gaussians` on a black
  background (rooms have no ceiling; it shows as black).

Scanned scenes (``data=scan_views``, :func:`scan_views_data`) keep their real photographs:

* **Points**: the scan (ScanNet ``<scene>_vert_all.npy``, SUN RGB-D ``lidar/<id>.npz``), in the frame
  of the posed frames (ScanNet's axis-aligned scan, SUN RGB-D's upright depth frame).
* **Views** (:func:`posed_views`): every posed image of the scene, resized to ``width x height`` with
  an antialiased bilinear filter; ``Ks`` scaled per axis by the size ratio (exact in corner-origin
  pixel coordinates, so two captures of different sizes and aspect share one tensor shape).
* **Gaussians**: a prepared folder (``pc3d prep gaussians``, matched by scene name) when given, else
  :func:`gaussians_from_points` of the scan, 3DGS's initialisation. With one to three frames per scene
  a photometric fit is under-constrained, so the default keeps the scan's own geometry.
* **Depth**: rendered from those Gaussians into every view, so a point's visibility (stage 1's
  patch-to-view assignment) agrees with the points the encoder sees; the photographs themselves are
  never replaced.

:class:`ViewedSceneDataset` draws per sample (from ``(seed, epoch, index)``) ``num_points`` points,
``num_centers`` Gaussian centres and ``views_per_sample`` of the scene's views; with ``augment`` a
similarity ``x -> s Q x`` (yaw over the full circle, an x mirror with p = 0.5, scale in
``scale_range``) moves points, centres and cameras together. A camera moved with its scene keeps
every point's camera-space position up to the factor ``s``, so the stored images stay exact
(depth scales by ``s``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pc3d.data.base import SampleDataset
from pc3d.data.cameras import PosedImages, read_scannet_infos, read_sunrgbd
from pc3d.data.detection_scenes import read_scannet_scene, read_sunrgbd_frame
from pc3d.data.gaussians import GaussianCloud, read_gaussian_folder
from pc3d.data.synthetic_rooms import generate_room
from pc3d.data.transforms import random_subsample
from pc3d.errors import ConfigError, DataFormatError
from pc3d.ops.neighbors import knn
from pc3d.ops.rasterize import rasterize_gaussians, rgb_to_sh

__all__ = ["SceneViews", "ViewedScene", "ViewedSceneData", "ViewedSceneDataset", "gaussians_from_points",
           "look_at", "moved_cameras", "posed_views", "render_views", "room_cameras", "room_views", "room_views_data",
           "scan_views_data", "scanned_scene"]


@dataclass
class SceneViews:
    """``V`` posed views of a scene.

    Attributes:
        images: ``(V, H, W, 3)`` float32 RGB in [0, 1].
        depth: ``(V, H, W)`` float32 expected camera-space depth (0 where nothing was seen).
        viewmats: ``(V, 4, 4)`` float32 world-to-camera, OpenCV axes.
        Ks: ``(V, 3, 3)`` float32 pinhole intrinsics in pixels of ``images``.
    """

    images: np.ndarray
    depth: np.ndarray
    viewmats: np.ndarray
    Ks: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class ViewedScene:
    """One scene: ``points (N, 3)`` float32, ``colors (N, 3)`` float32 in [0, 1], its Gaussians and views."""

    name: str
    points: np.ndarray
    colors: np.ndarray
    gaussians: GaussianCloud
    views: SceneViews


def gaussians_from_points(points: np.ndarray, colors: np.ndarray, scale_factor: float = 1.0,
                          opacity: float = 0.95, scale: float | None = None) -> GaussianCloud:
    """One isotropic Gaussian per point (see the module docstring).

    Args:
        points: ``(N, 3)``, ``N >= 2``; colors: ``(N, 3)`` in [0, 1].
        scale_factor: standard deviation / mean distance to the 3 nearest neighbours.
        opacity: every Gaussian's opacity, in (0, 1).
        scale: one standard deviation for every Gaussian instead (no neighbour search).
    """
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) < 2:
        raise DataFormatError(f"gaussians_from_points: expected (N >= 2, 3) points, got {points.shape}")
    if np.shape(colors) != points.shape:
        raise DataFormatError(f"gaussians_from_points: colors {np.shape(colors)} do not match points {points.shape}")
    if not scale_factor > 0 or not 0 < opacity < 1:
        raise ConfigError(f"scale_factor must be > 0 and opacity in (0, 1), got {scale_factor}, {opacity}")
    if scale is not None:
        if not scale > 0:
            raise ConfigError(f"scale must be > 0, got {scale}")
        std = np.full(len(points), scale, np.float64)
    else:
        tensor = torch.from_numpy(points)[None]
        dist2, _ = knn(tensor, tensor, min(4, len(points)))  # a whole scan goes to the KD-tree (auto, CPU)
        std = dist2[0, :, 1:].mean(dim=-1).sqrt().clamp_min(1e-6).numpy() * scale_factor
    count = len(points)
    return GaussianCloud(
        means=points,
        quats=np.tile(np.array([1.0, 0.0, 0.0, 0.0], np.float32), (count, 1)),
        log_scales=np.repeat(np.log(std)[:, None], 3, axis=1).astype(np.float32),
        opacity_logits=np.full(count, math.log(opacity / (1 - opacity)), np.float32),
        sh=rgb_to_sh(np.asarray(colors, np.float32)).astype(np.float32))


def look_at(eye: np.ndarray, target: np.ndarray, up: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """``(4, 4)`` world-to-camera (OpenCV axes) of a camera at ``eye (3,)`` looking at ``target (3,)``."""
    forward = np.asarray(target, np.float64) - np.asarray(eye, np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up, np.float64))
    if np.linalg.norm(right) < 1e-8:
        raise ValueError("look_at: the view direction is parallel to up")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])
    viewmat = np.eye(4)
    viewmat[:3, :3] = rotation
    viewmat[:3, 3] = -rotation @ np.asarray(eye, np.float64)
    return viewmat


def room_cameras(points: np.ndarray, count: int, width: int, height: int, fov: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` cameras inside a room (see the module docstring): ``viewmats (V, 4, 4)``, ``Ks (V, 3, 3)``."""
    lo, hi = points[:, :2].min(0), points[:, :2].max(0)
    margin = 0.15 * (hi - lo)
    focal = 0.5 * width / math.tan(math.radians(fov) / 2)
    K = np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    viewmats = []
    while len(viewmats) < count:
        eye = np.append(rng.uniform(lo + margin, hi - margin), rng.uniform(1.2, 1.8))
        target = np.append(rng.uniform(lo + margin, hi - margin), rng.uniform(0.3, 0.9))
        if np.linalg.norm(target[:2] - eye[:2]) >= 1.5:
            viewmats.append(look_at(eye, target))
    return np.stack(viewmats).astype(np.float32), np.tile(K, (count, 1, 1)).astype(np.float32)


def render_views(gaussians: GaussianCloud, viewmats: np.ndarray, Ks: np.ndarray, width: int, height: int
                 ) -> SceneViews:
    """Render ``gaussians`` into the cameras (black background): :class:`SceneViews`."""
    with torch.no_grad():
        out = rasterize_gaussians(**gaussians.to_torch(), viewmats=torch.as_tensor(viewmats),
                                  Ks=torch.as_tensor(Ks), width=width, height=height)
    return SceneViews(images=out.rgb.clamp(0, 1).numpy().astype(np.float32),
                      depth=out.expected_depth[..., 0].numpy().astype(np.float32),
                      viewmats=np.asarray(viewmats, np.float32), Ks=np.asarray(Ks, np.float32))


def moved_cameras(viewmats: np.ndarray, rotation: np.ndarray, scale: float) -> np.ndarray:
    """The cameras of a scene moved by ``x -> scale · rotation @ x`` (``rotation (3, 3)`` orthogonal, a mirror
    allowed): every point keeps its camera-space position times ``scale``, so the images are unchanged."""
    moved = np.array(viewmats, dtype=np.float64, copy=True)
    moved[..., :3, :3] = moved[..., :3, :3] @ rotation.T
    moved[..., :3, 3] *= scale
    return moved.astype(np.float32)


class ViewedSceneDataset(SampleDataset):
    """Per scene: ``points (num_points, 3)``, ``colors (num_points, 3)``, ``gaussian_means (num_centers, 3)``,
    ``images (V, H, W, 3)``, ``depth (V, H, W)`` (camera z, 0 where nothing was drawn), ``viewmats (V, 4, 4)``,
    ``Ks (V, 3, 3)`` with ``V = views_per_sample`` (see the
    module docstring); every sample depends only on ``(seed, epoch, index)``."""

    def __init__(self, scenes: Sequence[ViewedScene], num_points: int, num_centers: int, views_per_sample: int,
                 augment: bool, seed: int, scale_range: tuple[float, float] = (0.9, 1.1)) -> None:
        if not scenes:
            raise DataFormatError("the viewed-scene dataset has no scenes")
        fewest = min(len(s.views) for s in scenes)
        if not 1 <= views_per_sample <= fewest:
            raise ConfigError(f"data.views_per_sample={views_per_sample}: expected 1..{fewest} (the fewest views "
                              "a scene has)")
        if num_points < 1 or num_centers < 1:
            raise ConfigError(f"data.num_points and data.num_centers must be >= 1, got {num_points}, {num_centers}")
        self.scenes, self.num_points, self.num_centers = list(scenes), num_points, num_centers
        self.views_per_sample, self.augment, self.seed = views_per_sample, augment, seed
        self.scale_range = tuple(scale_range)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self.scenes[index]
        rng = self.sample_rng(index)
        table = random_subsample(np.concatenate([scene.points, scene.colors], axis=1), self.num_points, rng)
        centers = random_subsample(scene.gaussians.means, self.num_centers, rng)[:, :3]
        views = (rng.choice(len(scene.views), self.views_per_sample, replace=False) if self.augment
                 else np.arange(self.views_per_sample))
        points, viewmats, scale = table[:, :3], scene.views.viewmats[views], 1.0
        if self.augment:
            yaw = rng.uniform(-np.pi, np.pi)
            c, s = np.cos(yaw), np.sin(yaw)
            rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
            if rng.random() < 0.5:
                rotation = rotation @ np.diag([-1.0, 1.0, 1.0])
            scale = float(rng.uniform(*self.scale_range))
            points = (scale * points @ rotation.T).astype(np.float32)
            centers = (scale * centers @ rotation.T).astype(np.float32)
            viewmats = moved_cameras(viewmats, rotation, scale)
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
        return {"points": as_tensor(points), "colors": as_tensor(table[:, 3:6]), "gaussian_means": as_tensor(centers),
                "images": as_tensor(scene.views.images[views]), "depth": as_tensor(scene.views.depth[views] * scale),
                "viewmats": as_tensor(viewmats), "Ks": as_tensor(scene.views.Ks[views])}


@dataclass
class ViewedSceneData:
    """Scenes with views as the CLI sees them (``data=room_views``): :meth:`pretrain_dataset` for ``pc3d pretrain``."""

    train: list[ViewedScene]
    val: list[ViewedScene]
    num_points: int
    num_centers: int
    views_per_sample: int
    seed: int = 0

    def pretrain_dataset(self, augment: bool = True) -> ViewedSceneDataset:
        return ViewedSceneDataset(self.train, self.num_points, self.num_centers, self.views_per_sample,
                                  augment=augment, seed=self.seed)


def room_views(index: int, generator_seed: int = 0, density: float = 400.0, views: int = 8, width: int = 80,
               height: int = 60, fov: float = 90.0, scale_factor: float = 1.0) -> ViewedScene:
    """Synthetic room ``index`` (:func:`~pc3d.data.synthetic_rooms.generate_room`, coloured) with its Gaussians
    and ``views`` rendered views; depends only on the arguments."""
    room = generate_room(index, seed=generator_seed, density=density, colored=True)
    gaussians = gaussians_from_points(room.points, room.colors, scale_factor=scale_factor)
    viewmats, Ks = room_cameras(room.points, views, width, height, fov,
                                np.random.default_rng([generator_seed, index, 2]))
    return ViewedScene(room.name, room.points, room.colors, gaussians, render_views(gaussians, viewmats, Ks,
                                                                                   width, height))


def room_views_data(train_scenes: int = 16, val_scenes: int = 4, num_points: int = 8192, num_centers: int = 4096,
                    views: int = 8, views_per_sample: int = 2, width: int = 80, height: int = 60, fov: float = 90.0,
                    density: float = 400.0, scale_factor: float = 1.0, generator_seed: int = 0,
                    seed: int = 0) -> ViewedSceneData:
    """Rooms ``0..train_scenes-1`` for training and the next ``val_scenes`` held out, each with ``views`` views
    (the rooms of ``data=synthetic_rooms`` with the same ``generator_seed``, coloured)."""
    if train_scenes < 1 or val_scenes < 0:
        raise ConfigError(f"data.train_scenes must be >= 1 and data.val_scenes >= 0, got {train_scenes}, {val_scenes}")
    if views < 1 or width < 8 or height < 8 or not 10.0 <= fov <= 150.0:
        raise ConfigError(f"data.views must be >= 1, data.width/height >= 8 and data.fov in [10, 150], got {views}, "
                          f"{width}x{height}, {fov}")
    if not 1 <= views_per_sample <= views:
        raise ConfigError(f"data.views_per_sample={views_per_sample}: expected 1..data.views ({views})")
    if num_points < 1 or num_centers < 1:
        raise ConfigError(f"data.num_points and data.num_centers must be >= 1, got {num_points}, {num_centers}")
    scenes = [room_views(i, generator_seed, density, views, width, height, fov, scale_factor)
              for i in range(train_scenes + val_scenes)]
    return ViewedSceneData(scenes[:train_scenes], scenes[train_scenes:], num_points, num_centers, views_per_sample,
                           seed)


def posed_views(posed: PosedImages, gaussians: GaussianCloud, width: int, height: int) -> SceneViews:
    """Every image of ``posed`` resized to ``width x height`` (see the module docstring), with the depth of
    ``gaussians`` rendered into each view: :class:`SceneViews`.

    Raises:
        DataFormatError: a camera has lens distortion (the rasterizer is a pinhole camera) or no image.
    """
    images, viewmats, Ks = [], [], []
    for i, camera in enumerate(posed.cameras):
        if camera.distortion is not None and np.any(camera.distortion != 0):
            raise DataFormatError(f"{camera.image_path or camera.name}: the camera has lens distortion "
                                  f"{camera.distortion.tolist()} (expected undistorted pinhole images)")
        image = torch.from_numpy(posed.image(i)).permute(2, 0, 1)[None]
        resized = torch.nn.functional.interpolate(image, size=(height, width), mode="bilinear", antialias=True,
                                                  align_corners=False)
        images.append(resized[0].permute(1, 2, 0).clamp(0, 1).numpy())
        K = camera.intrinsics.copy()
        K[0] *= width / camera.width
        K[1] *= height / camera.height
        Ks.append(K)
        viewmats.append(camera.world_to_camera())
    viewmats, Ks = np.stack(viewmats).astype(np.float32), np.stack(Ks).astype(np.float32)
    rendered = render_views(gaussians, viewmats, Ks, width, height)
    return SceneViews(np.stack(images).astype(np.float32), rendered.depth, viewmats, Ks)


def scanned_scene(name: str, points: np.ndarray, colors: np.ndarray, posed: PosedImages, width: int, height: int,
                  gaussians: GaussianCloud | None = None, scale_factor: float = 1.0) -> ViewedScene:
    """A scan ``points (N, 3)``, ``colors (N, 3)`` in [0, 1] with its posed photographs ``posed`` (same world
    frame) as a :class:`ViewedScene`; ``gaussians`` default to :func:`gaussians_from_points` of the scan."""
    if gaussians is None:
        gaussians = gaussians_from_points(points, colors, scale_factor=scale_factor)
    return ViewedScene(name, np.asarray(points, np.float32), np.asarray(colors, np.float32), gaussians,
                       posed_views(posed, gaussians, width, height))


def _scene_names(value: Sequence[str] | str | None, key: str) -> list[str]:
    names = [] if value is None else [value] if isinstance(value, str) else [str(v) for v in value]
    if len(set(names)) != len(names):
        raise ConfigError(f"data.{key}={names}: a scene is named twice")
    return names


def scan_views_data(scannet_root: str | None = None, scannet_scenes: Sequence[str] | None = ("scene0000_00",),
                    sunrgbd_root: str | None = None, sunrgbd_frames: Sequence[str] | None = ("000001", "000002"),
                    gaussians: str | None = None, width: int = 80, height: int = 60, num_points: int = 8192,
                    num_centers: int = 4096, views_per_sample: int = 1, scale_factor: float = 1.0,
                    seed: int = 0) -> ViewedSceneData:
    """Scanned scenes with their real posed photographs (see the module docstring), every scene for training.

    Args:
        scannet_root: a folder with ``<scene>_vert_all.npy`` (+ ``_bbox.npy``) and ``posed_images/`` with one
            ``*infos*.pkl`` (the mmdetection3d layout); ``scannet_scenes`` the scenes to take from it.
        sunrgbd_root: a folder with ``lidar/``, ``label/``, ``calib/``, ``image/``; ``sunrgbd_frames`` its frames
            (each one view, its own world).
        gaussians: a ``pc3d prep gaussians`` folder holding a scene of every name, or ``None`` (the scans').
    """
    if scannet_root is None and sunrgbd_root is None:
        raise ConfigError("data=scan_views: expected data.scannet_root and/or data.sunrgbd_root")
    if width < 8 or height < 8:
        raise ConfigError(f"data.width/height must be >= 8, got {width}x{height}")
    if num_points < 1 or num_centers < 1 or views_per_sample < 1 or not scale_factor > 0:
        raise ConfigError(f"data.num_points, num_centers and views_per_sample must be >= 1 and scale_factor > 0, "
                          f"got {num_points}, {num_centers}, {views_per_sample}, {scale_factor}")
    sources: list[tuple[str, np.ndarray, np.ndarray, PosedImages]] = []
    for key, root in (("scannet_root", scannet_root), ("sunrgbd_root", sunrgbd_root)):
        if root is not None and not Path(root).is_dir():
            raise DataFormatError(f"data.{key}={root}: directory not found")
    if scannet_root is not None:
        for scene in _scene_names(scannet_scenes, "scannet_scenes"):
            scan = read_scannet_scene(Path(scannet_root) / scene)
            sources.append((scene, scan.points, _scan_colors(scan.colors, scene), read_scannet_infos(scannet_root,
                                                                                                  scene=scene)))
    if sunrgbd_root is not None:
        for frame in _scene_names(sunrgbd_frames, "sunrgbd_frames"):
            scan = read_sunrgbd_frame(sunrgbd_root, frame)
            sources.append((frame, scan.points, _scan_colors(scan.colors, frame), read_sunrgbd(sunrgbd_root, [frame])))
    if not sources:
        raise ConfigError("data=scan_views: no scenes (data.scannet_scenes and data.sunrgbd_frames are empty)")
    fewest = min(len(posed) for *_, posed in sources)
    if views_per_sample > fewest:
        raise ConfigError(f"data.views_per_sample={views_per_sample}: expected 1..{fewest} (the fewest posed "
                          "images a scene has)")
    fitted: dict[str, GaussianCloud] = {}
    if gaussians is not None:
        fitted = read_gaussian_folder(gaussians)
        missing = [name for name, *_ in sources if name not in fitted]
        if missing:
            raise DataFormatError(f"data.gaussians={gaussians}: no scene {missing} (it holds {sorted(fitted)[:10]})")
    scenes = [scanned_scene(name, points, colors, posed, width, height, fitted.get(name), scale_factor)
              for name, points, colors, posed in sources]
    return ViewedSceneData(scenes, [], num_points, num_centers, views_per_sample, seed)


def _scan_colors(colors: np.ndarray | None, name: str) -> np.ndarray:
    if colors is None:
        raise DataFormatError(f"scene {name}: the scan has no colours (expected xyz + rgb points)")
    return colors
