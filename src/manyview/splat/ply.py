"""The de-facto 3DGS PLY layout (INRIA ``gaussian_model.py``), read and written with plyfile.

One ``vertex`` element, float32 properties in this order::

    x y z [nx ny nz] f_dc_0..2 f_rest_0..(3 (K - 1) - 1) opacity scale_0..2 rot_0..3

Values are stored pre-activation (opacity logit, log scale, unnormalised quaternion w first), exactly the
storage of :class:`~manyview.splat.gaussians.Gaussians`. ``f_rest`` is channel-major: all red coefficients
1..K-1, then green, then blue. The normals are written as zeros (3DGS does) and optional on read (gsplat's
exporter omits them); any other missing or unexpected property is an error, as is a NaN or infinite value.
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch
from einops import rearrange

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_open
from manyview.splat.gaussians import Gaussians
from manyview.splat.sh import MAX_DEGREE, num_coefficients

_NORMALS = ("nx", "ny", "nz")


def property_names(sh_degree: int, normals: bool = True) -> list[str]:
    """The property order of a 3DGS PLY with ``sh_degree``."""
    rest = 3 * (num_coefficients(sh_degree) - 1)
    return (["x", "y", "z"] + (list(_NORMALS) if normals else []) + [f"f_dc_{i}" for i in range(3)]
            + [f"f_rest_{i}" for i in range(rest)] + ["opacity"] + [f"scale_{i}" for i in range(3)]
            + [f"rot_{i}" for i in range(4)])


def sh_degree_of(present: list[str], path: str) -> int:
    """The SH degree of a vertex element with properties ``present`` (any order), or ManyviewError naming what is
    missing or unexpected for a 3DGS PLY."""
    n_rest = sum(1 for name in present if re.fullmatch(r"f_rest_\d+", name))
    degree = next((d for d in range(MAX_DEGREE + 1) if 3 * (num_coefficients(d) - 1) == n_rest), None)
    if degree is None:
        raise ManyviewError(f"{n_rest} f_rest_* properties; a 3DGS PLY has 0, 9, 24 or 45 (SH degree 0..3)", path)
    required = property_names(degree, normals=False)
    missing = [name for name in required if name not in present]
    unexpected = [name for name in present if name not in required and name not in _NORMALS]
    if missing or unexpected:
        parts = ([f"missing properties {', '.join(missing)}"] if missing else []) + (
            [f"unexpected properties {', '.join(unexpected)}"] if unexpected else [])
        raise ManyviewError("; ".join(parts) + " for a 3DGS PLY", path)
    return degree


def write_ply(path: str | os.PathLike, gaussians: Gaussians) -> None:
    """Write binary little-endian 3DGS PLY (with zero normals), atomically."""
    from plyfile import PlyData, PlyElement

    g = gaussians.detach().to("cpu", torch.float32)
    n = len(g)
    columns = [
        g.means, torch.zeros(n, 3), g.sh_dc[:, 0],
        rearrange(g.sh_rest, "p k c -> p (c k)"),  # channel-major, as 3DGS writes it
        g.opacity_logits[:, None], g.log_scales, g.quats,
    ]
    flat = torch.cat(columns, dim=1).numpy()
    names = property_names(g.sh_degree)
    vertex = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = flat[:, i]
    ply = PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<")
    with atomic_open(path, "wb") as f:
        ply.write(f)


def read_ply(path: str | os.PathLike) -> Gaussians:
    """Read a 3DGS PLY (with or without normals, any SH degree 0..3) into float32 :class:`Gaussians`."""
    from plyfile import PlyData

    path = os.fspath(path)
    try:
        ply = PlyData.read(path)
    except FileNotFoundError:
        raise ManyviewError("file not found", path) from None
    except Exception as e:  # plyfile raises several types for malformed headers and bodies
        raise ManyviewError(f"not a readable PLY file ({e})", path) from None
    if "vertex" not in ply:
        raise ManyviewError("no 'vertex' element, so this is not a 3DGS PLY", path)
    vertex = ply["vertex"]
    degree = sh_degree_of([p.name for p in vertex.properties], path)
    required = property_names(degree, normals=False)

    data = vertex.data
    columns = {}
    for name in required:
        column = np.asarray(data[name])
        if column.dtype.kind not in "fiu":
            raise ManyviewError(f"property {name} has non-numeric type {column.dtype}", path)
        column = column.astype(np.float32)
        bad = ~np.isfinite(column)
        if bad.any():
            raise ManyviewError(f"property {name} has {int(bad.sum())} NaN or infinite values "
                                f"(first at vertex {int(np.argmax(bad))})", path)
        columns[name] = torch.from_numpy(column)

    def stack(names):
        return torch.stack([columns[name] for name in names], dim=1) if names else torch.zeros(len(data), 0)

    k1 = num_coefficients(degree) - 1
    rest = stack([f"f_rest_{i}" for i in range(3 * k1)])
    return Gaussians(
        means=stack(["x", "y", "z"]),
        log_scales=stack([f"scale_{i}" for i in range(3)]),
        quats=stack([f"rot_{i}" for i in range(4)]),
        opacity_logits=columns["opacity"],
        sh_dc=stack([f"f_dc_{i}" for i in range(3)])[:, None, :],
        sh_rest=rearrange(rest, "p (c k) -> p k c", c=3, k=k1),
    )
