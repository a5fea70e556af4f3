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
