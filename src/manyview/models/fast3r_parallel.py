"""Fast3R inference split across processes: tensor parallelism over a 1-D DeviceMesh.

:func:`parallelize_fast3r` takes a loaded :class:`~manyview.models.fast3r.Fast3R` and applies a plan made of
``torch.distributed.tensor.parallel`` styles to it, in place; the result is still a ``Fast3R`` whose ``infer`` /
``forward`` / ``forward_views`` every rank calls with the same inputs and which returns the single-process outputs
on every rank. Collectives run on the mesh's process group (gloo on CPU, NCCL on CUDA; ``torchrun`` starts the
processes, :func:`fast3r_mesh` builds the mesh over them).

The plan, per transformer block (fusion transformer and encoder; Megatron's layout)::

    attn.qkv   ColwiseParallel, rows regrouped first so that rank r holds [q_r | k_r | v_r]: its heads
    attn.proj  RowwiseParallel (the partial outputs of the ranks' heads summed: one all-reduce)
    mlp.fc1    ColwiseParallel (a slice of the hidden units)
    mlp.fc2    RowwiseParallel (one all-reduce)

Each rank holds 1/K of every block's weights and computes 1/K of every head's attention and of every MLP hidden
unit, so per-process weight memory and the attention / MLP activations fall with K; layer norms, the token stream
between blocks (B, L, D), ``decoder_embed`` and the index embedding are replicated. The released ``qkv`` is laid
out [q | k | v] (each split into heads contiguously), so a plain column split would hand rank 0 all of q and half
of k: :class:`HeadwiseColwiseParallel` regroups the rows before sharding, and each attention module is told its
local head count (``num_heads / K``). K must divide the fusion transformer's head count (:class:`ManyviewError`
otherwise); an encoder whose head count K does not divide (the tiny preset's 3 heads on 2 processes) keeps its
attention replicated and splits only its MLPs (:attr:`TensorParallelPlan.encoder`).

The two DPT heads read every view's hooked tokens independently of the other views, so they are split by views
instead (:func:`split_heads_by_views`): of each pass of ``max_parallel_views_for_head`` images, rank r runs the
head on its ceil(n / K) images, and the outputs are all-gathered (one collective per head pass). Weights of the
heads stay replicated.

Garbage: in torch 2.13, DTensor's sharding propagation for ``linear`` raises and catches an exception inside
every call; its traceback keeps the call's frames, and with them activation-sized tensors, in reference cycles that
only Python's cyclic collector frees, often after the pass (measured: 4 split MLPs on 12,544 tokens peaked at
129 MiB against 84 MiB unsplit, and kept 84 MiB after the pass). A forward hook on every split block collects the
young generations (``gc.collect(1)``), which brings that peak to 49 MiB (and Fast3R's memory kept after a
256-view pass from 297 MiB to 5 MiB, ``bench/fast3r_tensor_parallel.py``).

Parallelised weights are DTensors (regrouped ``qkv`` rows): the model is for inference; its state dict is not the
released layout. Autocast, ``set_attention_dtype`` and the chunk sizes work as in one process.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from manyview.errors import ManyviewError
from manyview.models.fast3r import Fast3R
from manyview.nn.blocks import Block


@dataclass(frozen=True)
class TensorParallelPlan:
    """What :func:`parallelize_fast3r` split, over ``world_size`` processes."""

    world_size: int
    fusion: str  # "heads and MLPs"
    encoder: str  # "heads and MLPs", or "MLPs (attention replicated: ...)" or "replicated"
    heads: str  # "views"

    def as_dict(self) -> dict:
        return {"world_size": self.world_size, "fusion_transformer": self.fusion, "encoder": self.encoder,
                "dpt_heads": self.heads}


def fast3r_mesh(device_type: str | None = None) -> DeviceMesh:
    """A 1-D mesh over every process of the default group (``torchrun``, or ``init_process_group`` called first).
    ``device_type`` defaults to "cuda" for an NCCL group, else "cpu"."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ManyviewError("tensor-parallel Fast3R needs torch.distributed: launch with torchrun, or call "
                            "torch.distributed.init_process_group first")
    if device_type is None:
        device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return init_device_mesh(device_type, (dist.get_world_size(),))


def regroup_qkv_rows(param: Tensor, k: int) -> Tensor:
    """A fused projection's rows (or bias) laid out [q | k | v] -> rank-major [q_0 k_0 v_0 | q_1 k_1 v_1 | ...],
    where q_r is the r-th of k equal slices of q (the rows of rank r's heads)."""
    rows = param.shape[0]
    return param.reshape(3, k, rows // (3 * k), *param.shape[1:]).transpose(0, 1).reshape(param.shape)


class HeadwiseColwiseParallel(ColwiseParallel):
    """ColwiseParallel for a fused [q | k | v] projection: the rows are regrouped rank-major
    (:func:`regroup_qkv_rows`), then sharded as usual, so each rank's local output is [q_r | k_r | v_r] and splits
    into its heads exactly as the unsharded output does."""

    def _partition_linear_fn(self, name, module, device_mesh):
        for pname, param in list(module.named_parameters(recurse=False)):
            module.register_parameter(pname, nn.Parameter(regroup_qkv_rows(param.detach(), device_mesh.size()),
                                                          requires_grad=param.requires_grad))
        super()._partition_linear_fn(name, module, device_mesh)


def _block_plan(split_attention: bool) -> dict:
    plan = {"mlp.fc1": ColwiseParallel(), "mlp.fc2": RowwiseParallel()}
    if split_attention:
        plan.update({"attn.qkv": HeadwiseColwiseParallel(), "attn.proj": RowwiseParallel()})
    return plan


def _collect_young_garbage(module, args, output) -> None:
    """Free the reference cycles DTensor's dispatch left behind in this block (see the module docstring)."""
    gc.collect(1)


def _parallelize_blocks(blocks: nn.ModuleList, mesh: DeviceMesh, split_attention: bool) -> None:
    k = mesh.size()
    for block in blocks:
        if not isinstance(block, Block):
            raise ManyviewError(f"tensor parallelism expects transformer Blocks, found {type(block).__name__}")
        parallelize_module(block, mesh, _block_plan(split_attention))
        block.register_forward_hook(_collect_young_garbage)
        if split_attention:
            block.attn.num_heads //= k


def split_heads_by_views(head: nn.Module, mesh: DeviceMesh) -> None:
    """Hooks on a DPT head ``head(layers, grid) -> (points, confidence)`` that run it on this rank's share of the
    images of each call (ceil(n / K) images; the last ranks' shares padded by repeating the last image) and
    all-gather the outputs, so every rank returns what the whole call would."""
    k, rank, group = mesh.size(), mesh.get_local_rank(), mesh.get_group()

    def share(module, args):
        layers, grid = args
        n = layers[0].shape[0]
        step = math.ceil(n / k)
        rows = torch.arange(rank * step, (rank + 1) * step, device=layers[0].device).clamp(max=n - 1)
        module._view_split_n = n
        return [t.index_select(0, rows) for t in layers], grid

    def gather(module, args, outputs):
        n = module._view_split_n
        gathered = []
        for t in outputs:
            parts = [torch.empty_like(t) for _ in range(k)]
            dist.all_gather(parts, t.contiguous(), group=group)
            gathered.append(torch.cat(parts)[:n])
        return tuple(gathered)

    head.register_forward_pre_hook(share)
    head.register_forward_hook(gather)


def parallelize_fast3r(model: Fast3R, mesh: DeviceMesh, encoder: bool = True) -> TensorParallelPlan:
    """Apply the tensor-parallel plan to ``model`` (in place, on the device it is already on; every rank must have
    built or loaded the same model: the split weights are taken from rank 0). ``encoder=False`` leaves the encoder
    replicated. -> what was split."""
    if mesh.ndim != 1:
        raise ManyviewError(f"tensor-parallel Fast3R needs a 1-D device mesh, got {mesh.ndim} dimensions")
    k = mesh.size()
    d, e = model.config.decoder_args, model.config.encoder_args
    if d.num_heads % k:
        divisors = [i for i in range(1, d.num_heads + 1) if d.num_heads % i == 0]
        raise ManyviewError(f"the fusion transformer has {d.num_heads} attention heads, which {k} processes "
                            f"cannot split evenly: run on a number of processes that divides it "
                            f"({', '.join(map(str, divisors))})")
    hidden = int(e.embed_dim * e.mlp_ratio)
    if int(d.embed_dim * d.mlp_ratio) % k or hidden % k:
        raise ManyviewError(f"MLP widths {int(d.embed_dim * d.mlp_ratio)} (fusion) and {hidden} (encoder) must be "
                            f"divisible by the {k} processes")
    _parallelize_blocks(model.decoder.dec_blocks, mesh, split_attention=True)
    if not encoder:
        encoder_split = "replicated"
    elif e.num_heads % k:
        _parallelize_blocks(model.encoder.enc_blocks, mesh, split_attention=False)
        encoder_split = f"MLPs (attention replicated: {e.num_heads} heads on {k} processes)"
    else:
        _parallelize_blocks(model.encoder.enc_blocks, mesh, split_attention=True)
        encoder_split = "heads and MLPs"
    for head in (model.downstream_head, model.downstream_head_local):
        if head is not None:
            split_heads_by_views(head, mesh)
    return TensorParallelPlan(world_size=k, fusion="heads and MLPs", encoder=encoder_split, heads="views")


def local_parameter_bytes(model: nn.Module) -> int:
    """Bytes of the parameters this process holds (the local shards of DTensors)."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total


__all__ = ["TensorParallelPlan", "fast3r_mesh", "parallelize_fast3r", "HeadwiseColwiseParallel", "regroup_qkv_rows",
           "split_heads_by_views", "local_parameter_bytes"]

