"""LVSM-family checkpoints: released layouts round-trip with zero missing / unexpected keys; clear errors."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file
from test_lvsm_models import scene, tiny

from manyview.errors import ManyviewError
from manyview.hub import read_state_dict
from manyview.models.efficient_lvsm import EfficientLVSM
from manyview.models.lvsm import LVSMDecoderOnly
from manyview.models.lvsm_config import CONFIGS
from manyview.models.lvsm_family import build_model, load_lvsm
from manyview.models.lvsm_weights import clean_state_dict, config_from_yaml, detect_variant, infer_config

TINY = ["lvsm-tiny", "lvsm-encoder-decoder-tiny", "efficient-lvsm-tiny"]


def save_official_checkpoint(model, path, compiled_prefix=False):
    """The released container layout ``{"model": state_dict}``, with ``_orig_mod.`` keys when the official run
    was ``torch.compile``-wrapped."""
    prefix = "_orig_mod." if compiled_prefix else ""
    torch.save({"model": {prefix + k: v for k, v in model.state_dict().items()}}, path)


def official_keys(name: str) -> set[str]:
    """State-dict keys of the official modules (Haian-Jin/LVSM, Ayakaee/Efficient-LVSM), written out by hand."""
    c = CONFIGS[name]
    attn = ["to_qkv", "fc", "q_norm", "k_norm"]
    mlp = ["mlp.mlp.0.weight", "mlp.mlp.2.weight"]

    def lvsm_block(prefix, i):
        return ({f"{prefix}.{i}.norm1.weight", f"{prefix}.{i}.norm2.weight"}
                | {f"{prefix}.{i}.attn.{a}.weight" for a in attn} | {f"{prefix}.{i}.{m}" for m in mlp})

    if c.variant == "efficient":
        keys = {"rgbp_tokenizer.1.weight", "target_pose_tokenizer.1.weight", "image_token_decoder.1.weight"}
        for i in range(c.n_layer):
            keys |= {f"input_self_attn_blocks.{i}.attn.{a}.weight" for a in attn}
            keys |= {f"input_self_attn_blocks.{i}.{m}" for m in mlp} | {f"self_cross_blocks.{i}.{m}" for m in mlp}
            keys |= {f"self_cross_blocks.{i}.self_attn.{a}.weight" for a in attn}
            keys |= {f"self_cross_blocks.{i}.cross_attn.{a}.weight" for a in ["to_q", "to_kv", "fc", "q_norm",
                                                                               "k_norm"]}
        return keys
    keys = {"image_tokenizer.1.weight", "target_pose_tokenizer.1.weight", "image_token_decoder.0.weight",
            "image_token_decoder.1.weight"}
    if c.variant == "decoder_only":
        keys.add("transformer_input_layernorm.weight")
        for i in range(c.n_layer):
            keys |= lvsm_block("transformer_blocks", i)
        return keys
    keys |= {"n_light_field_latent", "transformer_input_layernorm_decoder.weight"}
    for i in range(c.encoder_n_layer):
        keys |= lvsm_block("transformer_encoder", i)
    for i in range(c.decoder_n_layer):
        keys |= lvsm_block("transformer_decoder", i)
    return keys


@pytest.mark.parametrize("name", TINY + ["lvsm-decoder-only", "lvsm-encoder-decoder", "efficient-lvsm"])
def test_state_dict_keys_are_the_official_ones(name):
    with torch.device("meta"):
        model = build_model(name)
    assert set(model.state_dict()) == official_keys(name)


def _render(model):
    images, cams = scene(v=3, seed=3)
    with torch.no_grad():
        return model.render(images[:, :2], cams[:, :2], cams[:, 2:])


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", TINY)
def test_every_layout_round_trips(name, tmp_path):
    model = tiny(name)
    expected = _render(model)
    model.save_pretrained(tmp_path / "hf")
    save_official_checkpoint(model, tmp_path / "plain.pt")
    save_official_checkpoint(model, tmp_path / "compiled.pt", compiled_prefix=True)
    save_file(dict(model.state_dict()), str(tmp_path / "flat.safetensors"))
    loaded = [type(model).from_pretrained(tmp_path / "hf"), load_lvsm(tmp_path / "hf"),
              load_lvsm(tmp_path / "plain.pt", CONFIGS[name]), load_lvsm(tmp_path / "compiled.pt", name),
              load_lvsm(tmp_path / "flat.safetensors", name)]
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["variant"] == CONFIGS[name].variant
    assert torch.load(tmp_path / "compiled.pt", weights_only=True)["model"].keys() == {
        "_orig_mod." + k for k in model.state_dict()}
    for other in loaded:
        assert type(other) is type(model) and other.config == model.config and not other.training
        assert _same(model, other)
        torch.testing.assert_close(_render(other), expected, atol=0, rtol=0)


@pytest.mark.parametrize("name", TINY)
def test_architecture_is_inferred_from_tensor_shapes(name, tmp_path):
    model = tiny(name)
    inferred = infer_config(model.state_dict())
    not_in_weights = ("image_size", "scene_scale_factor", "special_init", "depth_init")
    assert inferred == dataclasses.replace(CONFIGS[name], **{f: getattr(inferred, f) for f in not_in_weights})
    save_official_checkpoint(model, tmp_path / "ckpt.pt")
    assert _same(load_lvsm(tmp_path / "ckpt.pt"), model)


def test_training_only_entries_are_skipped_and_the_compile_prefix_stripped(tmp_path):
    model = tiny("lvsm-tiny")
    state = {"_orig_mod." + k: v for k, v in model.state_dict().items()}
    state["_orig_mod.loss_computer.perceptual_loss_module.vgg.0.weight"] = torch.zeros(64, 3, 3, 3)
    state["loss_computer.perceptual_loss_module.blocks.0.0.weight"] = torch.zeros(1)
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "fwdbwd_pass_step": 3},
               tmp_path / "ckpt.pt")
    assert set(clean_state_dict(read_state_dict(tmp_path / "ckpt.pt")[0])) == set(model.state_dict())
    assert _same(load_lvsm(tmp_path / "ckpt.pt"), model)
    eff = tiny("efficient-lvsm-tiny")
    state = dict(eff.state_dict()) | {"repa_projector.input.2.0.weight": torch.zeros(4, 4),
                                      "repa_encoder.blocks.0.attn.qkv.weight": torch.zeros(4, 4)}
    save_file(state, str(tmp_path / "repa.safetensors"))
    assert _same(load_lvsm(tmp_path / "repa.safetensors"), eff)


def test_checkpoint_of_another_variant_is_named(tmp_path):
    lvsm, eff = tiny("lvsm-tiny"), tiny("efficient-lvsm-tiny")
    save_official_checkpoint(lvsm, tmp_path / "lvsm.pt")
    save_official_checkpoint(eff, tmp_path / "eff.pt")
    with pytest.raises(ManyviewError, match="lvsm.pt: this is an LVSM decoder-only checkpoint.*Efficient-LVSM"):
        load_lvsm(tmp_path / "lvsm.pt", "efficient-lvsm-tiny")
    with pytest.raises(ManyviewError, match="eff.pt: this is an Efficient-LVSM checkpoint.*LVSM decoder-only"):
        load_lvsm(tmp_path / "eff.pt", "lvsm-tiny")
    with pytest.raises(ManyviewError, match="Efficient-LVSM checkpoint .*model is LVSM encoder-decoder"):
        build_model("lvsm-encoder-decoder-tiny").load_tensors(eff.state_dict())
    eff.save_pretrained(tmp_path / "eff")
    with pytest.raises(ManyviewError, match="eff: this is an Efficient-LVSM checkpoint, but LVSMDecoderOnly builds"):
        LVSMDecoderOnly.from_pretrained(tmp_path / "eff")
    assert isinstance(EfficientLVSM.from_pretrained(tmp_path / "eff"), EfficientLVSM)
    assert detect_variant(lvsm.state_dict()) == "decoder_only" and detect_variant(["x.weight"]) is None


def test_missing_unexpected_and_misshapen_keys_are_listed(tmp_path):
    state = dict(tiny("lvsm-tiny").state_dict())
    del state["transformer_blocks.2.attn.fc.weight"]
    state["transformer_blocks.9.attn.fc.weight"] = torch.zeros(64, 64)
    state["image_tokenizer.1.weight"] = torch.zeros(64, 3)
    with pytest.raises(ManyviewError) as err:
        build_model("lvsm-tiny").load_tensors(state, path=tmp_path / "x.pt")
    message = str(err.value)
    assert "missing keys: transformer_blocks.2.attn.fc.weight" in message
    assert "unexpected keys: transformer_blocks.9.attn.fc.weight" in message
    assert "image_tokenizer.1.weight: checkpoint (64, 3) vs model (64, 576)" in message and "x.pt" in message
    save_official_checkpoint(tiny("lvsm-tiny"), tmp_path / "four_layers.pt")
    five_layers = dataclasses.replace(CONFIGS["lvsm-tiny"], n_layer=5)
    with pytest.raises(ManyviewError, match="four_layers.pt: .*missing keys: transformer_blocks.4"):
        load_lvsm(tmp_path / "four_layers.pt", five_layers)


class NotATensor:
    pass


def test_unreadable_files_raise_clear_errors(tmp_path):
    with pytest.raises(ManyviewError, match="absent.pt: no such file or folder"):
        load_lvsm(tmp_path / "absent.pt", "lvsm-tiny")
    torch.save({"model": {"w": NotATensor()}}, tmp_path / "pickle.pt")
    with pytest.raises(ManyviewError, match="pickle.pt: refusing to load: this checkpoint is a pickle that carries"):
        read_state_dict(tmp_path / "pickle.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ManyviewError, match="junk.safetensors: cannot read: damaged or not a safetensors file"):
        read_state_dict(tmp_path / "junk.safetensors")
    torch.save({"step": 3}, tmp_path / "nostate.pt")
    with pytest.raises(ManyviewError, match="no state dict"):
        read_state_dict(tmp_path / "nostate.pt")
    torch.save({"model": {"foo.weight": torch.zeros(2)}}, tmp_path / "foreign.pt")
    with pytest.raises(ManyviewError, match="not an LVSM"):
        load_lvsm(tmp_path / "foreign.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManyviewError, match="no config.json"):
        load_lvsm(tmp_path / "empty")
    tiny("lvsm-tiny").save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text('{"variant": "decoder_only", "width": 3}')
    with pytest.raises(ManyviewError, match=r"config.json: unknown LVSM config fields \['width'\]"):
        LVSMDecoderOnly.from_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text('{"variant": "decoder_only", "d": 60, "d_head": 16}')
    with pytest.raises(ManyviewError, match="config.json: LVSM width d=60 is not a multiple of d_head=16"):
        load_lvsm(tmp_path / "hf")


def test_config_json_with_the_architecture_label_still_loads(tmp_path):
    """Folders written before the hub mixin (the bundled models among them) carry an ``architecture`` label."""
    model = tiny("efficient-lvsm-tiny")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "architecture" not in config
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "Efficient-LVSM", **config}))
    assert _same(load_lvsm(tmp_path), model)


OFFICIAL_YAML = """
model:
  class_name: model.{module}.Images2LatentScene
  image_tokenizer:
    image_size: 256
    patch_size: 8
    in_channels: 9  # 3 RGB + 3 direction + 3 Reference
  target_pose_tokenizer:
    image_size: 256
    patch_size: 8
    in_channels: 6
  transformer:
    d: 768
    d_head: 64
{layers}
    special_init: true
    depth_init: true
    use_qk_norm: true
training:
  scene_scale_factor: 1.35
  num_views: 8
"""


@pytest.mark.parametrize("module, layers, name", [
    ("LVSM_scene_decoder_only", "    n_layer: 24", "lvsm-decoder-only"),
    ("LVSM_scene_encoder_decoder", "    encoder_n_layer: 12\n    decoder_n_layer: 12\n    n_latent_vectors: 3072",
     "lvsm-encoder-decoder"),
    ("efficient_lvsm", "    n_layer: 12\n    attention_arch: flash", "efficient-lvsm"),
])
def test_official_yaml_maps_to_the_named_configuration(tmp_path, module, layers, name):
    path = tmp_path / "config.yaml"
    path.write_text(OFFICIAL_YAML.format(module=module, layers=layers))
    assert config_from_yaml(path) == CONFIGS[name]


def test_bad_yaml_raises_clear_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(OFFICIAL_YAML.format(module="gs_lrm", layers="    n_layer: 2"))
    with pytest.raises(ManyviewError, match="unknown model.class_name"):
        config_from_yaml(path)
    path.write_text(OFFICIAL_YAML.format(module="LVSM_scene_decoder_only", layers="").replace("in_channels: 9",
                                                                                              "in_channels: 12"))
    with pytest.raises(ManyviewError, match="9 input channels"):
        config_from_yaml(path)
    path.write_text(OFFICIAL_YAML.format(module="LVSM_scene_decoder_only", layers=""))
    with pytest.raises(ManyviewError, match="lacks 'n_layer'"):
        config_from_yaml(path)
    path.write_text("model: [unclosed")
    with pytest.raises(ManyviewError, match="c.yaml: not valid YAML"):
        config_from_yaml(path)
