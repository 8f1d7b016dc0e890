"""One standard 3DGS PLY from Gaussians sharded across processes, streamed shard by shard.

Rank 0 creates the file under a temporary name beside the target and writes the header with the global count;
then each rank in turn appends its rows (in rank order, which is the global order of the shards), in blocks of
``rows_per_block`` so that no rank holds more than one block of converted rows besides its shard; finally rank 0
renames the file into place. No rank ever holds the whole set. The ranks must share the file system of ``path``
(one machine, or a shared mount across machines). The bytes equal :func:`manyview.splat.ply.write_ply`'s for the
same Gaussians (binary little-endian float32, zero normals, SH rest channel-major).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from manyview.io.atomic import atomic_path, remove_stale
from manyview.splat.gaussians import Gaussians
from manyview.splat.ply import property_names
from manyview.splat.sharded import ShardedGaussians, _mesh_device


def ply_header(count: int, sh_degree: int) -> bytes:
    """The header of a binary little-endian 3DGS PLY of ``count`` Gaussians (as plyfile writes it)."""
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {count}"]
    lines += [f"property float {name}" for name in property_names(sh_degree)]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def ply_rows(g: Gaussians) -> np.ndarray:
    """(n, properties) little-endian float32 rows of ``g`` in the 3DGS PLY's property order."""
    g = g.detach().to("cpu", torch.float32)
    n = len(g)
    rest = g.sh_rest.transpose(1, 2).reshape(n, -1)  # channel-major, as 3DGS writes it
    columns = [g.means, torch.zeros(n, 3), g.sh_dc[:, 0], rest, g.opacity_logits[:, None], g.log_scales, g.quats]
    return torch.cat(columns, dim=1).numpy().astype("<f4", copy=False)


def _broadcast_path(path: Path | None, group, device: torch.device) -> Path:
    holder = [str(path) if path is not None else None]
    dist.broadcast_object_list(holder, src=dist.get_global_rank(group, 0), group=group,
                               device=device if device.type == "cuda" else None)  # NCCL: through the GPU
    return Path(holder[0])


def write_ply_sharded(path: str | os.PathLike, gaussians: ShardedGaussians, rows_per_block: int = 1 << 18) -> None:
    """Write ``gaussians`` (every rank calls this with its shard) as one 3DGS PLY at ``path``, atomically."""
    mesh = gaussians.mesh
    group, rank, world = mesh.get_group(), mesh.get_local_rank(), mesh.size()
    device = _mesh_device(mesh)
    local = gaussians.local()

    def append(tmp: Path) -> None:
        for r in range(world):  # rank order is the global order of the shards
            if r == rank and len(local):
                with open(tmp, "ab") as f:
                    for start in range(0, len(local), rows_per_block):
                        block = local.select(torch.arange(start, min(start + rows_per_block, len(local))))
                        f.write(ply_rows(block).tobytes())
                    f.flush()
                    os.fsync(f.fileno())
            dist.barrier(group=group)

    if rank == 0:
        remove_stale(path)  # what a rank 0 killed in an earlier attempt left
        with atomic_path(path) as tmp:
            try:
                with open(tmp, "wb") as f:
                    f.write(ply_header(len(gaussians), gaussians.sh_degree))
            except BaseException:
                _broadcast_path(Path(os.devnull), group, device)  # the others skip their writes, then all raise
                raise
            _broadcast_path(tmp, group, device)
            append(tmp)
    else:
        tmp = _broadcast_path(None, group, device)
        if tmp == Path(os.devnull):
            raise RuntimeError(f"rank 0 could not start writing {path}")
        append(tmp)
    dist.barrier(group=group)  # the file is in place before any rank goes on


__all__ = ["ply_header", "ply_rows", "write_ply_sharded"]
