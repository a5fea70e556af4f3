"""The papers' datasets in the layouts their code reads: ShapeNet-55/34, ModelNet40 normal_resampled, ScanObjectNN h5,
Point-MAE's few-shot fold pickles.

Each fixture writes small files exactly as the download has them (what Point-MAE's ``datasets/*.py`` open and how
they parse them); the references are computed here with plain numpy, as Point-MAE's loaders would read the files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from pc3d.cli import main as cli_main
from pc3d.data.fewshot_folds import convert_point_mae_folds, read_fold_file
from pc3d.data.modelnet40 import prepare_modelnet40
from pc3d.data.object_data import modelnet40_data, scanobjectnn_data, shapenet_data
from pc3d.data.prepared import LazyPoints, load_object_cache
from pc3d.data.scanobjectnn import SCANOBJECTNN_CLASSES
from pc3d.data.shapenet import prepare_shapenet
from pc3d.errors import ConfigError, DataFormatError
from pc3d.eval.fewshot import folds_from_file
from pc3d.utils.config import call_target

SYNSETS = ("02691156", "03001627", "04379243")


def unit_sphere(points: np.ndarray) -> np.ndarray:
    """Point-MAE's ``pc_norm`` / ``pc_normalize`` in float64 (the independent reference)."""
    centred = points.astype(np.float64) - points.astype(np.float64).mean(axis=0)
    return centred / np.sqrt((centred ** 2).sum(axis=1)).max()


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr (stripped) of ``pc3d ARGS``; stdout goes to ``run_cli.out``."""
    code = cli_main(args)
    captured = capsys.readouterr()
    run_cli.out = captured.out
    return code, captured.err.strip()


# ----------------------------------------------------------------------------------------------- ShapeNet-55 / 34


@pytest.fixture
def shapenet_tree(tmp_path) -> Path:
    """ShapeNet55-34/: shapenet_pc/<synset>-<model>.npy (8192, 3) float32, ShapeNet-55/ and ShapeNet-34/ lists."""
    rng = np.random.default_rng(0)
    src = tmp_path / "ShapeNet55-34"
    (src / "shapenet_pc").mkdir(parents=True)
    lines = {"train": [], "test": []}
    for s, synset in enumerate(SYNSETS):
        for k in range(3):
            name = f"{synset}-{k:x}{s}e3eab45ca15dd86060f189eb133.npy"
            np.save(src / "shapenet_pc" / name, (rng.normal(size=(8192, 3)) * (s + 1) + s).astype(np.float32))
            lines["train" if k < 2 else "test"].append(name)
    for bench, kept in (("ShapeNet-55", SYNSETS), ("ShapeNet-34", SYNSETS[:2])):
        (src / bench).mkdir()
        for split, names in lines.items():
            (src / bench / f"{split}.txt").write_text("".join(f"{n}\n" for n in names if n[:8] in kept))
    return src


def test_shapenet55_prepared_as_point_mae_reads_it(shapenet_tree, tmp_path, capsys):
    dst = tmp_path / "sn55"
    code, err = run_cli(["prep", "shapenet55", f"src={shapenet_tree}", f"dst={dst}"], capsys)
    assert code == 0, err
    cache = load_object_cache(dst)
    assert cache.class_names == list(SYNSETS) and cache.manifest["dataset"] == "shapenet55"
    for split in ("train", "test"):
        listed = (shapenet_tree / "ShapeNet-55" / f"{split}.txt").read_text().split()
        chosen = cache.split_indices(split)
        # Point-MAE: taxonomy_id = line.split('-')[0], model_id = line.split('-')[1].split('.')[0]
        assert [str(n) for n in cache.names[chosen]] == [line[:-4] for line in listed]
        assert [cache.class_names[c] for c in cache.labels[chosen]] == [line.split("-")[0] for line in listed]
        for i, line in zip(chosen, listed):  # all 8192 points kept in file order, then unit sphere
            raw = np.load(shapenet_tree / "shapenet_pc" / line)
            np.testing.assert_allclose(cache.points[i], unit_sphere(raw), atol=2e-6)
    data = shapenet_data(str(dst), num_points=1024)
    assert isinstance(data.cache.points, LazyPoints) and len(data.train) == 6 and len(data.test) == 3
    pretrain = data.pretrain_dataset()
    assert len(pretrain) == 6 and pretrain[0]["points"].shape == (1024, 3)
    # a fresh subset of the stored cloud each epoch (Point-MAE's random_sample), same subset for the same epoch
    first = pretrain[0]["points"].clone()
    pretrain.set_epoch(1)
    assert not np.array_equal(first.numpy(), pretrain[0]["points"].numpy())
    pretrain.set_epoch(0)
    np.testing.assert_array_equal(first.numpy(), pretrain[0]["points"].numpy())
    code, err = run_cli(["prep", "shapenet55", f"src={shapenet_tree}", f"dst={dst}"], capsys)
    assert code == 0 and "up to date" in run_cli.out, err


def test_shapenet34_has_its_own_lists(shapenet_tree, tmp_path, capsys):
    code, err = run_cli(["prep", "shapenet34", f"src={shapenet_tree}", f"dst={tmp_path / 'sn34'}", "num_points=2048"],
                        capsys)
    assert code == 0, err
    manifest = load_object_cache(tmp_path / "sn34").manifest
    assert manifest["classes"] == list(SYNSETS[:2]) and manifest["num_shapes"] == 6
    cache = load_object_cache(tmp_path / "sn34", lazy=True)
    assert cache.points.shape == (6, 2048, 3) and np.abs(np.linalg.norm(cache.points[:], axis=2).max() - 1) < 1e-6
    with pytest.raises(ConfigError, match="dataset='shapenet55'"):  # a cache of the other benchmark is refused
        shapenet_data(str(tmp_path / "sn34"))
    assert call_target({"_target_": "pc3d.data.object_data.shapenet_data", "root": str(tmp_path / "sn34"),
                        "benchmark": "shapenet34"}, "data").class_names == list(SYNSETS[:2])


def _break_shapenet(src: Path) -> dict[str, tuple]:
    listed = (src / "ShapeNet-55" / "train.txt").read_text().split()
    return {
        "no_points_folder": (lambda: __import__("shutil").rmtree(src / "shapenet_pc"), "shapenet_pc"),
        "no_test_list": (lambda: (src / "ShapeNet-55" / "test.txt").unlink(), "test.txt"),
        "listed_file_missing": (lambda: (src / "shapenet_pc" / listed[1]).unlink(), listed[1]),
        "malformed_line": (lambda: (src / "ShapeNet-55" / "train.txt").write_text("airplane_0001.txt\n"),
                           "train.txt:1"),
        "wrong_shape": (lambda: np.save(src / "shapenet_pc" / listed[0], np.zeros((8192, 6), np.float32)), listed[0]),
        "too_few_points": (lambda: np.save(src / "shapenet_pc" / listed[0], np.zeros((100, 3), np.float32)), listed[0]),
    }


@pytest.mark.parametrize("case", ["no_points_folder", "no_test_list", "listed_file_missing", "malformed_line",
                                  "wrong_shape", "too_few_points"])
def test_shapenet_wrong_layout_is_one_line_and_writes_nothing(shapenet_tree, tmp_path, capsys, case):
    breaker, named = _break_shapenet(shapenet_tree)[case]
    breaker()
    dst = tmp_path / "out"
    code, err = run_cli(["prep", "shapenet55", f"src={shapenet_tree}", f"dst={dst}"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and named in err, err
    assert not dst.exists() and not list(tmp_path.glob(".out*"))


def test_shapenet_corrupt_file_while_streaming_leaves_previous_cache(shapenet_tree, tmp_path):
    dst = tmp_path / "sn"
    prepare_shapenet(shapenet_tree, dst, num_points=512)
    before = {p.name: p.read_bytes() for p in dst.iterdir()}
    listed = (shapenet_tree / "ShapeNet-55" / "test.txt").read_text().split()
    data = np.load(shapenet_tree / "shapenet_pc" / listed[-1])
    data[5, 1] = np.nan  # the header is fine: found only while the shapes are streamed
    np.save(shapenet_tree / "shapenet_pc" / listed[-1], data)
    with pytest.raises(DataFormatError, match=listed[-1]):
        prepare_shapenet(shapenet_tree, dst, num_points=512)
    assert {p.name: p.read_bytes() for p in dst.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ShapeNet55-34", "sn"]  # no temporary left


# ----------------------------------------------------------------------------------------------- ModelNet40


MN_CLASSES = ("airplane", "night_stand", "xbox")
MN_IDS = {"train": ["airplane_0001", "airplane_0002", "airplane_0003", "night_stand_0001", "night_stand_0002",
                    "night_stand_0003", "xbox_0001", "xbox_0002", "xbox_0003"],
          "test": ["airplane_0627", "airplane_0628", "night_stand_0201", "night_stand_0202", "xbox_0104",
                   "xbox_0105"]}
MN_ROWS = 600


def _shape_rows(rng: np.random.Generator, label: int) -> np.ndarray:
    xyz = rng.normal(size=(MN_ROWS, 3)) * (1 + label) + label
    normals = rng.normal(size=(MN_ROWS, 3))
    return np.concatenate([xyz, normals / np.linalg.norm(normals, axis=1, keepdims=True)], axis=1)


@pytest.fixture
def modelnet_tree(tmp_path) -> Path:
    """modelnet40_normal_resampled/: shape names, train/test lists, <class>/<id>.txt rows 'x,y,z,nx,ny,nz'."""
    rng = np.random.default_rng(1)
    src = tmp_path / "modelnet40_normal_resampled"
    src.mkdir()
    (src / "modelnet40_shape_names.txt").write_text("".join(f"{c}\n" for c in MN_CLASSES))
    for split, ids in MN_IDS.items():
        (src / f"modelnet40_{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for shape_id in ids:
            cls = "_".join(shape_id.split("_")[:-1])
            (src / cls).mkdir(exist_ok=True)
            rows = _shape_rows(rng, MN_CLASSES.index(cls))
            (src / cls / f"{shape_id}.txt").write_text("".join(",".join(f"{v:.6f}" for v in r) + "\n" for r in rows))
    return src


def _point_mae_rows(src: Path, name: str) -> np.ndarray:
    """How Point-MAE's ModelNet reads a file: np.loadtxt(fn, delimiter=',').astype(np.float32)."""
    return np.loadtxt(src / name, delimiter=",").astype(np.float32)


def test_modelnet40_txt_layout_1k_and_8k_from_one_cache(modelnet_tree, tmp_path, capsys):
    dst = tmp_path / "mn40"
    code, err = run_cli(["prep", "modelnet40", f"src={modelnet_tree}", f"dst={dst}", f"num_points={MN_ROWS}"], capsys)
    assert code == 0, err
    cache = load_object_cache(dst)
    assert cache.class_names == list(MN_CLASSES) and cache.manifest["params"]["source"] == "txt"
    for split, ids in MN_IDS.items():
        chosen = cache.split_indices(split)
        assert [str(n) for n in cache.names[chosen]] == [f"{'_'.join(i.split('_')[:-1])}/{i}.txt" for i in ids]
        for index in chosen:
            name = str(cache.names[index])
            assert cache.labels[index] == MN_CLASSES.index(name.split("/")[0])
            np.testing.assert_allclose(cache.points[index], unit_sphere(_point_mae_rows(modelnet_tree, name)[:, :3]),
                                       atol=2e-6)
    # fewer stored points: a seeded random subset of the file's rows; data.num_points takes its prefix
    small = tmp_path / "mn40_256"
    prepare_modelnet40(modelnet_tree, small, num_points=256)
    data = modelnet40_data(str(small), num_points=64)
    full = load_object_cache(small)
    np.testing.assert_array_equal(data.points(data.test), full.points[data.test, :64])
    assert data.points(data.train).shape == (9, 64, 3) and len(data.test) == 6
    # the reduced cloud is 256 distinct file rows, normalised as a whole: find them and normalise them here
    rows = _point_mae_rows(modelnet_tree, str(full.names[0]))[:, :3].astype(np.float64)
    stored = full.points[0].astype(np.float64)
    subset = matching_rows(rows, stored)
    assert len(np.unique(subset)) == 256
    np.testing.assert_allclose(stored, unit_sphere(rows[subset]), atol=2e-6)


def matching_rows(rows: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """Indices of the rows that ``stored`` (a unit-sphere normalised subset of them) came from: the similarity
    is re-estimated from the matched rows until the match stops changing."""
    centre, radius = rows.mean(0), np.sqrt(((rows - rows.mean(0)) ** 2).sum(1)).max()
    nearest = None
    for _ in range(20):
        guess = (rows - centre) / radius
        found = np.argmin(np.linalg.norm(stored[:, None] - guess[None], axis=2), axis=1)
        if nearest is not None and np.array_equal(found, nearest):
            break
        nearest = found
        centre = rows[nearest].mean(0)
        radius = np.sqrt(((rows[nearest] - centre) ** 2).sum(1)).max()
    return nearest


def _write_dat(src: Path, points: int = 128) -> dict[str, list[np.ndarray]]:
    """Point-BERT's modelnet40_<split>_8192pts_fps.dat: pickle.dump([list_of_points, list_of_labels])."""
    written = {}
    for split, ids in MN_IDS.items():
        clouds, labels = [], []
        for shape_id in ids:
            cls = "_".join(shape_id.split("_")[:-1])
            rows = _point_mae_rows(src, f"{cls}/{shape_id}.txt")
            clouds.append(rows[np.random.default_rng(len(clouds)).choice(len(rows), points, replace=False)])
            labels.append(np.array([MN_CLASSES.index(cls)]).astype(np.int32))
        with open(src / f"modelnet40_{split}_8192pts_fps.dat", "wb") as handle:
            pickle.dump([clouds, labels], handle)
        written[split] = clouds
    return written


def test_modelnet40_dat_pickles_only_with_allow_pickle(modelnet_tree, tmp_path, capsys):
    clouds = _write_dat(modelnet_tree)
    for cls in MN_CLASSES:  # as Point-BERT ships it: lists and .dat, no class folders
        __import__("shutil").rmtree(modelnet_tree / cls)
    dst = tmp_path / "mn40dat"
    code, err = run_cli(["prep", "modelnet40", f"src={modelnet_tree}", f"dst={dst}", "num_points=128"], capsys)
    assert code == 2 and "allow_pickle=true" in err and len(err.splitlines()) == 1 and not dst.exists()
    code, err = run_cli(["prep", "modelnet40", f"src={modelnet_tree}", f"dst={dst}", "num_points=128",
                         "allow_pickle=true"], capsys)
    assert code == 0, err
    cache = load_object_cache(dst)
    assert cache.manifest["params"]["source"] == "dat"
    for split in ("train", "test"):
        for index, cloud in zip(cache.split_indices(split), clouds[split]):  # FPS points kept in their order
            np.testing.assert_allclose(cache.points[index], unit_sphere(cloud[:, :3]), atol=2e-6)
    assert [str(n) for n in cache.names[:2]] == ["airplane/airplane_0001.txt", "airplane/airplane_0002.txt"]


def test_modelnet40_dat_with_a_code_global_is_refused(modelnet_tree, tmp_path):
    _write_dat(modelnet_tree)
    for cls in MN_CLASSES:
        __import__("shutil").rmtree(modelnet_tree / cls)

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    with open(modelnet_tree / "modelnet40_test_8192pts_fps.dat", "wb") as handle:
        pickle.dump([[Evil()], []], handle)
    with pytest.raises(DataFormatError, match="refused"):
        prepare_modelnet40(modelnet_tree, tmp_path / "x", num_points=64, allow_pickle=True)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("case,named", [("names", "modelnet40_shape_names.txt"), ("train_list", "modelnet40_train.txt"),
                                        ("shape", "night_stand_0002.txt"), ("class", "modelnet40_test.txt:2"),
                                        ("one_dat", "modelnet40_test_8192pts_fps.dat")])
def test_modelnet40_wrong_layout(modelnet_tree, tmp_path, capsys, case, named):
    if case == "names":
        (modelnet_tree / "modelnet40_shape_names.txt").unlink()
    elif case == "train_list":
        (modelnet_tree / "modelnet40_train.txt").unlink()
    elif case == "shape":
        (modelnet_tree / "night_stand" / "night_stand_0002.txt").unlink()
    elif case == "class":
        (modelnet_tree / "modelnet40_test.txt").write_text("airplane_0627\nlamp_0001\n")
    else:
        _write_dat(modelnet_tree)
        (modelnet_tree / "modelnet40_test_8192pts_fps.dat").unlink()
        (modelnet_tree / "xbox" / "xbox_0001.txt").unlink()
    dst = tmp_path / "out"
    code, err = run_cli(["prep", "modelnet40", f"src={modelnet_tree}", f"dst={dst}", "num_points=64"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and named in err, err
    assert not dst.exists()


# ----------------------------------------------------------------------------------------------- ScanObjectNN


H5_FILES = {("main_split", ""): 7, ("main_split_nobg", ""): 5, ("main_split", "_augmentedrot_scale75"): 9}


@pytest.fixture
def scanobjectnn_tree(tmp_path) -> tuple[Path, dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """h5_files/main_split{,_nobg}/{training,test}_objectdataset{,_augmentedrot_scale75}.h5: data, label, mask."""
    rng = np.random.default_rng(2)
    src = tmp_path / "h5_files"
    content: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for (folder, suffix), count in H5_FILES.items():
        (src / folder).mkdir(parents=True, exist_ok=True)
        for split, prefix in (("train", "training"), ("test", "test")):
            n = count if split == "train" else count - 2
            data = (rng.normal(size=(n, 2048, 3)) * 0.4).astype(np.float32)
            labels = rng.integers(0, 15, n)
            with h5py.File(src / folder / f"{prefix}_objectdataset{suffix}.h5", "w") as handle:
                handle.create_dataset("data", data=data)
                handle.create_dataset("label", data=labels)
                handle.create_dataset("mask", data=rng.integers(-1, 2, (n, 2048)))
            content.setdefault(f"{folder}{suffix}", {})[split] = (data, labels)
    return src, content


@pytest.mark.parametrize("variant,key", [("OBJ_BG", "main_split"), ("OBJ_ONLY", "main_split_nobg"),
                                         ("PB_T50_RS", "main_split_augmentedrot_scale75")])
def test_scanobjectnn_variants(scanobjectnn_tree, tmp_path, capsys, variant, key):
    src, content = scanobjectnn_tree
    dst = tmp_path / variant
    code, err = run_cli(["prep", "scanobjectnn", f"src={src}", f"dst={dst}", f"variant={variant}"], capsys)
    assert code == 0, err
    cache = load_object_cache(dst)
    assert cache.class_names == list(SCANOBJECTNN_CLASSES) and cache.manifest["variant"] == variant
    for split in ("train", "test"):
        data, labels = content[key][split]  # Point-MAE: np.array(h5['data']), np.array(h5['label']).astype(int)
        chosen = cache.split_indices(split)
        np.testing.assert_array_equal(cache.labels[chosen], labels)
        for index, cloud in zip(chosen, data):
            np.testing.assert_allclose(cache.points[index], unit_sphere(cloud), atol=2e-6)
    data = call_target({"_target_": "pc3d.data.object_data.scanobjectnn_data", "root": str(dst), "variant": variant},
                       "data")
    assert data.num_points == 2048 and len(data.test) == len(content[key]["test"][1])
    # the raw release also works as data.root (prepared on first use)
    raw = scanobjectnn_data(str(src), variant=variant, cache_dir=str(tmp_path / f"{variant}_auto"))
    np.testing.assert_array_equal(raw.cache.labels, cache.labels)


@pytest.mark.parametrize("case,named", [("missing_file", "test_objectdataset_augmentedrot_scale75.h5"),
                                        ("no_label", "'label'"), ("not_h5", "not an HDF5 file"),
                                        ("label_range", "out of range"), ("split_folder", "main_split/")])
def test_scanobjectnn_wrong_layout(scanobjectnn_tree, tmp_path, capsys, case, named):
    src, _ = scanobjectnn_tree
    target = src / "main_split" / "test_objectdataset_augmentedrot_scale75.h5"
    if case == "missing_file":
        target.unlink()
    elif case == "no_label":
        with h5py.File(target, "a") as handle:
            del handle["label"]
    elif case == "not_h5":
        target.write_bytes(b"not hdf5 at all")
    elif case == "label_range":
        with h5py.File(target, "a") as handle:
            del handle["label"]
            handle.create_dataset("label", data=np.full(7, 15))
    else:
        src = src / "main_split"
    dst = tmp_path / "out"
    code, err = run_cli(["prep", "scanobjectnn", f"src={src}", f"dst={dst}", "variant=PB_T50_RS"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and named in err, err
    assert not dst.exists()


# ----------------------------------------------------------------------------------------------- few-shot folds


def _write_point_mae_folds(modelnet: Path, dst: Path, settings=((2, 2), (3, 1)), folds: int = 2,
                           queries: int = 1) -> dict:
    """ModelNetFewshot/<W>way_<K>shot/<i>.pkl as generate_few_shot_data.py writes them: {'train': [(points, i, key)],
    'test': [...]}, points = (M, 6) float32 rows of the shape (FPS in the original; any rows in any order here),
    i = position in the shuffled classes, key = the ModelNet40 label (np.int32 scalar)."""
    rng = np.random.default_rng(3)
    truth = {}
    for way, shot in settings:
        folder = dst / f"{way}way_{shot}shot"
        folder.mkdir(parents=True)
        for fold in range(folds):
            keys = rng.permutation(len(MN_CLASSES))[:way]
            dataset, record = {"train": [], "test": []}, {"support": [], "query": []}
            for i, key in enumerate(keys):
                cls = MN_CLASSES[key]
                for part, split, count in (("train", "train", shot), ("test", "test", queries)):
                    ids = [s for s in MN_IDS[split] if s.startswith(cls + "_") and s[len(cls) + 1:].isdigit()]
                    for shape_id in rng.permutation(ids)[:count]:
                        rows = _point_mae_rows(modelnet, f"{cls}/{shape_id}.txt")
                        dataset[part].append((rows[rng.permutation(len(rows))[:256]], i, np.int32(key)))
                        record["support" if part == "train" else "query"].append(f"{cls}/{shape_id}.txt")
            for part in dataset.values():
                rng.shuffle(part)
            with open(folder / f"{fold}.pkl", "wb") as handle:
                pickle.dump(dataset, handle)
            truth[f"{way}w{shot}s", fold] = {"classes": sorted(MN_CLASSES[k] for k in keys),
                                             "support": sorted(record["support"]), "query": sorted(record["query"])}
    return truth


def test_fewshot_pickles_converted_only_on_request_and_matched_to_shapes(modelnet_tree, tmp_path, capsys):
    truth = _write_point_mae_folds(modelnet_tree, tmp_path / "ModelNetFewshot")
    dst = tmp_path / "folds.json"
    args = ["prep", "fewshot_folds", f"src={tmp_path / 'ModelNetFewshot'}", f"dst={dst}", f"modelnet={modelnet_tree}"]
    code, err = run_cli(args, capsys)
    assert code == 2 and "allow_pickle=true" in err and len(err.splitlines()) == 1 and not dst.exists()
    code, err = run_cli([*args, "allow_pickle=true"], capsys)
    assert code == 0, err
    content = read_fold_file(dst)
    assert sorted(content["settings"]) == ["2w2s", "3w1s"]
    for (name, fold), expected in truth.items():
        assert content["settings"][name][fold] == expected

    cache = tmp_path / "mn40"
    prepare_modelnet40(modelnet_tree, cache, num_points=128)
    data = modelnet40_data(str(cache), num_points=64)
    episodes = folds_from_file(dst, data, [(2, 2), (3, 1)], folds=2)
    names = [str(n) for n in data.cache.names]
    for (way, shot, fold), episode in episodes.items():
        expected = truth[f"{way}w{shot}s", fold]
        assert [data.class_names[c] for c in episode.classes] == expected["classes"]
        assert sorted(names[i] for i in episode.support) == expected["support"]
        assert sorted(names[i] for i in episode.query) == expected["query"]
        for shapes, local in ((episode.support, episode.support_labels), (episode.query, episode.query_labels)):
            np.testing.assert_array_equal(episode.classes[local], data.cache.labels[shapes])
        assert np.isin(episode.support, data.train).all() and np.isin(episode.query, data.test).all()
    with pytest.raises(ConfigError, match="5w1s is not in"):
        folds_from_file(dst, data, [(5, 1)], folds=1)
    with pytest.raises(ConfigError, match="holds 2 folds"):
        folds_from_file(dst, data, [(2, 2)], folds=3)


def test_fewshot_run_uses_the_fold_file(modelnet_tree, tmp_path):
    from pc3d.cli import compose
    from pc3d.eval.fewshot import run_fewshot

    _write_point_mae_folds(modelnet_tree, tmp_path / "fs", settings=((2, 2),), folds=1)
    convert_point_mae_folds(tmp_path / "fs", tmp_path / "folds.json", modelnet_tree, allow_pickle=True)
    prepare_modelnet40(modelnet_tree, tmp_path / "mn40", num_points=128)
    tiny = ["encoder.embed_dim=48", "encoder.depth=1", "encoder.num_heads=3", "encoder.num_groups=16",
            "encoder.group_size=16", "fewshot.hidden_dims=[32,32]", "device=cpu"]
    metrics = run_fewshot(compose("fewshot", ["checkpoint=random", *tiny, "data=modelnet40",
                                              f"data.root={tmp_path / 'mn40'}", "data.num_points=128",
                                              "fewshot.settings=[[2,2]]", "fewshot.folds=1", "trainer.max_steps=1",
                                              f"fewshot.folds_file={tmp_path / 'folds.json'}",
                                              f"out_dir={tmp_path / 'run'}"]))
    assert metrics["folds_from"] == str(tmp_path / "folds.json") and metrics["query_split"] == "test"
    result = json.loads((tmp_path / "run" / "2w2s" / "fold0" / "result.json").read_text())
    episode = read_fold_file(tmp_path / "folds.json")["settings"]["2w2s"][0]
    names = [str(n) for n in load_object_cache(tmp_path / "mn40").names]
    assert result["classes"] == episode["classes"] and sorted(names[i] for i in result["query"]) == episode["query"]


@pytest.mark.parametrize("case,named", [("gap", "1.pkl"), ("shots", "supports per class"), ("no_folders", "way_"),
                                        ("unknown_shape", "no shape")])
def test_fewshot_wrong_folds_are_one_line(modelnet_tree, tmp_path, capsys, case, named):
    src = tmp_path / "ModelNetFewshot"
    _write_point_mae_folds(modelnet_tree, src, settings=((2, 2),), folds=3)
    pkl = src / "2way_2shot" / "1.pkl"
    if case == "gap":
        pkl.unlink()
    elif case == "shots":
        content = pickle.loads(pkl.read_bytes())
        content["train"] = content["train"][1:]
        pkl.write_bytes(pickle.dumps(content))
    elif case == "no_folders":
        __import__("shutil").rmtree(src / "2way_2shot")
        (src / "notes").mkdir()
    else:
        content = pickle.loads(pkl.read_bytes())
        points, i, key = content["test"][0]
        content["test"][0] = (points + np.float32(0.5), i, key)
        pkl.write_bytes(pickle.dumps(content))
    dst = tmp_path / "folds.json"
    code, err = run_cli(["prep", "fewshot_folds", f"src={src}", f"dst={dst}", f"modelnet={modelnet_tree}",
                         "allow_pickle=true"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and named in err, err
    assert not dst.exists()
