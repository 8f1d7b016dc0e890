"""The settings of one ``manyview run`` (the command's options are these fields)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

from manyview.errors import require

PoseMethod = Literal["colmap", "fast3r", "fast3r+ba"]
DEFAULT_ITERATIONS = 7000  # splat steps for photos
SAMPLE_ITERATIONS = 1500  # for the 16 small photos of ``run --sample``: 24.75 dB held out, 73 s on one core
# a far shell of this many Gaussians for real photos (sky, distant background: +3 dB held out on family at equal
# steps, bench/README.md "Real photos"); none for the sample, a synthetic object on an empty background
DEFAULT_FAR_POINTS = 20_000


@dataclass
class RunConfig:
    """Photos -> poses -> Gaussian splat -> held-out evaluation -> orbit -> report."""

    poses: PoseMethod = "colmap"
    """How the photos get cameras: colmap (incremental SfM, the most accurate without downloaded weights),
    fast3r (one network pass; the bundled model is not a pose estimator: pass --weights), or fast3r+ba (Fast3R's
    cameras refined by bundle adjustment)."""
    iterations: int | None = None
    """Splat training steps (one photo each); default 7000, or 1500 for the small photos of ``run --sample``."""
    max_width: int = 480
    """Photos wider than this are downscaled for training and evaluation (aspect kept)."""
    test_every: int = 8
    """Every n-th photo (i % n == 0) is held out of training and used for evaluation; 0 holds out none."""
    orbit_frames: int = 60
    """Frames of the orbit video (a few are kept as stills)."""
    fps: int = 30
    """Frames per second of the orbit video."""
    camera_model: Literal["SIMPLE_RADIAL", "OPENCV", "RADIAL", "SIMPLE_PINHOLE", "PINHOLE"] = "SIMPLE_RADIAL"
    """colmap and fast3r+ba: the lens model estimated before the photos are undistorted."""
    matcher: Literal["exhaustive", "sequential"] = "exhaustive"
    """colmap: match every pair of photos, or each with its neighbours in order (videos)."""
    weights: str | None = None
    """fast3r and fast3r+ba: Fast3R weights (folder with config.json + model.safetensors, or a Hub id);
    default: the bundled model."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where Fast3R runs."""
    backend: str = "auto"
    """Splat rasterizer (auto: gsplat on a CUDA GPU when installed, else the CPU rasterizer)."""
    exposure: bool = True
    """Learn a colour transform per training photo (photos whose exposure or white balance differ; --no-exposure
    turns it off; not for ``run --sample``, whose renders share one); splat.ply holds their mean, which held-out
    and novel views get."""
    far_points: int | None = None
    """Initial Gaussians on a far shell round the cameras, coloured from the photos, for sky and distant background
    that SfM leaves without points (their size is then pruned relative to their distance); 0 adds none; default
    20000, or 0 for ``run --sample``."""
    checkpoint_every: int = 500
    """Splat steps between checkpoints (what --resume continues from)."""
    max_points: int = 500_000
    """At most this many points are kept from the poses stage."""
    seed: int = 0

    def __post_init__(self):
        if self.iterations is not None:
            require(self.iterations >= 1, "iterations", "at least 1", self.iterations)
        require(self.max_width >= 16, "max_width", "at least 16", self.max_width)
        require(self.test_every >= 0, "test_every", "at least 0", self.test_every)
        require(self.orbit_frames >= 1, "orbit_frames", "at least 1", self.orbit_frames)
        require(self.fps >= 1, "fps", "at least 1", self.fps)
        require(self.checkpoint_every >= 1, "checkpoint_every", "at least 1", self.checkpoint_every)
        require(self.max_points >= 1, "max_points", "at least 1", self.max_points)
        if self.far_points is not None:
            require(self.far_points >= 0, "far_points", "at least 0", self.far_points)
        from manyview.splat.render import backend_names

        require(self.backend in backend_names(), "backend", f"one of {', '.join(backend_names())}", self.backend)
        if self.weights is not None:
            require(self.poses != "colmap", "weights", "used with --poses fast3r or fast3r+ba (colmap uses no "
                    "network)", self.weights)

    def resolved(self, sample: bool = False) -> RunConfig:
        """This config with the defaults that depend on the photos filled in (``sample``: the embedded sample's)."""
        iterations = self.iterations
        if iterations is None:
            iterations = SAMPLE_ITERATIONS if sample else DEFAULT_ITERATIONS
        far_points = self.far_points
        if far_points is None:
            far_points = 0 if sample else DEFAULT_FAR_POINTS
        # the sample's photos are renders that share one exposure: a transform per photo only adds freedom
        # (measured: held-out 23.53 dB with it, 24.66 dB without)
        exposure = self.exposure and not sample
        return replace(self, iterations=iterations, far_points=far_points, exposure=exposure)

    def as_dict(self) -> dict:
        return asdict(self)


__all__ = ["PoseMethod", "RunConfig"]
