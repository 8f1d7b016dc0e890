"""Coloured point clouds as PLY (via plyfile): binary little-endian out, binary or ASCII in.

Layout written (element ``vertex``): ``x y z`` float32, ``red green blue`` uchar, then ``nx ny nz`` float32 and
``confidence`` float32 when the cloud has them, a layout MeshLab, CloudCompare and Open3D read. Reading also
accepts float colours in [0, 1], 16-bit colours, and ``conf`` / ``scalar_confidence`` for confidence.
3D Gaussian-splat PLYs are a different format (``manyview.splat``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_open
from manyview.scene import PointCloud

_CONFIDENCE_NAMES = ("confidence", "conf", "scalar_confidence")


def write_ply(path: str | os.PathLike, cloud: PointCloud, text: bool = False) -> Path:
    """Write ``cloud`` as PLY (binary little-endian, or ASCII with ``text=True``), atomically."""
    from plyfile import PlyData, PlyElement

    path = Path(path)
    n = len(cloud)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if cloud.rgb is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if cloud.normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if cloud.confidence is not None:
        fields += [("confidence", "<f4")]
    data = np.empty(n, dtype=fields)
    xyz = cloud.xyz.detach().cpu().float().numpy()
    data["x"], data["y"], data["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if cloud.rgb is not None:
        rgb = np.round(cloud.rgb.detach().cpu().float().clamp(0, 1).numpy() * 255).astype(np.uint8)
        data["red"], data["green"], data["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    if cloud.normals is not None:
        nrm = cloud.normals.detach().cpu().float().numpy()
        data["nx"], data["ny"], data["nz"] = nrm[:, 0], nrm[:, 1], nrm[:, 2]
    if cloud.confidence is not None:
        data["confidence"] = cloud.confidence.detach().cpu().float().numpy()
    ply = PlyData([PlyElement.describe(data, "vertex")], text=text, byte_order="<", comments=["written by manyview"])
    with atomic_open(path, "w" if text else "wb") as fh:
        ply.write(fh)
    return path


def _colour(vertex, names, path: Path) -> torch.Tensor:
    cols = [np.asarray(vertex[n]) for n in names]
    kind = cols[0].dtype
    arr = np.stack(cols, axis=1)
    if np.issubdtype(kind, np.floating):
        return torch.from_numpy(np.clip(arr.astype(np.float32), 0.0, 1.0))
    if kind == np.uint8 or kind == np.int8:
        return torch.from_numpy(arr.astype(np.float32) / 255.0)
    if kind in (np.uint16, np.int16):
        return torch.from_numpy(arr.astype(np.float32) / 65535.0)
    raise ManyviewError(f"unsupported colour property type {kind} for {', '.join(names)}", path)


def read_ply(path: str | os.PathLike) -> PointCloud:
    """Read a point cloud PLY (binary or ASCII): ``x y z`` required, colours, normals and confidence optional."""
    from plyfile import PlyData, PlyElementParseError, PlyHeaderParseError

    path = Path(path)
    if not path.is_file():
        raise ManyviewError("PLY file not found" if not path.exists() else "not a file", path)
    try:
        with open(path, "rb") as fh:
            ply = PlyData.read(fh, mmap=False)
            if "vertex" not in ply:
                raise ManyviewError("no 'vertex' element in this PLY", path)
            vertex = ply["vertex"].data
            names = set(vertex.dtype.names or ())
            missing = [n for n in ("x", "y", "z") if n not in names]
            if missing:
                raise ManyviewError(f"vertex element lacks the properties {', '.join(missing)}", path)
            xyz = np.stack([np.array(vertex[n], dtype=np.float32) for n in ("x", "y", "z")], axis=1)
            rgb = normals = confidence = None
            for triple in (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue")):
                present = [n for n in triple if n in names]
                if len(present) == 3:
                    rgb = _colour(vertex, triple, path)
                    break
                if present and triple[0] == "red":
                    raise ManyviewError(f"colour properties incomplete: has {', '.join(present)}, needs "
                                        "red, green, blue", path)
            present = [n for n in ("nx", "ny", "nz") if n in names]
            if present and len(present) != 3:
                raise ManyviewError(f"normal properties incomplete: has {', '.join(present)}, needs nx, ny, nz", path)
            if present:
                normals = torch.from_numpy(np.stack([np.array(vertex[n], dtype=np.float32)
                                                     for n in ("nx", "ny", "nz")], axis=1))
            for n in _CONFIDENCE_NAMES:
                if n in names:
                    confidence = torch.from_numpy(np.array(vertex[n], dtype=np.float32))
                    break
    except ManyviewError:
        raise
    except (PlyHeaderParseError, PlyElementParseError) as e:
        raise ManyviewError(f"malformed PLY: {e}", path) from None
    except (ValueError, OSError, EOFError, UnicodeDecodeError, TypeError) as e:
        raise ManyviewError(f"cannot read PLY: {e}", path) from None
    return PointCloud(torch.from_numpy(xyz), rgb, confidence, normals)
