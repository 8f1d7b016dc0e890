"""RealEstate10K in the chunked layout of pixelSplat / MVSplat / LVSM, and LVSM's per-scene JSON.

Chunked layout (one folder per split, e.g. ``re10k/test``)::

    000000.torch ...   torch-saved lists of scenes, each a dict:
                         key        str
                         url        str (the source video; may be absent)
                         timestamps (N,) int64 (microseconds)
                         cameras    (N, 18) float32: fx/W, fy/H, cx/W, cy/H, 0, 0, then the 3x4 OpenCV
                                    world-to-camera matrix, row-major
                         images     list of N uint8 tensors, each an encoded JPEG
    index.json         {scene key: chunk file name}

Chunks are read with ``torch.load(weights_only=True)`` only: tensors, lists, dicts and strings, never code.
The evaluation index (``evaluation_index_re10k.json``) maps a scene key to ``{"context": [i, j],
"target": [...]}`` or null. LVSM's converted layout keeps one JSON per scene, ``{"scene_name", "frames":
[{"image_path", "fxfycxcy" (pixels), "w2c" (4x4)}]}``, with images as files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor

from manyview.errors import ManyviewError
from manyview.io.atomic import atomic_directory, atomic_open, atomic_path
from manyview.io.tensor_files import read_pickle
from manyview.io.image_decode import open_image
from manyview.io.image_writers import encode_jpeg, write_image
from manyview.io.images import ImageLoadPolicy, load_image_bytes, load_image_files, natural_key
from manyview.scene import Cameras, Views, apply_to_cameras


@dataclass(frozen=True)
class RE10KScene:
    """One scene of a chunk, as stored: JPEG bytes and the 18-number camera rows."""

    key: str
    cameras: Tensor  # (N, 18) float32
    images: list[Tensor]  # N uint8 tensors of JPEG bytes
    timestamps: Tensor  # (N,) int64
    url: str = ""

    def __len__(self) -> int:
        return self.cameras.shape[0]

    def views(self, indices: Sequence[int] | None = None, policy: ImageLoadPolicy | None = None,
              source: str = "") -> Views:
        """Decode frames (all, or ``indices``) -> ``Views`` with cameras at the decoded (then policy) size."""
        idx = list(range(len(self))) if indices is None else [int(i) for i in indices]
        where = source or f"RE10K scene {self.key}"
        for i in idx:
            if not 0 <= i < len(self):
                raise ManyviewError(f"frame index {i} is out of range for scene {self.key!r} with {len(self)} frames",
                                    where)
        blobs = [self.images[i].numpy().tobytes() for i in idx]
        views, transforms = load_image_bytes(blobs, policy, names=[f"{self.key}/{i:05d}" for i in idx], label=where)
        sizes = torch.tensor([t.original_size for t in transforms], dtype=torch.int64)
        cams = rows_to_cameras(self.cameras[idx], sizes)
        return replace(views, cameras=apply_to_cameras(cams, transforms).to(torch.float32))


# --------------------------------------------------------------------------------------------- cameras
def rows_to_cameras(rows: Tensor, image_size) -> Cameras:
    """(N, 18) RE10K rows -> ``Cameras`` at ``image_size`` (H, W), per frame or shared."""
    rows = rows.to(torch.float64)
    w2c = torch.eye(4, dtype=torch.float64).repeat(rows.shape[0], 1, 1)
    w2c[:, :3, :] = rows[:, 6:].reshape(-1, 3, 4)
    size = torch.as_tensor(image_size, dtype=torch.int64).expand(rows.shape[0], 2)
    return Cameras.from_normalized(rows[:, :4], torch.linalg.inv(w2c), size)


def cameras_to_rows(cameras: Cameras) -> Tensor:
    """``Cameras`` (N,) -> (N, 18) float32 RE10K rows (normalised intrinsics, two zeros, 3x4 w2c)."""
    cameras = cameras.to(torch.float64)
    n = cameras.shape[0]
    rows = torch.cat([cameras.normalized_intrinsics(), torch.zeros(n, 2, dtype=torch.float64),
                      cameras.w2c[:, :3, :].reshape(n, 12)], dim=1)
    return rows.to(torch.float32)


# --------------------------------------------------------------------------------------------- chunks
def _scene_from_dict(item, where: str, position: int) -> RE10KScene:
    if not isinstance(item, dict):
        raise ManyviewError(f"scene {position} is a {type(item).__name__}, expected a dict", where)
    for key in ("key", "cameras", "images"):
        if key not in item:
            raise ManyviewError(f"scene {position}: missing key {key!r}", where)
    key, cams, imgs = item["key"], item["cameras"], item["images"]
    if not isinstance(key, str):
        raise ManyviewError(f"scene {position}: 'key' must be a string", where)
    if not isinstance(cams, Tensor) or cams.dim() != 2 or cams.shape[1] != 18:
        raise ManyviewError(f"scene {key!r}: 'cameras' must be an (N, 18) tensor", where)
    if isinstance(imgs, Tensor):  # some converters stack equal-length byte strings
        imgs = list(imgs)
    if not isinstance(imgs, list) or len(imgs) != cams.shape[0]:
        raise ManyviewError(f"scene {key!r}: 'images' must be a list of {cams.shape[0]} JPEG byte tensors", where)
    if any(not isinstance(t, Tensor) or t.dtype != torch.uint8 for t in imgs):
        raise ManyviewError(f"scene {key!r}: every image must be a uint8 tensor of encoded bytes", where)
    ts = item.get("timestamps")
    ts = torch.arange(cams.shape[0], dtype=torch.int64) if ts is None else torch.as_tensor(ts, dtype=torch.int64)
    if ts.shape != (cams.shape[0],):
        raise ManyviewError(f"scene {key!r}: 'timestamps' must have {cams.shape[0]} entries", where)
    url = item.get("url", "")
    return RE10KScene(key, cams.to(torch.float32), imgs, ts, url if isinstance(url, str) else "")


def read_chunk(path: str | os.PathLike) -> list[RE10KScene]:
    """One ``.torch`` chunk -> its scenes (loaded with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise ManyviewError("chunk file not found" if not path.exists() else "not a file", path)
    try:
        data = read_pickle(path, what="chunk")
    except ManyviewError as e:  # a pickle carrying code, or a damaged file
        raise ManyviewError(f"cannot load chunk safely (weights_only): {e.message}", path) from None
    if not isinstance(data, list):
        raise ManyviewError(f"chunk holds a {type(data).__name__}, expected a list of scenes", path)
    return [_scene_from_dict(item, str(path), i) for i, item in enumerate(data)]


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise ManyviewError(f"{what} not found", path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ManyviewError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", path) from None
    except (UnicodeDecodeError, OSError) as e:
        raise ManyviewError(f"cannot read {what}: {e}", path) from None


def read_index(root: str | os.PathLike) -> dict[str, str]:
    """``root/index.json``: scene key -> chunk file name."""
    path = Path(root) / "index.json"
    data = _read_json(path, "index.json")
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ManyviewError("index.json must map scene keys to chunk file names", path)
    return data


def iter_scenes(root: str | os.PathLike, keys: Sequence[str] | None = None) -> Iterator[RE10KScene]:
    """Scenes of a chunk folder in chunk order, or only ``keys`` (each chunk is read once)."""
    root = Path(root)
    if keys is None:
        chunks = sorted(root.glob("*.torch"), key=lambda p: natural_key(p.name))
        if not chunks:
            raise ManyviewError("no .torch chunks in this folder", root)
        for chunk in chunks:
            yield from read_chunk(chunk)
        return
    index = read_index(root)
    missing = [k for k in keys if k not in index]
    if missing:
        raise ManyviewError(f"scene {missing[0]!r} is not in index.json", root / "index.json")
    wanted = set(keys)
    for chunk in dict.fromkeys(index[k] for k in keys):
        for scene in read_chunk(root / chunk):
            if scene.key in wanted:
                yield scene


def load_scene(root: str | os.PathLike, key: str) -> RE10KScene:
    """One scene by key, through index.json."""
    for scene in iter_scenes(root, [key]):
        return scene
    index = read_index(root)
    raise ManyviewError(f"scene {key!r} is listed in index.json but not found in {index[key]}", Path(root) / index[key])


@dataclass(frozen=True)
class EvalEntry:
    context: list[int]
    target: list[int]


def read_evaluation_index(path: str | os.PathLike) -> dict[str, EvalEntry | None]:
    """pixelSplat's evaluation index: scene key -> context / target frame indices (None: scene skipped)."""
    path = Path(path)
    data = _read_json(path, "evaluation index")
    if not isinstance(data, dict):
        raise ManyviewError("evaluation index must be a JSON object keyed by scene", path)
    out: dict[str, EvalEntry | None] = {}
    for key, entry in data.items():
        if entry is None:
            out[key] = None
            continue
        if not isinstance(entry, dict) or "context" not in entry or "target" not in entry:
            raise ManyviewError(f"scene {key!r}: entry must have 'context' and 'target'", path)
        lists = [entry["context"], entry["target"]]
        if not all(isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
                   for v in lists):
            raise ManyviewError(f"scene {key!r}: 'context' and 'target' must be lists of frame indices", path)
        out[key] = EvalEntry(list(entry["context"]), list(entry["target"]))
    return out


# --------------------------------------------------------------------------------------------- writing
def scene_from_views(key: str, views: Views, timestamps: Tensor | None = None, url: str = "",
                     quality: int = 95) -> RE10KScene:
    """Encode posed ``Views`` as an RE10K scene (JPEG frames)."""
    if views.cameras is None:
        raise ManyviewError(f"scene {key!r}: views without cameras cannot be written as RE10K")
    images = [torch.frombuffer(bytearray(encode_jpeg(img, quality)), dtype=torch.uint8) for img in views.images]
    ts = torch.arange(len(views), dtype=torch.int64) if timestamps is None else torch.as_tensor(timestamps)
    return RE10KScene(key, cameras_to_rows(views.cameras), images, ts.to(torch.int64), url)


def _scene_to_dict(scene: RE10KScene) -> dict:
    return {"url": scene.url, "timestamps": scene.timestamps, "cameras": scene.cameras,
            "images": [t.clone() for t in scene.images], "key": scene.key}


def write_chunk(path: str | os.PathLike, scenes: Sequence[RE10KScene]) -> Path:
    """Write one ``.torch`` chunk atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save([_scene_to_dict(s) for s in scenes], tmp)
    return path


def write_chunks(root: str | os.PathLike, scenes: Sequence[RE10KScene], scenes_per_chunk: int = 64) -> Path:
    """Write a chunk folder (``000000.torch``, ... and ``index.json``), replacing ``root`` atomically."""
    root = Path(root)
    keys = [s.key for s in scenes]
    if len(set(keys)) != len(keys):
        raise ManyviewError("scene keys must be unique", root)
    if root.is_dir():  # the folder is replaced as a whole: never take user files with it
        foreign = [p.name for p in root.iterdir() if p.suffix != ".torch" and p.name != "index.json"]
        if foreign:
            raise ManyviewError(f"refusing to replace a folder that holds more than RE10K chunks (e.g. {foreign[0]!r})",
                                root)
    with atomic_directory(root) as tmp:
        index = {}
        for c in range(0, len(scenes), scenes_per_chunk):
            name = f"{c // scenes_per_chunk:06d}.torch"
            write_chunk(tmp / name, scenes[c:c + scenes_per_chunk])
            index.update({s.key: name for s in scenes[c:c + scenes_per_chunk]})
        with atomic_open(tmp / "index.json", "w", encoding="utf-8") as fh:
            json.dump(index, fh, indent=1)
    return root


# --------------------------------------------------------------------------------------------- LVSM JSON
def read_lvsm_scene(path: str | os.PathLike, policy: ImageLoadPolicy | None = None) -> Views:
    """LVSM's ``metadata/<scene>.json`` -> ``Views``.

    A relative ``image_path`` is looked up from the dataset root (the folder above ``metadata/``), then from the
    JSON's own folder.
    """
    path = Path(path)
    data = _read_json(path, "LVSM scene JSON")
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list) or not data["frames"]:
        raise ManyviewError("missing key 'frames' (a non-empty list)", path)
    scene = str(data.get("scene_name", path.stem))
    paths, f, w2c = [], [], []
    for i, frame in enumerate(data["frames"]):
        for key in ("image_path", "fxfycxcy", "w2c"):
            if not isinstance(frame, dict) or key not in frame:
                raise ManyviewError(f"frame {i}: missing key {key!r}", path)
        try:
            fi = torch.tensor(frame["fxfycxcy"], dtype=torch.float64)
            wi = torch.tensor(frame["w2c"], dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ManyviewError(f"frame {i}: 'fxfycxcy' and 'w2c' must be numbers", path) from None
        if fi.shape != (4,) or wi.shape != (4, 4) or not (fi.isfinite().all() and wi.isfinite().all()):
            raise ManyviewError(f"frame {i}: 'fxfycxcy' must have 4 numbers and 'w2c' be 4x4", path)
        p = Path(frame["image_path"])
        if not p.is_absolute():
            p = next((c for c in (path.parent.parent / p, path.parent / p) if c.is_file()), path.parent.parent / p)
        if not p.is_file():
            raise ManyviewError(f"image of frame {i} not found: {frame['image_path']}", p)
        paths.append(p)
        f.append(fi)
        w2c.append(wi)
    policy = replace(policy or ImageLoadPolicy(), exif_orientation=False)
    sizes = []
    for p in paths:
        op = open_image(p, policy.max_pixels, False)
        op.image.close()
        sizes.append(op.raw_size)
    cams = Cameras.from_w2c(torch.stack(f), torch.stack(w2c), torch.tensor(sizes, dtype=torch.int64))
    views, transforms = load_image_files(paths, policy, names=[f"{scene}/{p.name}" for p in paths])
    return replace(views, cameras=apply_to_cameras(cams, transforms).to(torch.float32))


def write_lvsm_scene(root: str | os.PathLike, scene: str, views: Views) -> Path:
    """Write ``root/images/<scene>/<i:05d>.png`` and ``root/metadata/<scene>.json`` (paths relative to root)."""
    root = Path(root)
    if views.cameras is None:
        raise ManyviewError(f"scene {scene!r}: views without cameras cannot be written", root)
    cams = views.cameras.to(torch.float64)
    frames = []
    for i in range(len(views)):
        rel = f"images/{scene}/{i:05d}.png"
        write_image(root / rel, views.images[i])
        frames.append({"image_path": rel, "fxfycxcy": cams.fxfycxcy[i].tolist(), "w2c": cams.w2c[i].tolist()})
    out = root / "metadata" / f"{scene}.json"
    with atomic_open(out, "w", encoding="utf-8") as fh:
        json.dump({"scene_name": scene, "frames": frames}, fh, indent=1)
    return out
