"""Import of original Point-MAE checkpoints (github.com/Pang-Yatian/Point-MAE): pretraining and fine-tuned layouts.

tests/data/point_mae_keys.json lists the key names, shapes and dtypes of the original model's
state dict at the paper config (listed once from the original code; no weights, no code), and
tests/data/point_mae_finetuned_keys.json the same for the fine-tuned ModelNet40 classifier. The
tests build synthetic original-format files from it. The expected placement below is written
out independently of pc3d.hub.point_mae.KEY_MAP, so a wrong table fails here.
"""

import json
from pathlib import Path

import pytest
import torch

from pc3d.encoders import PointViT
from pc3d.errors import CheckpointError
from pc3d.hub import export_point_mae, import_point_mae_model, load_encoder, load_pretraining_model
from pc3d.hub.point_mae import infer_encoder_config
from pc3d.methods import PointMAE

LISTING = json.loads((Path(__file__).parent / "data" / "point_mae_keys.json").read_text())["tensors"]

# original prefix -> pc3d PointMAE prefix; True: Conv1d kernel (out, in, 1) that becomes (out, in)
EXPECTED_PLACEMENT = {
    "MAE_encoder.encoder.first_conv.0.": ("encoder.patch_embed.conv1a.", True),
    "MAE_encoder.encoder.first_conv.1.": ("encoder.patch_embed.bn1.", False),
    "MAE_encoder.encoder.first_conv.3.": ("encoder.patch_embed.conv1b.", True),
    "MAE_encoder.encoder.second_conv.0.": ("encoder.patch_embed.conv2a.", True),
    "MAE_encoder.encoder.second_conv.1.": ("encoder.patch_embed.bn2.", False),
    "MAE_encoder.encoder.second_conv.3.": ("encoder.patch_embed.conv2b.", True),
    "MAE_encoder.pos_embed.": ("encoder.pos_embed.", False),
    "MAE_encoder.blocks.blocks.": ("encoder.blocks.blocks.", False),
    "MAE_encoder.norm.": ("encoder.norm.", False),
    "mask_token": ("mask_token", False),
    "decoder_pos_embed.": ("decoder_pos_embed.", False),
    "MAE_decoder.blocks.": ("decoder.blocks.", False),
    "MAE_decoder.norm.": ("decoder_norm.", False),
    "increase_dim.0.": ("reconstruction_head.", True),
}


def expected_pc3d(key: str, value: torch.Tensor, placement=EXPECTED_PLACEMENT) -> tuple[str, torch.Tensor]:
    for prefix, (target, conv) in placement.items():
        if key.startswith(prefix):
            if conv and key.endswith(".weight"):
                assert value.shape[-1] == 1
                value = value[..., 0]
            return target + key[len(prefix):], value
    raise AssertionError(f"listing key {key} not covered by the expected placement")


def synthetic_state(listing=LISTING, seed=0) -> dict[str, torch.Tensor]:
    """Random tensors of the listed shapes (distinct values, so a misplaced tensor is caught)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, spec in listing.items():
        dtype = getattr(torch, spec["dtype"])
        if dtype.is_floating_point:
            state[key] = torch.randn(spec["shape"], generator=gen, dtype=dtype)
        else:
            state[key] = torch.randint(1, 1000, spec["shape"], generator=gen, dtype=dtype)
    return state


def small_listing(encoder_depth=2, decoder_depth=1):
    """The listing with fewer blocks (fast error-path tests; also exercises depth inference)."""
    def keep(key):
        for prefix, depth in (("MAE_encoder.blocks.blocks.", encoder_depth), ("MAE_decoder.blocks.", decoder_depth)):
            if key.startswith(prefix):
                return int(key[len(prefix):].split(".")[0]) < depth
        return True
    return {k: v for k, v in LISTING.items() if keep(k)}


def save_original(path, state, prefix=""):
    """The original's save_checkpoint layout (tools/builder.py)."""
    torch.save({"base_model": {prefix + k: v for k, v in state.items()}, "optimizer": {"state": {}, "param_groups": []},
                "epoch": 300, "metrics": {}, "best_metrics": {}}, path)
    return path


def test_listing_is_the_paper_model():
    assert len(LISTING) == 209
    assert LISTING["MAE_encoder.norm.weight"]["shape"] == [384]
    assert LISTING["increase_dim.0.weight"]["shape"] == [96, 384, 1]
    assert all(set(spec) == {"shape", "dtype"} for spec in LISTING.values())


@pytest.fixture(scope="module")
def paper_state():
    return synthetic_state()


@pytest.mark.parametrize("size, prefix", [("paper", ""), ("small", "module.")])
def test_every_encoder_tensor_lands_where_the_mapping_says(tmp_path, paper_state, size, prefix):
    state = paper_state if size == "paper" else synthetic_state(small_listing())
    path = save_original(tmp_path / "ckpt-last.pth", state, prefix)
    encoder, config = load_encoder(path)
    assert isinstance(encoder, PointViT) and not encoder.training
    assert {k: config[k] for k in ("embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "num_groups",
                                   "group_size")} == {"embed_dim": 384, "depth": 12 if size == "paper" else 2,
                                                      "num_heads": 6, "mlp_ratio": 4.0, "qkv_bias": False,
                                                      "num_groups": 64, "group_size": 32}
    assert encoder.blocks.blocks[0].attn.num_heads == 6
    loaded = encoder.state_dict()
    placed = set()
    for key, value in state.items():
        if not key.startswith("MAE_encoder."):
            continue
        target, want = expected_pc3d(key, value)
        target = target.removeprefix("encoder.")
        assert torch.equal(loaded[target], want), f"{key} -> {target}"
        placed.add(target)
    assert placed == set(loaded)  # every encoder tensor came from the file


def test_full_model_import_and_export_round_trip(tmp_path, paper_state):
    path = save_original(tmp_path / "ckpt-last.pth", paper_state, "module.")
    model = import_point_mae_model(path)
    assert isinstance(model, PointMAE)
    assert len(model.decoder.blocks) == 4 and model.encoder.group_size == 32
    loaded = model.state_dict()
    for key, value in paper_state.items():
        target, want = expected_pc3d(key, value)
        assert torch.equal(loaded[target], want), f"{key} -> {target}"
    assert len(loaded) == len(paper_state)

    out = export_point_mae(model, tmp_path / "exported.pth", epoch=3)
    back = torch.load(out, weights_only=True)
    assert back["epoch"] == 3
    assert set(back["base_model"]) == set(paper_state)
    for key, value in paper_state.items():
        assert back["base_model"][key].shape == value.shape and torch.equal(back["base_model"][key], value), key


@pytest.fixture
def small_state():
    return synthetic_state(small_listing())


def test_load_pretraining_model_reads_originals_and_pc3d_runs(tmp_path, small_state):
    original = load_pretraining_model(save_original(tmp_path / "ckpt.pth", small_state, "module."))
    assert isinstance(original, PointMAE) and not original.training
    want = import_point_mae_model(tmp_path / "ckpt.pth").state_dict()
    assert all(torch.equal(original.state_dict()[k], v) for k, v in want.items())
    from pc3d.train.checkpoint import save_checkpoint

    config = {"encoder": {"_target_": "pc3d.encoders.PointViT", "embed_dim": 384, "depth": 2, "num_heads": 6,
                          "num_groups": 64, "group_size": 32},
              "method": {"_target_": "pc3d.methods.PointMAE", "decoder_depth": 1, "decoder_num_heads": 6}}
    save_checkpoint(tmp_path / "run", 5, {"model": original.state_dict(), "config": config})
    again = load_pretraining_model(tmp_path / "run")
    assert isinstance(again, PointMAE) and len(again.decoder.blocks) == 1
    assert all(torch.equal(again.state_dict()[k], v) for k, v in want.items())
    save_checkpoint(tmp_path / "bare", 1, {"model": original.state_dict(), "config": {"encoder": config["encoder"]}})
    with pytest.raises(CheckpointError, match="no method and encoder config"):
        load_pretraining_model(tmp_path / "bare")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a pretraining model"):
        load_pretraining_model(tmp_path / "other.pth")


def test_architecture_is_inferred_from_the_weights(small_state):
    config = infer_encoder_config(small_state)
    assert (config["embed_dim"], config["depth"], config["group_size"]) == (384, 2, 32)
    small_state["increase_dim.0.weight"] = torch.zeros(48, 384, 1)  # a 16-point-patch model
    small_state["MAE_encoder.blocks.blocks.0.attn.qkv.bias"] = torch.zeros(1152)
    config = infer_encoder_config(small_state, overrides={"num_heads": 12})
    assert (config["group_size"], config["qkv_bias"], config["num_heads"]) == (16, True, 12)


def test_dropped_key_is_named_as_missing(tmp_path, small_state):
    del small_state["MAE_encoder.blocks.blocks.1.attn.proj.bias"]
    path = save_original(tmp_path / "dropped.pth", small_state)
    with pytest.raises(CheckpointError, match=r"dropped.pth: encoder weights do not fit .*missing "
                                              r"\['MAE_encoder\.blocks\.blocks\.1\.attn\.proj\.bias'\]"):
        load_encoder(path)
    encoder, _ = load_encoder(path, strict=False)  # the rest loads
    want = small_state["MAE_encoder.blocks.blocks.1.attn.proj.weight"]
    assert torch.equal(encoder.blocks.blocks[1].attn.proj.weight, want)


def test_renamed_key_is_named_as_unexpected_and_missing(tmp_path, small_state):
    small_state["MAE_encoder.norm.gamma"] = small_state.pop("MAE_encoder.norm.weight")
    small_state["MAE_encoder.extra_token"] = torch.zeros(1, 1, 384)
    path = save_original(tmp_path / "renamed.pth", small_state, "module.")
    with pytest.raises(CheckpointError) as info:
        load_encoder(path)
    message = str(info.value)
    assert "renamed.pth" in message
    assert "missing ['MAE_encoder.norm.weight']" in message
    assert "unexpected ['MAE_encoder.extra_token', 'MAE_encoder.norm.gamma']" in message
    # the full-model import reports the same way
    with pytest.raises(CheckpointError, match=r"missing \['MAE_encoder\.norm\.weight'\]"):
        import_point_mae_model(path)


def test_shape_mismatch_is_named(tmp_path, small_state):
    small_state["MAE_encoder.blocks.blocks.1.mlp.fc2.weight"] = torch.zeros(384, 1000)
    path = save_original(tmp_path / "shapes.pth", small_state)
    with pytest.raises(CheckpointError, match=r"shape mismatch \['MAE_encoder\.blocks\.blocks\.1\.mlp\.fc2\.weight "
                                              r"\(384, 1000\) vs \(384, 1536\)'\]"):
        load_encoder(path)


def test_overrides_and_forced_format(tmp_path, small_state):
    path = save_original(tmp_path / "weights.bin", small_state)
    encoder, config = load_encoder(path, format="point-mae", config_overrides={"num_heads": 12, "num_groups": 32})
    assert config["num_heads"] == 12 and encoder.blocks.blocks[0].attn.num_heads == 12
    assert encoder(torch.randn(1, 256, 3)).levels[-1].features.shape == (1, 32, 384)
    torch.save({"base_model": {"encoder.norm.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="other.pth: not a Point-MAE checkpoint"):
        load_encoder(tmp_path / "other.pth", format="point-mae")
    with pytest.raises(CheckpointError, match="other.pth: not a Point-MAE checkpoint"):
        import_point_mae_model(tmp_path / "other.pth")


# ---------------------------------------------------------------- fine-tuned classifier layout
FINETUNED = json.loads((Path(__file__).parent / "data" / "point_mae_finetuned_keys.json").read_text())["tensors"]
# fine-tuned PointTransformer prefix -> pc3d ObjectClassifier prefix (written out independently)
FINETUNED_PLACEMENT = {
    "encoder.first_conv.0.": ("encoder.patch_embed.conv1a.", True),
    "encoder.first_conv.1.": ("encoder.patch_embed.bn1.", False),
    "encoder.first_conv.3.": ("encoder.patch_embed.conv1b.", True),
    "encoder.second_conv.0.": ("encoder.patch_embed.conv2a.", True),
    "encoder.second_conv.1.": ("encoder.patch_embed.bn2.", False),
    "encoder.second_conv.3.": ("encoder.patch_embed.conv2b.", True),
    "pos_embed.": ("encoder.pos_embed.", False),
    "blocks.blocks.": ("encoder.blocks.blocks.", False),
    "norm.": ("encoder.norm.", False),
    "cls_token": ("encoder.cls_token", False),
    "cls_pos": ("encoder.cls_pos", False),
    "cls_head_finetune.": ("head.", False),
}


def test_finetuned_listing_is_point_mae_modelnet40_classifier():
    assert FINETUNED["cls_token"]["shape"] == [1, 1, 384]
    assert FINETUNED["cls_head_finetune.8.weight"]["shape"] == [40, 256]
    assert not any(k.startswith(("MAE_", "module.")) for k in FINETUNED)


@pytest.mark.parametrize("prefix", ["", "module.", "module.base_model."])
def test_finetuned_classifier_import_places_every_tensor(tmp_path, prefix):
    from pc3d.hub import import_point_mae_classifier

    state = synthetic_state(FINETUNED, seed=1)
    path = save_original(tmp_path / "ckpt-best.pth", state, prefix)
    classifier = import_point_mae_classifier(path)
    assert classifier.num_classes == 40 and classifier.encoder.cls_token is not None and not classifier.training
    loaded = classifier.state_dict()
    placed = set()
    for key, value in state.items():
        target, value = expected_pc3d(key, value, FINETUNED_PLACEMENT)
        assert torch.equal(loaded[target], value), f"{key} -> {target}"
        placed.add(target)
    assert placed == set(loaded)

    encoder, config = load_encoder(path)  # the same file as an encoder: class token, no head
    assert config["cls_token"] is True and config["depth"] == 12
    assert torch.equal(encoder.cls_pos, state["cls_pos"])
    with torch.no_grad():
        out = encoder(torch.nn.functional.normalize(torch.randn(2, 1024, 3), dim=-1))
    assert out.cls_feature.shape == (2, 384)


def test_finetuned_file_is_not_a_pretraining_model(tmp_path):
    path = save_original(tmp_path / "ckpt-best.pth", synthetic_state(FINETUNED))
    with pytest.raises(CheckpointError, match="fine-tuned Point-MAE classifier.*import_point_mae_classifier"):
        import_point_mae_model(path)


def test_finetuned_head_shape_mismatch_is_named(tmp_path):
    from pc3d.hub import import_point_mae_classifier

    state = synthetic_state(FINETUNED)
    state["cls_head_finetune.4.weight"] = torch.zeros(128, 256)
    path = save_original(tmp_path / "bad.pth", state)
    with pytest.raises(CheckpointError, match=r"cls_head_finetune\.4\.weight \(128, 256\) vs \(256, 256\)"):
        import_point_mae_classifier(path)


def test_pretraining_file_is_not_a_classifier(tmp_path, paper_state):
    from pc3d.hub import import_point_mae_classifier

    path = save_original(tmp_path / "pretrain.pth", paper_state)
    with pytest.raises(CheckpointError, match="not a fine-tuned Point-MAE classifier"):
        import_point_mae_classifier(path)
