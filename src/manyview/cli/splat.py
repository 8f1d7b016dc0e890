"""``manyview splat``: train Gaussians on a posed dataset (3DGS recipe), with checkpoints and held-out evaluation.

    manyview splat scene/ --out runs/scene_splat --iterations 7000
    manyview splat scene/ --out runs/scene_splat --iterations 30000 --resume
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro


@dataclass
class Splat:
    """Train a Gaussian splat on DATASET: a COLMAP model with images, a transforms.json dataset, a manyview dataset
    (``manyview synth``) or a reconstruction folder. Every 8th view (i % 8 == 0) is held out for evaluation.

    Writes OUT/splat.ply (3DGS PLY), OUT/eval.json (held-out PSNR/SSIM/LPIPS), OUT/transforms.json (the cameras,
    for ``manyview render --orbit``) and OUT/checkpoints/ (the latest checkpoint; --resume continues from it).
    """

    dataset: tyro.conf.Positional[Path]
    """Posed dataset folder (or transforms.json)."""
    out: Path
    """Output folder."""
    iterations: int = 30_000
    resume: bool = False
    """Continue from the latest checkpoint in OUT (start fresh when there is none)."""
    max_width: int = 480
    """Images wider than this are downscaled (aspect kept; cameras follow). 0 keeps the full size."""
    sh_degree: int = 3
    eval_every: int = 0
    """Held-out PSNR every N steps into eval.json's history (0: only at the end)."""
    checkpoint_every: int = 1000
    scale_schedule: bool = True
    """Shorter runs than 30k steps densify over the same fraction of their length (refine from 500 x k to
    15000 x k steps, opacity reset every 3000 x k, k = iterations / 30000), as gsplat's steps_scaler."""
    random_background: bool = False
    random_init_points: int = 10_000
    """Random Gaussians in the cameras' bounding box when the dataset has no points."""
    seed: int = 0

    def run(self) -> None:
        from manyview.splat.trainer import SplatTrainConfig, SplatTrainer

        views, points = load_training_data(self.dataset, self.max_width)
        config = SplatTrainConfig(iterations=self.iterations, sh_degree=self.sh_degree, eval_every=self.eval_every,
                                  checkpoint_every=self.checkpoint_every, random_background=self.random_background,
                                  scale_schedule=self.scale_schedule,
                                  random_init_points=self.random_init_points, seed=self.seed)
        trainer = SplatTrainer(views, self.out, config, points=points)
        init = "random" if points is None else f"{len(points.xyz)} dataset points"
        print(f"training {len(trainer.train_ids)} views ({views.height}x{views.width}), {len(trainer.test_ids)} "
              f"held out, from {init}")
        result = trainer.train(resume=self.resume)
        if trainer.resumed_from is not None:
            print(f"resumed from the checkpoint at step {trainer.resumed_from}")
        scores = ", ".join(f"{k.upper()} {result[k]:.4f}" for k in ("psnr", "ssim", "lpips") if result.get(k) is not None)
        print(f"wrote {self.out / 'splat.ply'} ({result['gaussians']} Gaussians, {result['step']} steps, "
              f"{result['train_seconds']:.0f} s){'; held-out ' + scores if scores else ''}")


def load_training_data(path: Path, max_width: int = 480):
    """(Views downscaled to at most ``max_width``, PointCloud or None) of a posed dataset."""
    import torch
    import torch.nn.functional as F

    from manyview.errors import ManyviewError
    from manyview.io.dataset import detect_format, load_dataset, load_points
    from manyview.scene import Views

    fmt = detect_format(path)
    if fmt == "images":
        raise ManyviewError("this is an image folder without camera poses; estimate them first with `manyview "
                            "reconstruct` (or manyview.recon.sfm.run_colmap_sfm) and train on its output", path)
    if fmt not in ("manyview", "colmap", "transforms_json"):
        raise ManyviewError(f"manyview splat needs a posed dataset (COLMAP, transforms.json or manyview), got {fmt}",
                            path)
    views = load_dataset(path)
    if views.cameras is None:
        raise ManyviewError("this dataset has no camera poses; estimate them first with `manyview reconstruct`", path)
    h, w = views.height, views.width
    if max_width and w > max_width:
        nh = max(1, round(h * max_width / w))
        images = F.interpolate(views.images, size=(nh, max_width), mode="bilinear", antialias=True,
                               align_corners=False).clamp(0, 1)
        views = Views(images=images, cameras=views.cameras.resized(nh, max_width), names=views.names)
    points = load_points(path) if fmt in ("manyview", "colmap") else None
    if points is not None and len(points.xyz) == 0:
        points = None
    return Views(images=views.images, cameras=views.cameras.to(torch.float32), names=views.names), points
