"""hub.py: the Hugging Face layout (config.json + model.safetensors), strict loading, safe pickle loading."""

import json
import math
import sys

import pytest
import torch
from safetensors import safe_open

from manyview.errors import ManyviewError
from manyview.hub import read_state_dict, resolve
from manyview.models.fast3r import Fast3R


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Fast3R("tiny").eval()


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_pretrained_round_trip(model, tmp_path):
    out = model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # no temp files left
    config = json.loads((out / "config.json").read_text())
    assert sorted(config) == ["decoder_args", "encoder_args", "head_args"]
    assert config["head_args"]["depth_mode"] == ["exp", -math.inf, math.inf]  # written as JSON Infinity
    with safe_open(out / "model.safetensors", "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    # Each DPT alias stored once; metadata maps the dropped name to the stored one.
    for head in ("downstream_head", "downstream_head_local"):
        for i in range(4):
            assert meta[f"{head}.dpt.scratch.layer_rn.{i}.weight"] == f"{head}.dpt.scratch.layer{i + 1}_rn.weight"
            assert f"{head}.dpt.scratch.layer_rn.{i}.weight" not in keys
    assert len(keys) + len(meta) == len(model.state_dict())
    loaded = Fast3R.from_pretrained(out)
    assert _same_weights(model, loaded) and not loaded.training
    assert loaded.downstream_head.dpt.scratch.layer_rn[2] is loaded.downstream_head.dpt.scratch.layer3_rn
    # The tiny preset fits the bundled-weights budget.
    assert (out / "model.safetensors").stat().st_size <= 25 * 2**20


def test_file_loads_with_safetensors_load_model(model, tmp_path):
    from safetensors.torch import load_model

    model.save_pretrained(tmp_path)
    other = Fast3R("tiny")
    missing, unexpected = load_model(other, tmp_path / "model.safetensors")
    assert not missing and not unexpected and _same_weights(model, other)


def test_unknown_config_field_names_it(model, tmp_path):
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["encoder_args"]["qk_norm"] = True
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ManyviewError, match="config.json: .*unknown fields in encoder_args: qk_norm"):
        Fast3R.from_pretrained(tmp_path)


def test_wrong_shape_names_key_and_shapes(model, tmp_path):
    from safetensors.torch import save_file

    model.save_pretrained(tmp_path)
    tensors, aliases = read_state_dict(tmp_path / "model.safetensors")
    tensors["decoder.decoder_embed.weight"] = torch.zeros(128, 100)
    save_file(tensors, tmp_path / "model.safetensors", metadata=aliases)
    with pytest.raises(ManyviewError, match=r"decoder\.decoder_embed\.weight: checkpoint \(128, 100\) vs model \(128, 192\)"):
        Fast3R.from_pretrained(tmp_path)


def test_missing_and_unexpected_keys_are_named(model, tmp_path):
    from safetensors.torch import save_file

    model.save_pretrained(tmp_path)
    tensors, aliases = read_state_dict(tmp_path / "model.safetensors")
    del tensors["decoder.dec_norm.bias"]
    tensors["decoder.extra.weight"] = torch.zeros(3)
    save_file(tensors, tmp_path / "model.safetensors", metadata=aliases)
    with pytest.raises(ManyviewError, match=r"missing keys: decoder\.dec_norm\.bias.*unexpected keys: decoder\.extra"):
        Fast3R.from_pretrained(tmp_path)


def test_lightning_checkpoint_with_prefix(model, tmp_path):
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3, "global_step": 10}, tmp_path / "last.ckpt")
    loaded = Fast3R.from_pretrained(tmp_path / "last.ckpt", config="tiny")
    assert _same_weights(model, loaded)
    with pytest.raises(ManyviewError, match="no config.json beside the weights"):
        Fast3R.from_pretrained(tmp_path / "last.ckpt")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (str(self.marker), "w"))


def test_pickle_with_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.zeros(2), "evil": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(ManyviewError, match="evil.pth: refusing to load"):
        read_state_dict(tmp_path / "evil.pth")
    with pytest.raises(ManyviewError, match="refusing to load"):
        Fast3R.from_pretrained(tmp_path / "evil.pth", config="tiny")
    assert not marker.exists()


def test_hub_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ManyviewError, match="no such file or folder"):
        resolve(tmp_path / "missing")

    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("Cannot find the requested files in the local cache (offline mode)")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ManyviewError, match="jedyang97/Fast3R_ViT_Large_512: not a local path, and could not download.*offline"):
        Fast3R.from_pretrained("jedyang97/Fast3R_ViT_Large_512")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(ManyviewError, match="needs huggingface_hub"):
        resolve("owner/name")


def test_unknown_weight_format(tmp_path):
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ManyviewError, match="unknown weights format"):
        read_state_dict(tmp_path / "w.npz")
