"""Differentiable 3D Gaussian splatting (3DGS): one function, pure torch everywhere, gsplat on CUDA.

:func:`rasterize_gaussians` renders ``N`` Gaussians into ``C`` pinhole cameras. The pure-torch
path runs on any device and is the reference; ``gsplat`` (CUDA float32 only) is an accelerator
behind the same signature, held to the torch path by a test.

Conventions
-----------
* Cameras: ``viewmats (C, 4, 4)`` map world to camera coordinates in the OpenCV convention
  (+x right, +y down, +z forward); ``Ks (C, 3, 3)`` are pinhole intrinsics
  ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``. Pixel ``(i, j)`` (row, column) has its centre at
  ``(j + 0.5, i + 0.5)`` in image coordinates.
* Gaussians: ``means (N, 3)`` world positions; ``quats (N, 4)`` rotations as ``w, x, y, z``
  (normalised here); ``log_scales (N, 3)`` (the standard deviations along the rotated axes are
  ``exp(log_scales)``); ``opacity_logits (N,)`` (opacity ``o = sigmoid(logit)``); ``colors``
  either ``(N, 3)`` RGB used as given, or ``(N, K, 3)`` real spherical-harmonic coefficients
  (``K = (d + 1)**2``, the 3DGS basis order and signs) evaluated for the direction from the
  camera centre to the mean; colour is ``max(SH + 0.5, 0)`` (the 3DGS convention).

The model (that of 3DGS and gsplat's "classic" mode)
----------------------------------------------------
1. Covariance ``Sigma = R S S^T R^T``; camera-space covariance ``W Sigma W^T``; EWA projection
   ``J W Sigma W^T J^T`` with the perspective Jacobian ``J`` at the mean (its ``x/z, y/z`` clamped
   to the image edge plus 30 % of the half field of view, as 3DGS does, so the footprints of
   off-screen Gaussians stay bounded);
   ``eps2d`` is added to the diagonal of the 2D covariance (no opacity compensation).
2. A Gaussian is *culled* in a camera (``radii == 0``) if its depth ``z`` is outside
   ``[near, far]``, the blurred 2D covariance is not positive definite, ``o < 1/255``, or its box
   (below) lies entirely off the image.
3. Extent: ``r_x = ceil(e * sqrt(Sigma2d_xx))``, ``r_y = ceil(e * sqrt(Sigma2d_yy))`` with the
   opacity-aware ``e = min(3.33, sqrt(2 ln(255 o)))`` (gsplat's bound): outside the ellipse
   ``d^T Sigma2d^-1 d <= e^2`` the Gaussian's alpha is below 1/255, so its box holds every pixel
   it can reach.
4. **Per-pixel rule** (what makes ``tile_size`` a pure performance parameter): Gaussian ``i`` is
   considered at pixel centre ``p`` only if ``|p_x - mean2d_x| <= r_x`` and
   ``|p_y - mean2d_y| <= r_y``. Tiles only decide which pairs are evaluated; every tile that
   holds such a pixel lists the Gaussian, so the image is a function of the Gaussians alone.
   By 3. the rule removes nothing with alpha >= 1/255 in exact arithmetic (so the result equals
   gsplat's, which has no such rule); it makes the guarantee hold under rounding too, and for
   ``eps2d = 0`` with nearly degenerate covariances.
5. Per pixel, the considered Gaussians are composited front to back in order of camera-space
   depth ``z`` (ties by index): ``alpha = min(0.999, o * exp(-0.5 d^T Sigma2d^-1 d))``; a
   Gaussian with ``alpha < 1/255`` is skipped; with ``T`` the transmittance before it, if
   ``T * (1 - alpha) <= 1e-4`` the pixel stops *before* adding it (gsplat's exclusive rule);
   otherwise it adds weight ``w = alpha T`` and ``T <- T (1 - alpha)``.

Outputs (:class:`RenderedImages`): ``rgb = sum_i w_i c_i + T bg``; ``depth = sum_i w_i z_i``, the
*accumulated* depth (camera-space z of the means, not divided by alpha and with no background
term; :attr:`RenderedImages.expected_depth` is ``depth / alpha``); ``alpha = 1 - T``.

The torch path bins (Gaussian, tile) pairs with vectorised repeat/sort/bincount, groups tiles
of similar list length into chunks of at most ``chunk_elements`` (tile pixels x list entries),
and composites each chunk with dense tensor ops. Its backward is a custom autograd function
that recomputes each chunk and applies the analytic gradient of the compositing, so memory
stays bounded by the chunk size instead of growing with pixels x Gaussians.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pc3d.errors import ConfigError
from pc3d.ops._checks import without_autocast
from pc3d.ops.backends import resolve_backend

__all__ = ["CHUNK_ELEMENTS", "RenderedImages", "quat_to_rotmat", "rasterize_gaussians"]

#: A Gaussian whose alpha at a pixel is below this is skipped there (and one with a lower
#: opacity is culled).
ALPHA_THRESHOLD = 1.0 / 255.0
#: Alphas are clamped to this, so one Gaussian never makes a pixel fully opaque.
ALPHA_MAX = 0.999
#: A pixel stops compositing before the Gaussian that would bring its transmittance to this.
TRANSMITTANCE_MIN = 1e-4
#: Largest extent in standard deviations (``sqrt(2 ln 255)``: the 1/255 contour of an opaque Gaussian).
EXTENT_MAX = 3.33
#: Exponents are clamped here before exp(): o * exp(-8) < 1/255 for every opacity o <= 1.
SIGMA_MAX = 8.0
#: A chunk's tiles have lists at least this fraction of its longest (bounds the padding).
PAD_RATIO = 0.8
#: Default chunk budget: (tile pixels x list entries) per dense block (4 MiB per float32 buffer).
CHUNK_ELEMENTS = 1 << 20
#: Degree-0 real spherical harmonic, 1 / (2 sqrt(pi)).
SH_C0 = 0.28209479177387814

_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
          0.5462742152960396)
_SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
          -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def rgb_to_sh(colors: Any) -> Any:
    """RGB ``(N, 3)`` (numpy or torch) → degree-0 SH coefficients ``(N, 1, 3)`` that render as that colour
    (``colour = SH_C0 · sh + 0.5``, the 3DGS convention)."""
    return ((colors - 0.5) / SH_C0)[:, None, :]


@dataclass
class RenderedImages:
    """What :func:`rasterize_gaussians` returns.

    Attributes:
        rgb: ``(C, H, W, 3)`` composited colour plus ``T * background``.
        depth: ``(C, H, W, 1)`` accumulated depth ``sum_i w_i z_i`` (no background term).
        alpha: ``(C, H, W, 1)`` ``1 - T``, the accumulated opacity.
        radii: ``(C, N)`` int32, the larger of a Gaussian's two pixel extents; 0 where it is culled.
        means2d: ``(C, N, 2)`` projected means in pixels (torch path: 0 where culled; gsplat:
            unspecified there). When the inputs
            require grad, ``retain_grad()`` has been called on it: after ``backward()``,
            ``means2d.grad`` holds the loss gradient w.r.t. the 2D means (the image-space
            gradient 3DGS densification averages).
        depths: ``(C, N)`` camera-space z of the means.
    """

    rgb: torch.Tensor
    depth: torch.Tensor
    alpha: torch.Tensor
    radii: torch.Tensor
    means2d: torch.Tensor
    depths: torch.Tensor

    @property
    def expected_depth(self) -> torch.Tensor:
        """``(C, H, W, 1)`` ``depth / alpha`` (0 where nothing was drawn)."""
        return self.depth / self.alpha.clamp_min(1e-10)


# --------------------------------------------------------------------------- public function


@without_autocast
def rasterize_gaussians(
    means: torch.Tensor,
    quats: torch.Tensor,
    log_scales: torch.Tensor,
    opacity_logits: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    background: torch.Tensor | None = None,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
    tile_size: int = 16,
    backend: str = "auto",
    chunk_elements: int | None = None,
) -> RenderedImages:
    """Render ``N`` 3D Gaussians into ``C`` cameras (differentiable; see the module docstring).

    Args:
        means: ``(N, 3)`` world positions (float32 or float64; every tensor shares its dtype/device).
        quats: ``(N, 4)`` rotations ``w, x, y, z`` (any non-zero norm).
        log_scales: ``(N, 3)`` log standard deviations along the Gaussian's axes.
        opacity_logits: ``(N,)`` opacity logits.
        colors: ``(N, 3)`` RGB, or ``(N, K, 3)`` SH coefficients with ``K`` a square ``<= 16``.
        viewmats: ``(C, 4, 4)`` world-to-camera transforms (OpenCV axes), ``C >= 1``.
        Ks: ``(C, 3, 3)`` pinhole intrinsics.
        width: image width in pixels (>= 1).
        height: image height in pixels (>= 1).
        sh_degree: SH degree to evaluate (0-3); ``None`` means RGB for ``(N, 3)`` colours and
            the full degree ``sqrt(K) - 1`` for ``(N, K, 3)``. A lower degree than the
            coefficients hold uses only the first ``(sh_degree + 1)**2``.
        background: ``(3,)`` or ``(C, 3)`` colour behind the Gaussians; ``None`` is black.
        near: Gaussians with camera-space depth below this are culled (> 0).
        far: ... and above this.
        eps2d: added to the diagonal of every 2D covariance (pixels^2).
        tile_size: tile edge in pixels for binning; changes speed only, not the image.
        backend: ``"auto"`` (gsplat for CUDA float32 when installed, else torch), ``"torch"``
            or ``"gsplat"`` (see :mod:`pc3d.ops.backends`).
        chunk_elements: torch path only: most (tile pixels x list entries) composited in one
            dense block; default :data:`CHUNK_ELEMENTS`. Results do not depend on it.

    Returns:
        :class:`RenderedImages` (``rgb``, ``depth``, ``alpha``, ``radii``, ``means2d``, ``depths``).

    Differentiable w.r.t. ``means``, ``quats``, ``log_scales``, ``opacity_logits``, ``colors``,
    ``background`` and (torch path) ``viewmats`` and ``Ks``. Culling, the extents, the 1/255
    skip, the 0.999 clamp and the transmittance stop are treated as constants.
    """
    _, cams, degree = _check_inputs(means, quats, log_scales, opacity_logits, colors, viewmats, Ks,
                                      width, height, sh_degree, background, near, far, eps2d, tile_size,
                                      chunk_elements)
    if background is not None:
        background = background.expand(cams, 3) if background.dim() == 1 else background
    name = resolve_backend(backend, "rasterize_gaussians", means)
    if name == "gsplat":
        out = _rasterize_gsplat(means, quats, log_scales, opacity_logits, colors, viewmats, Ks, width,
                                height, degree, background, near, far, eps2d, tile_size)
    else:
        out = _rasterize_torch(means, quats, log_scales, opacity_logits, colors, viewmats, Ks, width,
                               height, degree, background, near, far, eps2d, tile_size,
                               chunk_elements or CHUNK_ELEMENTS)
    if out.means2d.requires_grad:
        out.means2d.retain_grad()
    return out


# --------------------------------------------------------------------------- validation


def _shape(t: object) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _check_inputs(means, quats, log_scales, opacity_logits, colors, viewmats, Ks, width, height,
                  sh_degree, background, near, far, eps2d, tile_size, chunk_elements) -> tuple[int, int, int | None]:
    """Validate everything; return ``(N, C, SH degree or None for RGB)``."""
    if not isinstance(means, torch.Tensor) or means.dim() != 2 or means.shape[-1] != 3:
        raise ValueError(f"means: expected shape (N, 3), got {_shape(means)}")
    if means.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"means: expected float32 or float64, got {means.dtype}")
    num = means.shape[0]
    if not isinstance(viewmats, torch.Tensor) or viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"viewmats: expected shape (C, 4, 4), got {_shape(viewmats)}")
    cams = viewmats.shape[0]
    if cams == 0:
        raise ValueError("viewmats: expected at least one camera, got shape (0, 4, 4)")
    expected = {"quats": (quats, (num, 4), "(N, 4)"), "log_scales": (log_scales, (num, 3), "(N, 3)"),
                "opacity_logits": (opacity_logits, (num,), "(N,)"), "Ks": (Ks, (cams, 3, 3), "(C, 3, 3)")}
    for key, (tensor, shape, text) in expected.items():
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            raise ValueError(f"{key}: expected shape {text} = {shape} (N={num} Gaussians, C={cams} cameras), "
                             f"got {_shape(tensor)}")
    if not isinstance(colors, torch.Tensor) or colors.dim() not in (2, 3) or colors.shape[0] != num \
            or colors.shape[-1] != 3:
        raise ValueError(f"colors: expected shape (N, 3) RGB or (N, K, 3) SH coefficients with N={num}, "
                         f"got {_shape(colors)}")
    degree: int | None = None
    if colors.dim() == 3:
        k = colors.shape[1]
        full = math.isqrt(k) - 1 if k > 0 else -1
        if k == 0 or (full + 1) ** 2 != k or full > 3:
            raise ValueError(f"colors: expected K = (degree + 1)**2 in (1, 4, 9, 16) SH coefficients, "
                             f"got shape {tuple(colors.shape)}")
        degree = full
    if sh_degree is not None:
        if isinstance(sh_degree, bool) or not isinstance(sh_degree, numbers.Integral) or not 0 <= sh_degree <= 3:
            raise ConfigError(f"sh_degree={sh_degree!r}: expected None or an int in 0..3")
        if degree is None:
            raise ValueError(f"colors: sh_degree={sh_degree} needs SH coefficients of shape (N, K, 3), "
                             f"got {tuple(colors.shape)}")
        if sh_degree > degree:
            raise ValueError(f"colors: sh_degree={sh_degree} needs K >= {(sh_degree + 1) ** 2} coefficients, "
                             f"got {tuple(colors.shape)}")
        degree = int(sh_degree)
    if background is not None and (not isinstance(background, torch.Tensor)
                                   or tuple(background.shape) not in ((3,), (cams, 3))):
        raise ValueError(f"background: expected shape (3,) or (C, 3) with C={cams}, got {_shape(background)}")
    tensors = {"means": means, "quats": quats, "log_scales": log_scales, "opacity_logits": opacity_logits,
               "colors": colors, "viewmats": viewmats, "Ks": Ks}
    if background is not None:
        tensors["background"] = background
    for key, tensor in tensors.items():
        if tensor.dtype != means.dtype or tensor.device != means.device:
            raise ValueError(f"{key}: expected dtype {means.dtype} on {means.device} like means, "
                             f"got {tensor.dtype} on {tensor.device}")
    # one host sync for all the finiteness checks
    finite = torch.stack([torch.isfinite(t).all() for t in tensors.values()]).tolist()
    for key, ok in zip(tensors, finite):
        if not ok:
            raise ValueError(f"{key}: contains NaN or infinite values")
    for key, value in (("width", width), ("height", height), ("tile_size", tile_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ConfigError(f"{key}={value!r}: expected a positive int")
    if chunk_elements is not None and (isinstance(chunk_elements, bool)
                                       or not isinstance(chunk_elements, numbers.Integral) or chunk_elements < 1):
        raise ConfigError(f"chunk_elements={chunk_elements!r}: expected None or a positive int")
    for key, value in (("near", near), ("far", far), ("eps2d", eps2d)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
            raise ConfigError(f"{key}={value!r}: expected a number")
    if not 0 < near < far or math.isinf(near):
        raise ConfigError(f"near={near!r}, far={far!r}: expected 0 < near < far (far may be inf)")
    if not 0 <= eps2d < math.inf:
        raise ConfigError(f"eps2d={eps2d!r}: expected a finite number >= 0")
    return num, cams, degree


# --------------------------------------------------------------------------- projection


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` wxyz (any norm) -> ``(N, 3, 3)`` rotation matrices."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y))
    return torch.stack(rows, dim=-1).view(-1, 3, 3)


@dataclass
class _Projection:
    means2d: torch.Tensor  # (C, N, 2), 0 where culled
    conics: torch.Tensor  # (C, N, 3) inverse 2D covariance (a, b, c): [[a, b], [b, c]]
    depths: torch.Tensor  # (C, N) camera-space z
    radii_xy: torch.Tensor  # (C, N, 2) int32 pixel extents, 0 where culled


def _project(means, quats, log_scales, opacities, viewmats, Ks, width, height, near, far, eps2d) -> _Projection:
    """EWA projection of every Gaussian into every camera (differentiable except the radii)."""
    rot = quat_to_rotmat(quats)
    m = rot * torch.exp(log_scales)[:, None, :]  # R S
    cov = m @ m.transpose(1, 2)  # (N, 3, 3)
    w_rot, w_t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", w_rot, means) + w_t[:, None, :]  # (C, N, 3)
    cov_c = torch.einsum("cij,njk,clk->cnil", w_rot, cov, w_rot)  # (C, N, 3, 3)
    x, y, z = means_c.unbind(-1)
    in_depth = (z >= near) & (z <= far)
    # culled Gaussians get z = 1 so nothing below divides by ~0 (their values are discarded)
    zs = torch.where(in_depth, z, torch.ones_like(z))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    u = torch.minimum(torch.maximum(x / zs, -(cx / fx + 0.3 * tan_x)), (width - cx) / fx + 0.3 * tan_x)
    v = torch.minimum(torch.maximum(y / zs, -(cy / fy + 0.3 * tan_y)), (height - cy) / fy + 0.3 * tan_y)
    # J = [[j11, 0, j13], [0, j22, j23]]
    j11, j22 = fx / zs, fy / zs
    j13, j23 = -fx * u / zs, -fy * v / zs
    s00, s01, s02 = cov_c[..., 0, 0], cov_c[..., 0, 1], cov_c[..., 0, 2]
    s11, s12, s22 = cov_c[..., 1, 1], cov_c[..., 1, 2], cov_c[..., 2, 2]
    sxx = j11 * j11 * s00 + 2 * j11 * j13 * s02 + j13 * j13 * s22 + eps2d
    sxy = j11 * j22 * s01 + j11 * j23 * s02 + j13 * j22 * s12 + j13 * j23 * s22
    syy = j22 * j22 * s11 + 2 * j22 * j23 * s12 + j23 * j23 * s22 + eps2d
    det = sxx * syy - sxy * sxy
    valid = in_depth & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([syy / det, -sxy / det, sxx / det], dim=-1)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], dim=-1)
    with torch.no_grad():
        o = opacities.detach()
        valid = valid & (o >= ALPHA_THRESHOLD)[None, :]
        extent = torch.sqrt(2.0 * torch.log(o.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp(max=EXTENT_MAX)
        rx = torch.ceil(extent * torch.sqrt(sxx.detach().clamp_min(0)))
        ry = torch.ceil(extent * torch.sqrt(syy.detach().clamp_min(0)))
        mx, my = means2d.detach().unbind(-1)
        valid = valid & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii_xy = torch.stack([rx, ry], dim=-1) * valid[..., None]
    means2d = means2d * valid[..., None]
    return _Projection(means2d, conics, z, radii_xy.to(torch.int32))


def _sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """Real SH basis ``(..., (degree + 1)**2)`` at unit ``dirs (..., 3)``, in the 3DGS order and signs."""
    out = [torch.full_like(dirs[..., 0], SH_C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        out += [-_SH_C1 * y, _SH_C1 * z, -_SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [_SH_C2[0] * xy, _SH_C2[1] * yz, _SH_C2[2] * (2 * zz - xx - yy), _SH_C2[3] * xz,
                _SH_C2[4] * (xx - yy)]
    if degree >= 3:
        out += [_SH_C3[0] * y * (3 * xx - yy), _SH_C3[1] * xy * z, _SH_C3[2] * y * (4 * zz - xx - yy),
                _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _SH_C3[4] * x * (4 * zz - xx - yy),
                _SH_C3[5] * z * (xx - yy), _SH_C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, dim=-1)


def _view_colors(colors: torch.Tensor, degree: int | None, means: torch.Tensor,
                 viewmats: torch.Tensor) -> torch.Tensor:
    """Per-camera RGB ``(C, N, 3)``: the given colours, or SH evaluated towards each camera."""
    cams = viewmats.shape[0]
    if degree is None:
        return colors[None].expand(cams, -1, -1)
    campos = torch.linalg.inv(viewmats)[:, :3, 3]  # (C, 3) camera centres in world coordinates
    dirs = F.normalize(means[None, :, :] - campos[:, None, :], dim=-1)  # (C, N, 3)
    basis = _sh_basis(degree, dirs)  # (C, N, B)
    coeffs = colors[:, : basis.shape[-1], :]  # (N, B, 3)
    return torch.clamp_min(torch.einsum("cnb,nbk->cnk", basis, coeffs) + 0.5, 0.0)


# --------------------------------------------------------------------------- tile binning


@dataclass
class _Chunk:
    tiles: torch.Tensor  # (n_t,) int64 global tile index (camera * tiles per image + tile)
    ids: torch.Tensor  # (n_t, L) int64 row of the parameter table (the padding row where unused)
    first: bool  # the chunk starts every tile's list (no carried-in transmittance)


@dataclass
class _Plan:
    cams: int
    width: int
    height: int
    tile_size: int
    tiles_x: int
    tiles_y: int
    chunks: list[_Chunk]

    @property
    def num_tiles(self) -> int:
        return self.cams * self.tiles_x * self.tiles_y


def _bin_tiles(means2d: torch.Tensor, radii_xy: torch.Tensor, depths: torch.Tensor, width: int, height: int,
               tile_size: int, budget: int) -> _Plan:
    """Sorted (tile, Gaussian) lists and the chunk schedule (no grad).

    A Gaussian is listed in every tile holding a pixel centre inside its radius box (widened
    by one pixel: the per-pixel rule in the compositing is the exact test). Each tile's list is
    in depth order (ties by index).
    """
    cams, num = depths.shape
    device = means2d.device
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    per_image = tiles_x * tiles_y
    pix = tile_size * tile_size
    mx, my = means2d[..., 0], means2d[..., 1]
    rx, ry = radii_xy[..., 0].to(means2d.dtype), radii_xy[..., 1].to(means2d.dtype)
    # pixel j is considered when |j + 0.5 - mx| <= rx; one extra pixel each side covers rounding
    x0 = torch.floor(mx - rx - 0.5).clamp(0, width - 1).long() // tile_size
    x1 = torch.ceil(mx + rx - 0.5).clamp(0, width - 1).long() // tile_size
    y0 = torch.floor(my - ry - 0.5).clamp(0, height - 1).long() // tile_size
    y1 = torch.ceil(my + ry - 0.5).clamp(0, height - 1).long() // tile_size
    visible = (radii_xy > 0).all(dim=-1)
    span_x = (x1 - x0 + 1).clamp_min(0)
    counts = (span_x * (y1 - y0 + 1).clamp_min(0) * visible).flatten()  # (C*N,)
    gauss = torch.nonzero(counts, as_tuple=True)[0]
    reps = counts[gauss]
    pair_gauss = torch.repeat_interleave(gauss, reps)  # (M,) flat Gaussian id c * N + n
    num_pairs = pair_gauss.numel()
    starts = torch.cumsum(reps, 0) - reps
    local = torch.arange(num_pairs, device=device) - torch.repeat_interleave(starts, reps)
    sx = span_x.flatten()[pair_gauss]
    tx = x0.flatten()[pair_gauss] + local % sx
    ty = y0.flatten()[pair_gauss] + local // sx
    cam = pair_gauss // num
    tile = cam * per_image + ty * tiles_x + tx
    # depth rank within each camera (stable: ties by index)
    rank = torch.empty((cams, num), dtype=torch.long, device=device)
    order = torch.sort(depths, dim=1, stable=True).indices
    rank.scatter_(1, order, torch.arange(num, device=device).expand(cams, num))
    key = tile * num + rank.flatten()[pair_gauss]
    sorted_gauss = pair_gauss[torch.sort(key).indices]
    tile_counts = torch.bincount(tile, minlength=cams * per_image)
    tile_starts = torch.cumsum(tile_counts, 0) - tile_counts

    # chunk schedule: tiles by descending list length, so consecutive tiles pad little
    busy = torch.nonzero(tile_counts, as_tuple=True)[0]
    busy = busy[torch.sort(tile_counts[busy], descending=True, stable=True).indices]
    lengths = tile_counts[busy].tolist()
    pad_row = cams * num
    max_len = max(1, budget // pix)
    chunks: list[_Chunk] = []

    def make(tiles: torch.Tensor, offset: int, length: int) -> _Chunk:
        slot = torch.arange(length, device=device) + offset
        pos = tile_starts[tiles][:, None] + slot[None, :]
        used = slot[None, :] < tile_counts[tiles][:, None]
        ids = torch.where(used, sorted_gauss[pos.clamp_max(max(num_pairs - 1, 0))], pad_row)
        return _Chunk(tiles, ids, offset == 0)

    i = 0
    while i < len(lengths):
        length = lengths[i]
        if length > max_len:  # a crowded tile alone, its list in segments
            for offset in range(0, length, max_len):
                chunks.append(make(busy[i:i + 1], offset, min(max_len, length - offset)))
            i += 1
            continue
        # tiles sorted by length: take while the block fits and padding stays below 1 - PAD_RATIO
        n_t = max(1, budget // (pix * length))
        j = i + 1
        while j < min(len(lengths), i + n_t) and lengths[j] >= PAD_RATIO * length:
            j += 1
        chunks.append(make(busy[i:j], 0, length))
        i = j
    return _Plan(cams, width, height, tile_size, tiles_x, tiles_y, chunks)


def _to_tiles(image: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """``(C, H, W, K)`` -> ``(C * tiles, P, K)`` (zero padded to whole tiles)."""
    ts, k = plan.tile_size, image.shape[-1]
    padded = F.pad(image, (0, 0, 0, plan.tiles_x * ts - plan.width, 0, plan.tiles_y * ts - plan.height))
    tiles = padded.view(plan.cams, plan.tiles_y, ts, plan.tiles_x, ts, k).permute(0, 1, 3, 2, 4, 5)
    return tiles.reshape(plan.num_tiles, ts * ts, k)


def _from_tiles(tiles: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """``(C * tiles, P, K)`` -> ``(C, H, W, K)``."""
    ts, k = plan.tile_size, tiles.shape[-1]
    image = tiles.view(plan.cams, plan.tiles_y, plan.tiles_x, ts, ts, k).permute(0, 1, 3, 2, 4, 5)
    image = image.reshape(plan.cams, plan.tiles_y * ts, plan.tiles_x * ts, k)
    return image[:, : plan.height, : plan.width].contiguous()


# --------------------------------------------------------------------------- compositing

# columns of the per-(camera, Gaussian) parameter table
_MX, _MY, _CA, _CB, _CC, _OP, _RX, _RY = range(8)
_FEAT = slice(8, 12)  # r, g, b, z


def _pixel_centres(tiles: torch.Tensor, plan: _Plan, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres ``(n_t, P)`` x and y of the given tiles, in image coordinates."""
    ts = plan.tile_size
    in_image = tiles % (plan.tiles_x * plan.tiles_y)
    lin = torch.arange(ts * ts, device=tiles.device)
    px = (in_image % plan.tiles_x * ts)[:, None] + (lin % ts)[None, :]
    py = (in_image // plan.tiles_x * ts)[:, None] + (lin // ts)[None, :]
    return px.to(dtype) + 0.5, py.to(dtype) + 0.5


def _composite_chunk(g: torch.Tensor, px: torch.Tensor, py: torch.Tensor, t_in: torch.Tensor | None,
                     for_backward: bool = False) -> dict[str, torch.Tensor]:
    """Front-to-back compositing of one chunk.

    Args:
        g: ``(n_t, L, 12)`` gathered parameter-table rows (the padding row has opacity 0).
        px, py: ``(n_t, P)`` pixel centres.
        t_in: ``(n_t, P)`` transmittance carried in from earlier segments, or ``None`` (= 1).

    Returns ``w (n_t, P, L)`` weights and ``t_out (n_t, P)``; with ``for_backward`` also the
    intermediates the gradient needs. Masks multiply instead of ``torch.where``, which is
    several times slower on CPU for data-dependent conditions.
    """
    n_t, num_pix = px.shape
    length = g.shape[1]
    # per-(tile, entry) coefficients, contiguous (n_t, 1, L), broadcast over the tile's pixels
    mx, my, ca, cb, cc, op, rx, ry = (g[:, None, :, i].contiguous() for i in range(_FEAT.start))
    dx = px[:, :, None] - mx  # (n_t, P, L)
    dy = py[:, :, None] - my
    dxx, dyy = dx * dx, dy * dy
    dxy = dx.mul_(dy)
    del dx, dy
    sigma = dxx * (0.5 * ca)
    sigma.addcmul_(dyy, 0.5 * cc).addcmul_(dxy, cb)
    # masks are 0/1 floats written into spent buffers: float compares and multiplies are
    # several times faster on CPU than bool masks, torch.where or multiplying by a bool
    ok = torch.le(dxx, rx * rx, out=dxx)  # the per-pixel rule: pixel centre inside the radius box
    ok.mul_(torch.le(dyy, ry * ry, out=dyy))
    ok.mul_(torch.ge(sigma, 0.0, out=dxy))
    # beyond SIGMA_MAX every alpha is < 1/255 (skipped); clamping keeps exp() off its very slow
    # underflow path for the far pixels of a tile
    gauss = torch.exp(sigma.clamp_max_(SIGMA_MAX).neg_())
    del sigma
    o_g = gauss * op
    alpha = o_g.clamp_max(ALPHA_MAX)
    ok.mul_(torch.ge(alpha, ALPHA_THRESHOLD, out=dyy))
    alpha.mul_(ok)
    # scan[..., k] = T before entry k (k < L) and after the last one (k = L)
    scan = torch.ones(n_t, num_pix, length + 1, dtype=g.dtype, device=g.device)
    scan[..., 1:].sub_(alpha)
    if t_in is not None:
        scan[..., 0] = t_in
    scan.cumprod_(dim=-1)
    t_excl, t_incl = scan[..., :-1], scan[..., 1:]
    keep = torch.gt(t_incl, TRANSMITTANCE_MIN, out=dxy)  # a prefix of each list: t_incl never increases
    alpha.mul_(keep)
    w = alpha * t_excl
    kept = keep.sum(dim=-1, keepdim=True).long()
    t_out = scan.gather(-1, kept)[..., 0]  # T after the last kept entry
    out = {"w": w, "t_out": t_out}
    if for_backward:
        ok.mul_(keep).mul_(torch.le(o_g, ALPHA_MAX, out=dyy))  # clamped alphas do not depend on the parameters
        out.update(gauss=gauss, alpha=alpha, t_excl=t_excl, live=ok)
    return out


class _Composite(torch.autograd.Function):
    """Chunked compositing with a recomputing analytic backward (memory bounded by the chunk)."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, radii_xy, plan: _Plan):  # noqa: D401
        # means2d (C*N, 2), conics (C*N, 3), opacities (C*N,), features (C*N, 4) [r, g, b, z]
        table = _param_table(means2d, conics, opacities, features, radii_xy)
        dtype = means2d.dtype
        pix = plan.tile_size ** 2
        acc = torch.zeros(plan.num_tiles, pix, 4, dtype=dtype, device=means2d.device)
        trans = torch.ones(plan.num_tiles, pix, dtype=dtype, device=means2d.device)
        carried: list[torch.Tensor | None] = []
        for chunk in plan.chunks:
            g = table[chunk.ids]
            px, py = _pixel_centres(chunk.tiles, plan, dtype)
            t_in = None if chunk.first else trans[chunk.tiles]
            carried.append(t_in)
            res = _composite_chunk(g, px, py, t_in)
            acc.index_add_(0, chunk.tiles, torch.bmm(res["w"], g[..., _FEAT]))
            trans[chunk.tiles] = res["t_out"]
        ctx.plan = plan
        ctx.carried = carried
        ctx.save_for_backward(means2d, conics, opacities, features, radii_xy, trans)
        image = _from_tiles(torch.cat([acc, trans[..., None]], dim=-1), plan)
        return image[..., :3], image[..., 3:4], image[..., 4:5]

    @staticmethod
    def backward(ctx, grad_rgb, grad_depth, grad_trans):
        means2d, conics, opacities, features, radii_xy, trans = ctx.saved_tensors
        plan: _Plan = ctx.plan
        dtype, device = means2d.dtype, means2d.device
        cams_n = means2d.shape[0]
        height, width = plan.height, plan.width
        zeros = torch.zeros(plan.cams, height, width, 1, dtype=dtype, device=device)
        grads = torch.cat([grad_rgb if grad_rgb is not None else zeros.expand(-1, -1, -1, 3),
                           grad_depth if grad_depth is not None else zeros,
                           grad_trans if grad_trans is not None else zeros], dim=-1)
        grads = _to_tiles(grads, plan)  # (tiles, P, 5); pixels off the image get 0
        g_feat_img, g_trans = grads[..., :4], grads[..., 4]
        # S: what the rest of each pixel's list (and T's own gradient) contributes,
        # sum_{j later} w_j h_j + dL/dT * T, accumulated from the last segment backwards
        suffix = g_trans * trans
        table = _param_table(means2d, conics, opacities, features, radii_xy)
        grad_table = torch.zeros(cams_n + 1, 6, dtype=dtype, device=device)  # mx, my, a, b, c, o
        grad_feat = torch.zeros(cams_n + 1, 4, dtype=dtype, device=device)
        ts = plan.tile_size
        lin = torch.arange(ts * ts, device=device)
        lx = (lin % ts).to(dtype) + 0.5 - 0.5 * ts  # pixel centres relative to the tile centre
        ly = (lin // ts).to(dtype) + 0.5 - 0.5 * ts
        basis = torch.stack([torch.ones_like(lx), lx, ly, lx * lx, lx * ly, ly * ly])  # (6, P)
        for chunk, t_in in zip(reversed(plan.chunks), reversed(ctx.carried)):
            g = table[chunk.ids]
            px, py = _pixel_centres(chunk.tiles, plan, dtype)
            res = _composite_chunk(g, px, py, t_in, for_backward=True)
            w, alpha = res["w"], res["alpha"]
            feat = g[..., _FEAT]
            g_feat = g_feat_img[chunk.tiles]  # (n_t, P, 4)
            h = torch.bmm(g_feat, feat.transpose(1, 2))  # dL/dw_k per pixel: (n_t, P, L)
            grad_feat.index_add_(0, chunk.ids.flatten(), torch.bmm(w.transpose(1, 2), g_feat).flatten(0, 1))
            wh = w * h
            s_in = suffix[chunk.tiles]
            prefix = torch.cumsum(wh, dim=-1)
            total = prefix[..., -1].clone()
            suffix[chunk.tiles] = s_in + total
            # dL/dalpha_k = T_k h_k - (sum_{j>k} w_j h_j + S_in) / (1 - alpha_k), with
            # sum_{j>k} w_j h_j = total - prefix_k
            rest = prefix.neg_().add_((total + s_in)[..., None])
            v = h.mul_(res["t_excl"]).sub_(rest.div_(torch.sub(1.0, alpha)))
            del wh, rest, prefix
            v.mul_(res["live"])
            v_g = v.mul_(res["gauss"])  # dL/dalpha * dalpha/do; dL/dsigma = -o * v_g
            # pixel sums of v_g * (1, dx, dy, dx^2, dx dy, dy^2) from moments in tile-local coordinates
            mom = torch.matmul(basis, v_g)  # (n_t, 6, L)
            s0, sx, sy, sxx, sxy, syy = mom.unbind(1)
            in_image = chunk.tiles % (plan.tiles_x * plan.tiles_y)
            centre_x = (in_image % plan.tiles_x).to(dtype) * ts + 0.5 * ts
            centre_y = (in_image // plan.tiles_x).to(dtype) * ts + 0.5 * ts
            mxl = g[..., _MX] - centre_x[:, None]
            myl = g[..., _MY] - centre_y[:, None]
            sum_dx = sx - mxl * s0
            sum_dy = sy - myl * s0
            sum_dxx = sxx - 2 * mxl * sx + mxl * mxl * s0
            sum_dxy = sxy - mxl * sy - myl * sx + mxl * myl * s0
            sum_dyy = syy - 2 * myl * sy + myl * myl * s0
            ca, cb, cc, op = g[..., _CA], g[..., _CB], g[..., _CC], g[..., _OP]
            # sigma = a dx^2 / 2 + b dx dy + c dy^2 / 2 with dx = px - mx
            rows = torch.stack([op * (ca * sum_dx + cb * sum_dy), op * (cc * sum_dy + cb * sum_dx),
                                -0.5 * op * sum_dxx, -op * sum_dxy, -0.5 * op * sum_dyy, s0], dim=-1)
            grad_table.index_add_(0, chunk.ids.flatten(), rows.flatten(0, 1))
        grad_table, grad_feat = grad_table[:cams_n], grad_feat[:cams_n]
        return (grad_table[:, 0:2], grad_table[:, 2:5], grad_table[:, 5], grad_feat, None, None)


def _param_table(means2d, conics, opacities, features, radii_xy) -> torch.Tensor:
    """``(C*N + 1, 12)`` rows ``mx, my, a, b, c, o, rx, ry, r, g, b, z``; the last row (padding) is 0."""
    table = torch.cat([means2d, conics, opacities[:, None], radii_xy.to(means2d.dtype), features], dim=-1)
    return torch.cat([table, table.new_zeros(1, table.shape[1])], dim=0)


def _rasterize_torch(means, quats, log_scales, opacity_logits, colors, viewmats, Ks, width, height, degree,
                     background, near, far, eps2d, tile_size, budget) -> RenderedImages:
    cams, num = viewmats.shape[0], means.shape[0]
    opacities = torch.sigmoid(opacity_logits)
    proj = _project(means, quats, log_scales, opacities, viewmats, Ks, width, height, near, far, eps2d)
    rgb = _view_colors(colors, degree, means, viewmats)  # (C, N, 3)
    with torch.no_grad():
        plan = _bin_tiles(proj.means2d.detach(), proj.radii_xy, proj.depths.detach(), width, height, tile_size,
                          budget)
    features = torch.cat([rgb, proj.depths[..., None]], dim=-1).reshape(cams * num, 4)
    acc_rgb, depth, trans = _Composite.apply(proj.means2d.reshape(cams * num, 2), proj.conics.reshape(cams * num, 3),
                                             opacities[None, :].expand(cams, num).reshape(cams * num), features,
                                             proj.radii_xy.reshape(cams * num, 2), plan)
    if background is not None:
        acc_rgb = acc_rgb + trans * background[:, None, None, :]
    return RenderedImages(rgb=acc_rgb, depth=depth, alpha=1.0 - trans, radii=proj.radii_xy.amax(dim=-1),
                          means2d=proj.means2d, depths=proj.depths)


# --------------------------------------------------------------------------- gsplat


def _rasterize_gsplat(means, quats, log_scales, opacity_logits, colors, viewmats, Ks, width, height, degree,
                      background, near, far, eps2d, tile_size) -> RenderedImages:
    """``gsplat.rasterization`` in classic mode with the same inputs and outputs (CUDA float32)."""
    from gsplat import rasterization

    if degree is not None:
        colors = colors[:, : (degree + 1) ** 2]
    render, alphas, meta = rasterization(
        means, quats, torch.exp(log_scales), torch.sigmoid(opacity_logits), colors, viewmats, Ks, width, height,
        near_plane=near, far_plane=far, eps2d=eps2d, sh_degree=degree, packed=False, tile_size=tile_size,
        backgrounds=background, render_mode="RGB+D", rasterize_mode="classic")
    radii = meta["radii"]
    visible = (radii > 0).all(dim=-1)
    means2d = meta["means2d"]
    return RenderedImages(rgb=render[..., :3], depth=render[..., 3:4], alpha=alphas,
                          radii=radii.amax(dim=-1).to(torch.int32) * visible, means2d=means2d,
                          depths=meta["depths"])
