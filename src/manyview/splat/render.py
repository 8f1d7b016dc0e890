"""``render()``: the one public entry point to Gaussian splatting, with the backend chosen behind it.

Backends:
- ``"reference"``: float64 PyTorch, dense, autograd (``_reference.py``); exact semantics, slow.
- ``"cpu"``: numba kernels with their own backward (``_cpu.py``), float32 storage; float64 projection and
  shading, float32 rasterisation.
- ``"gsplat"``: gsplat's CUDA rasteriser (``_gsplat.py``), when installed and the tensors are on a GPU.
- ``"auto"``: gsplat on CUDA when available, else the reference on CUDA or for float64 input, else cpu.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.scene import Cameras
from manyview.splat.gaussians import GaussianStore
from manyview.splat.sh import degree_from_coefficients, eval_sh
from manyview.splat.types import Projected, RenderOutput

BACKENDS = ("auto", "reference", "cpu", "gsplat")
MODES = ("classic", "antialiased")


def gsplat_available() -> bool:
    return importlib.util.find_spec("gsplat") is not None and torch.cuda.is_available()


def choose_backend(gaussians: GaussianStore, backend: str = "auto") -> str:
    if backend not in BACKENDS:
        raise ManyviewError(f"unknown render backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    device = gaussians.means.device
    if device.type == "cuda":
        return "gsplat" if gsplat_available() else "reference"
    return "reference" if gaussians.means.dtype == torch.float64 else "cpu"


def shade(gaussians: GaussianStore, cameras: Cameras, sh_degree: int) -> Tensor:
    """(C, P, 3) colours of every Gaussian seen from every camera centre."""
    sh = torch.cat([gaussians.sh_dc, gaussians.sh_rest], dim=1)  # (P, K, 3)
    dirs = gaussians.means[None] - cameras.centers.to(gaussians.means)[:, None]  # (C, P, 3)
    return eval_sh(sh[None], dirs, sh_degree)


def composite_output(accum: Tensor, alpha: Tensor, proj: Projected, background: Tensor | None) -> RenderOutput:
    """Accumulated features (C, H, W, 3 + 1) with depth last -> :class:`RenderOutput`."""
    rgb = accum[..., :3]
    if background is not None:
        rgb = rgb + (1 - alpha)[..., None] * background.to(rgb)
    depth = accum[..., 3] / alpha.clamp_min(1e-10)
    return RenderOutput(rgb=rgb.permute(0, 3, 1, 2), alpha=alpha, depth=depth, means2d=proj.means2d,
                        radii=proj.radii)


def render(gaussians: GaussianStore, cameras: Cameras, background: Tensor | None = None,
           sh_degree: int | None = None, mode: str = "classic", backend: str = "auto", near: float = 0.01,
           far: float = 1e10, tile_size: int = 16) -> RenderOutput:
    """Render ``gaussians`` from a batch of C ``cameras`` sharing one image size.

    ``cameras`` of any batch shape is flattened to (C,); outputs always have the leading C. ``background``
    (3,) or (C, 3) is composited under the splats (black when None). ``sh_degree`` defaults to the degree of
    the stored coefficients and may be lower (3DGS raises it during training). Differentiable with respect to
    every Gaussian parameter; the reference backend is also differentiable with respect to the cameras.
    """
    if mode not in MODES:
        raise ManyviewError(f"unknown render mode {mode!r}; choose one of {', '.join(MODES)}")
    stored = degree_from_coefficients(gaussians.sh_rest.shape[1] + 1)
    sh_degree = stored if sh_degree is None else sh_degree
    if not 0 <= sh_degree <= stored:
        raise ManyviewError(f"sh_degree {sh_degree} is not available: the Gaussians store degree {stored}")
    if tile_size < 1:
        raise ManyviewError(f"tile_size must be positive, got {tile_size}")
    if not 0 < near < far:
        raise ManyviewError(f"need 0 < near < far, got near={near}, far={far}")
    cams = cameras if cameras.fxfycxcy.dim() == 2 else cameras[None] if cameras.fxfycxcy.dim() == 1 else \
        Cameras(cameras.fxfycxcy.reshape(-1, 4), cameras.c2w.reshape(-1, 4, 4), cameras.image_size.reshape(-1, 2))
    if len(cams) == 0:
        raise ManyviewError("render needs at least one camera")
    sizes = torch.unique(cams.image_size, dim=0)
    if sizes.shape[0] != 1:
        raise ManyviewError(f"all cameras of one render call must share an image size, got {sizes.tolist()}")
    height, width = (int(v) for v in sizes[0])
    if background is not None:
        background = torch.as_tensor(background, device=gaussians.means.device)
        if background.shape not in ((3,), (len(cams), 3)):
            raise ManyviewError(f"background must be (3,) or ({len(cams)}, 3), got {tuple(background.shape)}")
        background = background[:, None, None, :] if background.dim() == 2 else background

    backend = choose_backend(gaussians, backend)
    if backend == "gsplat":
        from manyview.splat import _gsplat

        return _gsplat.render(gaussians, cams, background, sh_degree, mode, near, far, tile_size)
    if backend == "reference":
        from manyview.splat import _reference as ops

        out_dtype = gaussians.means.dtype
        gaussians = _as_dtype(gaussians, torch.float64)
        cams = cams.to(torch.float64)
        raster = lambda p, f: ops.rasterize(p, f, height, width)
    else:
        from manyview.splat import _cpu as ops

        if gaussians.means.device.type != "cpu":
            raise ManyviewError("the cpu render backend needs the Gaussians on the CPU")
        out_dtype = torch.float32
        gaussians = _as_dtype(gaussians, torch.float32)
        cams = cams.to(torch.float32)
        raster = lambda p, f: ops.rasterize(p, f, height, width, tile_size)

    proj = ops.project(gaussians, cams, mode, near, far)
    colors = ops.shade(gaussians, cams, sh_degree, proj) if backend == "cpu" else shade(gaussians, cams, sh_degree)
    features = torch.cat([colors, proj.depths[..., None]], dim=-1)  # (C, P, 4)
    accum, alpha = raster(proj, features)
    out = composite_output(accum, alpha, proj, background)
    if out.rgb.dtype != out_dtype:
        out = RenderOutput(*(t.to(out_dtype) for t in (out.rgb, out.alpha, out.depth, out.means2d, out.radii)))
    return out


def _as_dtype(g: GaussianStore, dtype: torch.dtype):
    from manyview.splat.gaussians import Gaussians

    names = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")
    return Gaussians(*(getattr(g, n).to(dtype) for n in names))
