"""File formats in and out: one module per format; readers return scene types, writers write atomically.

- ``images``: JPEG / PNG / WebP -> ``Views`` with recorded resize / crop (``ImageLoadPolicy``); decoding in
  ``image_decode``, writing in ``image_writers``, depth maps and masks in ``pixel_maps``
- ``colmap``: COLMAP sparse models (text / binary) via pycolmap
- ``transforms_json``: nerfstudio / instant-ngp / NeRF-synthetic ``transforms.json``
- ``realestate10k``: pixelSplat / LVSM RealEstate10K chunks, evaluation index, LVSM scene JSON
- ``ply``: coloured point clouds; ``gltf``: GLB scenes (points + camera frusta)
- ``dataset``: format detection, ``load_dataset`` / ``read_cameras`` / ``write_dataset`` / ``describe``
- ``atomic``: the temporary-name-then-rename writes everything above goes through

How a loaded image relates to its file (``ImageTransform``, ``apply_to_cameras``) is part of the data model,
:mod:`manyview.scene.resize`.
"""

from manyview.io.colmap import ColmapModel, read_colmap, read_colmap_dataset, write_colmap
from manyview.io.dataset import describe, detect_format, load_dataset, load_points, read_cameras, write_dataset
from manyview.io.gltf import write_glb
from manyview.io.image_writers import write_image
from manyview.io.images import ImageLoadPolicy, load_images, read_image
from manyview.io.pixel_maps import read_depth, read_mask, write_depth, write_mask
from manyview.io.ply import read_ply, write_ply
from manyview.io.transforms_json import read_transforms_json, write_transforms_json

__all__ = [
    "ColmapModel", "ImageLoadPolicy", "describe", "detect_format", "load_dataset", "load_images", "load_points",
    "read_cameras", "read_colmap", "read_colmap_dataset", "read_depth", "read_image", "read_mask", "read_ply",
    "read_transforms_json", "write_colmap", "write_dataset", "write_depth", "write_glb", "write_image", "write_mask",
    "write_ply", "write_transforms_json",
]
