"""``manyview synth``: write a synthetic dataset with exact ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass
class Synth:
    """Write a synthetic scene as a dataset: images/, sparse/0 (COLMAP), transforms.json, depth/, masks/.

    With the defaults it writes the small embedded sample scene.
    """

    out: Path = Path("out/sample")
    """Output folder (replaced atomically when it already exists)."""
    kind: Literal["sample", "object", "room"] = "sample"
    """'sample': the embedded sample scene; 'object': cameras orbiting objects; 'room': a walk through a room."""
    views: int = 8
    """Number of views (ignored for 'sample')."""
    height: int = 256
    width: int = 256
    seed: int = 0
    """Scene seed: the same seed always gives the same scene and cameras."""
    supersample: int = 2
    """Samples per pixel side averaged into the RGB, as a camera integrates light over each pixel. 1 gives one
    ray per pixel, whose aliased edges differ from view to view; use 4 for splat training benchmarks."""

    def run(self) -> None:
        from manyview import synth
        from manyview.errors import ManyviewError
        from manyview.io.dataset import write_dataset

        if self.supersample < 1:
            raise ManyviewError(f"--supersample must be at least 1, got {self.supersample}")
        if self.kind == "sample":
            _, views = synth.sample_scene(supersample=self.supersample)
        else:
            _, views = synth.generate(self.seed, kind=self.kind, num_views=self.views, height=self.height,
                                      width=self.width, supersample=self.supersample)
        write_dataset(self.out, views, points=views.point_cloud())
        print(f"wrote {len(views)} views ({views.height}x{views.width}) to {self.out}")
