"""The small helpers several modules share: each does what its callers rely on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pc3d.data.base import SampleDataset
from pc3d.data.cameras import Camera, PosedImages
from pc3d.data.grid_fitter import check_background_and_box, fit_split
from pc3d.errors import CheckpointError, ConfigError, DataFormatError
from pc3d.hub.weights import count_blocks, input_features_of_width, prefixed_state, read_module_file
from pc3d.ops.rasterize import SH_C0, rasterize_gaussians, rgb_to_sh
from pc3d.utils.atomic import atomic_write_png


def test_rgb_to_sh_renders_as_that_colour():
    colors = torch.tensor([[0.9, 0.2, 0.4]])
    sh = rgb_to_sh(colors)
    assert sh.shape == (1, 1, 3)
    torch.testing.assert_close(SH_C0 * sh[:, 0] + 0.5, colors)
    out = rasterize_gaussians(means=torch.tensor([[0.0, 0.0, 2.0]]), quats=torch.tensor([[1.0, 0, 0, 0]]),
                              log_scales=torch.full((1, 3), -1.0), opacity_logits=torch.tensor([20.0]), colors=sh,
                              viewmats=torch.eye(4)[None], Ks=torch.tensor([[[8.0, 0, 4], [0, 8.0, 4], [0, 0, 1]]]),
                              width=8, height=8)
    torch.testing.assert_close(out.rgb[0, 4, 4] / out.alpha[0, 4, 4], colors[0])  # one Gaussian on black
    np.testing.assert_allclose(rgb_to_sh(colors.numpy()), sh.numpy(), rtol=1e-6)


def test_atomic_write_png_round_trips_and_a_failed_write_keeps_the_old_file(tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    image = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    atomic_write_png(path, torch.from_numpy(image))
    with Image.open(path) as png:
        assert png.size == (7, 5)
        np.testing.assert_array_equal(np.asarray(png), (image * 255 + 0.5).astype(np.uint8))
    before = path.read_bytes()
    with pytest.raises(Exception):
        atomic_write_png(path, np.zeros((5, 7, 3, 2), np.uint8))  # not an image PIL can write
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


class _Samples(SampleDataset):
    def __init__(self, seed: int, augment: bool) -> None:
        self.seed, self.augment = seed, augment


def test_sample_rng_depends_on_seed_epoch_and_index_only():
    draw = lambda data, index: data.sample_rng(index).random()  # noqa: E731
    data = _Samples(3, augment=True)
    first = draw(data, 5)
    assert draw(_Samples(3, True), 5) == first and draw(data, 6) != first and draw(_Samples(4, True), 5) != first
    data.set_epoch(2)
    assert data.epoch == 2 and draw(data, 5) != first
    fixed = _Samples(3, augment=False)
    fixed.set_epoch(7)  # without augmentation every epoch draws the same
    assert draw(fixed, 5) == first


def test_prefixed_state_finds_a_module_under_its_prefix():
    weights = {"a.x": torch.ones(1), "a.y": torch.zeros(1), "other": torch.ones(2)}
    assert prefixed_state({"state_dict": weights}, ("b.", "a."), ("x", "y")) == ({"x": weights["a.x"],
                                                                                  "y": weights["a.y"]}, "a.")
    assert prefixed_state(weights, ("a.",), ("x", "z")) is None
    assert prefixed_state({"a.x": torch.ones(1), "a.y": "not a tensor"}, ("a.",), ("x",)) is None
    assert prefixed_state([1, 2], ("a.",), ("x",)) is None


def test_count_blocks_and_input_features_of_width():
    keys = {"enc.0.block0.w": 0, "enc.0.block1.w": 0, "enc.2.block0.w": 0, "dec.0.block0.w": 0}
    assert count_blocks(keys, r"enc\.(\d+)\.block(\d+)\.w") == {0: 2, 2: 1}
    assert input_features_of_width(6, "f") == ["color", "normal"] and input_features_of_width(3, "f") == ["color"]
    with pytest.raises(CheckpointError, match="f: MSM takes 4 input channels"):
        input_features_of_width(4, "f: MSM")


def test_read_module_file_names_the_file_it_refuses(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"x": torch.ones(1)}, path)
    assert read_module_file(path, lambda obj: obj.get("x"), "no x") is not None
    with pytest.raises(CheckpointError, match=r"w\.pt: no y"):
        read_module_file(path, lambda obj: obj.get("y"), "no y")


def _posed(count: int) -> PosedImages:
    cameras = [Camera(name=f"c{i}", intrinsics=np.eye(3), camera_to_world=np.eye(4), width=4, height=4)
               for i in range(count)]
    return PosedImages(cameras=cameras)


def test_fit_split_holds_out_every_nth_view_and_refuses_an_empty_training_set():
    train, held = fit_split(_posed(10), 8, "grid fit")
    assert list(held) == [0, 8] and len(train) == 8
    train, held = fit_split(_posed(3), 0, "grid fit")
    assert list(train) == [0, 1, 2] and len(held) == 0
    with pytest.raises(ConfigError, match="gaussian fit: holdout_every=1 leaves no training view of 3"):
        fit_split(_posed(3), 1, "gaussian fit")


@pytest.mark.parametrize("background, box, match", [
    ([1, 1], None, "background"), ([0, 0, 2], None, "background"),
    (None, [[0, 0, 0], [1, -1, 1]], "box"), (None, [[0, 0], [1, 1]], "box")])
def test_check_background_and_box_names_the_fit(background, box, match):
    check_background_and_box("grid fit", [0, 0.5, 1], [[0, 0, 0], [1, 1, 1]])
    with pytest.raises(ConfigError, match=f"grid fit: {match}"):
        check_background_and_box("grid fit", background, box)


def test_read_file_manifest_checks_its_scenes(tmp_path):
    import json

    from pc3d.data.folders import read_file_manifest

    (tmp_path / "manifest.json").write_text(json.dumps({"format": "f1", "scenes": {"a": {"file": "a.ply"}}}))
    assert read_file_manifest(tmp_path, "f1", "", "scene", ".ply")["scenes"] == {"a": {"file": "a.ply"}}
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "f1", "scenes": {"a": {}}}))
    with pytest.raises(DataFormatError, match="'scenes' must map scene names"):
        read_file_manifest(tmp_path, "f1", "", "scene", ".ply")
    with pytest.raises(DataFormatError, match="not a f2 manifest"):
        read_file_manifest(tmp_path, "f2", "", "scene", ".ply")
