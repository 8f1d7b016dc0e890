"""The splat trainer on K processes: :class:`~manyview.splat.trainer.SplatTrainer` with its Gaussians sharded.

Started by ``torchrun --nproc-per-node K -m manyview splat ...`` (or any code that has called
``torch.distributed.init_process_group``). Every rank loads the same views, builds the same initial Gaussians
from the same seed and keeps its block (:class:`~manyview.splat.sharded.ShardedGaussians`); the six parameters
are ``nn.Parameter`` DTensors ``Shard(0)`` with one fused Adam each, whose moments are sharded alike. Each step:

1. every rank draws the same ``batch_size`` views and background (the generator is seeded alike and consumed
   alike on every rank);
2. ``render()`` of the batch on the sharded Gaussians: rank q rasterises its block of the cameras
   (:func:`~manyview.splat.distributed_render.camera_block`, B / K of them) and the splats travel by the
   differentiable all-to-all;
3. rank q's loss is the sum of its cameras' losses / B, so that the ranks' losses add up to the batch's mean and
   each rank's backward gives its Gaussians the gradient of the whole batch; per-view colour transforms
   (``exposure``, replicated on every rank) have their gradients summed over the ranks;
4. whether the loss and gradients are finite is decided on the sum over the ranks, so all ranks skip a step
   together; Adam steps on the shards;
5. densification per shard, in the single-process order (:mod:`manyview.splat.sharded_strategy`).

So K processes give the Gaussians of one process with the same batch, to float rounding. Under ``pose_refine``
each camera of the batch sees the world moved by its own correction (:func:`~manyview.splat.distributed_render.
render_moved`: every rank moves its own Gaussians for each camera, one exchange for the batch); the corrections
are small parameters replicated on every rank, each rank holds the part of their gradient that flows through its
Gaussians, and the parts are summed (an all-reduce, like the colour transforms') before Adam steps, so every rank
keeps the same corrections. Not supported here: the gsplat backend (it fuses the stages between which the ranks
exchange splats).

**Devices.** The mesh says where: a CPU mesh (gloo) trains on the CPU, a CUDA mesh (NCCL; ``gaussian_mesh()`` picks
it for an NCCL group) on each rank's current CUDA device (torchrun's ``LOCAL_RANK``, set by
``manyview.train.distributed.setup``), with the staged reference backend (``backend="auto"``). Every collective
here sends tensors on the mesh's device, as NCCL requires.

**A lost process.** When a rank dies, or stops answering for ``collective_timeout`` seconds, mid-step, the
others stop within that bound with one error naming it, the step and the last checkpoint kept
(:mod:`manyview.splat.rank_faults`). Every file is built under a temporary name and renamed when complete
(checkpoints once every rank has written its part), so the output folder holds what the last completed checkpoint
left, and ``--resume`` continues from it with the losses of an uninterrupted run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from manyview.errors import ManyviewError
from manyview.metrics.image import psnr
from manyview.scene import PointCloud, Views
from manyview.splat import sharded_strategy
from manyview.splat.distributed_render import camera_block, render_moved
from manyview.splat.gaussians import PARAMETER_NAMES, Gaussians
from manyview.splat.rank_faults import stops_cleanly
from manyview.splat.render import render
from manyview.splat.sharded import ShardedGaussians, _mesh_device, gaussian_mesh, wrap_rows
from manyview.splat.trainer import SplatTrainConfig, SplatTrainer
from manyview.splat.types import RenderOutput


class ShardedSplatTrainer(SplatTrainer):
    """:class:`SplatTrainer` with the Gaussians sharded over ``mesh`` (default: every process of the default
    group). Every rank constructs it with the same views, config and initial points, and calls the same methods.

    ``gaussians`` may also be a :class:`~manyview.splat.sharded.ShardedGaussians` whose blocks each rank built
    itself (a scene too large to build whole on every rank). ``collective_timeout`` (seconds; None keeps the
    group's) bounds every exchange from the first step on: it is set on the mesh's process group once the ranks
    have checked that they loaded the same data (the start waits as long as the group allows, for the slowest
    rank's loading); a rank that does not answer within it stops the run (see the module docstring)."""

    def __init__(self, views: Views, out_dir: str | os.PathLike, config: SplatTrainConfig | None = None,
                 points: PointCloud | None = None, gaussians: Gaussians | ShardedGaussians | None = None,
                 mesh: DeviceMesh | None = None, collective_timeout: float | None = None):
        self.mesh = gaussian_mesh() if mesh is None else mesh
        self._place = (self.mesh.get_local_rank(), self.mesh.size())  # also known once the group is gone
        self.collective_timeout = collective_timeout
        self.out_dir = Path(out_dir)
        self.step = 0
        device = _mesh_device(self.mesh)
        with stops_cleanly(self):
            _check_same_on_every_rank(views, config or SplatTrainConfig(), self.mesh)
            if collective_timeout is not None:
                self.mesh.get_group().set_timeout(timedelta(seconds=collective_timeout))
            super().__init__(views, out_dir, config, points, gaussians, device=device)
        self.strategy_state = self.strategy.initialize_state(len(self.params["means"].to_local()), device=device)

    @property
    def rank(self) -> int:
        return self._place[0]

    @property
    def world_size(self) -> int:
        return self._place[1]

    @property
    def _writes_files(self) -> bool:
        return self.rank == 0

    def _parameters(self, g: Gaussians | ShardedGaussians) -> dict[str, torch.nn.Parameter]:
        if isinstance(g, ShardedGaussians):
            if g.mesh != self.mesh:
                raise ValueError("the sharded initial Gaussians live on another device mesh than the trainer's")
            sharded = g
        else:
            sharded = ShardedGaussians.distribute(g, self.mesh)
        return {n: torch.nn.Parameter(getattr(sharded, n)) for n in PARAMETER_NAMES}

    @property
    def gaussians(self) -> ShardedGaussians:
        return ShardedGaussians.from_dict({n: p.detach() for n, p in self.params.items()})

    # ----------------------------------------------------------------- checkpoints, outputs
    def save_checkpoint(self) -> Path:
        """checkpoints/step_NNNNNN through torch.distributed.checkpoint (:mod:`manyview.splat.sharded_checkpoint`)."""
        from manyview.splat import sharded_checkpoint

        return sharded_checkpoint.save(self)

    def load_checkpoint(self, path: str | os.PathLike | None = None) -> int:
        """Restore from a checkpoint written by any number of processes (one included)."""
        from manyview.splat import sharded_checkpoint

        return sharded_checkpoint.load(self, path)

    def shown_gaussians(self) -> ShardedGaussians:
        """:meth:`SplatTrainer.shown_gaussians`, folded per shard."""
        g = self.gaussians
        if self.exposure is None:
            return g
        from manyview.splat.appearance import fold_into_colours

        local = g.local()
        dc, rest = fold_into_colours(local.sh_dc, local.sh_rest, self.exposure.mean_transform(self.train_ids))
        return g.replace(sh_dc=wrap_rows(dc, self.mesh, len(g)), sh_rest=wrap_rows(rest, self.mesh, len(g)))

    def _write_ply(self, path: Path) -> None:
        from manyview.splat.ply_stream import write_ply_sharded

        write_ply_sharded(path, self.shown_gaussians())

    def train(self, resume: bool = False, show_progress: bool = True, stop_at: int | None = None) -> dict:
        """:meth:`SplatTrainer.train` on every rank (rank 0 alone shows progress and writes the JSON files). A lost
        process stops it with one ManyviewError on every surviving rank (see the module docstring)."""
        with stops_cleanly(self):
            return super().train(resume=resume, show_progress=show_progress and self.rank == 0, stop_at=stop_at)

    # ----------------------------------------------------------------- one step
    def _all_reduce(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.params["means"].to_local().device)
        dist.all_reduce(t, group=self.mesh.get_group())
        return t.tolist()

    def train_step(self) -> dict:
        cfg = self.config
        step, ids, background, degree = self._begin_step()
        store = ShardedGaussians.from_dict(self.params)
        cameras = self.views.cameras[torch.tensor(ids)]
        if self.pose is None:
            out = render(store, cameras, background=background, sh_degree=degree, backend=cfg.backend)
        else:  # each camera sees the world moved by its own correction (one process: a render call per view)
            out = render_moved(store, cameras, [self._pose_move(i) for i in ids], background=background,
                               sh_degree=degree, backend=cfg.backend)
        out.means2d.retain_grad()
        start, stop = camera_block(len(ids), self.world_size, self.rank)
        rgbs = out.rgb.to_local()  # this rank's cameras ids[start:stop]
        mine = ids[start:stop]
        gts = [self.views.images[i].to(rgbs) for i in mine]
        preds = [self.exposure(rgb, i) if self.exposure is not None else rgb for i, rgb in zip(mine, rgbs)]
        losses = [self.loss(pred, gt) for pred, gt in zip(preds, gts)]
        # no camera here: a zero that still joins the backward's exchange
        loss = torch.stack(losses).sum() / len(ids) if losses else rgbs.sum() * 0
        unique = list(dict.fromkeys(ids))
        view_params = [params[i] for params in self.view_params.values() for i in unique]
        optimizers = [*self.optimizers.values(), *(opts[i] for opts in self.view_optimizers.values() for i in unique)]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        (total,) = self._all_reduce([loss.item()])
        if not torch.isfinite(torch.tensor(total)):  # the same decision on every rank
            return self._skip(step, "loss")
        loss.backward()
        # replicated: each rank holds the part of the gradient that reached it (colour transforms: its own
        # cameras' losses; pose corrections: through its own Gaussians, for every camera); summed over the ranks
        for p in view_params:
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            dist.all_reduce(grad, group=self.mesh.get_group())
            p.grad = grad
        local = [p.grad.to_local() for p in self.params.values() if p.grad is not None]
        local.append(out.means2d.grad.to_local())
        sums = [float(t.sum(dtype=torch.float64)) for t in local] + [float(p.grad.sum(dtype=torch.float64))
                                                                      for p in view_params]
        (check,) = self._all_reduce([sum(sums)])
        if not torch.isfinite(torch.tensor(check)):
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            return self._skip(step, "gradients")
        for opt in optimizers:
            opt.step()
        report = sharded_strategy.step_post_backward(self.strategy, self.params, self.optimizers,
                                                     self.strategy_state, step, out, scene_scale=self.extent,
                                                     generator=self.generator, scene_center=self.center)
        with torch.no_grad():
            values = [psnr(rgb.detach().clamp(0, 1), gt).item() for rgb, gt in zip(rgbs, gts)]
        (psnr_sum,) = self._all_reduce([sum(values)])
        return {"loss": total, "psnr": psnr_sum / len(ids), "skipped": False, **report}

    def _pose_move(self, i: int) -> Callable[[Gaussians], Gaussians] | None:
        """What camera ``i`` sees of a rank's Gaussians under pose refinement: the world moved by its correction
        (training views), or None (held-out views are used as given)."""
        if self.pose is None or i not in self.train_ids:
            return None
        c2w = self.views.cameras.c2w[i]
        return lambda local: self.pose(local, c2w, i)

    def _render(self, i: int, background: Tensor, degree: int | None = None) -> RenderOutput:
        """View ``i`` with its pose correction when it has one, on every rank (evaluation)."""
        move = self._pose_move(i)
        if move is None:
            return self._render_store(ShardedGaussians.from_dict(self.params), i, background, degree)
        out = render_moved(ShardedGaussians.from_dict(self.params), self.views.cameras[i:i + 1], [move],
                           background=background, sh_degree=degree, backend=self.config.backend)
        return _gathered(out)

    def _render_store(self, g, i: int, background: Tensor, degree: int | None = None) -> RenderOutput:
        """View ``i`` on every rank (evaluation: the image gathered from the rank that rasterised it)."""
        out = render(g, self.views.cameras[i:i + 1], background=background, sh_degree=degree,
                     backend=self.config.backend)
        return _gathered(out)


def _gathered(out: RenderOutput) -> RenderOutput:
    """The images of a sharded render on every rank (gathered from the ranks that rasterised them)."""
    full = lambda t: t.full_tensor() if isinstance(t, DTensor) else t
    return RenderOutput(full(out.rgb), full(out.alpha), full(out.depth), out.means2d, out.radii)


def _check_same_on_every_rank(views: Views, config: SplatTrainConfig, mesh: DeviceMesh) -> None:
    """A ManyviewError on every rank, naming the first rank that differs from rank 0, unless every rank loaded
    the same views and options (the same images, cameras and configuration)."""
    import json
    import zlib
    from dataclasses import asdict

    images = views.images
    cams = views.cameras
    checks = [
        ("the number of views or the image size", [float(len(views)), *map(float, images.shape[-2:])]),
        ("the images", [float(images.sum(dtype=torch.float64)), float(images[..., ::7, ::5].sum(dtype=torch.float64)),
                        *images.sum(dim=(1, 2, 3), dtype=torch.float64).tolist()[:64]]),
        ("the cameras", [*cams.c2w.sum(dim=(-1, -2), dtype=torch.float64).tolist(),
                         *cams.fxfycxcy.sum(dim=-1, dtype=torch.float64).tolist()]),
        ("the options", [float(zlib.crc32(json.dumps(asdict(config), sort_keys=True, default=str).encode()))]),
    ]
    widths = [len(values) for _, values in checks]
    device = _mesh_device(mesh)  # NCCL sends CUDA tensors only
    mine = torch.tensor([v for _, values in checks for v in values], dtype=torch.float64, device=device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(mesh.size())]
    dist.all_gather(sizes, torch.tensor([mine.numel()], device=device), group=mesh.get_group())
    if any(int(t) != mine.numel() for t in sizes):
        first = next(r for r, t in enumerate(sizes) if int(t) != int(sizes[0]))
        raise ManyviewError(f"splat training across processes: rank {first} loaded a different number of views "
                            "from rank 0's; every rank must load the same dataset with the same options")
    everyone = [torch.empty_like(mine) for _ in range(mesh.size())]
    dist.all_gather(everyone, mine, group=mesh.get_group())
    for r in range(1, mesh.size()):
        at = 0
        for (label, _), width in zip(checks, widths):
            if not torch.equal(everyone[r][at:at + width], everyone[0][at:at + width]):
                raise ManyviewError(f"splat training across processes: rank {r} loaded {label} different from "
                                    "rank 0's; every rank must load the same dataset with the same options")
            at += width


__all__ = ["ShardedSplatTrainer"]
