"""Radiance-grid files (pc3d.data.radiance_grid): NeRF-MAE's layout, density conventions, bad files."""

from __future__ import annotations

import numpy as np
import pytest

from pc3d.data.radiance_grid import (
    DENSITY_CONVENTIONS,
    RadianceGrid,
    density_to_alpha,
    read_radiance_grid,
    write_radiance_grid,
)
from pc3d.errors import ConfigError, DataFormatError


def _grid(seed: int = 0) -> RadianceGrid:
    rng = np.random.default_rng(seed)
    return RadianceGrid(rgb=rng.random((6, 4, 5, 3)), alpha=rng.random((6, 4, 5)),
                        box=np.array([[-1.0, -0.5, 0.0], [2.0, 1.5, 2.5]]))


def test_round_trip_keeps_every_value_and_records_alpha(tmp_path):
    grid = _grid()
    write_radiance_grid(tmp_path / "a.npz", grid)
    with np.load(tmp_path / "a.npz") as data:
        assert data["rgbsigma"].shape == (6, 4, 5, 4) and data["resolution"].tolist() == [6, 4, 5]
        assert str(data["density"]) == "alpha"
    back = read_radiance_grid(tmp_path / "a.npz")
    np.testing.assert_array_equal(back.rgb, grid.rgb)
    np.testing.assert_array_equal(back.alpha, grid.alpha)
    np.testing.assert_array_equal(back.box, grid.box)
    np.testing.assert_allclose(back.cell_size, [0.5, 0.5, 0.5])


def test_density_conventions_follow_nerf_maes_formulas():
    s = np.array([-3.0, 0.0, 2.0, 8.0])
    np.testing.assert_allclose(density_to_alpha(s, "instant_ngp"), np.clip(1 - np.exp(-np.exp(s) / 100), 0, 1),
                               rtol=1e-6)
    np.testing.assert_allclose(density_to_alpha(s, "relu"), 1 - np.exp(-np.maximum(s, 0) / 100), rtol=1e-6)
    np.testing.assert_allclose(density_to_alpha(np.array([0.0, 0.25, 1.0]), "alpha"), [0.0, 0.25, 1.0])
    with pytest.raises(ConfigError, match="unknown"):
        density_to_alpha(s, "exp")
    assert set(DENSITY_CONVENTIONS) == {"alpha", "instant_ngp", "relu"}


def _released(path, rgbsigma, **extra):
    """A grid in the layout NeRF-MAE's extraction scripts write (no density key)."""
    np.savez(path, rgbsigma=rgbsigma, resolution=np.array(rgbsigma.shape[:3]), **extra)


def test_a_released_grid_needs_its_convention_and_is_read_with_it(tmp_path):
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.random((4, 3, 2, 3)), rng.normal(0, 3, (4, 3, 2, 1))], axis=3).astype(np.float32)
    _released(tmp_path / "scene.npz", values, bbox_min=np.zeros(3), bbox_max=np.array([4.0, 3.0, 2.0]),
              scale=np.float32(1.0), offset=np.zeros(3))
    with pytest.raises(ConfigError, match="no density convention recorded"):
        read_radiance_grid(tmp_path / "scene.npz")
    grid = read_radiance_grid(tmp_path / "scene.npz", density="instant_ngp")
    np.testing.assert_allclose(grid.alpha, density_to_alpha(values[..., 3], "instant_ngp"))
    np.testing.assert_array_equal(grid.box, [[0, 0, 0], [4, 3, 2]])
    uint8 = (values[..., :3] * 255).astype(np.uint8)
    _released(tmp_path / "u8.npz", np.concatenate([uint8, np.full((4, 3, 2, 1), 255, np.uint8)], axis=3))
    grid = read_radiance_grid(tmp_path / "u8.npz", density="alpha")
    np.testing.assert_allclose(grid.rgb, uint8 / 255.0, atol=1e-7)
    assert (grid.alpha == 1).all() and grid.box.tolist() == [[0, 0, 0], [4, 3, 2]]


def test_a_flat_rgbsigma_is_reshaped_by_its_resolution(tmp_path):
    values = np.random.default_rng(2).random((3, 4, 5, 4)).astype(np.float32)
    np.savez(tmp_path / "flat.npz", rgbsigma=values.reshape(-1, 4), resolution=np.array([3, 4, 5]))
    np.testing.assert_array_equal(read_radiance_grid(tmp_path / "flat.npz", density="alpha").alpha, values[..., 3])


@pytest.mark.parametrize("case, error, match", [
    ("missing", DataFormatError, "not found"),
    ("not_npz", DataFormatError, "not a readable .npz"),
    ("no_rgbsigma", DataFormatError, "no 'rgbsigma'"),
    ("nan", DataFormatError, "non-finite value"),
    ("three_channels", DataFormatError, r"must be \(X, Y, Z, 4\)"),
    ("resolution", DataFormatError, "does not match resolution"),
    ("colours", DataFormatError, r"colours must be in \[0, 1\]"),
    ("box", DataFormatError, "bbox_max must exceed"),
    ("contradiction", ConfigError, "contradicts"),
    ("unknown", ConfigError, "unknown"),
    ("pickle", DataFormatError, "not a readable .npz"),
])
def test_bad_grid_files_are_one_clear_error(tmp_path, case, error, match):
    path = tmp_path / "g.npz"
    good = np.random.default_rng(3).random((2, 3, 4, 4)).astype(np.float32)
    density = "alpha"
    if case == "not_npz":
        path.write_bytes(b"PK\x03\x04 truncated")
    elif case == "no_rgbsigma":
        np.savez(path, grid=good)
    elif case == "nan":
        good[1, 2, 3, 3] = np.nan
        _released(path, good)
    elif case == "three_channels":
        _released(path, good[..., :3])
    elif case == "resolution":
        np.savez(path, rgbsigma=good, resolution=np.array([2, 3, 5]))
    elif case == "colours":
        good[0, 0, 0, 1] = 1.5
        _released(path, good)
    elif case == "box":
        _released(path, good, bbox_min=np.zeros(3), bbox_max=np.array([1.0, 0.0, 1.0]))
    elif case == "contradiction":
        write_radiance_grid(path, _grid())
        density = "relu"
    elif case == "unknown":
        _released(path, good)
        density = "sigma"
    elif case == "pickle":
        np.savez(path, rgbsigma=np.array([{"a": 1}], dtype=object))
    with pytest.raises(error, match=match) as info:
        read_radiance_grid(path, density=density)
    assert "\n" not in str(info.value)
    if case not in ("unknown",):
        assert str(path) in str(info.value)


def test_rewriting_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    write_radiance_grid(tmp_path / "a.npz", _grid(0))
    write_radiance_grid(tmp_path / "a.npz", _grid(1))
    np.testing.assert_array_equal(read_radiance_grid(tmp_path / "a.npz").alpha, _grid(1).alpha)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]
