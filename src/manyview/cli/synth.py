"""``manyview synth``: write a synthetic dataset with exact ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from manyview.errors import ManyviewError, require

# --views, --height, --width and --seed when --kind object / room is given without them
DEFAULT_VIEWS, DEFAULT_SIZE, DEFAULT_SEED = 8, 256, 0


def _generated(default: int):
    """An option of generated scenes only: its default, as the help shows it."""
    return tyro.conf.arg(metavar="INT", help_behavior_hint=f"(object / room only; default: {default})")


@dataclass
class Synth:
    """Write a synthetic scene as a dataset: images/, sparse/0 (COLMAP), transforms.json, depth/, masks/,
    normals/, points.ply.

    With the defaults it writes the small embedded sample scene; --kind object or room generates a scene, whose
    size and number of views --views, --height, --width and --seed set (they are an error without --kind, since
    the sample scene is fixed). OUT is built under a temporary name and renamed at the end.
    """

    out: Path = Path("out/sample")
    """Output folder (replaced when it holds an earlier manyview dataset; any other non-empty folder, or a file,
    is refused)."""
    kind: Literal["sample", "sample-photos", "object", "room"] = "sample"
    """'sample': the embedded sample scene; 'sample-photos': its object in the 16 photos of ``manyview run
    --sample``; 'object': cameras orbiting objects; 'room': a walk through a room."""
    views: Annotated[int | None, _generated(DEFAULT_VIEWS)] = None
    """Number of views."""
    height: Annotated[int | None, _generated(DEFAULT_SIZE)] = None
    """Image height in pixels."""
    width: Annotated[int | None, _generated(DEFAULT_SIZE)] = None
    """Image width in pixels."""
    seed: Annotated[int | None, _generated(DEFAULT_SEED)] = None
    """Scene seed: the same seed always gives the same scene and cameras."""
    supersample: int = 2
    """Samples per pixel side averaged into the RGB, as a camera integrates light over each pixel. 1 gives one
    ray per pixel, whose aliased edges differ from view to view; use 4 for splat training benchmarks."""

    def __post_init__(self):
        require(self.supersample >= 1, "--supersample", "at least 1", self.supersample)
        for option, value in (("--views", self.views), ("--height", self.height), ("--width", self.width)):
            if value is not None:
                require(value >= 1, option, "at least 1", value)
        if self.kind in ("sample", "sample-photos"):
            given = [o for o, v in (("--views", self.views), ("--height", self.height), ("--width", self.width),
                                    ("--seed", self.seed)) if v is not None]
            if given:
                verb = "applies" if len(given) == 1 else "apply"
                raise ManyviewError(f"{', '.join(given)} only {verb} to generated scenes: add --kind object or "
                                    "--kind room (the embedded sample scene is fixed)")

    def interrupted(self) -> str:
        from manyview.cli.common import left_as_it_was

        return left_as_it_was(self.out)

    def run(self) -> None:
        from manyview import synth
        from manyview.io.atomic import check_output_folder
        from manyview.io.dataset import MARKER, write_dataset

        check_output_folder(self.out, MARKER)
        if self.kind == "sample":
            _, views = synth.sample_scene(supersample=self.supersample)
        elif self.kind == "sample-photos":
            _, views = synth.sample_photos(supersample=self.supersample)
        else:
            size = (self.height or DEFAULT_SIZE, self.width or DEFAULT_SIZE)
            _, views = synth.generate(DEFAULT_SEED if self.seed is None else self.seed, kind=self.kind,
                                      num_views=self.views or DEFAULT_VIEWS, height=size[0], width=size[1],
                                      supersample=self.supersample)
        write_dataset(self.out, views, points=views.point_cloud())
        print(f"wrote {len(views)} views ({views.height}x{views.width}) to {self.out}")
