"""pc3d.ops.rasterize_gaussians against a float64 brute-force renderer, hand-computed cases and gradcheck.

The reference below is written from the model in the module docstring, independently of
pc3d's code: rotations from scipy's quaternion (scalar-last) convention, spherical harmonics
from scipy's complex ``Y_l^m``, and a per-pixel loop over *every* Gaussian (no tiles, no
chunks) in depth order with the same alpha clamp / 1/255 skip / exclusive transmittance stop
/ radius-box rule.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from scipy.special import sph_harm_y

from pc3d.errors import ConfigError
from pc3d.ops import backends, rasterize_gaussians
from pc3d.ops import rasterize as rast

# --------------------------------------------------------------------------- reference


def real_sh_basis(degree: int, dirs: np.ndarray) -> np.ndarray:
    """``(M, (degree+1)^2)`` real SH in the 3DGS order (index l^2 + l + m) and signs.

    3DGS keeps the Condon-Shortley phase of the complex ``Y_l^m``: the real basis is
    ``sqrt(2) Re Y_l^m`` (m > 0), ``Y_l^0``, ``sqrt(2) Im Y_l^|m|`` (m < 0).
    """
    theta = np.arccos(np.clip(dirs[:, 2], -1, 1))
    phi = np.arctan2(dirs[:, 1], dirs[:, 0])
    cols = []
    for l in range(degree + 1):
        for m in range(-l, l + 1):
            y = sph_harm_y(l, abs(m), theta, phi)
            cols.append(y.real if m == 0 else math.sqrt(2) * (y.real if m > 0 else y.imag))
    return np.stack(cols, axis=1)


def ref_render(scene: dict, width: int, height: int, *, sh_degree=None, background=None, near=0.01,
               far=1e10, eps2d=0.3) -> dict:
    """Brute force, float64: every pixel against every Gaussian, in depth order."""
    f64 = {k: v.detach().double().numpy() if isinstance(v, torch.Tensor) else v for k, v in scene.items()}
    means, quats, log_scales, logits, colors = (f64[k] for k in ("means", "quats", "log_scales",
                                                                 "opacity_logits", "colors"))
    viewmats, ks = f64["viewmats"], f64["Ks"]
    n, cams = len(means), len(viewmats)
    rot = Rotation.from_quat(quats[:, [1, 2, 3, 0]]).as_matrix()  # scipy: x, y, z, w
    scales = np.exp(log_scales)
    cov = np.einsum("nij,nj,nkj->nik", rot, scales ** 2, rot)
    opac = 1.0 / (1.0 + np.exp(-logits))
    if background is not None:
        background = background.detach().double().numpy()
        background = np.broadcast_to(background, (cams, 3))
    jj, ii = np.meshgrid(np.arange(width), np.arange(height))
    px, py = jj + 0.5, ii + 0.5
    out = {k: np.zeros((cams, height, width, d)) for k, d in (("rgb", 3), ("depth", 1), ("alpha", 1))}
    out["radii"] = np.zeros((cams, n), dtype=np.int64)
    out["means2d"] = np.zeros((cams, n, 2))
    out["stops"] = 0
    for c in range(cams):
        w_rot, w_t = viewmats[c, :3, :3], viewmats[c, :3, 3]
        fx, fy, cx, cy = ks[c, 0, 0], ks[c, 1, 1], ks[c, 0, 2], ks[c, 1, 2]
        campos = -w_rot.T @ w_t
        gauss = []
        for i in range(n):
            mc = w_rot @ means[i] + w_t
            x, y, z = mc
            if not near <= z <= far:
                continue
            lim_x = (cx / fx + 0.15 * width / fx, (width - cx) / fx + 0.15 * width / fx)
            lim_y = (cy / fy + 0.15 * height / fy, (height - cy) / fy + 0.15 * height / fy)
            u = min(max(x / z, -lim_x[0]), lim_x[1])
            v = min(max(y / z, -lim_y[0]), lim_y[1])
            jac = np.array([[fx / z, 0, -fx * u / z], [0, fy / z, -fy * v / z]])
            cov2 = jac @ (w_rot @ cov[i] @ w_rot.T) @ jac.T + eps2d * np.eye(2)
            if np.linalg.det(cov2) <= 0 or opac[i] < 1 / 255:
                continue
            ext = min(3.33, math.sqrt(2 * math.log(255 * opac[i])))
            r = np.ceil(ext * np.sqrt(np.diag(cov2)))
            m2 = np.array([fx * x / z + cx, fy * y / z + cy])
            if m2[0] + r[0] <= 0 or m2[0] - r[0] >= width or m2[1] + r[1] <= 0 or m2[1] - r[1] >= height:
                continue
            if colors.ndim == 2:
                rgb = colors[i]
            else:
                d = sh_degree if sh_degree is not None else math.isqrt(colors.shape[1]) - 1
                direction = means[i] - campos
                basis = real_sh_basis(d, (direction / np.linalg.norm(direction))[None])[0]
                rgb = np.maximum(basis @ colors[i, : (d + 1) ** 2] + 0.5, 0)
            out["radii"][c, i] = int(r.max())
            out["means2d"][c, i] = m2
            gauss.append((z, i, m2, np.linalg.inv(cov2), r, rgb))
        gauss.sort(key=lambda g: (g[0], g[1]))
        trans = np.ones((height, width))
        done = np.zeros((height, width), dtype=bool)
        for z, i, m2, conic, r, rgb in gauss:
            dx, dy = px - m2[0], py - m2[1]
            sigma = 0.5 * (conic[0, 0] * dx * dx + conic[1, 1] * dy * dy) + conic[0, 1] * dx * dy
            alpha = np.minimum(0.999, opac[i] * np.exp(-sigma))
            consider = (np.abs(dx) <= r[0]) & (np.abs(dy) <= r[1]) & (sigma >= 0) & (alpha >= 1 / 255) & ~done
            nxt = trans * (1 - alpha)
            stop = consider & (nxt <= 1e-4)
            out["stops"] += int(stop.sum())
            done |= stop
            add = consider & ~stop
            wgt = np.where(add, alpha * trans, 0.0)
            out["rgb"][c] += wgt[..., None] * rgb
            out["depth"][c, ..., 0] += wgt * z
            trans = np.where(add, nxt, trans)
        out["alpha"][c, ..., 0] = 1 - trans
        if background is not None:
            out["rgb"][c] += trans[..., None] * background[c]
    return out


# --------------------------------------------------------------------------- scenes


def look_at(eye, target, up=(0.0, -1.0, 0.0)) -> torch.Tensor:
    """OpenCV world-to-camera (+z towards ``target``, +y along ``-up``)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    y = -up - np.dot(-up, z) * z
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    mat = np.eye(4)
    mat[:3, :3] = np.stack([x, y, z])
    mat[:3, 3] = -mat[:3, :3] @ eye
    return torch.tensor(mat)


def intrinsics(f: float, width: int, height: int) -> torch.Tensor:
    return torch.tensor([[f, 0.0, width / 2], [0.0, f * 1.1, height / 2 - 1.5], [0.0, 0.0, 1.0]],
                        dtype=torch.float64)


def random_scene(seed: int, n: int, cams: int = 1, *, sh_degree: int | None = None, width=37, height=29,
                 spread=1.0, scale=(-3.0, -1.6), logits=(-1.0, 3.0)) -> dict:
    """Gaussians around the origin, cameras on a circle ~4 units away looking at it (float64)."""
    g = torch.Generator().manual_seed(seed)
    scene = {
        "means": (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 2 * spread,
        "quats": torch.randn(n, 4, generator=g, dtype=torch.float64),
        "log_scales": scale[0] + (scale[1] - scale[0]) * torch.rand(n, 3, generator=g, dtype=torch.float64),
        "opacity_logits": logits[0] + (logits[1] - logits[0]) * torch.rand(n, generator=g, dtype=torch.float64),
    }
    if sh_degree is None:
        scene["colors"] = torch.rand(n, 3, generator=g, dtype=torch.float64)
    else:
        scene["colors"] = 0.6 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=torch.float64)
    angles = [0.0, 0.9, -1.3, 2.4][:cams]
    scene["viewmats"] = torch.stack([look_at((4 * math.sin(a), 0.3 * i, -4 * math.cos(a)), (0, 0, 0))
                                     for i, a in enumerate(angles)])
    scene["Ks"] = torch.stack([intrinsics(34.0 + 3 * i, width, height) for i in range(cams)])
    return scene


def special_scene() -> dict:
    """The cases a tiler can get wrong, in one camera at the origin looking along +z (32 x 24)."""
    means = torch.tensor([
        [0.0, 0.0, 3.0],      # centre
        [0.05, 0.02, 3.5],    # overlaps the first, behind it
        [-0.02, 0.0, 2.5],    # overlaps, in front
        [0.0, 0.0, -2.0],     # behind the camera
        [0.0, 0.0, 0.005],    # in front of the camera but nearer than `near`
        [30.0, 0.0, 3.0],     # projects far off-screen
        [-0.86, 0.3, 3.0],    # off-screen by less than its radius: clipped at the left border
        [0.0, -0.1875, 3.0],  # centre on the tile border y = 8 px (tile 8) / a tile-16 row
        [0.375, 0.0, 3.0],    # centre on the tile border x = 16 + 4 = 20 px
        [0.2, 0.2, 4.0],
    ], dtype=torch.float64)
    n = len(means)
    g = torch.Generator().manual_seed(3)
    return {
        "means": means,
        "quats": torch.randn(n, 4, generator=g, dtype=torch.float64),
        "log_scales": torch.log(torch.tensor([0.08, 0.12, 0.03] * n, dtype=torch.float64).view(n, 3)),
        "opacity_logits": torch.tensor([2.0, 1.0, 0.5, 3.0, 3.0, 3.0, 2.0, 1.5, 1.5, 0.0], dtype=torch.float64),
        "colors": torch.rand(n, 3, generator=g, dtype=torch.float64),
        "viewmats": torch.eye(4, dtype=torch.float64)[None],
        "Ks": torch.tensor([[[32.0, 0, 16.0], [0, 32.0, 12.0], [0, 0, 1]]], dtype=torch.float64),
    }


def opaque_stack_scene() -> dict:
    """Nearly opaque Gaussians in front of each other: the transmittance stop fires."""
    n = 8
    means = torch.tensor([[0.04 * i, -0.03 * i, 3.0 + 0.1 * i] for i in range(n)], dtype=torch.float64)
    return {
        "means": means,
        "quats": torch.tensor([[1.0, 0, 0, 0]] * n, dtype=torch.float64),
        "log_scales": torch.full((n, 3), math.log(0.8), dtype=torch.float64),
        "opacity_logits": torch.full((n,), 9.0, dtype=torch.float64),
        "colors": torch.rand(n, 3, dtype=torch.float64),
        "viewmats": torch.eye(4, dtype=torch.float64)[None],
        "Ks": torch.tensor([[[30.0, 0, 12.0], [0, 30.0, 10.0], [0, 0, 1]]], dtype=torch.float64),
    }


def render(scene: dict, width: int, height: int, dtype=torch.float64, **kwargs):
    args = {k: v.to(dtype) for k, v in scene.items()}
    if "background" in kwargs and kwargs["background"] is not None:
        kwargs["background"] = kwargs["background"].to(dtype)
    return rasterize_gaussians(args["means"], args["quats"], args["log_scales"], args["opacity_logits"],
                               args["colors"], args["viewmats"], args["Ks"], width, height, backend="torch",
                               **kwargs)


def assert_images(out, ref, atol):
    for key in ("rgb", "depth", "alpha"):
        got = getattr(out, key).detach().double().numpy()
        err = np.abs(got - ref[key]).max()
        assert err <= atol, f"{key}: max |torch - brute force| = {err:.3g} > {atol}"


CASES = {
    "random": (lambda: random_scene(0, 40), 37, 29, {}),
    "special": (special_scene, 32, 24, {}),
    "opaque_stack": (opaque_stack_scene, 24, 20, {}),
    "three_cameras_background": (lambda: random_scene(1, 30, cams=3), 40, 24,
                                 {"background": torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3], [0.1, 0.1, 0.1]])}),
    "sh0": (lambda: random_scene(2, 25, sh_degree=0), 33, 27, {"background": torch.tensor([0.3, 0.6, 0.1])}),
    "sh1": (lambda: random_scene(3, 25, cams=2, sh_degree=1), 33, 27, {}),
    "sh2": (lambda: random_scene(4, 25, cams=2, sh_degree=2), 33, 27, {}),
    "sh3": (lambda: random_scene(5, 25, cams=2, sh_degree=3), 33, 27, {}),
    "sh3_used_as_1": (lambda: random_scene(6, 25, cams=2, sh_degree=3), 33, 27, {"sh_degree": 1}),
    "near_far": (lambda: random_scene(7, 40, spread=2.5), 30, 30, {"near": 3.0, "far": 5.0}),
}


# --------------------------------------------------------------------------- agreement with the reference


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_path_equals_brute_force(case):
    make, width, height, kwargs = CASES[case]
    scene = make()
    ref = ref_render(scene, width, height, **kwargs)
    assert ref["alpha"].max() > 0.3, "the scene must draw something"
    if case == "opaque_stack":
        assert ref["stops"] > 50, "the transmittance stop must fire in this scene"
    out = render(scene, width, height, **kwargs)
    assert_images(out, ref, 1e-9)
    assert np.array_equal(out.radii.numpy(), ref["radii"])
    visible = ref["radii"] > 0
    np.testing.assert_allclose(out.means2d.detach().numpy()[visible], ref["means2d"][visible], atol=1e-9)
    out32 = render(scene, width, height, dtype=torch.float32, **kwargs)
    assert_images(out32, ref, 1e-5)


def test_special_scene_culls_what_it_should():
    out = render(special_scene(), 32, 24)
    radii = out.radii[0].tolist()
    assert radii[3] == 0 and radii[4] == 0 and radii[5] == 0, "behind / too near / off-screen are culled"
    assert all(r > 0 for i, r in enumerate(radii) if i not in (3, 4, 5))
    assert out.means2d[0, 3].abs().max() == 0


@pytest.mark.parametrize("case", ["random", "special", "three_cameras_background", "sh3"])
def test_tile_size_does_not_change_the_image(case):
    make, width, height, kwargs = CASES[case]
    scene = make()
    outs = {ts: render(scene, width, height, dtype=torch.float32, tile_size=ts, **kwargs) for ts in (8, 16, 32)}
    for ts in (8, 32):
        for key in ("rgb", "depth", "alpha"):
            diff = (getattr(outs[ts], key) - getattr(outs[16], key)).abs().max().item()
            assert diff <= 1e-6, f"tile_size {ts} vs 16: {key} differs by {diff}"
        assert torch.equal(outs[ts].radii, outs[16].radii)


def test_tile_size_does_not_change_the_gradients():
    scene = random_scene(13, 40, cams=2, sh_degree=2)
    grads = {}
    for ts in (8, 16, 32):
        leaves = {k: v.clone().requires_grad_() for k, v in scene.items()}
        out = render(leaves, 37, 29, tile_size=ts)
        (out.rgb.sum() + 0.3 * out.depth.sum() + out.alpha.square().sum()).backward()
        grads[ts] = {k: v.grad for k, v in leaves.items()}
    for ts in (8, 32):
        for key, grad in grads[ts].items():
            torch.testing.assert_close(grad, grads[16][key], rtol=1e-9, atol=1e-12, msg=key)


def test_chunking_gives_the_same_result_and_gradients_as_one_chunk():
    scene = random_scene(8, 60, cams=2, sh_degree=1, scale=(-2.2, -1.2))
    width, height = 30, 26
    results = []
    for chunk in (1 << 24, 256 * 7, 100):  # one block; several tiles per block; lists split in segments
        leaves = {k: v.clone().requires_grad_() for k, v in scene.items()}
        out = render(leaves, width, height, tile_size=16, chunk_elements=chunk,
                     background=torch.tensor([0.1, 0.2, 0.3]))
        loss = (out.rgb * torch.linspace(0, 1, 3)).sum() + out.depth.sum() * 0.1 + out.alpha.square().sum()
        loss.backward()
        results.append((out, {k: v.grad for k, v in leaves.items()}))
    (ref_out, ref_grads), rest = results[0], results[1:]
    assert ref_out.alpha.max() > 0.5
    for out, grads in rest:
        for key in ("rgb", "depth", "alpha"):
            torch.testing.assert_close(getattr(out, key), getattr(ref_out, key), rtol=0, atol=1e-12)
        for key, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[key], rtol=1e-9, atol=1e-12, msg=key)


# --------------------------------------------------------------------------- hand-computed cases


def test_isotropic_gaussian_projects_to_the_expected_mean_and_radius():
    f, cx, cy, z, sigma, logit = 50.0, 20.0, 15.0, 4.0, 0.2, 1.0
    o = 1 / (1 + math.exp(-logit))
    means = torch.tensor([[0.0, 0.0, z], [1.2, -0.8, 5.0]], dtype=torch.float64)  # the second far from the first
    scene = {"means": means, "quats": torch.tensor([[1.0, 0, 0, 0], [0.3, 0.2, -0.5, 0.1]], dtype=torch.float64),
             "log_scales": torch.full((2, 3), math.log(sigma), dtype=torch.float64),
             "opacity_logits": torch.tensor([logit, logit], dtype=torch.float64),
             "colors": torch.tensor([[1.0, 0.5, 0.25], [0.0, 0.0, 0.0]], dtype=torch.float64),
             "viewmats": torch.eye(4, dtype=torch.float64)[None],
             "Ks": torch.tensor([[[f, 0, cx], [0, f, cy], [0, 0, 1]]], dtype=torch.float64)}
    out = render(scene, 40, 30)
    # the mean projects to (f X / Z + cx, f Y / Z + cy)
    torch.testing.assert_close(out.means2d[0], torch.tensor([[cx, cy], [f * 1.2 / 5 + cx, -f * 0.8 / 5 + cy]],
                                                            dtype=torch.float64))
    # an isotropic Gaussian on the axis has image-plane standard deviation sigma f / z (plus eps2d)
    s2 = (sigma * f / z) ** 2 + 0.3
    extent = math.sqrt(2 * math.log(255 * o))
    assert out.radii[0, 0].item() == math.ceil(extent * math.sqrt(s2))
    # the pixel at offset (dx, dy) from the centre gets alpha o exp(-(dx^2 + dy^2) / (2 s2)) of its colour
    for i, j in ((15, 20), (15, 22), (13, 19), (16, 24)):
        d2 = (j + 0.5 - cx) ** 2 + (i + 0.5 - cy) ** 2
        alpha = o * math.exp(-d2 / (2 * s2))
        torch.testing.assert_close(out.alpha[0, i, j, 0].item(), alpha, rtol=1e-12, atol=0)
        torch.testing.assert_close(out.rgb[0, i, j], alpha * torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64))
        torch.testing.assert_close(out.depth[0, i, j, 0].item(), alpha * z)
        torch.testing.assert_close(out.expected_depth[0, i, j, 0].item(), z)


def test_sh_degree0_colour_is_c0_times_coefficient_plus_half():
    scene = special_scene()
    sh = torch.tensor([[[0.8, -0.2, -3.0]]], dtype=torch.float64).expand(len(scene["means"]), 1, 3).clone()
    sh[1] = torch.tensor([[-1.5, 0.9, -2.0]])
    rgb = torch.clamp_min(rast.SH_C0 * sh[:, 0] + 0.5, 0.0)  # the blue -3.0 clamps to 0
    assert rast.SH_C0 == pytest.approx(1 / (2 * math.sqrt(math.pi)))
    out_sh = render({**scene, "colors": sh}, 32, 24)
    out_rgb = render({**scene, "colors": rgb}, 32, 24)
    torch.testing.assert_close(out_sh.rgb, out_rgb.rgb, rtol=0, atol=1e-15)
    assert out_sh.rgb[..., 2].abs().max() < 1e-15 and out_sh.rgb[..., 0].max() > 0.3


def test_sh_basis_matches_scipy():
    dirs = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=-1)
    np.testing.assert_allclose(rast._sh_basis(3, dirs).numpy(), real_sh_basis(3, dirs.numpy()), atol=1e-12)


def test_empty_scene_is_the_background():
    scene = {k: v[:0] for k, v in special_scene().items() if k not in ("viewmats", "Ks")}
    scene.update({k: special_scene()[k] for k in ("viewmats", "Ks")})
    out = render(scene, 9, 7, background=torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    assert torch.equal(out.rgb, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64).expand(1, 7, 9, 3))
    assert out.alpha.abs().max() == 0 and out.radii.shape == (1, 0)


# --------------------------------------------------------------------------- gradients


def gradcheck_scene() -> dict:
    """4 Gaussians filling an 8 x 8 image, chosen away from every discontinuity.

    The compositing rules are piecewise: alpha is clamped at 0.999, skipped below 1/255, and a
    pixel stops where the transmittance would fall to 1e-4; the radii are ceil()ed. Finite
    differences across such a jump are meaningless, so here every Gaussian is wide (its
    alpha is >= 1/255 at every pixel, far from the skip threshold), opacities are <= 0.75
    (alpha < 0.999) and four of them leave T >= 0.25^4 >> 1e-4; so the radius boxes cover the
    whole image and a changed ceil() changes nothing. test_gradcheck_scene_is_smooth asserts
    these margins.
    """
    g = torch.Generator().manual_seed(11)
    n = 4
    return {
        "means": torch.tensor([[0.05, -0.04, 3.0], [-0.1, 0.06, 3.3], [0.12, 0.1, 3.6], [-0.03, -0.12, 2.8]],
                              dtype=torch.float64),
        "quats": torch.randn(n, 4, generator=g, dtype=torch.float64),
        "log_scales": torch.log(1.4 * torch.tensor([[0.5, 0.3, 0.4], [0.35, 0.45, 0.3], [0.4, 0.4, 0.5],
                                              [0.3, 0.5, 0.35]], dtype=torch.float64)),
        "opacity_logits": torch.tensor([0.3, -0.4, 1.0, 0.0], dtype=torch.float64),
        "colors": torch.rand(n, 3, generator=g, dtype=torch.float64),
        "viewmats": look_at((0.1, -0.05, -0.2), (0.0, 0.0, 3.0)),
        "Ks": torch.tensor([[[20.0, 0, 4.0], [0, 21.0, 4.2], [0, 0, 1]]], dtype=torch.float64),
    }


def test_gradcheck_scene_is_smooth():
    scene = gradcheck_scene()
    scene["viewmats"] = scene["viewmats"][None]
    ref = ref_render(scene, 8, 8)
    opac = torch.sigmoid(scene["opacity_logits"])
    assert opac.max() < 0.75 and ref["alpha"].max() < 1 - 0.25 ** 4
    # every Gaussian is drawn at every pixel (inside its box) with alpha well above 1/255
    for i in range(4):
        alone = {k: (v[i:i + 1] if k not in ("viewmats", "Ks") else v) for k, v in scene.items()}
        assert ref_render(alone, 8, 8)["alpha"].min() > 4 / 255


def _gradcheck_render(names, scene, sh_degree=None, background=None):
    def fn(*tensors):
        args = dict(scene, **dict(zip(names, tensors)))
        args["viewmats"] = args["viewmats"].reshape(1, 4, 4)
        out = rasterize_gaussians(args["means"], args["quats"], args["log_scales"], args["opacity_logits"],
                                  args["colors"], args["viewmats"], args["Ks"], 8, 8, sh_degree=sh_degree,
                                  background=args.get("background"), backend="torch", tile_size=4)
        return out.rgb, out.depth, out.alpha
    return fn


@pytest.mark.parametrize("names", [("means",), ("quats",), ("log_scales",), ("opacity_logits",), ("colors",),
                                   ("viewmats", "Ks"), ("background",)])
def test_gradcheck(names):
    scene = gradcheck_scene()
    scene["background"] = torch.tensor([0.3, 0.1, 0.7], dtype=torch.float64)
    inputs = tuple(scene[k].clone().requires_grad_() for k in names)
    assert torch.autograd.gradcheck(_gradcheck_render(names, scene), inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_sh_coefficients_and_means_through_view_direction():
    scene = gradcheck_scene()
    g = torch.Generator().manual_seed(5)
    scene["colors"] = 0.3 * torch.randn(4, 16, 3, generator=g, dtype=torch.float64)
    scene["colors"][:, 0] += 1.0  # keep SH + 0.5 away from the clamp at 0
    names = ("colors", "means")
    inputs = tuple(scene[k].clone().requires_grad_() for k in names)
    assert torch.autograd.gradcheck(_gradcheck_render(names, scene), inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_means2d_grad_is_the_image_space_gradient():
    """Shifting the principal point cx by d moves every 2D mean by d in x and nothing else, so
    dL/dcx (finite differences) = sum over Gaussians of means2d.grad[..., 0]."""
    scene = random_scene(9, 30, sh_degree=None)
    width, height = 37, 29

    def loss_at(shift: float, grad: bool):
        leaves = {k: v.clone() for k, v in scene.items()}
        leaves["Ks"][0, 0, 2] += shift
        leaves["means"].requires_grad_(grad)
        out = render(leaves, width, height)
        weights = torch.linspace(0.2, 1.0, width, dtype=torch.float64)[None, None, :, None]
        return (out.rgb * weights).sum() + (out.alpha * weights).sum(), out

    loss, out = loss_at(0.0, True)
    loss.backward()
    assert out.means2d.grad is not None and out.means2d.grad.shape == (1, 30, 2)
    assert torch.all(out.means2d.grad[out.radii == 0] == 0)
    h = 1e-5
    numeric = (loss_at(h, False)[0] - loss_at(-h, False)[0]) / (2 * h)
    assert abs(numeric.item()) > 1e-2
    torch.testing.assert_close(out.means2d.grad[..., 0].sum(), numeric, rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------- bad input


def _good():
    s = special_scene()
    return dict(means=s["means"], quats=s["quats"], log_scales=s["log_scales"], opacity_logits=s["opacity_logits"],
                colors=s["colors"], viewmats=s["viewmats"], Ks=s["Ks"], width=32, height=24)


def _with(**changes):
    args = _good()
    args.update(changes)
    return args


def _nan(name, index):
    t = _good()[name].clone()
    t.view(-1)[index] = float("nan")
    return {name: t}


BAD = [
    ({"means": torch.zeros(10, 2, dtype=torch.float64)}, ValueError, r"means: expected shape \(N, 3\)"),
    ({"quats": torch.zeros(9, 4, dtype=torch.float64)}, ValueError, r"quats: expected shape \(N, 4\)"),
    ({"log_scales": torch.zeros(10, dtype=torch.float64)}, ValueError, r"log_scales: expected shape \(N, 3\)"),
    ({"opacity_logits": torch.zeros(10, 1, dtype=torch.float64)}, ValueError, r"opacity_logits: expected shape"),
    ({"colors": torch.zeros(10, 4, dtype=torch.float64)}, ValueError, r"colors: expected shape \(N, 3\) RGB"),
    ({"colors": torch.zeros(10, 5, 3, dtype=torch.float64)}, ValueError, r"colors: expected K = \(degree \+ 1\)"),
    ({"viewmats": torch.zeros(1, 3, 4, dtype=torch.float64)}, ValueError, r"viewmats: expected shape \(C, 4, 4\)"),
    ({"viewmats": torch.zeros(0, 4, 4, dtype=torch.float64), "Ks": torch.zeros(0, 3, 3, dtype=torch.float64)},
     ValueError, "viewmats: expected at least one camera"),
    ({"Ks": torch.zeros(2, 3, 3, dtype=torch.float64)}, ValueError, r"Ks: expected shape \(C, 3, 3\)"),
    (_nan("means", 4), ValueError, "means: contains NaN"),
    (_nan("log_scales", 0), ValueError, "log_scales: contains NaN"),
    ({"means": torch.zeros(10, 3, dtype=torch.float32)}, ValueError, "quats: expected dtype torch.float32"),
    ({"width": 0}, ConfigError, "width=0: expected a positive int"),
    ({"height": -3}, ConfigError, "height=-3: expected a positive int"),
    ({"width": 3.5}, ConfigError, "width=3.5"),
    ({"tile_size": 0}, ConfigError, "tile_size=0"),
    ({"near": 0.0}, ConfigError, "near=0.0, far=10000000000.0: expected 0 < near < far"),
    ({"sh_degree": 4}, ConfigError, "sh_degree=4"),
    ({"sh_degree": 1}, ValueError, r"colors: sh_degree=1 needs SH coefficients"),
    ({"background": torch.zeros(2, 3, dtype=torch.float64)}, ValueError, r"background: expected shape \(3,\)"),
    ({"backend": "bogus"}, ConfigError, "backend='bogus': unknown ops backend"),
    ({"backend": "gsplat"}, ConfigError, "backend='gsplat': gsplat runs on CUDA tensors only"),
]


@pytest.mark.parametrize("changes, error, message", BAD, ids=[m[:30] for _, _, m in BAD])
def test_bad_input_raises_one_clear_line(changes, error, message):
    with pytest.raises(error, match=message) as info:
        rasterize_gaussians(**_with(**changes))
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- backends


def test_auto_picks_gsplat_only_for_cuda_float32(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert backends.resolve_backend("auto", "rasterize_gaussians", torch.zeros(1, 3)) == "torch"
    monkeypatch.setattr(backends, "is_installed", lambda name: True)
    fake = types.SimpleNamespace(is_cuda=True, dtype=torch.float32, device="cuda:0")
    assert backends.resolve_backend("auto", "rasterize_gaussians", fake) == "gsplat"
    fake64 = types.SimpleNamespace(is_cuda=True, dtype=torch.float64, device="cuda:0")
    assert backends.resolve_backend("auto", "rasterize_gaussians", fake64) == "torch"
    assert backends.resolve_backend("auto", "rasterize_gaussians", torch.zeros(1, 3)) == "torch"
    monkeypatch.setenv(backends.ENV_VAR, "gsplat")  # the variable falls back to torch on CPU tensors
    assert backends.resolve_backend("auto", "rasterize_gaussians", torch.zeros(1, 3)) == "torch"
    assert backends.resolve_backend("auto", "knn", torch.zeros(1, 2, 3)) == "torch"


def test_gsplat_matches_torch_path():
    if not torch.cuda.is_available():
        pytest.skip("gsplat's kernels run on CUDA only and this machine has no GPU; the torch path is tested above")
    pytest.importorskip("gsplat", reason="gsplat not installed (pip install gsplat==1.5.3)")
    device = torch.device("cuda")
    scene = random_scene(12, 200, cams=2, sh_degree=3, width=64, height=48, scale=(-3.0, -2.0), logits=(-1.0, 1.0))
    bg = torch.tensor([0.2, 0.4, 0.6], device=device)
    outs, grads = {}, {}
    for backend in ("torch", "gsplat"):
        leaves = {k: v.float().to(device).requires_grad_() for k, v in scene.items() if k not in ("viewmats", "Ks")}
        out = rasterize_gaussians(leaves["means"], leaves["quats"], leaves["log_scales"], leaves["opacity_logits"],
                                  leaves["colors"], scene["viewmats"].float().to(device),
                                  scene["Ks"].float().to(device), 64, 48, background=bg, backend=backend)
        (out.rgb.sum() + 0.1 * out.depth.sum() + out.alpha.sum()).backward()
        outs[backend], grads[backend] = out, {k: v.grad for k, v in leaves.items()}
    ref, got = outs["torch"], outs["gsplat"]
    assert ref.alpha.max() > 0.5
    for key in ("rgb", "depth", "alpha"):
        err = (getattr(got, key) - getattr(ref, key)).abs().max().item()
        assert err <= 1e-4 * (10 if key == "depth" else 1), f"{key}: gsplat vs torch differ by {err}"
    # radii are ceil()s of float32 expressions: allow a rare off-by-one at an integer boundary
    assert (got.radii - ref.radii).abs().max() <= 1 and (got.radii != ref.radii).float().mean() < 0.01
    visible = (ref.radii > 0) & (got.radii > 0)
    assert visible.sum() >= 0.99 * (ref.radii > 0).sum()
    torch.testing.assert_close(got.means2d[visible], ref.means2d[visible], rtol=0, atol=1e-4)
    torch.testing.assert_close(got.means2d.grad[visible], ref.means2d.grad[visible], rtol=1e-2, atol=1e-4)
    for key, grad in grads["torch"].items():
        scale = grad.abs().max()
        assert (grads["gsplat"][key] - grad).abs().max() <= 1e-2 * scale, f"gradient of {key} differs"
