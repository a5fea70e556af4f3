import pytest
import torch

from pc3d.encoders import PointViT
from pc3d.errors import CheckpointError, ConfigError
from pc3d.hub import build_encoder, load_encoder
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
