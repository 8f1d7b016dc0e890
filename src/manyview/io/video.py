"""H.264 video out (the optional ``video`` extra, imageio-ffmpeg), written atomically like every other output.

Frames are (3, H, W) float tensors in [0, 1] or (H, W, 3) uint8 arrays. Without imageio-ffmpeg no video is
written and the writers say so by returning None: videos are a convenience beside the images, never the only
output.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from manyview.io.atomic import atomic_path

CODEC = "libx264"
QUALITY = 8  # imageio-ffmpeg's 0..10 scale
# H.264 in yuv420p needs even sizes; imageio-ffmpeg scales odd sizes up to the next multiple of this
MACRO_BLOCK = 2


def video_available() -> bool:
    """Whether imageio-ffmpeg (the ``video`` extra) is installed."""
    return importlib.util.find_spec("imageio_ffmpeg") is not None


def _hwc_uint8(frame) -> np.ndarray:
    if isinstance(frame, torch.Tensor):
        frame = (frame.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    frame = np.ascontiguousarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"video frames are (3, H, W) tensors or (H, W, 3) uint8 arrays, got {frame.dtype} "
                         f"{frame.shape}")
    return frame


class VideoWriter:
    """Frames appended one at a time (``add``); the size is the first frame's. Use :func:`open_video`."""

    def __init__(self, path: Path, fps: int):
        self.path, self.fps = path, fps
        self.frames = 0
        self._writer = None

    def add(self, frame) -> None:
        frame = _hwc_uint8(frame)
        if self._writer is None:
            import imageio_ffmpeg

            h, w = frame.shape[:2]
            self._writer = imageio_ffmpeg.write_frames(str(self.path), (w, h), fps=self.fps, codec=CODEC,
                                                       quality=QUALITY, macro_block_size=MACRO_BLOCK)
            self._writer.send(None)  # start the generator
        self._writer.send(frame.tobytes())
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


@contextlib.contextmanager
def open_video(path: str | os.PathLike, fps: int) -> Iterator[VideoWriter | None]:
    """A :class:`VideoWriter` to ``path`` (renamed into place when the block ends without error), or None when
    imageio-ffmpeg is not installed."""
    if not video_available():
        yield None
        return
    path = Path(path)
    with atomic_path(path, suffix=".mp4") as tmp:
        writer = VideoWriter(tmp, fps)
        try:
            yield writer
        finally:
            writer.close()
        writer.path = path


def write_video(path: str | os.PathLike, frames: Iterable, fps: int) -> Path | None:
    """``frames`` as an H.264 mp4 at ``path``; None (nothing written) when imageio-ffmpeg is not installed."""
    with open_video(path, fps) as video:
        if video is None:
            return None
        for frame in frames:
            video.add(frame)
    return Path(path)


__all__ = ["open_video", "video_available", "VideoWriter", "write_video"]
