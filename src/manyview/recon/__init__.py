"""From network outputs to cameras and fused point clouds."""

from manyview.recon.cameras_from_pointmaps import (
    CameraEstimate,
    build_reconstruction,
    estimate_cameras,
    recover_cameras,
)
from manyview.recon.global_alignment import (
    GlobalAlignmentConfig,
    GlobalAlignmentResult,
    PointCloudOptimizer,
    global_alignment,
)
from manyview.recon.pairs import make_pairs
from manyview.recon.refine import RefineResult, refine_poses
from manyview.recon.sfm import SfmResult, run_colmap_sfm

__all__ = [
    "CameraEstimate", "GlobalAlignmentConfig", "GlobalAlignmentResult", "PointCloudOptimizer",
    "RefineResult", "SfmResult", "build_reconstruction", "estimate_cameras", "global_alignment", "make_pairs",
    "recover_cameras", "refine_poses", "run_colmap_sfm",
]
