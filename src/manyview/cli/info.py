"""``manyview info``: describe a dataset, reconstruction, point cloud or splat file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tyro


@dataclass
class Info:
    """Describe a dataset (COLMAP, transforms.json, image folder, RealEstate10K chunks) or a PLY file."""

    path: tyro.conf.Positional[Path]
    """Folder or file to describe."""
    json: bool = False
    """Print machine-readable JSON instead of text."""

    def run(self) -> None:
        from manyview.io.dataset import describe

        facts = describe(self.path)
        if self.json:
            print(json.dumps(facts, indent=2, default=str))
            return
        width = max(len(k) for k in facts) if facts else 0
        for key, value in facts.items():
            print(f"{key:<{width}}  {value}")
