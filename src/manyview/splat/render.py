"""``render()``: the one public entry point to Gaussian splatting, with the backend chosen behind it.

Backends (each implements :class:`manyview.splat.backend.Backend`; the registry maps names to them and imports
a backend's module only when it is first used):

- ``"reference"``: float64 PyTorch, dense, autograd (``_reference.py``); exact semantics, slow.
- ``"cpu"``: numba kernels with their own backward (``_cpu.py``), float32 storage; float64 projection and
  shading, float32 rasterisation.
- ``"gsplat"``: gsplat's CUDA rasteriser (``_gsplat.py``), when installed and the tensors are on a GPU.
- ``"auto"``: gsplat on CUDA when available, else the reference on CUDA or for float64 input, else cpu.

A store whose tensors are DTensors (:class:`manyview.splat.sharded.ShardedGaussians`) is rendered across its
ranks by :class:`manyview.splat.distributed_render.ShardedRender` around the chosen (staged) backend.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable

import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.scene import Cameras
from manyview.splat.backend import Backend, RenderSettings
from manyview.splat.gaussians import GaussianStore
from manyview.splat.sh import degree_from_coefficients
from manyview.splat.types import RenderOutput


# ---------------------------------------------------------------------------------------------- the registry
def _builtin(module: str) -> Callable[[], Backend]:
    return lambda: importlib.import_module(f"manyview.splat.{module}").BACKEND


_REGISTRY: dict[str, Callable[[], Backend]] = {
    "reference": _builtin("_reference"),
    "cpu": _builtin("_cpu"),
    "gsplat": _builtin("_gsplat"),
}


def register_backend(name: str, load: Callable[[], Backend]) -> None:
    """Make ``render(..., backend=name)`` use the backend ``load()`` returns (called on first use)."""
    if name == "auto":
        raise ValueError("'auto' is the automatic choice, not a backend name")
    _REGISTRY[name] = load


def backend_names() -> tuple[str, ...]:
    """Every name ``render`` accepts: "auto" and the registered backends."""
    return ("auto", *_REGISTRY)


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        raise ManyviewError(f"unknown render backend {name!r}; choose one of {', '.join(backend_names())}")
    return _REGISTRY[name]()


def gsplat_available() -> bool:
    return importlib.util.find_spec("gsplat") is not None and torch.cuda.is_available()


def choose_backend(gaussians: GaussianStore, backend: str = "auto") -> str:
    if backend not in backend_names():
        raise ManyviewError(f"unknown render backend {backend!r}; choose one of {', '.join(backend_names())}")
    if backend != "auto":
        return backend
    device = gaussians.means.device
    if device.type == "cuda":  # gsplat fuses the stages a sharded render exchanges between
        return "gsplat" if gsplat_available() and not is_sharded(gaussians) else "reference"
    return "reference" if gaussians.means.dtype == torch.float64 else "cpu"


# ------------------------------------------------------------------------------------------------ render
def render(gaussians: GaussianStore, cameras: Cameras, background: Tensor | None = None,
           sh_degree: int | None = None, mode: str = "classic", backend: str = "auto", near: float = 0.01,
           far: float = 1e10, tile_size: int = 16) -> RenderOutput:
    """Render ``gaussians`` from a batch of C ``cameras`` sharing one image size.

    ``cameras`` of any batch shape is flattened to (C,); outputs always have the leading C. ``background``
    (3,) or (C, 3) is composited under the splats (black when None). ``sh_degree`` defaults to the degree of
    the stored coefficients and may be lower (3DGS raises it during training). Differentiable with respect to
    every Gaussian parameter; the reference backend is also differentiable with respect to the cameras.
    Sharded Gaussians (:class:`manyview.splat.sharded.ShardedGaussians`, every rank calling with the same cameras)
    give DTensor outputs: images sharded over the cameras, ``means2d`` / ``radii`` over the Gaussians.
    """
    stored = degree_from_coefficients(gaussians.sh_rest.shape[1] + 1)
    sh_degree = stored if sh_degree is None else sh_degree
    if not 0 <= sh_degree <= stored:
        raise ManyviewError(f"sh_degree {sh_degree} is not available: the Gaussians store degree {stored}")
    settings = RenderSettings(sh_degree, mode, near, far, tile_size)
    cams = _flat_cameras(cameras)
    background = _per_camera_background(background, len(cams), gaussians.means.device)
    chosen = get_backend(choose_backend(gaussians, backend))
    if is_sharded(gaussians):
        from manyview.splat.distributed_render import ShardedRender

        chosen = ShardedRender(chosen)
    return chosen.render(gaussians, cams, background, settings)


def is_sharded(gaussians: GaussianStore) -> bool:
    """Whether the store's tensors are DTensors (``manyview.splat.sharded``): then every rank renders its shard
    and the ranks exchange splats. Cheap for ordinary tensors: DTensor's module is only looked up once loaded."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    return dtensor is not None and isinstance(gaussians.means, dtensor.DTensor)


def _flat_cameras(cameras: Cameras) -> Cameras:
    """Any batch shape -> (C,), C >= 1, all of one image size."""
    cams = cameras if cameras.fxfycxcy.dim() == 2 else cameras[None] if cameras.fxfycxcy.dim() == 1 else \
        Cameras(cameras.fxfycxcy.reshape(-1, 4), cameras.c2w.reshape(-1, 4, 4), cameras.image_size.reshape(-1, 2))
    if len(cams) == 0:
        raise ManyviewError("render needs at least one camera")
    sizes = torch.unique(cams.image_size, dim=0)
    if sizes.shape[0] != 1:
        raise ManyviewError(f"all cameras of one render call must share an image size, got {sizes.tolist()}")
    return cams


def _per_camera_background(background, num_cameras: int, device: torch.device) -> Tensor | None:
    """None, (3,) or (C, 3) -> None or (C, 3) on ``device``."""
    if background is None:
        return None
    background = torch.as_tensor(background, device=device)
    if background.shape not in ((3,), (num_cameras, 3)):
        raise ManyviewError(f"background must be (3,) or ({num_cameras}, 3), got {tuple(background.shape)}")
    return background.expand(num_cameras, 3)
