import io
import json
import os

import pytest
import safetensors
import safetensors.torch
import torch

from pc3d.encoders import PointViT
from pc3d.errors import CheckpointError, ConfigError
from pc3d.hub import build_encoder, encoder_config_from_checkpoint, load_encoder, save_encoder
from pc3d.methods import PointMAE
from pc3d.train.checkpoint import save_checkpoint

ENCODER_CFG = {"_target_": "pc3d.encoders.PointViT", "embed_dim": 24, "depth": 1, "num_heads": 2,
               "num_groups": 8, "group_size": 8}


def write_run(tmp_path, encoder_cfg=ENCODER_CFG):
    model = PointMAE(build_encoder(encoder_cfg), decoder_depth=1, decoder_num_heads=2)
    save_checkpoint(tmp_path, 5, {"model": model.state_dict(), "config": {"encoder": encoder_cfg}})
    return model


def test_load_encoder_reproduces_the_trained_encoder(tmp_path):
    model = write_run(tmp_path)
    encoder, cfg = load_encoder(tmp_path)
    assert cfg["embed_dim"] == 24
    points = torch.randn(2, 64, 3)
    model.encoder.eval()
    torch.testing.assert_close(encoder(points).global_feature, model.encoder(points).global_feature, rtol=0, atol=0)


def test_load_encoder_reports_mismatches_by_name(tmp_path):
    write_run(tmp_path)
    state = torch.load(next((tmp_path / "checkpoints").iterdir()), weights_only=True)
    state["config"]["encoder"] = dict(ENCODER_CFG, embed_dim=48)
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="shape mismatch.*patch_embed"):
        load_encoder(tmp_path / "other.pt")
    encoder, _ = load_encoder(tmp_path / "other.pt", strict=False)
    assert isinstance(encoder, PointViT)


def test_build_encoder_unknown_key_is_a_config_error():
    with pytest.raises(ConfigError, match="encoder.width"):
        build_encoder(dict(ENCODER_CFG, width=3))
    with pytest.raises(ConfigError, match="cannot be imported"):
        build_encoder({"_target_": "pc3d.encoders.NoSuchEncoder"})


# --- pc3d encoder files (safetensors) and format detection ---------------------------------------


def trained_looking_encoder(cfg=ENCODER_CFG):
    """An encoder whose every tensor (BN running stats included) is non-trivial."""
    encoder = build_encoder(cfg)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in encoder.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(17)
    return encoder.eval()


def forbid_torch_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load (pickle) must not be called for a pc3d encoder file")
    monkeypatch.setattr(torch, "load", refuse)


def test_save_encoder_round_trip_is_bit_identical_and_pickle_free(tmp_path, monkeypatch):
    encoder = trained_looking_encoder()
    path = save_encoder(encoder, tmp_path / "enc.safetensors", ENCODER_CFG)
    raw = path.read_bytes()
    assert not raw.startswith((b"PK", b"\x80"))  # neither a torch zip nor a pickle stream
    with safetensors.safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        assert set(handle.keys()) == set(encoder.state_dict())
    assert meta["format"] == "pc3d-encoder" and meta["version"] == "1"
    assert json.loads(meta["pc3d_encoder_config"]) == ENCODER_CFG

    forbid_torch_load(monkeypatch)
    loaded, cfg = load_encoder(path)
    assert cfg == ENCODER_CFG
    assert not loaded.training
    for key, value in encoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    points = torch.randn(2, 64, 3)
    with torch.no_grad():
        want, got = encoder(points), loaded(points)
    torch.testing.assert_close(got.levels[-1].features, want.levels[-1].features, rtol=0, atol=0)
    torch.testing.assert_close(got.global_feature, want.global_feature, rtol=0, atol=0)
    assert encoder_config_from_checkpoint(path) == ENCODER_CFG


def test_save_encoder_checks_the_config_and_keeps_the_rng_stream(tmp_path):
    encoder = trained_looking_encoder()
    before = torch.get_rng_state()
    with pytest.raises(ConfigError, match="does not describe this encoder"):
        save_encoder(encoder, tmp_path / "enc.safetensors", dict(ENCODER_CFG, embed_dim=48))
    with pytest.raises(ConfigError, match="_target_"):
        save_encoder(encoder, tmp_path / "enc.safetensors", {"embed_dim": 24})
    save_encoder(encoder, tmp_path / "enc.safetensors", ENCODER_CFG)
    assert torch.equal(torch.get_rng_state(), before)
    assert not (tmp_path / "enc.safetensors.json").exists()  # the config lives in the file's metadata only


def test_config_overrides_apply_on_top_of_the_stored_config(tmp_path):
    path = save_encoder(trained_looking_encoder(), tmp_path / "enc.safetensors", ENCODER_CFG)
    encoder, cfg = load_encoder(path, config_overrides={"feature_layers": [0]})
    assert cfg["feature_layers"] == [0]
    assert len(encoder(torch.randn(1, 64, 3)).levels) == 2
    with pytest.raises(ConfigError, match="encoder.width"):
        load_encoder(path, config_overrides={"width": 3})


@pytest.mark.parametrize("keep", [0.5, 20])
def test_truncated_encoder_file_is_a_one_line_checkpoint_error(tmp_path, keep):
    path = save_encoder(trained_looking_encoder(), tmp_path / "enc.safetensors", ENCODER_CFG)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep) if keep < 1 else keep])
    with pytest.raises(CheckpointError, match="enc.safetensors.*truncated or corrupt") as info:
        load_encoder(path)
    assert "\n" not in str(info.value)


def test_truncated_torch_checkpoint_is_a_one_line_checkpoint_error(tmp_path):
    write_run(tmp_path)
    file = next((tmp_path / "checkpoints").iterdir())
    broken = tmp_path / "broken.pt"
    broken.write_bytes(file.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="broken.pt: not a readable torch file") as info:
        load_encoder(broken)
    assert "\n" not in str(info.value)


def test_unknown_formats_are_named_with_the_known_ones(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: unknown checkpoint format.*pc3d-encoder.*point-mae"):
        load_encoder(foreign)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="junk.bin: unknown checkpoint format.*pc3d-checkpoint"):
        load_encoder(junk)
    other = tmp_path / "other.safetensors"
    other.write_bytes(safetensors.torch.save({"fc.weight": torch.zeros(2, 2)}))
    with pytest.raises(CheckpointError, match="other.safetensors: .*not a pc3d encoder file"):
        load_encoder(other)
    with pytest.raises(CheckpointError, match="nothing-here: no such"):
        load_encoder(tmp_path / "nothing-here")


class _Trap:
    ran = False

    def __setstate__(self, state):
        _Trap.ran = True


def test_pickled_objects_are_refused_without_running_them(tmp_path):
    path = tmp_path / "trap.pt"
    torch.save({"format": "pc3d-checkpoint", "payload": _Trap()}, path)
    with pytest.raises(CheckpointError, match="trap.pt: holds pickled Python objects.*_Trap") as info:
        load_encoder(path)
    assert not _Trap.ran
    assert "\n" not in str(info.value)


def test_format_override(tmp_path):
    write_run(tmp_path / "run")
    encoder = trained_looking_encoder()
    odd = save_encoder(encoder, tmp_path / "weights.bin", ENCODER_CFG)  # not the usual suffix
    loaded, _ = load_encoder(odd, format="pc3d-encoder")
    assert torch.equal(loaded.state_dict()["norm.weight"], encoder.state_dict()["norm.weight"])
    load_encoder(odd)  # auto reads the safetensors header
    with pytest.raises(CheckpointError, match="weights.bin: not a readable torch file"):
        load_encoder(odd, format="point-mae")  # a forced format is not second-guessed
    with pytest.raises(CheckpointError, match="weights.bin: not a readable torch file"):
        load_encoder(odd, format="pc3d-checkpoint")
    run_file = next((tmp_path / "run" / "checkpoints").iterdir())
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_encoder(run_file, format="pc3d-encoder")
    with pytest.raises(CheckpointError, match="not a Point-MAE checkpoint"):
        load_encoder(run_file, format="point-mae")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_encoder(tmp_path / "run", format="pc3d-encoder")
    _, cfg = load_encoder(tmp_path / "run", format="pc3d-checkpoint")
    assert cfg == ENCODER_CFG
    with pytest.raises(ConfigError, match="format: unknown value 'onnx'"):
        load_encoder(odd, format="onnx")


def test_save_encoder_failing_mid_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = save_encoder(trained_looking_encoder(), tmp_path / "enc.safetensors", ENCODER_CFG)
    before = path.read_bytes()
    written = []
    real_fdopen = os.fdopen

    class DiskFull(io.RawIOBase):
        """Writes half of what it gets, then fails like a full disk."""

        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            self.handle.write(bytes(data)[: len(data) // 2])
            self.handle.flush()
            written.append(len(data) // 2)
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()
            return False

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: DiskFull(real_fdopen(fd, *a, **k)))
    with pytest.raises(OSError, match="No space left"):
        save_encoder(trained_looking_encoder(), path, ENCODER_CFG)
    monkeypatch.undo()
    assert written and written[0] > 0  # the failure really happened mid-file
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.safetensors"]  # no temporary left behind
    load_encoder(path)


def test_a_stored_target_cannot_run_arbitrary_code(tmp_path):
    victim = tmp_path / "written-by-the-file.json"
    evil = {"_target_": "pc3d.utils.atomic.atomic_write_json", "path": str(victim), "obj": [1]}
    sneaky = dict(evil, _target_="pc3d.encoders.point_vit.torch.save", obj=[1], f=str(victim))
    sneaky.pop("path")
    foreign_module = {"_target_": "pc3d.encoders.point_vit.nn.Linear", "in_features": 1, "out_features": 1}
    for i, config in enumerate([evil, sneaky, foreign_module]):
        file = tmp_path / f"evil{i}.safetensors"
        file.write_bytes(safetensors.torch.save({"x": torch.zeros(1)}, metadata={
            "format": "pc3d-encoder", "version": "1", "pc3d_encoder_config": json.dumps(config)}))
        with pytest.raises(CheckpointError, match=f"evil{i}.safetensors: stored encoder _target_=.*refused"):
            load_encoder(file)
        with pytest.raises(CheckpointError, match="refused"):
            encoder_config_from_checkpoint(file)
        # the caller may choose the class explicitly
        assert encoder_config_from_checkpoint(file, config_overrides={"_target_": "x.Y"})["_target_"] == "x.Y"
    save_checkpoint(tmp_path / "run", 1, {"model": {}, "config": {"encoder": evil}})
    with pytest.raises(CheckpointError, match="refused"):
        load_encoder(tmp_path / "run")
    assert not victim.exists()
