"""Binary glTF 2.0 (``.glb``) scenes for viewing: a coloured point cloud and camera frusta, written by hand.

One mesh holds up to two primitives: the points (mode POINTS, ``POSITION`` float32 + ``COLOR_0`` normalised
uint8 RGBA) and the frusta (mode LINES, ``POSITION`` + uint32 indices; apex to the four image corners, and the
image rectangle). Materials are unlit (``KHR_materials_unlit``; viewers without it fall back to plain PBR).

Axes: glTF is y-up with cameras looking down -z, while manyview's worlds come from OpenCV cameras (y down,
z forward). By default the world is rotated 180 degrees about x, (x, y, z) -> (x, -y, -z), so a scene
reconstructed from upright photos appears upright in glTF viewers; ``opencv_to_gltf=False`` writes coordinates
unchanged.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_open
from manyview.scene import Cameras, PointCloud

GLB_MAGIC = 0x46546C67  # "glTF"
CHUNK_JSON = 0x4E4F534A  # "JSON"
CHUNK_BIN = 0x004E4942  # "BIN\0"
_FLOAT, _UBYTE, _UINT = 5126, 5121, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_POINTS, _LINES = 0, 1
_CV_TO_GLTF = np.array([1.0, -1.0, -1.0], dtype=np.float64)
# Frustum edges over the vertices (apex, top-left, top-right, bottom-right, bottom-left).
_FRUSTUM_EDGES = np.array([[0, 1], [0, 2], [0, 3], [0, 4], [1, 2], [2, 3], [3, 4], [4, 1]], dtype=np.uint32)


def frustum_vertices(cameras: Cameras, size: float) -> np.ndarray:
    """(N, 5, 3) world positions: each camera's centre and its image corners at depth ``size``."""
    cams = cameras.to(device="cpu", dtype=torch.float64)
    fx, fy, cx, cy = (t.numpy() for t in cams.fxfycxcy.unbind(-1))
    h, w = cams.image_size[:, 0].double().numpy(), cams.image_size[:, 1].double().numpy()
    us = np.stack([np.zeros_like(w), w, w, np.zeros_like(w)], 1)  # (N, 4) corners, clockwise from top-left
    vs = np.stack([np.zeros_like(h), np.zeros_like(h), h, h], 1)
    local = np.stack([(us - cx[:, None]) / fx[:, None], (vs - cy[:, None]) / fy[:, None], np.ones_like(us)], -1)
    local = np.concatenate([np.zeros((len(fx), 1, 3)), local * size], 1)  # (N, 5, 3) camera frame
    c2w = cams.c2w.numpy()
    return np.einsum("nij,nkj->nki", c2w[:, :3, :3], local) + c2w[:, None, :3, 3]


def default_frustum_size(cameras: Cameras | None, points: PointCloud | None) -> float:
    """5 % of the scene's extent (camera centres and the 2-98 % range of the points), 1.0 for an empty scene."""
    parts = []
    if cameras is not None and len(cameras):
        parts.append(cameras.centers.detach().cpu().double().numpy().reshape(-1, 3))
    if points is not None and len(points):
        xyz = points.xyz.detach().cpu().double().numpy()
        parts.append(np.percentile(xyz, [2, 98], axis=0))
    if not parts:
        return 1.0
    allp = np.concatenate(parts)
    extent = float(np.linalg.norm(allp.max(0) - allp.min(0)))
    return 0.05 * extent if extent > 0 and np.isfinite(extent) else 1.0


class _Builder:
    """Accumulates 4-byte aligned buffer views and accessors into one binary buffer."""

    def __init__(self):
        self.blob = bytearray()
        self.views, self.accessors = [], []

    def add(self, array: np.ndarray, component: int, kind: str, target: int, normalized: bool = False,
            bounds: bool = False) -> int:
        data = np.ascontiguousarray(array).tobytes()
        self.views.append({"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(data), "target": target})
        self.blob += data
        self.blob += b"\0" * (-len(self.blob) % 4)
        acc = {"bufferView": len(self.views) - 1, "componentType": component, "count": int(array.shape[0]),
               "type": kind}
        if normalized:
            acc["normalized"] = True
        if bounds:
            acc["min"] = [float(v) for v in array.min(0)]
            acc["max"] = [float(v) for v in array.max(0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1


def glb_bytes(points: PointCloud | None = None, cameras: Cameras | None = None, frustum_size: float | None = None,
              opencv_to_gltf: bool = True, frustum_color: tuple[float, float, float] = (1.0, 0.1, 0.1)) -> bytes:
    """The GLB file for ``points`` and ``cameras`` as bytes (see ``write_glb``)."""
    if cameras is not None and len(cameras.shape) == 0:
        cameras = cameras[None]
    has_points = points is not None and len(points) > 0
    has_cams = cameras is not None and len(cameras) > 0
    if not has_points and not has_cams:
        raise ManyviewError("nothing to write: no points and no cameras")
    axes = _CV_TO_GLTF if opencv_to_gltf else np.ones(3)
    b = _Builder()
    primitives, materials = [], []

    def material(name, rgb):
        materials.append({"name": name, "pbrMetallicRoughness": {"baseColorFactor": [*map(float, rgb), 1.0],
                                                                 "metallicFactor": 0.0, "roughnessFactor": 1.0},
                          "extensions": {"KHR_materials_unlit": {}}})
        return len(materials) - 1

    if has_points:
        xyz = (points.xyz.detach().cpu().double().numpy() * axes).astype(np.float32)
        if not np.isfinite(xyz).all():
            keep = np.isfinite(xyz).all(1)
            xyz = xyz[keep]
        else:
            keep = None
        if len(xyz):
            attrs = {"POSITION": b.add(xyz, _FLOAT, "VEC3", _ARRAY_BUFFER, bounds=True)}
            if points.rgb is not None:
                rgb = np.round(points.rgb.detach().cpu().float().clamp(0, 1).numpy() * 255).astype(np.uint8)
                rgb = rgb if keep is None else rgb[keep]
                rgba = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)
                attrs["COLOR_0"] = b.add(rgba, _UBYTE, "VEC4", _ARRAY_BUFFER, normalized=True)
            primitives.append({"attributes": attrs, "mode": _POINTS, "material": material("points", (1, 1, 1))})
    if has_cams:
        size = default_frustum_size(cameras, points) if frustum_size is None else float(frustum_size)
        verts = frustum_vertices(cameras, size)  # (N, 5, 3)
        n = verts.shape[0]
        pos = (verts.reshape(-1, 3) * axes).astype(np.float32)
        idx = (_FRUSTUM_EDGES[None] + 5 * np.arange(n, dtype=np.uint32)[:, None, None]).reshape(-1).astype(np.uint32)
        primitives.append({"attributes": {"POSITION": b.add(pos, _FLOAT, "VEC3", _ARRAY_BUFFER, bounds=True)},
                           "indices": b.add(idx, _UINT, "SCALAR", _ELEMENT_ARRAY_BUFFER),
                           "mode": _LINES, "material": material("cameras", frustum_color)})
    if not primitives:
        raise ManyviewError("nothing to write: no finite points and no cameras")
    doc = {
        "asset": {"version": "2.0", "generator": "manyview"},
        "extensionsUsed": ["KHR_materials_unlit"],
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "manyview"}],
        "meshes": [{"primitives": primitives}],
        "materials": materials,
        "buffers": [{"byteLength": len(b.blob)}],
        "bufferViews": b.views,
        "accessors": b.accessors,
    }
    js = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    js += b" " * (-len(js) % 4)
    blob = bytes(b.blob)  # already 4-byte aligned
    total = 12 + 8 + len(js) + 8 + len(blob)
    return b"".join([struct.pack("<III", GLB_MAGIC, 2, total), struct.pack("<II", len(js), CHUNK_JSON), js,
                     struct.pack("<II", len(blob), CHUNK_BIN), blob])


def write_glb(path: str | os.PathLike, points: PointCloud | None = None, cameras: Cameras | None = None,
              frustum_size: float | None = None, opencv_to_gltf: bool = True,
              frustum_color: tuple[float, float, float] = (1.0, 0.1, 0.1)) -> Path:
    """Write a point cloud and/or camera frusta as a ``.glb`` file, atomically.

    ``frustum_size``: the frusta's depth in scene units (default: 5 % of the scene's extent).
    """
    path = Path(path)
    data = glb_bytes(points, cameras, frustum_size, opencv_to_gltf, frustum_color)
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return path
