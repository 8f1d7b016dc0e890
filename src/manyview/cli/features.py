"""``manyview features``: dense 2D / 3D features and key points of a posed scene, written to a folder.

    manyview features runs/scene --out runs/scene_features                      # a reconstruction / dataset
    manyview features runs/scene_splat/splat.ply --out feats --dim 32           # Gaussians (transforms.json beside)
    manyview features runs/scene --out feats --weights runs/condense/final      # a trained ConDense model
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro

from manyview.errors import ManyviewError, require
from manyview.features.keypoints import DEFAULT_MAX_KEYPOINTS
from manyview.features.teachers import DEFAULT_TEACHER, TEACHERS

TEACHER_ONLY = ("note: no ConDense model ({why}): the 2D features are teacher {teacher}'s own{pca}, and each "
                "point's 3D feature is the mean of the 2D features of the views that see it")


@dataclass
class Features:
    """Write OUT/points.ply (the points with features f_0 ... f_{C-1}), OUT/features3d.npz, one
    OUT/features2d/STEM.npy (h, w, C) float16 per view, OUT/keypoints.npz (at most --keypoints salient 3D points
    with descriptors), OUT/keypoints2d/STEM.npz per view and OUT/features.json (sizes, grids, strides, source).

    SCENE is a reconstruction or posed dataset folder (manyview, COLMAP, transforms.json), or a PLY of points or 3D
    Gaussians with the cameras in a transforms.json beside it (as ``manyview splat`` writes). With --weights, a
    trained ConDense model gives both 2D and 3D features; without, the teacher's own 2D features (reduced to --dim
    channels by PCA) are lifted onto the points. OUT is built under a temporary name and renamed at the end; it
    replaces an earlier features output, never a folder that holds other files.
    """

    scene: tyro.conf.Positional[Path]
    """Posed scene folder, transforms.json, or points / Gaussians PLY."""
    out: Path
    """Output folder (new, empty, or an earlier features output)."""
    weights: Path | None = None
    """A trained ConDense model folder (config.json + model.safetensors); default: the bundled model (64
    channels), unless --teacher or another --dim asks for a teacher's own features."""
    teacher: str | None = None
    """Use this teacher's own features instead of a ConDense model (efficientnet-lite0 installs with pip;
    dinov2-* and clip-* need their downloaded checkpoints)."""
    teacher_weights: Path | None = None
    """The teacher's checkpoint (DINOv2 / CLIP), when not in torch.hub's checkpoint folder."""
    dim: int | None = None
    """Feature dimension (default: the model's, or the teacher's); with --weights it must equal the model's."""
    keypoints: int = DEFAULT_MAX_KEYPOINTS
    """At most this many 3D key points, and as many per view."""
    views: Path | None = None
    """The posed images when SCENE is a PLY (default: the transforms.json beside it)."""

    def __post_init__(self):
        if self.teacher is not None:
            require(self.teacher in TEACHERS, "--teacher", f"one of {', '.join(TEACHERS)}", self.teacher)
            if self.weights is not None:
                raise ManyviewError("--teacher gives a teacher's own features and --weights a ConDense model's: "
                                    "pass one of them")
        if self.dim is not None:
            require(self.dim >= 1, "--dim", "at least 1", self.dim)
        require(self.keypoints >= 1, "--keypoints", "at least 1", self.keypoints)

    def interrupted(self) -> str:
        from manyview.cli.common import left_as_it_was

        return left_as_it_was(self.out)

    def run(self) -> None:
        from manyview.features.export import FEATURES_MARKER, extract_features, write_features
        from manyview.io.atomic import atomic_directory, check_output_folder

        check_output_folder(self.out, FEATURES_MARKER)
        model = teacher = None
        weights, why = self._model_folder()
        if weights is not None:
            model = _load_model(weights, self.dim)
        else:
            from manyview.features.teachers import load_teacher

            teacher = load_teacher(self.teacher or DEFAULT_TEACHER, self.teacher_weights)
        views, points, colors = _load_scene(self.scene, self.views)
        if model is None:
            reduce = self.dim is not None and self.dim < teacher.dim
            print(TEACHER_ONLY.format(why=why, teacher=teacher.name,
                                      pca=f", projected to {self.dim} channels by PCA" if reduce else ""))
        cams = views.cameras
        result = extract_features(views.images, cams.fxfycxcy.float(), cams.c2w.float(), points, colors,
                                  views.names, model=model, teacher=teacher, dim=self.dim, depths=views.depths,
                                  max_keypoints=self.keypoints)
        with atomic_directory(self.out) as tmp:
            write_features(tmp, result, {"scene": str(self.scene),
                                         "weights": None if weights is None else str(weights)})
        C = result.features3d.shape[1]
        print(f"wrote features (C = {C}) of {len(points)} points and {len(views)} views, "
              f"{len(result.keypoints3d.positions)} key points, to {self.out}")


    def _model_folder(self) -> tuple[Path | None, str]:
        """(the ConDense model folder to use or None, why there is none)."""
        if self.weights is not None:
            return self.weights, ""
        if self.teacher is not None:
            return None, f"--teacher {self.teacher}"
        from manyview.assets import bundled_model_dir

        bundled = bundled_model_dir("condense")
        if bundled is None:
            return None, ("this installation ships no bundled weights; pass --weights for a model trained with "
                          "`manyview train condense`")
        if self.dim is not None and self.dim != _config_dim(bundled):
            return None, f"--dim {self.dim}, the bundled model's is {_config_dim(bundled)}"
        return bundled, ""


def _config_dim(model_folder: Path) -> int:
    import json

    return int(json.loads((model_folder / "config.json").read_text())["dim"])


def _load_model(weights: Path, dim: int | None):
    from manyview.features.condense import ConDense

    if not weights.exists():
        raise ManyviewError("ConDense weights not found", weights)
    model = ConDense.from_pretrained(weights)
    if dim is not None and dim != model.config.dim:
        raise ManyviewError(f"this ConDense checkpoint has feature dimension {model.config.dim}, not --dim {dim}; "
                            f"drop --dim or pass --dim {model.config.dim}", weights)
    return model


def _load_scene(scene: Path, views_path: Path | None):
    """(views with cameras, points (P, 3), colours (P, 3) or None) of SCENE."""
    import torch

    from manyview.io.dataset import detect_format, load_dataset, load_points

    if not scene.exists():
        raise ManyviewError("no such file or folder", scene)
    if scene.suffix.lower() == ".ply" and scene.is_file():
        points, colors = _ply_points(scene)
        source = views_path if views_path is not None else scene.parent / "transforms.json"
        if not source.exists():
            raise ManyviewError(f"no cameras for these points: expected {source.name} beside the PLY (or pass "
                                "--views); for photos without cameras run `manyview reconstruct` first", scene)
    else:
        source = views_path if views_path is not None else scene
        fmt = detect_format(scene)
        if fmt == "images":
            raise ManyviewError("these images have no cameras: run `manyview reconstruct` on them first, then "
                                "`manyview features` on its output", scene)
        cloud = load_points(scene)
        if cloud is None or len(cloud) == 0:
            raise ManyviewError("this scene has no points (no points.ply / points3D): run `manyview reconstruct` "
                                "to make them", scene)
        points, colors = cloud.xyz.float(), None if cloud.rgb is None else cloud.rgb.float()
    try:
        views = load_dataset(source)
    except ValueError as e:  # a camera whose image size is not its image's
        raise ManyviewError(f"images and cameras disagree: {e}", source) from None
    if views.cameras is None:
        raise ManyviewError("no cameras here: run `manyview reconstruct` on the images first", source)
    if len(points) == 0:
        raise ManyviewError("this scene has no points", scene)
    if not torch.isfinite(points).all():
        raise ManyviewError("some points are not finite", scene)
    return views, points, colors


def _ply_points(path: Path):
    """Positions and colours of a point-cloud PLY, or the centres of a 3DGS PLY (its SH DC term as colour)."""
    from plyfile import PlyData

    from manyview.io.ply import read_ply

    try:
        names = {p.name for p in PlyData.read(str(path))["vertex"].properties}
    except Exception as e:  # plyfile raises several types for malformed files
        raise ManyviewError(f"not a readable PLY file ({e})", path) from None
    if "f_dc_0" in names:
        from manyview.splat import read_ply as read_splat

        g = read_splat(path)
        xyz = g.means.float()
        return xyz, None
    cloud = read_ply(path)
    return cloud.xyz.float(), None if cloud.rgb is None else cloud.rgb.float()


__all__ = ["Features"]
