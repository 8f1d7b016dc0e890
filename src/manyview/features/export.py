"""Dense and sparse features of a posed scene, computed and written to a folder (``manyview features``).

:func:`extract_features` takes the scene's posed views and its points (a reconstruction's, or Gaussians' centres)
and returns :class:`SceneFeatures`, from one of two sources:

- a trained :class:`~manyview.features.condense.ConDense` model: its 2D student on each view, its 3D student on the
  points;
- a teacher alone (``manyview features --teacher``, or no model at hand): the teacher's own features per view,
  projected to ``dim`` channels by PCA (fitted on all views' cells) when ``dim`` is smaller than the teacher's,
  and as 3D features the mean of the 2D features of the views that see each point
  (:func:`~manyview.features.lift.lift_features`).

Key points (:mod:`~manyview.features.keypoints`) are detected on both. :func:`write_features` writes the folder:

    points.ply            x y z, red green blue, f_0 ... f_{C-1} (float32) per point
    features3d.npz        points (P, 3), features (P, C) float32, views_seeing (P,) (teacher source; -1: model)
    features2d/STEM.npy   (h, w, C) float16 per view
    keypoints.npz         positions (K, 3), descriptors (K, C), scores (K,), indices (K,) into the points
    keypoints2d/STEM.npz  xy (K, 2) pixels, descriptors (K, C), scores (K,) per view
    features.json         what was computed, from what, and each view's image size, grid and stride (the marker)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.features.keypoints import DEFAULT_MAX_KEYPOINTS, Keypoints2D, Keypoints3D, keypoints2d, keypoints3d
from manyview.features.lift import apply_pca, lift_features, pca_project

FEATURES_MARKER = "features.json"
PCA_SAMPLE_CELLS = 200_000


@dataclass
class SceneFeatures:
    points: Tensor  # (P, 3)
    colors: Tensor | None  # (P, 3) in [0, 1]
    features3d: Tensor  # (P, C)
    features2d: list[Tensor]  # per view (C, h, w)
    names: list[str]
    image_size: tuple[int, int]
    keypoints3d: Keypoints3D
    keypoints2d: list[Keypoints2D]
    views_seeing: Tensor | None = None  # (P,) how many views each point's lifted feature averages
    info: dict = field(default_factory=dict)


def _teacher_maps(teacher, images: Tensor) -> list[Tensor]:
    with torch.no_grad():
        return [teacher(images[i:i + 1].float())[0].float() for i in range(images.shape[0])]


def extract_features(images: Tensor, fxfycxcy: Tensor, c2w: Tensor, points: Tensor, colors: Tensor | None,
                     names: list[str], *, model=None, teacher=None, dim: int | None = None,
                     depths: Tensor | None = None, max_keypoints: int = DEFAULT_MAX_KEYPOINTS) -> SceneFeatures:
    """Features of a scene: images (V, 3, H, W) in [0, 1] with cameras (V, 4), (V, 4, 4), points (P, 3) and colours.
    Exactly one of ``model`` (a ConDense) and ``teacher`` (a :class:`~manyview.features.teachers.Teacher`)."""
    if (model is None) == (teacher is None):
        raise ValueError("pass exactly one of model and teacher")
    H, W = images.shape[-2:]
    info: dict = {}
    seeing = None
    if model is not None:
        model = model.eval()
        with torch.no_grad():
            maps = [model.features2d(images[i:i + 1].float())[0].float() for i in range(images.shape[0])]
            feats3d = model.features3d(points.float(), None if colors is None else colors.float()).float()
        info.update(source="condense", teacher=model.config.teacher, dim=model.config.dim)
    else:
        maps = _teacher_maps(teacher, images)
        C = maps[0].shape[0]
        dim = C if dim is None else dim
        if dim > C:
            raise ManyviewError(f"--dim {dim} is larger than teacher {teacher.name}'s {C} channels")
        if dim < C:
            cells = torch.cat([m.reshape(C, -1).T for m in maps])
            if cells.shape[0] > PCA_SAMPLE_CELLS:
                cells = cells[torch.randperm(cells.shape[0], generator=torch.Generator().manual_seed(0))
                              [:PCA_SAMPLE_CELLS]]
            _, mean, basis = pca_project(cells, dim)
            maps = [apply_pca(m, mean, basis) for m in maps]
        feats3d, seeing = lift_features(points, maps, fxfycxcy, c2w, (H, W), depths)
        info.update(source="teacher", teacher=teacher.name, dim=dim, teacher_dim=C, pca=dim < C,
                    points_seen=int((seeing > 0).sum()))
    kp3 = keypoints3d(points.float(), feats3d, max_keypoints)
    kp2 = [keypoints2d(m, (H, W), max_keypoints, image=images[i].float()) for i, m in enumerate(maps)]
    return SceneFeatures(points, colors, feats3d, maps, list(names), (H, W), kp3, kp2, seeing, info)


def _stems(names: list[str]) -> list[str]:
    from manyview.io.dataset import _file_stems

    return _file_stems(names)


def write_feature_ply(path: str | os.PathLike, points: Tensor, features: Tensor, colors: Tensor | None = None) -> Path:
    """A binary PLY of the points with their features as float32 vertex properties f_0 ... f_{C-1}."""
    from plyfile import PlyData, PlyElement

    from manyview.io.atomic import atomic_open

    C = features.shape[1]
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    fields += [(f"f_{c}", "<f4") for c in range(C)]
    data = np.empty(points.shape[0], dtype=fields)
    xyz = points.detach().cpu().float().numpy()
    data["x"], data["y"], data["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if colors is not None:
        rgb = np.round(colors.detach().cpu().float().clamp(0, 1).numpy() * 255).astype(np.uint8)
        data["red"], data["green"], data["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    f = features.detach().cpu().float().numpy()
    for c in range(C):
        data[f"f_{c}"] = f[:, c]
    ply = PlyData([PlyElement.describe(data, "vertex")], byte_order="<", comments=["written by manyview features"])
    with atomic_open(path, "wb") as fh:
        ply.write(fh)
    return Path(path)


def read_feature_ply(path: str | os.PathLike) -> tuple[Tensor, Tensor]:
    """(points (P, 3), features (P, C)) of a PLY written by :func:`write_feature_ply`."""
    from plyfile import PlyData

    try:
        vertex = PlyData.read(os.fspath(path))["vertex"]
    except (OSError, KeyError, ValueError) as e:
        raise ManyviewError(f"not a readable feature PLY ({e})", path) from None
    names = [p.name for p in vertex.properties]
    C = sum(1 for n in names if n.startswith("f_"))
    xyz = np.stack([np.asarray(vertex[n]) for n in "xyz"], 1).astype(np.float32)
    feats = np.stack([np.asarray(vertex[f"f_{c}"]) for c in range(C)], 1).astype(np.float32) if C else \
        np.zeros((len(xyz), 0), np.float32)
    return torch.from_numpy(xyz), torch.from_numpy(feats)


def write_features(directory: str | os.PathLike, scene: SceneFeatures, extra_info: dict | None = None) -> Path:
    """Write ``scene`` into ``directory`` (an existing folder: the caller builds it under a temporary name)."""
    from manyview.io.atomic import atomic_open, atomic_path

    d = Path(directory)
    write_feature_ply(d / "points.ply", scene.points, scene.features3d, scene.colors)
    seeing = scene.views_seeing if scene.views_seeing is not None else torch.full((scene.points.shape[0],), -1)
    with atomic_path(d / "features3d.npz") as tmp:
        np.savez(tmp, points=scene.points.cpu().float().numpy(), features=scene.features3d.cpu().float().numpy(),
                 views_seeing=seeing.cpu().numpy().astype(np.int32))
    kp = scene.keypoints3d
    with atomic_path(d / "keypoints.npz") as tmp:
        np.savez(tmp, positions=kp.positions.cpu().float().numpy(), descriptors=kp.descriptors.cpu().numpy(),
                 scores=kp.scores.cpu().numpy(), indices=kp.indices.cpu().numpy())
    (d / "features2d").mkdir(exist_ok=True)
    (d / "keypoints2d").mkdir(exist_ok=True)
    H, W = scene.image_size
    views = []
    for stem, name, fmap, kp2 in zip(_stems(scene.names), scene.names, scene.features2d, scene.keypoints2d):
        with atomic_path(d / "features2d" / f"{stem}.npy") as tmp:
            np.save(tmp, fmap.permute(1, 2, 0).cpu().numpy().astype(np.float16))
        with atomic_path(d / "keypoints2d" / f"{stem}.npz") as tmp:
            np.savez(tmp, xy=kp2.xy.cpu().numpy(), descriptors=kp2.descriptors.cpu().numpy(),
                     scores=kp2.scores.cpu().numpy())
        h, w = fmap.shape[-2:]
        views.append({"name": name, "features2d": f"features2d/{stem}.npy", "keypoints2d": f"keypoints2d/{stem}.npz",
                      "image_size": [H, W], "grid": [h, w], "stride": [H / h, W / w]})
    record = {"format": "manyview-features", "version": 1, **scene.info, **(extra_info or {}),
              "points": int(scene.points.shape[0]), "keypoints": int(kp.positions.shape[0]), "views": views,
              "pixel_convention": "feature cell (i, j) covers image pixels [j, j + 1) x [i, i + 1) times the stride; "
                                  "key points in pixels, pixel (i, j) centred at (j + 0.5, i + 0.5)"}
    with atomic_open(d / FEATURES_MARKER, "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=1)
        fh.write("\n")
    return d


__all__ = ["FEATURES_MARKER", "SceneFeatures", "extract_features", "read_feature_ply", "write_feature_ply",
           "write_features"]
