"""Coloured scans with classes and boxes as radiance grids (pc3d/data/scan_grids.py, `pc3d prep grid
format=scannet_scans|sunrgbd_scans`), and NeRF-MAE pretraining on them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require_shared
from pc3d.cli import main
from pc3d.data.detection_scenes import read_scannet_scene, read_sunrgbd_frame
from pc3d.data.radiance_grid import read_grid_folder, read_radiance_grid, write_radiance_grid
from pc3d.data.scan_grids import scan_to_grid, scannet_scan_grid, sunrgbd_scan_grid
from pc3d.data.scenes import nyu40_to_scannet20
from pc3d.errors import ConfigError, DataFormatError


def test_scan_to_grid_averages_colours_and_votes_classes_per_cell():
    points = np.array([[0.01, 0.01, 0.01], [0.04, 0.02, 0.03], [0.06, 0.01, 0.01], [0.07, 0.02, 0.02],
                       [0.16, 0.01, 0.09]])
    colors = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0], [0, 1.0, 0], [0.5, 0.5, 0.5]])
    labels = np.array([3, 1, 2, 4, -1])  # cell 0: a 3-1 tie; cell 1: a 2-4 tie; the last point unlabelled
    boxes, box_labels = np.array([[0.1, 0.0, 0.0, 0.1, 0.1, 0.1, 0.3]]), np.array([5])
    grid = scan_to_grid(points, colors, 0.05, labels=labels, boxes=boxes, box_labels=box_labels)
    assert grid.shape == (3, 1, 2) and np.allclose(grid.cell_size, 0.05)
    assert (grid.box[0] <= points.min(0)).all() and (grid.box[1] >= points.max(0)).all()
    index = np.clip(np.floor((points - grid.box[0]) / 0.05).astype(int), 0, np.array(grid.shape) - 1)
    np.testing.assert_allclose(grid.rgb[tuple(index[0])], [0.5, 0.0, 0.5])  # mean of red and blue
    np.testing.assert_allclose(grid.rgb[tuple(index[2])], [0.0, 1.0, 0.0])
    assert grid.alpha.sum() == 3 and grid.alpha[tuple(index[4])] == 1.0
    assert grid.semantic[tuple(index[0])] == 1 and grid.semantic[tuple(index[2])] == 2  # ties: the smaller class
    assert grid.semantic[tuple(index[4])] == -1 and (grid.semantic[grid.alpha == 0] == -1).all()
    np.testing.assert_array_equal(grid.boxes, boxes.astype(np.float32))
    assert grid.box_labels.tolist() == [5]
    # the longest side is capped: the cell grows
    wide = scan_to_grid(np.array([[0.0, 0, 0], [10.0, 1, 1]]), np.zeros((2, 3)), 0.01, max_cells=100)
    assert max(wide.shape) == 100 and wide.cell_size[0] == pytest.approx(0.1, rel=1e-6)
    for bad in (dict(cell=0.0), dict(cell=0.05, max_cells=0), dict(cell=0.05, occupied_alpha=0.0)):
        with pytest.raises(ConfigError):
            scan_to_grid(points, colors, **bad)
    with pytest.raises(DataFormatError, match="labels"):
        scan_to_grid(points, colors, 0.05, labels=labels[:2])


def test_scannet_scan_grid_holds_the_scan_its_classes_and_boxes(tmp_path):
    root = require_shared("scannet")
    grid = scannet_scan_grid(root / "scene0000_00", 0.05)
    scene = read_scannet_scene(root / "scene0000_00")
    index = np.clip(np.floor((scene.points - grid.box[0]) / 0.05).astype(int), 0, np.array(grid.shape) - 1)
    assert (grid.alpha[tuple(index.T)] == 1.0).all() and grid.alpha.sum() == len(np.unique(index, axis=0))
    labels = nyu40_to_scannet20(np.load(root / "scene0000_00_sem_label_all.npy").astype(np.int64))
    flat = np.ravel_multi_index(index.T, grid.shape)
    for cell in np.random.default_rng(0).choice(np.unique(flat), 200, replace=False):
        inside = flat == cell
        where = np.unravel_index(cell, grid.shape)
        np.testing.assert_allclose(grid.rgb[where], scene.colors[inside].mean(0), atol=1e-5)
        known = labels[inside][labels[inside] >= 0]
        assert grid.semantic[where] == (np.bincount(known).argmax() if len(known) else -1)
    np.testing.assert_array_equal(grid.boxes, scene.boxes)
    np.testing.assert_array_equal(grid.box_labels, scene.labels)
    write_radiance_grid(tmp_path / "g.npz", grid)
    again = read_radiance_grid(tmp_path / "g.npz")
    np.testing.assert_array_equal(again.semantic, grid.semantic)
    np.testing.assert_array_equal(again.boxes, grid.boxes)
    np.testing.assert_array_equal(again.alpha, grid.alpha)
    # SUN RGB-D: oriented boxes, no cell classes
    frame = sunrgbd_scan_grid(require_shared("sunrgbd"), "000001", 0.05)
    assert frame.semantic is None and max(frame.shape) <= 160
    np.testing.assert_array_equal(frame.boxes, read_sunrgbd_frame(require_shared("sunrgbd"), "000001").boxes)


def test_prep_scan_grids_then_nerf_mae_pretrains_on_them(tmp_path, capsys):
    root = require_shared("scannet")
    dst = tmp_path / "grids"
    assert main(["prep", "grid", f"src={root}", f"dst={dst}", "format=scannet_scans", "scan.cell=0.1"]) == 0
    grids = read_grid_folder(dst)
    assert sorted(grids) == ["scene0000_00", "scene0000_01"]
    assert all(g.semantic is not None and len(g.boxes) > 20 and max(g.shape) <= 80 for g in grids.values())
    manifest = json.loads((dst / "manifest.json").read_text())
    entry = manifest["scenes"]["scene0000_00"]
    assert entry["semantic_classes"][:2] == ["wall", "floor"] and entry["box_classes"][1] == "bed"
    kept = {p.name: p.stat().st_mtime_ns for p in dst.iterdir()}
    assert main(["prep", "grid", f"src={root}", f"dst={dst}", "format=scannet_scans", "scan.cell=0.1"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in dst.iterdir()} == kept  # unchanged inputs: nothing rewritten
    run = tmp_path / "run"
    assert main(["pretrain", "method=nerf_mae", "encoder=swin3d_cpu", "data=grids", f"data.root={dst}",
                 "trainer=nerf_mae", "trainer.max_steps=2", "trainer.batch_size=1", "method.grid_size=null",
                 "trainer.log_every=1", f"out_dir={run}"]) == 0
    lines = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(np.isfinite(line["psnr_masked"]) for line in lines)
    # grid detection from that Swin, its cell size (no weights depend on it) set for these 10 cm scans
    det = tmp_path / "det"
    assert main(["detect", "train", f"checkpoint={run}", "data=scannet", f"data.root={root}", "detect.level=0",
                 "checkpoint_overrides={voxel_size: 0.1}", "trainer.max_steps=2", "trainer.batch_size=1",
                 f"out_dir={det}"]) == 0
    assert json.loads((det / "metrics.json").read_text())["init"] == "pretrained"
    import yaml

    assert yaml.safe_load((det / "config.yaml").read_text())["encoder"]["voxel_size"] == 0.1
    for extra, message in ((["scan.cell=0"], "scan.cell"), (["scan.scenes=[nope]"], "nope"),
                           (["format=sunrgbd_scans"], "lidar"), (["scan.colour=1"], "scan.colour")):
        bad = tmp_path / "bad"
        capsys.readouterr()
        assert main(["prep", "grid", f"src={root}", f"dst={bad}", "format=scannet_scans", *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and not bad.exists(), err


def _cells_in_boxes(values: np.ndarray, box: np.ndarray, boxes: np.ndarray) -> list[int]:
    """How many occupied cells' centres each box holds (the world positions from the lattice ``box``)."""
    import torch

    from pc3d.ops.boxes import points_in_boxes

    cell = (box[1] - box[0]) / np.array(values.shape[1:])
    centres = box[0] + (np.argwhere(values[3] > 0.01) + 0.5) * cell
    inside = points_in_boxes(torch.from_numpy(centres).float(), torch.from_numpy(boxes).float())
    return inside.sum(0).tolist()


def test_flip_turn_grid_moves_the_boxes_with_their_cells():
    from pc3d.data.transforms import flip_turn_grid

    grid = scannet_scan_grid(require_shared("scannet") / "scene0000_00", 0.1)
    values = grid.rgb_alpha().transpose(3, 0, 1, 2)
    before = _cells_in_boxes(values, grid.box, grid.boxes)
    assert sum(before) > 1000
    centre = grid.box.mean(0)
    for flips, turns in (((0,), 0), ((1,), 0), ((), 1), ((), 2), ((), 3), ((0, 1), 1), ((0,), 3)):
        moved, box, boxes = flip_turn_grid(values, grid.box, grid.boxes, flips, turns)
        assert moved.shape[1:3] == (values.shape[1:3] if turns % 2 == 0 else values.shape[2:0:-1])
        np.testing.assert_allclose(box.mean(0), centre, atol=1e-9)  # turned about the lattice centre
        assert _cells_in_boxes(moved, box, boxes) == before, (flips, turns)
    # a quarter turn is (x, y) -> (-y, x) about the lattice centre
    one = np.zeros((4, 3, 2, 1), np.float32)
    one[3, 2, 0, 0] = 1.0
    turned, box, _ = flip_turn_grid(one, np.array([[0.0, 0, 0], [3, 2, 1]]), np.zeros((0, 7)), (), 1)
    cell = np.argwhere(turned[3] > 0)[0]
    # the centre (2.5, 0.5) is (1, -0.5) from the lattice centre (1.5, 1); turned: (0.5, 1), at (2, 2)
    np.testing.assert_allclose(box[0] + cell + 0.5, [2.0, 2.0, 0.5])
    np.testing.assert_allclose(box, [[0.5, -0.5, 0.0], [2.5, 2.5, 1.0]])


def test_grid_detection_from_prepared_scan_grids(tmp_path, capsys):
    """`pc3d detect data=grids` trains a grid encoder on whole scan grids with their boxes and scores held-out grids."""
    import torch

    from pc3d.data.grid_data import grid_folder

    root = require_shared("scannet")
    dst = tmp_path / "grids"
    assert main(["prep", "grid", f"src={root}", f"dst={dst}", "format=scannet_scans", "scan.cell=0.1"]) == 0
    data = grid_folder(dst, train=["scene0000_00"], val=["scene0000_01"]).detection()
    assert data.class_names[1] == "bed" and not data.oriented and data.val_rotation == 90.0
    scene = data.train[0]
    assert len(scene.boxes) > 20 and scene.points.shape[1] == 3
    dataset = data.dataset("train", augment=True, seed=0)
    counts = set()
    for epoch in range(4):  # augmented samples keep every box around its own cells
        dataset.set_epoch(epoch)
        sample = dataset[0]
        values = sample["grid"].numpy()
        cell = sample["grid_cell_size"]
        assert abs(cell - 0.1) < 1e-6 and values.shape[0] == 4
        origin = sample["grid_origin"].numpy()
        box = np.stack([origin, origin + np.array(values.shape[1:]) * cell])
        real = sample["gt_labels"].numpy() >= 0
        counts.add(tuple(_cells_in_boxes(values, box, sample["gt_boxes"].numpy()[real])))
        counts.add(tuple(_cells_in_boxes(scene.grid_values, scene.grid_box, scene.boxes)))
    assert len(counts) == 1
    turned = data.rotated_val(90).val[0]
    assert turned.grid_values.shape[1:3] == data.val[0].grid_values.shape[2:0:-1]
    with pytest.raises(ConfigError, match="multiples of 90"):
        data.rotated_val(45)
    sun = tmp_path / "sun_grids"  # SUN RGB-D frames: oriented boxes, flipped in x only, scored upright
    assert main(["prep", "grid", f"src={require_shared('sunrgbd')}", f"dst={sun}", "format=sunrgbd_scans"]) == 0
    frames = grid_folder(sun).detection()
    assert frames.oriented and frames.flip_axes == (0,) and not frames.quarter_turns and frames.val_rotation == 0
    assert frames.class_names[0] == "bed" and len(frames.train) == len(frames.val) >= 1
    det = tmp_path / "det"
    assert main(["detect", "train", "checkpoint=random", "encoder=swin3d_cpu", "data=grids", f"data.root={dst}",
                 "data.train=[scene0000_00]", "data.val=[scene0000_01]", "detect.level=0", "trainer.max_steps=2",
                 "trainer.batch_size=1", f"out_dir={det}"]) == 0
    metrics = json.loads((det / "metrics.json").read_text())
    assert metrics["val_scenes"] == 1 and metrics["steps"] == 2 and np.isfinite(metrics["mAP25"])
    # the detector saw the grid itself: its first level's tokens cover the grid at the grid's cell size
    import yaml

    from pc3d.encoders.inputs import EncoderInputDataset
    from pc3d.hub import build_encoder

    encoder = build_encoder(yaml.safe_load((det / "config.yaml").read_text())["encoder"])
    inputs = EncoderInputDataset(data.dataset("val", augment=False, seed=0), encoder.spec)
    grid_input = inputs.collate([inputs[0]])["input"]
    assert torch.equal(grid_input.values[0], torch.from_numpy(data.val[0].grid_values))
    np.testing.assert_allclose(grid_input.origin[0].numpy(), data.val[0].grid_box[0], atol=1e-6)
    for extra, message in ((["data.train=[nope]"], "nope"), (["encoder=point_vit"], "grid encoder")):
        capsys.readouterr()
        bad = tmp_path / "bad"
        assert main(["detect", "train", "checkpoint=random", "encoder=swin3d_cpu", "data=grids", f"data.root={dst}",
                     "trainer.max_steps=1", "trainer.batch_size=1", f"out_dir={bad}", *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and not bad.exists(), err
