"""3DGS adaptive density control (clone, split, prune, opacity reset) as a dataclass strategy.

The protocol is gsplat's: ``state = strategy.initialize_state(n)``; per step ``strategy.step_pre_backward(out)``
(keeps the gradient of the projected means), ``loss.backward()``, then ``strategy.step_post_backward(params,
optimizers, state, step, out)``, which edits ``params`` (a dict of ``nn.Parameter`` named like the fields of
:class:`~manyview.splat.gaussians.Gaussians`) and the Adam state of ``optimizers`` (one optimizer per name) in
place. New Gaussians start with zero optimiser moments.

Densification statistic: the norm of the gradient of each projected mean in normalised device units
(pixels x (W/2, H/2)), times the number of cameras in the batch (the loss is taken to average over them, as in
gsplat's trainer), averaged over the cameras in which the Gaussian was visible: with a batch of views per step
each view counts separately (gsplat's ``packed=False`` accumulation, :func:`accumulate_grad2d`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from manyview.geometry.rotation import quaternion_to_matrix
from manyview.splat.types import RenderOutput

Params = dict[str, torch.nn.Parameter]
Optimizers = dict[str, torch.optim.Optimizer]


@dataclass
class DensifyStrategy:
    prune_opa: float = 0.005  # prune below this opacity
    grow_grad2d: float = 0.0002  # densify above this mean projected-gradient norm
    grow_scale3d: float = 0.01  # clone if the largest scale is below this x scene scale, else split
    prune_scale3d: float = 0.1  # after the first opacity reset, prune larger than this x scene scale
    split_factor: float = 1.6  # a split Gaussian's two children have scales / split_factor
    refine_start_iter: int = 500
    refine_stop_iter: int = 15_000
    refine_every: int = 100
    reset_every: int = 3000  # opacity reset to 2 x prune_opa (3DGS: 0.01)
    # 3DGS prunes by world size alone, which removes every Gaussian of a distant background; a Gaussian d x scene
    # scale from the centre covers as much of a photo as a near one d times smaller
    prune_scale_by_distance: bool = False  # prune limit x max(1, distance from the scene centre / scene scale)

    def scaled(self, factor: float) -> DensifyStrategy:
        """The schedule stretched by ``factor`` (gsplat's ``steps_scaler``): refine start / stop and the reset
        interval scale, so that a run of ``factor x 30k`` steps densifies over the same fraction of its length."""
        from dataclasses import replace

        return replace(self, refine_start_iter=max(int(self.refine_start_iter * factor), 1),
                       refine_stop_iter=max(int(self.refine_stop_iter * factor), 1),
                       reset_every=max(int(self.reset_every * factor), 1))

    def initialize_state(self, n: int, device=None) -> dict[str, Tensor]:
        return {"grad2d": torch.zeros(n, device=device), "count": torch.zeros(n, device=device)}

    def step_pre_backward(self, out: RenderOutput | Sequence[RenderOutput]) -> None:
        for o in [out] if isinstance(out, RenderOutput) else out:
            o.means2d.retain_grad()

    @torch.no_grad()
    def step_post_backward(self, params: Params, optimizers: Optimizers, state: dict[str, Tensor], step: int,
                           out: RenderOutput | Sequence[RenderOutput], scene_scale: float = 1.0,
                           generator: torch.Generator | None = None,
                           scene_center: Tensor | None = None) -> dict[str, int]:
        """Accumulate statistics and, on schedule, densify / prune / reset. Returns what changed.
        ``out``: the step's render, or its renders when the batch's views were rendered one call each.
        ``scene_center`` (3,) is where ``prune_scale_by_distance`` measures distances from (default the origin)."""
        report = {"cloned": 0, "split": 0, "pruned": 0, "reset": 0}
        if self.accumulates(step):
            self._accumulate(state, out)
        if self.refines(step):
            report.update(self._refine(params, optimizers, state, step, scene_scale, generator, scene_center))
        if self.resets(step):
            value = self.reset_value()
            _edit(params, optimizers, {"opacity_logits": lambda p: p.clamp(max=value)}, reset_state=("opacity_logits",))
            report["reset"] = 1
        return report

    # ----------------------------------------------------------------- the schedule
    def accumulates(self, step: int) -> bool:
        """Whether step ``step`` adds to the densification statistics."""
        return step < self.refine_stop_iter

    def refines(self, step: int) -> bool:
        """Whether step ``step`` clones, splits and prunes."""
        return self.refine_start_iter < step < self.refine_stop_iter and step % self.refine_every == 0

    def resets(self, step: int) -> bool:
        """Whether step ``step`` resets the opacities. As in 3DGS and gsplat, resets belong to the densification
        phase: a reset after it would leave the run too few steps to recover (a 30k run would otherwise reset at
        27k)."""
        return step % self.reset_every == 0 and 0 < step < self.refine_stop_iter

    # ----------------------------------------------------------------- internals
    def _accumulate(self, state: dict[str, Tensor], out: RenderOutput | Sequence[RenderOutput]) -> None:
        outs = [out] if isinstance(out, RenderOutput) else list(out)
        num_cameras = sum(o.means2d.shape[0] for o in outs)  # the loss averages over all of them
        for o in outs:
            if o.means2d.grad is None:
                raise RuntimeError("means2d has no gradient: call step_pre_backward(out) before loss.backward()")
            h, w = o.rgb.shape[-2:]
            accumulate_grad2d(state, o.means2d.grad, o.radii, w, h, num_cameras)

    def _refine(self, params: Params, optimizers: Optimizers, state: dict[str, Tensor], step: int,
                scene_scale: float, generator, scene_center: Tensor | None = None) -> dict[str, int]:
        clone, split = self.grow_masks(params, state, scene_scale)
        n_clone, n_split = int(clone.sum()), int(split.sum())

        # clone: copies appended (the originals stay); split: two samples from the parent, parent removed
        # drawn where the generator lives (the trainer's: the CPU, on any device), so every device draws the same
        where = generator.device if generator is not None else params["means"].device
        noise = torch.randn((2, n_split, 3), generator=generator, device=where,
                            dtype=params["log_scales"].dtype).to(params["means"].device)
        offsets = self.split_offsets(params, split, noise)
        keep = ~split

        def grow(name: str) -> Callable[[Tensor], Tensor]:
            def fn(p: Tensor) -> Tensor:
                return torch.cat([p[keep], p[clone], *self.children(name, p, split, offsets)])
            return fn

        _edit(params, optimizers, {name: grow(name) for name in params},
              state_fn=lambda v: torch.cat([v[keep], torch.zeros((n_clone + 2 * n_split, *v.shape[1:]), device=v.device,
                                                                dtype=v.dtype)]))

        prune = self.prune_mask(params, step, scene_scale, scene_center)
        survivors = ~prune
        _edit(params, optimizers, {name: (lambda p: p[survivors]) for name in params},
              state_fn=lambda v: v[survivors])
        n = params["means"].shape[0]
        state["grad2d"] = torch.zeros(n, device=state["grad2d"].device)
        state["count"] = torch.zeros(n, device=state["count"].device)
        return {"cloned": n_clone, "split": n_split, "pruned": int(prune.sum())}

    # the rules, on plain tensors of Gaussians (all of them, or one shard's: every rule is per Gaussian)
    def grow_masks(self, params: dict[str, Tensor], state: dict[str, Tensor],
                   scene_scale: float) -> tuple[Tensor, Tensor]:
        """(clone, split) masks: a mean projected gradient above ``grow_grad2d``; small ones clone, large split."""
        avg = state["grad2d"] / state["count"].clamp_min(1)
        high = avg > self.grow_grad2d
        small = params["log_scales"].exp().amax(-1) <= self.grow_scale3d * scene_scale
        return high & small, high & ~small

    def split_offsets(self, params: dict[str, Tensor], split: Tensor, noise: Tensor) -> Tensor:
        """(2 x n_split, 3) offsets of the two children of each split Gaussian from standard normal ``noise``
        (2, n_split, 3): samples of the parent's distribution."""
        rots = quaternion_to_matrix(params["quats"][split])
        scales = params["log_scales"][split].exp()
        return torch.einsum("nij,nj,bnj->bni", rots, scales, noise).reshape(-1, 3)

    def children(self, name: str, p: Tensor, split: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
        """Parameter ``name`` of the split Gaussians' children: the first samples of every parent, then the
        second (scales divided by ``split_factor``, centres moved by ``offsets``)."""
        children = p[split].repeat(2, *([1] * (p.dim() - 1)))
        if name == "means":
            children = children + offsets
        elif name == "log_scales":
            children = children - math.log(self.split_factor)
        return tuple(children.chunk(2)) if children.shape[0] else (children, children)

    def prune_mask(self, params: dict[str, Tensor], step: int, scene_scale: float,
                   scene_center: Tensor | None = None) -> Tensor:
        """Gaussians to remove: opacity below ``prune_opa``; after the first opacity reset also those larger than
        ``prune_scale3d`` x scene scale (x their distance in scene scales with ``prune_scale_by_distance``)."""
        prune = torch.sigmoid(params["opacity_logits"]) < self.prune_opa
        if step > self.reset_every:
            limit = torch.full_like(params["log_scales"][:, 0], self.prune_scale3d * scene_scale)
            if self.prune_scale_by_distance:
                center = torch.zeros(3) if scene_center is None else scene_center
                distance = (params["means"] - center.to(params["means"])).norm(dim=-1)
                limit = limit * (distance / scene_scale).clamp_min(1.0)
            prune |= params["log_scales"].exp().amax(-1) > limit
        return prune

    def reset_value(self) -> float:
        """The opacity logit an opacity reset clamps to (opacity 2 x prune_opa)."""
        return torch.logit(torch.tensor(2 * self.prune_opa)).item()


def accumulate_grad2d(state: dict[str, Tensor], grad: Tensor, radii: Tensor, width: int, height: int,
                      num_cameras: int) -> None:
    """Add one render's statistics to ``state``: ``grad`` / ``radii`` (C, P, 2) of its cameras' projected means,
    each camera counted separately (gsplat's ``packed=False`` accumulation), the gradient norms scaled to
    normalised device units times ``num_cameras`` (the step's batch, over which the loss averages)."""
    scaled = grad * torch.tensor([width / 2 * num_cameras, height / 2 * num_cameras], device=grad.device,
                                 dtype=grad.dtype)
    visible = (radii > 0).all(-1)  # (C, P)
    norms = torch.where(visible, scaled.norm(dim=-1), torch.zeros_like(scaled[..., 0]))
    state["grad2d"] += norms.sum(0).to(state["grad2d"])
    state["count"] += visible.sum(0).to(state["count"])


def _edit(params: Params, optimizers: Optimizers, fns: dict[str, Callable[[Tensor], Tensor]],
          state_fn: Callable[[Tensor], Tensor] | None = None, reset_state: tuple[str, ...] = ()) -> None:
    """Replace params[name] by fns[name](param) and keep each optimizer consistent: per-Gaussian moments go
    through ``state_fn`` (rows follow the Gaussians) or, for names in ``reset_state``, are zeroed."""
    for name, fn in fns.items():
        old = params[name]
        new = torch.nn.Parameter(fn(old.data), requires_grad=old.requires_grad)
        opt = optimizers.get(name)
        if opt is not None:
            for group in opt.param_groups:
                for i, p in enumerate(group["params"]):
                    if p is not old:
                        continue
                    moments = opt.state.pop(old, {})
                    for key, value in moments.items():
                        if key == "step" or not torch.is_tensor(value) or value.dim() == 0:
                            continue
                        moments[key] = torch.zeros_like(new.data) if name in reset_state else state_fn(value)
                    group["params"][i] = new
                    if moments:
                        opt.state[new] = moments
        params[name] = new
