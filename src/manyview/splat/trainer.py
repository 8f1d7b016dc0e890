"""Training Gaussians from posed images, the 3DGS recipe.

Per step: ``batch_size`` training views (default one; drawn from a random permutation per epoch), rendered in
one call, loss averaged over them of ``(1 - l) L1 + l (1 - SSIM)``
(``lambda_dssim = 0.2``, SSIM with the 11-tap Gaussian window of ``manyview.metrics.image.ssim``, which is
differentiable), Adam per parameter with 3DGS's learning rates (means: ``1.6e-4 x extent`` decaying
exponentially to ``1.6e-6 x extent``), SH degree raised by one every 1000 steps, densification by
:class:`~manyview.splat.strategy.DensifyStrategy`. Views with ``i % 8 == 0`` are held out (Mip-NeRF 360 / 3DGS).

Optional, for photos: ``exposure`` learns an affine colour transform per training photo
(:mod:`manyview.splat.appearance`); ``pose_refine`` learns an se(3) correction per training camera
(:mod:`manyview.splat.pose_refine`). Held-out views are rendered with neither (identity colour, the cameras as
given); the evaluation also reports PSNR / SSIM with each held-out photo's colour transform fitted to it.

Output folder::

    splat.ply                 the final Gaussians (3DGS PLY, written atomically at the end)
    transforms.json           the cameras trained on (nerfstudio layout; image paths are the dataset's names)
    eval.json                 held-out PSNR / SSIM / LPIPS per view and mean (and with exposure fitted), history
    views.json                the learned per-view colour transforms and refined cameras (identity / as given
                              for held-out views)
    checkpoints/step_NNNNNN/  the latest checkpoint: gaussians/optimizer/strategy .safetensors + state.pt

A checkpoint holds everything the next step reads (Gaussians, Adam moments, densification statistics, RNG
states, the epoch's remaining view order, the step), so a resumed run repeats an uninterrupted one exactly.

``device`` (default the CPU; :func:`training_device` says what ``auto`` picks): the views, the Gaussians, the
per-view parameters, the densification statistics and the loss live there, and ``backend="auto"`` follows it
(gsplat on a CUDA GPU when installed, else the staged reference; the numba rasteriser on the CPU). What the
generator draws (view order, backgrounds, split noise) is drawn on the CPU on every device, so a run on a GPU draws
what the same run on the CPU draws. Checkpoints hold CPU tensors and load onto any device.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from manyview.device import resolve_device
from manyview.errors import ManyviewError, require
from manyview.io.atomic import atomic_directory, atomic_open, check_output_folder, make_folder
from manyview.metrics.image import lpips, lpips_available, psnr, ssim
from manyview.progress import progress
from manyview.scene import PointCloud, Views
from manyview.splat.appearance import ExposureCompensation, exposure_fitted
from manyview.splat.gaussians import PARAMETER_NAMES, Gaussians
from manyview.splat.init import from_points, random_in_box
from manyview.splat.ply import write_ply
from manyview.splat.pose_refine import PoseRefinement
from manyview.splat.render import backend_names, gsplat_available, render
from manyview.splat.strategy import DensifyStrategy

CHECKPOINT_DIR = "checkpoints"
VIEW_STATE_NAME = "views.safetensors"  # in a checkpoint: per-view parameters and their Adam moments
PLY_NAME = "splat.ply"
EVAL_NAME = "eval.json"
CAMERAS_NAME = "transforms.json"  # the dataset's cameras, for ``manyview render --orbit``
VIEWS_NAME = "views.json"  # per-view colour transforms and refined cameras
SHARDED_STATE_DIR = "sharded"  # in a checkpoint written under torchrun: torch.distributed.checkpoint's files
RUN_NAMES = (CHECKPOINT_DIR, PLY_NAME, EVAL_NAME, CAMERAS_NAME, VIEWS_NAME)  # everything a run writes into its folder


@dataclass
class SplatTrainConfig:
    """One splat training run (``manyview splat`` takes its options from these fields)."""

    iterations: int = 30_000
    """Optimisation steps (``batch_size`` training views each)."""
    batch_size: int = 1
    """Training views per step, rendered together; the loss averages over them and densification counts each
    view separately (gsplat's batches). Learning rates and the schedule are per step, as in gsplat."""
    sh_degree: int = 3
    """Highest spherical-harmonics degree of the colours (0..3)."""
    sh_increase_every: int = 1000
    """Active SH degree = min(sh_degree, step // sh_increase_every)."""
    lr_means: float = 1.6e-4
    """Learning rate of the centres, x scene extent."""
    lr_means_final: float = 1.6e-6
    """Learning rate of the centres at the last iteration, x scene extent."""
    lr_sh_dc: float = 2.5e-3
    lr_sh_rest: float = 2.5e-3 / 20
    lr_opacity: float = 0.025
    """Recent 3DGS (the paper: 0.05)."""
    lr_scaling: float = 5e-3
    lr_rotation: float = 1e-3
    lambda_dssim: float = 0.2
    """Loss (1 - l) L1 + l (1 - SSIM)."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """RGB in [0, 1] behind the Gaussians (training and evaluation)."""
    random_background: bool = False
    """A random background colour per training step (evaluation uses ``background``)."""
    test_every: int = 8
    """Views with i % test_every == 0 are held out; 0 trains on all views."""
    eval_every: int = 0
    """Held-out PSNR every N steps into eval.json's history (0: only at the end)."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (0: only at the end)."""
    max_init_points: int = 100_000
    """Initial points are subsampled to at most this many."""
    random_init_points: int = 10_000
    """Random Gaussians in the cameras' bounding box when the dataset has no points."""
    init_opacity: float = 0.1
    far_points: int = 0
    """Extra initial points on a shell round the cameras, coloured from the training photos, for sky and distant
    background that SfM leaves without points (``manyview.splat.far_field``); 0 adds none."""
    far_radius: float = 10.0
    """Radius of that shell, x the scene extent."""
    backend: str = "auto"
    """Rasterizer backend (auto follows the device: gsplat on a CUDA GPU when installed, else the reference
    renderer there; the numba rasterizer on the CPU)."""
    seed: int = 0
    exposure: bool = False
    """Learn an affine colour transform per training photo (3DGS's exposure), for photos whose exposure and white
    balance differ; the written splat holds their mean (:meth:`SplatTrainer.shown_gaussians`), which held-out
    views get."""
    lr_exposure: float = 1e-3
    """Adam learning rate of the colour transforms."""
    pose_refine: bool = False
    """Learn an se(3) correction per training camera (gsplat's pose_opt); held-out cameras are used as given."""
    lr_pose: float = 1e-5
    """Adam learning rate of the pose corrections (radians; translations in units of the scene extent)."""
    pose_reg: float = 1e-6
    """Weight decay pulling the pose corrections to zero."""
    densify: DensifyStrategy = field(default_factory=DensifyStrategy)
    scale_schedule: bool = False
    """Runs shorter than 30k steps stretch ``densify``'s schedule (refine start / stop, opacity resets) by
    iterations / 30k, as gsplat's ``steps_scaler`` does (``manyview splat`` turns this on); False uses ``densify``
    as given."""

    def __post_init__(self):
        require(self.iterations >= 1, "iterations", "at least 1", self.iterations)
        require(self.batch_size >= 1, "batch_size", "at least 1", self.batch_size)
        require(0 <= self.sh_degree <= 3, "sh_degree", "between 0 and 3", self.sh_degree)
        for name in ("sh_increase_every", "test_every", "eval_every", "checkpoint_every"):
            require(getattr(self, name) >= 0, name, "at least 0", getattr(self, name))
        require(self.far_points >= 0, "far_points", "at least 0", self.far_points)
        require(math.isfinite(self.far_radius) and self.far_radius > 0, "far_radius", "a positive number",
                self.far_radius)
        for name in ("max_init_points", "random_init_points"):
            require(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
        for name in ("lr_means", "lr_means_final"):  # the schedule interpolates their logarithms
            value = getattr(self, name)
            require(math.isfinite(value) and value > 0, name, "a positive number", value)
        for name in ("lr_sh_dc", "lr_sh_rest", "lr_opacity", "lr_scaling", "lr_rotation", "lr_exposure", "lr_pose",
                     "pose_reg"):
            value = getattr(self, name)
            require(math.isfinite(value) and value >= 0, name, "a number >= 0", value)
        require(0 <= self.lambda_dssim <= 1, "lambda_dssim", "between 0 and 1", self.lambda_dssim)
        require(0 < self.init_opacity < 1, "init_opacity", "between 0 and 1 (exclusive)", self.init_opacity)
        require(len(self.background) == 3 and all(0 <= c <= 1 for c in self.background), "background",
                "three numbers between 0 and 1", tuple(self.background))
        require(self.backend in backend_names(), "backend", f"one of {', '.join(backend_names())}", self.backend)
        d = self.densify
        for name in ("refine_every", "reset_every"):  # step % value
            require(getattr(d, name) >= 1, f"densify.{name}", "at least 1", getattr(d, name))
        for name in ("refine_start_iter", "refine_stop_iter"):
            require(getattr(d, name) >= 0, f"densify.{name}", "at least 0", getattr(d, name))
        require(0 <= d.prune_opa < 1, "densify.prune_opa", "between 0 and 1", d.prune_opa)
        for name in ("grow_grad2d", "grow_scale3d", "prune_scale3d"):
            require(getattr(d, name) >= 0, f"densify.{name}", "a number >= 0", getattr(d, name))
        require(d.split_factor > 0, "densify.split_factor", "a positive number", d.split_factor)

    def strategy(self) -> DensifyStrategy:
        """The densification schedule this run uses (see ``scale_schedule``)."""
        if self.scale_schedule and self.iterations < 30_000:
            return self.densify.scaled(self.iterations / 30_000)
        return self.densify

    def lr_means_at(self, step: int, extent: float) -> float:
        """Log-linear interpolation from lr_means to lr_means_final over the run (3DGS's expon_lr_func)."""
        t = min(max(step / max(self.iterations, 1), 0.0), 1.0)
        return extent * math.exp((1 - t) * math.log(self.lr_means) + t * math.log(self.lr_means_final))


def training_device(device: str | torch.device = "auto", backend: str = "auto", sharded: bool = False) -> torch.device:
    """Where to train: ``cpu``, ``cuda`` or ``cuda:N`` as given (a clear error when CUDA is asked for and absent);
    ``auto`` a CUDA GPU when PyTorch sees one and gsplat renders there (one process, ``backend`` auto or gsplat),
    else the CPU. Without gsplat a GPU has only the staged reference renderer, which the sharded trainer also uses
    on GPUs: dense (every pixel against every Gaussian, in float64), it runs out of memory on real scenes where the
    numba rasteriser trains on the CPU, so it is used on a GPU only when ``cuda`` is asked for."""
    if str(device) != "auto":
        return resolve_device(device)
    fast = not sharded and backend in ("auto", "gsplat") and gsplat_available()
    return torch.device("cuda" if fast else "cpu")


def check_run_folder(out_dir: str | os.PathLike) -> Path:
    """Refuse an output folder that is a file, cannot be made, or holds anything but an earlier run's outputs:
    a run writes splat.ply, eval.json and transforms.json into it and must not overwrite a dataset's."""
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        visible = [p.name for p in out_dir.iterdir() if not p.name.startswith(".")]
        ours = (out_dir / CHECKPOINT_DIR).is_dir() or (out_dir / EVAL_NAME).is_file()
        foreign = sorted(set(visible) - set(RUN_NAMES))
        if visible and (foreign or not ours):
            listed = ", ".join(foreign[:3] or visible[:3])
            raise ManyviewError(f"refusing to write a splat run into a folder that holds other files ({listed}); "
                                "give a new or empty folder, or an earlier run's", out_dir)
        return out_dir
    return check_output_folder(out_dir, ())


def _all_finite(tensors: list[Tensor | None]) -> bool:
    """Whether every element is finite, in one pass: a NaN or an infinity makes its tensor's float64 sum
    non-finite, and float32 values cannot overflow a float64 sum."""
    sums = [t.sum(dtype=torch.float64) for t in tensors if t is not None]
    return not sums or bool(torch.isfinite(torch.stack(sums).sum()))


def scene_extent(views: Views) -> float:
    """3DGS's ``cameras_extent``: 1.1 x the largest distance of a camera centre from their mean."""
    centers = views.cameras.centers.double()
    radius = (centers - centers.mean(0)).norm(dim=-1).max().item()
    return 1.1 * radius if radius > 0 else 1.0


def split_views(n: int, test_every: int = 8) -> tuple[list[int], list[int]]:
    """(train, test) indices: test views are those with ``i % test_every == 0`` (none when test_every is 0 or n < 2)."""
    if test_every <= 0 or n < 2:
        return list(range(n)), []
    test = [i for i in range(n) if i % test_every == 0]
    return [i for i in range(n) if i % test_every != 0], test


def check_views(views: Views, where=None) -> None:
    """Posed views whose image size matches each camera's, else a ManyviewError naming the first culprit."""
    if views.cameras is None:
        raise ManyviewError("these views have no camera poses; estimate them first with `manyview reconstruct` "
                            "or manyview.recon.sfm.run_colmap_sfm", where)
    h, w = views.images.shape[-2:]
    for i, size in enumerate(views.cameras.image_size.reshape(-1, 2).tolist()):
        if tuple(size) != (h, w):
            name = views.names[i] if i < len(views.names) else f"view {i}"
            raise ManyviewError(f"image {name} is {h}x{w} but its camera is {size[0]}x{size[1]}; resize the camera "
                                f"with Cameras.resized or fix the dataset", where)
    if not torch.isfinite(views.cameras.c2w).all() or not torch.isfinite(views.cameras.fxfycxcy).all():
        raise ManyviewError("some cameras have non-finite poses or intrinsics (unregistered views?)", where)


def initial_gaussians(views: Views, points: PointCloud | None, config: SplatTrainConfig,
                      train_ids: list[int] | None = None) -> Gaussians:
    """From ``points`` (subsampled to ``max_init_points``) or, without points, random in the cameras' box; with
    ``far_points``, also a far shell coloured from the photos ``train_ids`` (default all)."""
    if points is not None and len(points.xyz) > 0:
        if not torch.isfinite(points.xyz).all():
            raise ManyviewError("the initial point cloud has NaN or infinite coordinates")
        if len(points.xyz) > config.max_init_points:
            points = points.subsample(config.max_init_points, config.seed)
        if config.far_points:
            from manyview.splat.far_field import far_field_points

            far = far_field_points(views, config.far_points, config.far_radius * scene_extent(views), train_ids)
            rgb = points.rgb if points.rgb is not None else torch.full_like(points.xyz, 0.5)
            points = PointCloud(torch.cat([points.xyz.double(), far.xyz]), torch.cat([rgb.double(), far.rgb]))
        return from_points(points, sh_degree=config.sh_degree, opacity=config.init_opacity)
    centers = views.cameras.centers.double()
    return random_in_box(config.random_init_points, centers.amin(0), centers.amax(0), sh_degree=config.sh_degree,
                         opacity=config.init_opacity, seed=config.seed)


class SplatTrainer:
    """Trains Gaussians on ``views`` (posed, one image size) into ``out_dir``.

    ``points`` seed the Gaussians (else random in the cameras' box); ``gaussians`` overrides both. ``device``
    ("cpu", "cuda", "cuda:N" or "auto": :func:`training_device`) is where the training runs.
    """

    def __init__(self, views: Views, out_dir: str | os.PathLike, config: SplatTrainConfig | None = None,
                 points: PointCloud | None = None, gaussians: Gaussians | None = None,
                 device: str | torch.device = "cpu"):
        self.config = config = config or SplatTrainConfig()
        self.device = training_device(device, config.backend)
        if self.device.type == "cuda" and self.device.index is None:  # "cuda": the current one, by its number
            self.device = torch.device("cuda", torch.cuda.current_device())
        check_views(views)
        self.views = views.to(self.device)  # the same tensors on the CPU
        self.out_dir = Path(out_dir)
        self.train_ids, self.test_ids = split_views(len(views), config.test_every)
        if not self.train_ids:
            raise ManyviewError("no training views left after holding out the test views")
        self.extent = scene_extent(views)
        # where scene_extent measures from
        self.center = views.cameras.centers.double().mean(0).float().to(self.device)
        g = gaussians if gaussians is not None else initial_gaussians(views, points, config, self.train_ids)
        g = g.detach().to(torch.float32).with_sh_degree(config.sh_degree)
        for name in PARAMETER_NAMES:
            if not torch.isfinite(getattr(g, name)).all():
                raise ManyviewError(f"the initial Gaussians have NaN or infinite {name}")
        if len(g) == 0:
            raise ManyviewError("no initial Gaussians")
        self.params: dict[str, torch.nn.Parameter] = self._parameters(g)
        self.optimizers = self._make_optimizers()
        # per-view parameters (exposure, pose corrections): an Adam per view, stepped only when its view is
        # rendered, outside the per-Gaussian edits of the densification strategy
        self.exposure = ExposureCompensation(len(views), device=self.device) if config.exposure else None
        self.pose = PoseRefinement(len(views), self.extent, device=self.device) if config.pose_refine else None
        self.view_params: dict[str, torch.nn.ParameterList] = {}
        self.view_optimizers: dict[str, list[torch.optim.Optimizer]] = {}
        if self.exposure is not None:
            self.view_params["exposure"] = self.exposure.per_view
            self.view_optimizers["exposure"] = [torch.optim.Adam([p], lr=config.lr_exposure, eps=1e-15)
                                                for p in self.exposure.per_view]
        if self.pose is not None:
            self.view_params["pose"] = self.pose.per_view
            self.view_optimizers["pose"] = [torch.optim.Adam([p], lr=config.lr_pose, weight_decay=config.pose_reg)
                                            for p in self.pose.per_view]
        self.strategy = config.strategy()
        self.strategy_state = self.strategy.initialize_state(len(g), device=self.device)
        self.generator = torch.Generator().manual_seed(config.seed)  # on the CPU, whatever the device
        self.order: list[int] = []  # the rest of this epoch's view order
        self.step = 0
        self.skipped: list[int] = []  # steps skipped for non-finite loss or gradients
        self.history: list[dict] = []  # held-out PSNR during training
        self.train_time = 0.0
        self.resumed_from: int | None = None  # the checkpoint step train(resume=True) continued from

    # ----------------------------------------------------------------- state
    def _parameters(self, g: Gaussians) -> dict[str, torch.nn.Parameter]:
        """The trained tensors, on the trainer's device (a subclass keeps them elsewhere: sharded across
        processes)."""
        return {n: torch.nn.Parameter(getattr(g, n).to(self.device, copy=True)) for n in PARAMETER_NAMES}

    def _make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One Adam per parameter tensor with 3DGS's learning rates."""
        cfg = self.config
        lrs = {"means": cfg.lr_means_at(0, self.extent), "log_scales": cfg.lr_scaling, "quats": cfg.lr_rotation,
               "opacity_logits": cfg.lr_opacity, "sh_dc": cfg.lr_sh_dc, "sh_rest": cfg.lr_sh_rest}
        # fused Adam: the same update as the default loop in one kernel per tensor (7x faster on a CPU here)
        return {n: torch.optim.Adam([self.params[n]], lr=lrs[n], eps=1e-15, fused=True) for n in PARAMETER_NAMES}

    @property
    def gaussians(self) -> Gaussians:
        return Gaussians.from_dict({n: p.detach() for n, p in self.params.items()})

    def _next_view(self) -> int:
        if not self.order:
            perm = torch.randperm(len(self.train_ids), generator=self.generator).tolist()
            self.order = [self.train_ids[i] for i in perm]
        return self.order.pop()

    def _background(self) -> Tensor:
        if self.config.random_background:
            return torch.rand(3, generator=self.generator).to(self.device)
        return torch.tensor(self.config.background, dtype=torch.float32, device=self.device)

    def loss(self, pred: Tensor, gt: Tensor) -> Tensor:
        """(1 - lambda) L1 + lambda (1 - SSIM) of (3, H, W) images."""
        lam = self.config.lambda_dssim
        l1 = (pred - gt).abs().mean()
        return (1 - lam) * l1 + lam * (1 - ssim(pred, gt)) if lam > 0 else l1

    # ----------------------------------------------------------------- one step
    def _begin_step(self) -> tuple[int, list[int], Tensor, int]:
        """Advance the step and set its means learning rate: (step, the batch's view ids, background, SH degree).
        Shared by the one-process and the sharded trainer, so both draw the same views in the same order."""
        cfg = self.config
        self.step += 1
        step = self.step
        self.optimizers["means"].param_groups[0]["lr"] = cfg.lr_means_at(step, self.extent)
        ids = [self._next_view() for _ in range(cfg.batch_size)]
        degree = min(cfg.sh_degree, step // cfg.sh_increase_every) if cfg.sh_increase_every > 0 else cfg.sh_degree
        return step, ids, self._background(), degree

    def train_step(self) -> dict:
        """One optimisation step on ``batch_size`` views; returns {'loss', 'psnr', 'skipped', **densification
        report} (loss and PSNR averaged over the views)."""
        cfg = self.config
        step, ids, background, degree = self._begin_step()
        outs = self._render_batch(ids, background, degree)
        self.strategy.step_pre_backward(outs)
        rgbs = [o.rgb[k] for o in outs for k in range(o.rgb.shape[0])]  # one (3, H, W) per view of ids
        gts = [self.views.images[i].to(rgb) for i, rgb in zip(ids, rgbs)]
        preds = [self.exposure(rgb, i) if self.exposure is not None else rgb for i, rgb in zip(ids, rgbs)]
        losses = [self.loss(pred, gt) for pred, gt in zip(preds, gts)]
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        unique = list(dict.fromkeys(ids))  # a batch across an epoch's end may hold a view twice
        optimizers = [*self.optimizers.values(), *(opts[i] for opts in self.view_optimizers.values() for i in unique)]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return self._skip(step, "loss")
        loss.backward()
        grads = [p.grad for p in self.params.values()] + [params[i].grad for params in self.view_params.values()
                                                          for i in unique]
        if not _all_finite(grads + [o.means2d.grad for o in outs]):
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            return self._skip(step, "gradients")
        for opt in optimizers:
            opt.step()
        report = self.strategy.step_post_backward(self.params, self.optimizers, self.strategy_state, step,
                                                  outs[0] if len(outs) == 1 else outs, scene_scale=self.extent,
                                                  generator=self.generator, scene_center=self.center)
        with torch.no_grad():
            values = [psnr(rgb.detach().clamp(0, 1), gt).item() for rgb, gt in zip(rgbs, gts)]
        return {"loss": loss.item(), "psnr": sum(values) / len(values), "skipped": False, **report}

    def _render_batch(self, ids: list[int], background: Tensor, degree: int) -> list:
        """The step's renders: one call for all of ``ids`` (its outputs (B, ...)), or one call per view under
        pose refinement (each view moves the world by its own correction)."""
        if self.pose is not None or len(ids) == 1:
            return [self._render(i, background, degree) for i in ids]
        g = Gaussians.from_dict(self.params)
        return [render(g, self.views.cameras[torch.tensor(ids)], background=background, sh_degree=degree,
                       backend=self.config.backend)]

    def _render(self, i: int, background: Tensor, degree: int | None = None):
        """Render view ``i`` with its pose correction when it has one (training views under pose_refine)."""
        g = Gaussians.from_dict(self.params)
        if self.pose is not None and i in self.train_ids:
            g = self.pose(g, self.views.cameras.c2w[i], i)
        return self._render_store(g, i, background, degree)

    def _render_store(self, g, i: int, background: Tensor, degree: int | None = None):
        """Render the Gaussians ``g`` from view ``i``'s camera as given."""
        return render(g, self.views.cameras[i:i + 1], background=background, sh_degree=degree,
                      backend=self.config.backend)

    def _skip(self, step: int, what: str) -> dict:
        import warnings

        self.skipped.append(step)
        warnings.warn(f"splat training step {step}: non-finite {what}, step skipped", RuntimeWarning, stacklevel=3)
        return {"loss": float("nan"), "psnr": float("nan"), "skipped": True}

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def render_views(self, ids: list[int]) -> Tensor:
        """(len(ids), 3, H, W) renders over the configured background, clamped to [0, 1]; training views with
        their learned pose correction and colour transform, held-out views as the written splat shows them
        (:meth:`shown_gaussians`)."""
        bg = torch.tensor(self.config.background, dtype=torch.float32, device=self.device)
        shown = self.shown_gaussians()
        images = []
        for i in ids:
            if self.exposure is not None and i not in self.train_ids:
                rgb = self._render_store(shown, i, bg).rgb[0]
            else:
                rgb = self._render(i, bg).rgb[0]
                if self.exposure is not None:
                    rgb = self.exposure(rgb, i)
            images.append(rgb.clamp(0, 1))
        return torch.stack(images)

    @torch.no_grad()
    def evaluate(self, ids: list[int] | None = None, with_lpips: bool = True) -> dict:
        """Per-view and mean PSNR / SSIM (and LPIPS when its weights are available) on ``ids`` (test views),
        and PSNR / SSIM with each image's affine colour transform fitted to its photo (``*_exposure_fitted``)."""
        ids = self.test_ids if ids is None else ids
        if not ids:
            return {"views": [], "psnr": None, "ssim": None, "lpips": None, "psnr_exposure_fitted": None,
                    "ssim_exposure_fitted": None}
        pred = self.render_views(ids)
        gt = self.views.images[ids].to(pred)
        p, s = psnr(pred, gt), ssim(pred, gt)
        fitted = exposure_fitted(pred, gt)
        pf, sf = psnr(fitted, gt), ssim(fitted, gt)
        lp = lpips(pred, gt) if with_lpips and lpips_available() else None
        names = [self.views.names[i] if i < len(self.views.names) else str(i) for i in ids]
        per_view = [{"name": n, "index": i, "psnr": float(p[k]), "ssim": float(s[k]),
                     "psnr_exposure_fitted": float(pf[k]), "ssim_exposure_fitted": float(sf[k]),
                     **({"lpips": float(lp[k])} if lp is not None else {})} for k, (n, i) in enumerate(zip(names, ids))]
        return {"views": per_view, "psnr": float(p.mean()), "ssim": float(s.mean()),
                "lpips": float(lp.mean()) if lp is not None else None,
                "psnr_exposure_fitted": float(pf.mean()), "ssim_exposure_fitted": float(sf.mean())}

    def view_records(self) -> list[dict]:
        """Per view: name, whether trained on, its colour transform [A | b] and camera-to-world (refined for
        training views under pose_refine)."""
        from manyview.splat.appearance import compose_transforms, identity_transforms, invert_transform

        transforms = identity_transforms(len(self.views))
        if self.exposure is not None:  # relative to the written splat, whose colours hold the mean transform
            to_splat = invert_transform(self.exposure.mean_transform(self.train_ids))
            transforms = compose_transforms(self.exposure.transforms.detach(), to_splat)
        records = []
        for i in range(len(self.views)):
            trained = i in self.train_ids
            c2w = self.views.cameras.c2w[i].detach()
            if self.pose is not None and trained:
                c2w = self.pose.refined(c2w, i)
            colour = transforms[i] if trained else identity_transforms(1)[0]
            records.append({"name": self.views.names[i] if i < len(self.views.names) else str(i), "index": i,
                            "train": trained, "colour_transform": colour.tolist(), "c2w": c2w.tolist()})
        return records

    # ----------------------------------------------------------------- checkpoints
    def checkpoint_dirs(self) -> list[Path]:
        root = self.out_dir / CHECKPOINT_DIR
        return sorted(root.glob("step_[0-9]*")) if root.is_dir() else []

    def save_checkpoint(self) -> Path:
        """Write checkpoints/step_NNNNNN atomically, then drop older checkpoints."""
        from safetensors.torch import save_file

        path = self.out_dir / CHECKPOINT_DIR / f"step_{self.step:06d}"
        moments = {}
        for name, opt in self.optimizers.items():
            for key, value in opt.state.get(self.params[name], {}).items():
                moments[f"{name}.{key}"] = _portable(torch.as_tensor(value).detach().clone())
        with atomic_directory(path) as tmp:  # CPU tensors, loadable on any device
            save_file({n: _portable(p.detach()) for n, p in self.params.items()}, str(tmp / "gaussians.safetensors"))
            save_file(moments, str(tmp / "optimizer.safetensors"))
            save_file({k: _portable(v) for k, v in self.strategy_state.items()}, str(tmp / "strategy.safetensors"))
            self._write_run_state(tmp)
        for old in self.checkpoint_dirs():
            if old != path:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def _write_run_state(self, folder: Path) -> None:
        """state.pt (step, view order, RNG states, history, ...) and the per-view parameters into ``folder``."""
        from safetensors.torch import save_file

        view_state = {}
        for name, params in self.view_params.items():
            view_state[name] = _portable(torch.stack([p.detach() for p in params]))
            for i, (param, opt) in enumerate(zip(params, self.view_optimizers[name])):
                for key, value in opt.state.get(param, {}).items():
                    view_state[f"{name}.{i}.{key}"] = _portable(torch.as_tensor(value).detach().clone())
        if view_state:  # a run without per-view parameters writes none (and its resume needs none)
            save_file(view_state, str(folder / VIEW_STATE_NAME))
        torch.save({"step": self.step, "order": list(self.order), "generator": self.generator.get_state(),
                    "torch_rng": torch.get_rng_state(), "skipped": list(self.skipped),
                    "history": json.dumps(self.history), "train_time": self.train_time,
                    "num_views": len(self.views), "config": json.dumps(_config_dict(self.config))},
                   folder / "state.pt")

    def _checkpoint_to_load(self, path: str | os.PathLike | None):
        """(path, damaged): the checkpoint to restore (default: the latest in out_dir) and a function making the
        ManyviewError for a damaged file of it, saying how to go on."""
        found = self.checkpoint_dirs()
        if path is None:
            if not found:
                raise ManyviewError("no checkpoint to resume from", self.out_dir / CHECKPOINT_DIR)
            path = found[-1]
        path = Path(path)
        earlier = [p for p in found if p.name < path.name]
        how = (f"remove {path} to resume from {earlier[-1].name}, or start over without --resume" if earlier
               else "start over without --resume (or with a new --out)")

        def damaged(file: Path, what: str) -> ManyviewError:
            return ManyviewError(f"this checkpoint is damaged: {what}; {how}", file)

        return path, damaged

    def _check_sh_degree(self, degree: int, path: Path) -> None:
        if degree != self.config.sh_degree:
            raise ManyviewError(f"this checkpoint has SH degree {degree} but the run asks for {self.config.sh_degree}; "
                                f"resume with sh_degree {degree} (--sh-degree {degree}), or start over without "
                                "--resume", path)

    def _read_run_state(self, path: Path, damaged) -> tuple[dict, dict]:
        """The checkpoint's state.pt and per-view parameters, checked against this run: (run state, view state).
        Changes nothing."""
        from manyview.io.tensor_files import read_pickle, read_safetensors, sniff_format

        file = path / "state.pt"
        if not file.is_file():
            raise damaged(file, "this file of the checkpoint is missing")
        if sniff_format(file) != "pickle":
            raise damaged(file, "not a PyTorch file (truncated or overwritten?)")
        try:
            state = read_pickle(file, what="checkpoint state")
        except ManyviewError as exc:  # names the file that cannot be read
            raise damaged(Path(exc.path) if exc.path else path, exc.message) from None
        keys = ("step", "order", "generator", "torch_rng", "skipped", "history", "train_time", "num_views")
        if not isinstance(state, dict) or any(k not in state for k in keys):
            raise damaged(file, "not a splat trainer state")
        if state["num_views"] != len(self.views):
            raise ManyviewError(f"checkpoint was trained on {state['num_views']} views, this dataset has "
                                f"{len(self.views)}", path)
        try:
            generator = torch.Generator()
            generator.set_state(state["generator"])
            torch.Generator().set_state(state["torch_rng"])
            run = {"generator": generator, "torch_rng": state["torch_rng"],
                   "order": [int(i) for i in state["order"]], "skipped": [int(i) for i in state["skipped"]],
                   "history": json.loads(state["history"]), "step": int(state["step"]),
                   "train_time": float(state["train_time"]), "state": state}
        except (RuntimeError, TypeError, ValueError) as exc:
            raise damaged(file, f"its contents do not fit a splat trainer state ({type(exc).__name__})")
        view_file = path / VIEW_STATE_NAME
        view_state = {}
        if self.view_params:
            if not view_file.is_file():
                raise ManyviewError(f"this checkpoint has no per-view parameters ({', '.join(self.view_params)}): it "
                                    "was trained without exposure / pose refinement; resume with the same settings, "
                                    "or start over without --resume", path)
            try:
                view_state = read_safetensors(view_file)[0]
            except ManyviewError as exc:
                raise damaged(view_file, exc.message) from None
            for name, params in self.view_params.items():
                if name not in view_state or view_state[name].shape != (len(params), *params[0].shape):
                    raise ManyviewError(f"this checkpoint has no {name} parameters for these {len(self.views)} "
                                        "views; resume with the same settings, or start over without --resume", path)
        if any(i not in self.train_ids for i in run["order"]):
            raise ManyviewError("the checkpoint's remaining view order names views this run does not train on "
                                "(a different test_every?); resume with the same settings, or start over without "
                                "--resume", path)
        return run, view_state

    def _apply_run_state(self, run: dict, view_state: dict) -> None:
        """Restore what ``_read_run_state`` read (after the Gaussians and their optimisers)."""
        with torch.no_grad():
            for name, params in self.view_params.items():
                for i, (param, opt) in enumerate(zip(params, self.view_optimizers[name])):
                    param.copy_(view_state[name][i])
                    opt.state.clear()
                    prefix = f"{name}.{i}."
                    own = {k[len(prefix):]: _optimizer_value(v.clone(), k[len(prefix):], param, opt)
                           for k, v in view_state.items() if k.startswith(prefix)}
                    if own:
                        opt.state[param] = own
        self.step = run["step"]
        self.order = run["order"]
        self.generator.set_state(run["generator"].get_state())
        torch.set_rng_state(run["torch_rng"])
        self.skipped = run["skipped"]
        self.history = run["history"]
        self.train_time = run["train_time"]
        self.optimizers["means"].param_groups[0]["lr"] = self.config.lr_means_at(self.step, self.extent)

    def load_checkpoint(self, path: str | os.PathLike | None = None) -> int:
        """Restore from ``path`` (default: the latest checkpoint in out_dir); returns the restored step.

        A damaged or foreign checkpoint raises ManyviewError naming the file and saying how to go on; nothing
        of this trainer changes unless the whole checkpoint fits it."""
        from manyview.io.tensor_files import read_safetensors

        path, damaged = self._checkpoint_to_load(path)
        if (path / SHARDED_STATE_DIR).is_dir():
            raise ManyviewError("this checkpoint was written by processes started with torchrun (torch.distributed."
                                "checkpoint); resume it with manyview splat --resume (under torchrun with any "
                                "number of processes, or without) or ShardedSplatTrainer", path)
        files = {name: path / name for name in ("gaussians.safetensors", "optimizer.safetensors",
                                                 "strategy.safetensors", "state.pt")}
        for file in files.values():
            if not file.is_file():
                raise damaged(file, "this file of the checkpoint is missing")
        run, view_state = self._read_run_state(path, damaged)
        try:
            tensors = read_safetensors(files["gaussians.safetensors"])[0]
            moments = read_safetensors(files["optimizer.safetensors"])[0]
            strategy_state = read_safetensors(files["strategy.safetensors"])[0]
        except ManyviewError as exc:  # names the file that cannot be read
            raise damaged(Path(exc.path) if exc.path else path, exc.message) from None
        missing = [n for n in PARAMETER_NAMES if n not in tensors]
        if missing or len({tensors[n].shape[0] for n in PARAMETER_NAMES}) != 1:
            raise damaged(files["gaussians.safetensors"], f"not a set of Gaussians (missing {missing})" if missing
                          else "the Gaussian parameters disagree in their count")
        self._check_sh_degree(math.isqrt(tensors["sh_rest"].shape[1] + 1) - 1 if tensors["sh_rest"].ndim == 3
                              else -1, path)
        self.params = {n: torch.nn.Parameter(tensors[n].to(self.device, copy=True)) for n in PARAMETER_NAMES}
        for name, opt in self.optimizers.items():
            opt.param_groups[0]["params"] = [self.params[name]]
            opt.state.clear()
            own = {k.split(".", 1)[1]: _optimizer_value(v.clone(), k.split(".", 1)[1], self.params[name], opt)
                   for k, v in moments.items() if k.split(".", 1)[0] == name}
            if own:
                opt.state[self.params[name]] = own
        self.strategy_state = {k: v.to(self.device, copy=True) for k, v in strategy_state.items()}
        self._apply_run_state(run, view_state)
        return self.step

    # ----------------------------------------------------------------- the loop
    def train(self, resume: bool = False, show_progress: bool = True, stop_at: int | None = None) -> dict:
        """Run to ``config.iterations`` (or ``stop_at``), checkpointing on schedule; at the end write the PLY
        and eval.json. Returns the evaluation dict. ``resume`` continues from the latest checkpoint if any."""
        cfg = self.config
        check_run_folder(self.out_dir)
        if resume and self.checkpoint_dirs():
            self.resumed_from = self.load_checkpoint()
        end = cfg.iterations if stop_at is None else min(stop_at, cfg.iterations)
        make_folder(self.out_dir)
        bar = progress(total=end, desc="splat", enabled=show_progress, initial=self.step)
        start = time.perf_counter() - self.train_time
        try:
            while self.step < end:
                info = self.train_step()
                self.train_time = time.perf_counter() - start
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.test_ids:
                    ev = self.evaluate(with_lpips=False)
                    self.history.append({"step": self.step, "psnr": ev["psnr"], "gaussians": len(self.params["means"]),
                                         "seconds": self.train_time})
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < end:
                    self.save_checkpoint()
                bar.update(1)
                bar.set_postfix(loss=f"{info['loss']:.4f}", psnr=f"{info['psnr']:.2f}", n=len(self.params["means"]))
        finally:
            bar.close()
        self.save_checkpoint()
        if self.step < cfg.iterations:
            return {}
        return self.finish()

    def finish(self) -> dict:
        """Write splat.ply and eval.json for the current Gaussians; returns the evaluation."""
        result = self.evaluate()
        result.update({"step": self.step, "gaussians": len(self.params["means"]), "train_seconds": self.train_time,
                       "seconds_per_step": self.train_time / max(self.step, 1), "skipped_steps": self.skipped,
                       "resumed_from": self.resumed_from,
                       "history": self.history, "test_views": self.test_ids, "train_views": self.train_ids,
                       "config": _config_dict(self.config)})
        self._write_ply(self.out_dir / PLY_NAME)
        if self._writes_files:
            self._write_results(result)
        return result

    _writes_files = True  # whether this process writes the run's files (under torchrun: rank 0 alone)

    def shown_gaussians(self) -> Gaussians:
        """The Gaussians as written and shown: under ``exposure``, with the training photos' mean colour transform
        folded into their colours (a view without a transform of its own, held out or novel, gets that one)."""
        gaussians = self.gaussians
        if self.exposure is None:
            return gaussians
        from manyview.splat.appearance import fold_into_colours

        dc, rest = fold_into_colours(gaussians.sh_dc, gaussians.sh_rest, self.exposure.mean_transform(self.train_ids))
        return replace(gaussians, sh_dc=dc, sh_rest=rest)

    def _write_ply(self, path: Path) -> None:
        write_ply(path, self.shown_gaussians())

    def _write_results(self, result: dict) -> None:
        from manyview.io.transforms_json import write_transforms_json

        names = [self.views.names[i] if i < len(self.views.names) else f"{i:05d}.png" for i in range(len(self.views))]
        write_transforms_json(self.out_dir / CAMERAS_NAME, self.views.cameras.to("cpu"), names)
        with atomic_open(self.out_dir / VIEWS_NAME, "w") as f:
            json.dump({"exposure": self.exposure is not None, "pose_refine": self.pose is not None,
                       "views": self.view_records()}, f, indent=1)
        with atomic_open(self.out_dir / EVAL_NAME, "w") as f:
            json.dump(result, f, indent=2)


def _config_dict(config: SplatTrainConfig) -> dict:
    return asdict(config)


def _portable(t: Tensor) -> Tensor:
    """A contiguous CPU tensor for a checkpoint file (the same tensor when it is one already)."""
    return t.contiguous().cpu()


def _optimizer_value(value: Tensor, key: str, param: Tensor, optimizer: torch.optim.Optimizer) -> Tensor:
    """A checkpoint's optimiser state entry ``key`` placed as torch's ``Optimizer.load_state_dict`` places it: on
    the parameter's device, except Adam's step count, which a fused (or capturable) optimiser keeps beside its
    parameters and the plain one on the CPU. On the CPU this is ``value`` itself."""
    group = optimizer.param_groups[0]
    if key == "step" and not (group.get("fused") or group.get("capturable")):
        return value
    return value.to(param.device)
