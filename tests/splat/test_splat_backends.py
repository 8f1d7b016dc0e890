"""The backend seam: every registered backend honours one interface, render() only checks and dispatches, and any
GaussianStore renders through the store's own conversion."""

from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import dataclass, field

import pytest
import torch
from torch import Tensor

from manyview.scene import Cameras
from manyview.splat import Backend, GaussianStore, RenderOutput, RenderSettings, register_backend, render
from manyview.splat.gaussians import PARAMETER_NAMES
from manyview.splat.render import backend_names, choose_backend, get_backend

render_module = importlib.import_module("manyview.splat.render")  # the package's ``render`` is the function
FIELDS = ("rgb", "alpha", "depth", "means2d", "radii")


def _gsplat_usable() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("gsplat") is not None


def _psnr(a: Tensor, b: Tensor) -> float:
    mse = ((a.double().cpu() - b.double().cpu()) ** 2).mean().item()
    return math.inf if mse == 0 else -10 * math.log10(mse)


# Where each built-in backend runs and the agreement with the float64 reference it promises (docs/splatting.md).
PLACES = {"reference": ("cpu", torch.float64, math.inf), "cpu": ("cpu", torch.float32, 50.0),
          "gsplat": ("cuda", torch.float32, 30.0)}


@pytest.mark.parametrize("name", [n for n in backend_names() if n != "auto"])
def test_every_registered_backend_honours_the_interface(name, scene, cameras):
    if name == "gsplat" and not _gsplat_usable():
        pytest.skip("needs a CUDA device and gsplat")
    device, dtype, min_psnr = PLACES[name]
    backend = get_backend(name)
    assert isinstance(backend, Backend) and backend.name == name
    g64, cams64 = scene(n=20, seed=4, degree=1), cameras(2, height=20, width=28)
    bg64 = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]], dtype=torch.float64)
    settings = RenderSettings(sh_degree=1, mode="antialiased")
    g = g64.to(device, dtype).requires_grad_()
    cams, bg = cams64.to(device=device, dtype=dtype), bg64.to(device, dtype)

    out = backend.render(g, cams, bg, settings)
    assert isinstance(out, RenderOutput)
    assert out.rgb.shape == (2, 3, 20, 28) and out.alpha.shape == out.depth.shape == (2, 20, 28)
    assert out.means2d.shape == out.radii.shape == (2, 20, 2)
    assert all(torch.isfinite(getattr(out, f)).all() for f in FIELDS)
    assert ((out.alpha >= 0) & (out.alpha <= 1)).all() and (out.radii >= 0).all()
    ref = get_backend("reference").render(g64, cams64, bg64, settings)
    assert _psnr(out.rgb, ref.rgb) >= min_psnr and _psnr(out.alpha, ref.alpha) >= min_psnr
    # render() adds nothing to the backend's result
    via = render(g, cams, background=bg, sh_degree=1, mode="antialiased", backend=name)
    assert all(torch.equal(getattr(via, f), getattr(out, f)) for f in FIELDS)
    # and gradients reach every stored parameter
    (out.rgb.sum() + out.alpha.sum()).backward()
    for n in PARAMETER_NAMES:
        grad = getattr(g, n).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, n


@dataclass
class _Seen:
    cameras: Cameras | None = None
    background: Tensor | None = None
    settings: RenderSettings | None = None


@dataclass
class _RecordingBackend:
    """Records what render() hands a backend, and renders with the reference."""

    seen: _Seen = field(default_factory=_Seen)
    name: str = "recording"

    def render(self, gaussians, cameras, background, settings):
        self.seen.cameras, self.seen.background, self.seen.settings = cameras, background, settings
        return get_backend("reference").render(gaussians, cameras, background, settings)


def test_render_dispatches_to_a_registered_backend_in_the_agreed_form(monkeypatch, scene, cameras):
    monkeypatch.setattr(render_module, "_REGISTRY", dict(render_module._REGISTRY))  # leave the real one untouched
    recording = _RecordingBackend()
    register_backend("recording", lambda: recording)
    assert "recording" in backend_names() and choose_backend(scene(n=2), "recording") == "recording"
    g, cams = scene(n=10, seed=5, degree=2), cameras(2)
    grid = Cameras(cams.fxfycxcy.reshape(1, 2, 4), cams.c2w.reshape(1, 2, 4, 4), cams.image_size.reshape(1, 2, 2))
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    out = render(g, grid, background=bg, backend="recording", near=0.5)
    seen = recording.seen
    assert seen.cameras.fxfycxcy.shape == (2, 4)  # flattened to (C,)
    assert seen.background.shape == (2, 3) and torch.equal(seen.background[1], bg)  # always per camera
    assert seen.settings == RenderSettings(sh_degree=2, mode="classic", near=0.5, far=1e10, tile_size=16)
    ref = render(g, cams, background=bg, backend="reference", near=0.5)
    assert all(torch.equal(getattr(out, f), getattr(ref, f)) for f in FIELDS)
    with pytest.raises(ValueError, match="automatic choice"):
        register_backend("auto", lambda: recording)


@dataclass(eq=False)
class _PlainStore:
    """A GaussianStore that is not a Gaussians (as a sharded store would not be); records its conversions."""

    means: Tensor
    log_scales: Tensor
    quats: Tensor
    opacity_logits: Tensor
    sh_dc: Tensor
    sh_rest: Tensor
    conversions: list = field(default_factory=list)

    def to(self, *args, **kwargs) -> _PlainStore:
        self.conversions.append((args, kwargs))
        return _PlainStore(*(getattr(self, n).to(*args, **kwargs) for n in PARAMETER_NAMES), self.conversions)


@pytest.mark.parametrize("backend,dtype", [("reference", torch.float32), ("cpu", torch.float32),
                                           ("reference", torch.float64)])
def test_any_gaussian_store_renders_through_its_own_conversion(scene, cameras, backend, dtype):
    g, cams = scene(n=16, seed=6).to(dtype), cameras(2).to(dtype)
    store = _PlainStore(*(getattr(g, n).detach().clone().requires_grad_() for n in PARAMETER_NAMES))
    assert isinstance(store, GaussianStore)
    out = render(store, cams, backend=backend)
    expected = render(g, cams, backend=backend)
    assert all(torch.equal(getattr(out, f), getattr(expected, f)) for f in FIELDS)
    assert store.conversions  # the backend asked the store, not a rebuilt Gaussians, for its compute dtype
    out.rgb.sum().backward()
    assert all(getattr(store, n).grad is not None for n in PARAMETER_NAMES)
