"""The one weights loader (hub.py over io/tensor_files.py): every format, every refusal, every model.

Safety first: a pickle that carries code is refused before any of it runs, whichever way it reaches the loader, and
no other module in the package calls torch.load or a safetensors reader.
"""

import ast
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import manyview
from manyview.errors import ManyviewError
from manyview.hub import HubMixin, load_weights, open_checkpoint, read_state_dict
from manyview.models.efficient_lvsm import EfficientLVSM
from manyview.models.fast3r import Fast3R
from manyview.models.lvsm import LVSMDecoderOnly, LVSMEncoderDecoder
from manyview.models.lvsm_family import build_model, load_lvsm
from manyview.models.pairwise import PairwiseNet

SRC = Path(manyview.__file__).resolve().parent


@dataclass(frozen=True)
class TinyConfig:
    width: int = 3

    def to_dict(self):
        return {"width": self.width}

    @classmethod
    def from_dict(cls, data, path=None):
        return cls(**data)


class Tiny(nn.Module, HubMixin):
    config_class = TinyConfig

    def __init__(self, config=TinyConfig()):
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.width, 2)
        self.norm = nn.LayerNorm(2)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (str(self.marker), "w"))


# ------------------------------------------------------------------------------------------------ formats
def test_safetensors_folder_round_trips(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    loaded = Tiny.from_pretrained(tmp_path / "model")
    assert _same(loaded, tiny) and not loaded.training


def test_plain_state_dict_in_a_pt_file(tiny, tmp_path):
    torch.save(tiny.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "config.json").write_text(json.dumps(tiny.config.to_dict()))
    assert _same(Tiny.from_pretrained(tmp_path / "weights.pt"), tiny)


@pytest.mark.parametrize("container", [
    lambda s: {"state_dict": {f"model.{k}": v for k, v in s.items()}, "epoch": 3},  # Lightning
    lambda s: {"model": s, "optimizer": {"state": {}, "param_groups": []}, "args": "x"},  # DUSt3R / LVSM
    lambda s: {"model_state_dict": {f"module._orig_mod.{k}": v for k, v in s.items()}, "step": 9},  # DDP + compile
])
def test_training_containers_are_unwrapped(tiny, tmp_path, container):
    torch.save(container(tiny.state_dict()), tmp_path / "last.ckpt")
    assert _same(Tiny.from_pretrained(tmp_path / "last.ckpt", config=TinyConfig()), tiny)


def test_format_is_told_by_content_not_name(tiny, tmp_path):
    save_file(dict(tiny.state_dict()), str(tmp_path / "really_safetensors.pt"))
    tensors, _ = read_state_dict(tmp_path / "really_safetensors.pt")
    assert tensors.keys() == tiny.state_dict().keys()
    torch.save(tiny.state_dict(), tmp_path / "really_a_pickle.safetensors")
    tensors, _ = read_state_dict(tmp_path / "really_a_pickle.safetensors")
    assert tensors.keys() == tiny.state_dict().keys()


@pytest.mark.parametrize("legacy", [False, True])
def test_pickle_carrying_code_is_refused_before_it_runs(tmp_path, legacy):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "evil": _Payload(marker)}, evil, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ManyviewError) as err:
        read_state_dict(evil)
    assert str(err.value).startswith(f"{evil}: refusing to load: this checkpoint is a pickle that carries Python "
                                     "objects (code")
    assert "manyview loads only safetensors or plain tensor checkpoints" in str(err.value)
    assert "weights_only=False" not in str(err.value)  # torch's advice to load unsafely is not passed on
    assert len(str(err.value).splitlines()) == 1
    assert not marker.exists()


def test_code_pickle_given_where_a_model_folder_was_expected_is_named_as_such(tmp_path):
    """``reconstruct --weights x.pt`` with no config.json beside it: the pickle is the problem, not the config."""
    marker = tmp_path / "pwned"
    torch.save({"evil": _Payload(marker)}, tmp_path / "x.pt")
    for load in (open_checkpoint, Fast3R.from_pretrained, PairwiseNet.from_pretrained, load_lvsm):
        with pytest.raises(ManyviewError, match=r"x\.pt: refusing to load: this checkpoint is a pickle"):
            load(tmp_path / "x.pt")
    assert not marker.exists()


def test_plain_pickle_made_with_pickle_module_is_refused_too(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "raw.pth", "wb") as f:
        pickle.dump({"evil": _Payload(marker)}, f)
    with pytest.raises(ManyviewError, match="raw.pth: refusing to load"):
        read_state_dict(tmp_path / "raw.pth")
    assert not marker.exists()


def test_damaged_files_are_named(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])  # truncated
    with pytest.raises(ManyviewError, match=r"model\.safetensors: cannot read: damaged or not a safetensors file"):
        Tiny.from_pretrained(tmp_path / "model")
    torch.save(tiny.state_dict(), tmp_path / "cut.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "cut.pt").read_bytes()[:100])
    (tmp_path / "garbage.pt").write_bytes(b"hello, not a checkpoint" * 4)
    (tmp_path / "empty.pth").write_bytes(b"")
    for name in ("cut.pt", "garbage.pt", "empty.pth"):
        with pytest.raises(ManyviewError) as err:
            read_state_dict(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}: cannot read: damaged or not a PyTorch file")
        assert len(str(err.value).splitlines()) == 1


def test_folders_say_what_they_lack(tiny, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManyviewError, match="empty: not a model folder: no config.json and no model.safetensors"):
        Tiny.from_pretrained(tmp_path / "empty")
    tiny.save_pretrained(tmp_path / "no_weights")
    (tmp_path / "no_weights" / "model.safetensors").unlink()
    with pytest.raises(ManyviewError, match="no_weights: no model.safetensors .* beside config.json"):
        Tiny.from_pretrained(tmp_path / "no_weights")
    tiny.save_pretrained(tmp_path / "no_config")
    (tmp_path / "no_config" / "config.json").unlink()
    with pytest.raises(ManyviewError, match="no_config: no config.json in this folder; pass config="):
        Tiny.from_pretrained(tmp_path / "no_config")
    assert _same(Tiny.from_pretrained(tmp_path / "no_config", config=TinyConfig()), tiny)
    (tmp_path / "two").mkdir()
    for name in ("a.pt", "b.pt"):
        torch.save(tiny.state_dict(), tmp_path / "two" / name)
    with pytest.raises(ManyviewError, match="two: expected model.safetensors or exactly one weights file; found a.pt"):
        Tiny.from_pretrained(tmp_path / "two", config=TinyConfig())


def test_strict_keys_name_missing_unexpected_and_misshapen(tiny, tmp_path):
    state = dict(tiny.state_dict())
    del state["norm.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["linear.weight"] = torch.zeros(2, 5)
    with pytest.raises(ManyviewError) as err:
        load_weights(Tiny(), state, path=tmp_path / "w.safetensors")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'w.safetensors'}: checkpoint does not fit the model")
    assert "linear.weight: checkpoint (2, 5) vs model (2, 3)" in message
    assert "missing keys: norm.bias" in message and "unexpected keys: extra.weight" in message


def test_tied_tensors_are_stored_once_and_load_under_either_name(tmp_path):
    class Tied(Tiny):
        def __init__(self, config=TinyConfig()):
            super().__init__(config)
            self.alias = self.linear  # one module under two names, as DPT's layer_rn / layerN_rn

    model = Tied()
    model.save_pretrained(tmp_path)
    tensors, aliases = read_state_dict(tmp_path / "model.safetensors")
    assert "linear.weight" not in tensors and aliases["linear.weight"] == "alias.weight"  # first name kept
    loaded = Tied.from_pretrained(tmp_path)
    assert loaded.alias is loaded.linear and torch.equal(loaded.linear.weight, model.linear.weight)


# ------------------------------------------------------------------------------------------------ every model
def _perturbed(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("make", [lambda: Fast3R("tiny"), lambda: PairwiseNet("tiny"),
                                  lambda: build_model("lvsm-tiny"), lambda: build_model("lvsm-encoder-decoder-tiny"),
                                  lambda: build_model("efficient-lvsm-tiny")],
                         ids=["Fast3R", "PairwiseNet", "LVSMDecoderOnly", "LVSMEncoderDecoder", "EfficientLVSM"])
def test_every_model_round_trips_through_the_hub_mixin(make, tmp_path):
    model = _perturbed(make())
    assert isinstance(model, HubMixin)
    model.save_pretrained(tmp_path / "m")
    loaded = type(model).from_pretrained(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    assert _same(loaded, model)


def test_lvsm_family_loader_picks_the_class_from_the_checkpoint(tmp_path):
    for cls, name in ((LVSMDecoderOnly, "lvsm-tiny"), (LVSMEncoderDecoder, "lvsm-encoder-decoder-tiny"),
                      (EfficientLVSM, "efficient-lvsm-tiny")):
        model = _perturbed(build_model(name))
        model.save_pretrained(tmp_path / name)
        loaded = load_lvsm(tmp_path / name)
        assert type(loaded) is cls and _same(loaded, model)


# ------------------------------------------------------------------------------------------------ one path
_LOADERS = {"torch.load", "pickle.load", "pickle.loads", "pickle.Unpickler", "load_file", "safe_open",
            "safetensors.torch.load", "safetensors.torch.load_file", "safetensors.safe_open", "load_model"}
_ALLOWED = {"io/tensor_files.py", "train/checkpoint.py"}  # the loader; the trainer's own resumable state


def _loader_uses(path: Path) -> list[str]:
    """Calls of a file loader in a module, and imports of safetensors' readers (which would be called bare)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("safetensors", "pickle"):
            found += [f"line {node.lineno}: from {node.module} import {a.name}" for a in node.names
                      if a.name in {"load_file", "safe_open", "load", "load_model", "loads", "Unpickler"}]
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in _LOADERS:
                found.append(f"line {node.lineno}: {name}(...)")
    return found


def test_only_the_loader_module_reads_weights_files():
    offenders = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        uses = _loader_uses(path)
        if uses and rel not in _ALLOWED:
            offenders[rel] = uses
    assert not offenders, f"read weights through manyview.hub / manyview.io.tensor_files instead: {offenders}"
    assert _loader_uses(SRC / "io" / "tensor_files.py")  # the check sees the calls it is looking for


def test_the_check_would_catch_a_stray_reader(tmp_path):
    stray = tmp_path / "stray.py"
    stray.write_text("import torch\nfrom safetensors.torch import load_file\n\ndef f(p):\n"
                     "    return torch.load(p, weights_only=True)\n")
    assert len(_loader_uses(stray)) == 2


# ------------------------------------------------------------------------------------------------ no circles
def _imports(path: Path, package: str) -> set[str]:
    """manyview modules imported anywhere in a file (function-level imports included: they make circles too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m.startswith(package)}


def test_no_import_circle_among_the_models_and_the_loader():
    modules = {f"manyview.{p.relative_to(SRC).with_suffix('').as_posix().replace('/', '.')}": p
               for p in [*(SRC / "models").glob("*.py"), SRC / "hub.py", SRC / "io" / "tensor_files.py"]
               if p.name != "__init__.py"}
    graph = {m: _imports(p, "manyview") & modules.keys() for m, p in modules.items()}

    def reaches(start, goal, seen):
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start])

    circles = sorted(m for m in graph if reaches(m, m, {m}))
    assert not circles, f"import circle through {circles}"
    assert "manyview.models.efficient_lvsm" not in graph["manyview.models.lvsm"]
    assert "manyview.models.lvsm" not in graph["manyview.models.efficient_lvsm"]
