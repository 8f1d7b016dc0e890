"""reconstruct / reconstruct_pairwise: the pipeline from images to a consistent Reconstruction.

The networks are replaced by oracles that return the exact pointmaps of a synthetic scene (the network itself is
tested in tests/models): then the recovered cameras must match the ground truth, and each view's pointmap must
project onto its own pixels through its recovered camera.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from manyview import synth
from manyview.errors import ManyviewError
from manyview.geometry.projection import depth_to_pointmap, project
from manyview.geometry.rays import pixel_grid
from manyview.geometry.rotation import rotation_angle
from manyview.geometry.transforms import invert_rigid, transform_points
from manyview.models.fast3r import DecoderArgs, EncoderArgs, Fast3R, Fast3RConfig, Fast3ROutput, HeadArgs
from manyview.models.pairwise import PairPredictions, PairwiseConfig, PairwiseNet
from manyview.recon import GlobalAlignmentConfig
from manyview.recon.reconstruct import reconstruct, reconstruct_pairwise, reconstruction_policy, select_views

H, W = 32, 48
MICRO_FAST3R = Fast3RConfig(EncoderArgs(embed_dim=32, depth=1, num_heads=2),
                            DecoderArgs(enc_embed_dim=32, embed_dim=16, depth=4, num_heads=2),
                            HeadArgs(feature_dim=8, last_dim=4, layer_dims=[4, 4, 8, 8]))
MICRO_PAIRWISE = PairwiseConfig(enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=16, dec_depth=4,
                                dec_num_heads=2, feature_dim=8, last_dim=4, layer_dims=[4, 4, 8, 8])


@pytest.fixture(scope="module")
def views():
    return synth.generate(3, "object", num_views=5, height=H, width=W)[1]


def _gt(views, images):
    """Indices of ``images`` among the views, their pointmaps in their own and in the world frame, confidences.

    The pointmaps follow the networks' pixel convention (DUSt3R / Fast3R: pixel (i, j) at (j, i), principal point
    (W/2, H/2)), so the expected manyview cameras are the ground-truth poses with cx, cy moved by +0.5."""
    idx = [next(k for k in range(len(views)) if torch.equal(views.images[k], im)) for im in images]
    v = views[idx]
    local = depth_to_pointmap(v.depths, v.cameras.fxfycxcy, offset=0.0)  # (n, H, W, 3) own frame
    world = transform_points(v.cameras.c2w, local)
    conf = torch.where(v.depths > 0, 5.0, 1.01)
    return idx, local, world, conf


class OracleFast3R(Fast3R):
    """Fast3R whose inference returns the exact pointmaps of the views it is shown."""

    def __init__(self, views):
        super().__init__(MICRO_FAST3R)
        self.views = views

    def infer(self, images, image_ids=None, image_index_seed=None, dtype=None, **kwargs):
        _, local, world, conf = _gt(self.views, images.cpu())
        glob = transform_points(invert_rigid(self.views.cameras.c2w[0]), world)
        ids = torch.arange(len(images), dtype=torch.float64)[None]
        return Fast3ROutput(glob[None], conf[None], local[None], conf[None], ids)


class OraclePairwise(PairwiseNet):
    """The pairwise network replaced by exact pair pointmaps (both views in view i's frame)."""

    def __init__(self, views):
        super().__init__(MICRO_PAIRWISE)
        self.views = views

    def infer_pairs(self, images, edges, **kwargs):
        idx, local, world, conf = _gt(self.views, images.cpu())
        w2c = invert_rigid(self.views.cameras.c2w[idx])
        pts_i = torch.stack([local[i] for i, _ in edges])
        pts_j = torch.stack([transform_points(w2c[i], world[j]) for i, j in edges])
        ci = torch.stack([conf[i] for i, _ in edges])
        cj = torch.stack([conf[j] for _, j in edges])
        return PairPredictions(list(edges), pts_i, pts_j, ci, cj)


def _relative_gt(views, idx):
    c2w = views.cameras.c2w[idx]
    return invert_rigid(c2w[0])[None] @ c2w


def _check_consistent(rec, max_px=0.05):
    """Each view's (confident) pointmap projects onto its pixel centres through its recovered camera."""
    n, h, w, _ = rec.pointmaps.shape
    uv, z = project(rec.pointmaps.reshape(n, -1, 3), rec.cameras.fxfycxcy, rec.cameras.w2c)
    grid = pixel_grid(h, w, 0.5).reshape(-1, 2)
    confident = rec.confidences.reshape(n, -1) > 2
    err = (uv - grid).norm(dim=-1)[confident]
    assert float(err.median()) < max_px and bool((z[confident] > 0).all())


def test_fast3r_pipeline_recovers_the_cameras(views):
    rec = reconstruct(views, OracleFast3R(views), max_views=4, progress=False, pnp_conf_percentile=20)
    chosen = select_views(5, 4)
    assert chosen == [0, 1, 3, 4] and rec.info["selected_views"] == chosen
    assert rec.names == [views.names[i] for i in chosen]
    assert len(rec) == 4 and rec.pointmaps.shape == (4, H, W, 3) and rec.images.shape == (4, 3, H, W)
    assert rec.cameras.image_size.tolist() == [[H, W]] * 4
    gt = _relative_gt(views, chosen)
    assert float(rotation_angle(rec.cameras.R.transpose(-1, -2) @ gt[:, :3, :3]).max()) < np.radians(0.05)
    assert torch.allclose(rec.cameras.centers, gt[:, :3, 3], atol=2e-3)
    assert torch.allclose(rec.cameras.fx, views.cameras.fx[chosen], rtol=1e-3)
    assert torch.allclose(rec.cameras.cx, views.cameras.cx[chosen] + 0.5, atol=1e-4)
    _check_consistent(rec)
    info = rec.info
    assert info["method"] == "fast3r" and info["num_views"] == 4 and info["image_size"] == [H, W]
    assert set(info["timings_s"]) == {"inference", "cameras", "total"}
    assert info["peak_memory"]["kind"] == "cpu_resident_set" and info["peak_memory"]["peak_bytes"] > 0
    assert info["mean_confidence"] == pytest.approx(float(rec.confidences.mean()))
    assert info["num_points"] == len(rec.points) > 0


def test_pairwise_pipeline_recovers_the_cameras_up_to_scale(views):
    sub = views[:4]
    # the spanning-tree initialisation is exact on exact pairs; the Adam loop is tested in test_recon_global_alignment
    rec = reconstruct_pairwise(sub, OraclePairwise(sub), ga=GlobalAlignmentConfig(iterations=0), progress=False)
    gt = _relative_gt(sub, list(range(4)))
    assert float(rotation_angle(rec.cameras.R.transpose(-1, -2) @ gt[:, :3, :3]).max()) < np.radians(0.05)
    scale = gt[1, :3, 3].norm() / rec.cameras.centers[1].norm()
    assert torch.allclose(rec.cameras.centers * scale, gt[:, :3, 3], atol=2e-3)
    assert torch.allclose(rec.cameras.cx, sub.cameras.cx + 0.5, atol=1e-4)
    _check_consistent(rec)
    info = rec.info
    assert info["method"] == "pairwise" and info["num_pairs"] == 12 and info["graph"] == "complete"
    assert set(info["timings_s"]) == {"pair_inference", "global_alignment", "points", "total"}
    keep = rec.confidences >= torch.quantile(rec.confidences.flatten(1), 0.1, dim=1)[:, None, None]
    assert len(rec.points) == int(keep.sum())


def test_random_networks_run_end_to_end(views):
    """Untrained weights give meaningless geometry but must give finite, well-formed reconstructions."""
    torch.manual_seed(0)
    fast3r = reconstruct(views.images[:3], Fast3R(MICRO_FAST3R), progress=False)
    pairwise = reconstruct_pairwise(views.images[:3], PairwiseNet(MICRO_PAIRWISE), progress=False,
                                    ga=GlobalAlignmentConfig(iterations=3))
    for rec, name in ((fast3r, "Fast3R"), (pairwise, "PairwiseNet")):
        assert len(rec) == 3 and torch.isfinite(rec.pointmaps).all() and torch.isfinite(rec.cameras.c2w).all()
        assert rec.info["model"] == name and len(rec.points) > 0


def test_single_and_duplicate_images(views):
    one = reconstruct(views[:1], OracleFast3R(views), progress=False)
    assert len(one) == 1 and torch.allclose(one.cameras.c2w[0], torch.eye(4), atol=1e-3)
    pair = reconstruct_pairwise(views[:1], PairwiseNet(MICRO_PAIRWISE), ga=GlobalAlignmentConfig(iterations=2),
                                progress=False)
    assert len(pair) == 1 and pair.pointmaps.shape == (1, H, W, 3) and pair.info["num_pairs"] == 2
    dup = torch.cat([views.images[:2], views.images[:1]])
    rec = reconstruct(dup, Fast3R(MICRO_FAST3R), progress=False)
    assert len(rec) == 3 and torch.isfinite(rec.pointmaps).all()


def test_degenerate_pointmaps_fall_back_to_the_default_focal(views):
    class Mirrored(OracleFast3R):  # points mirrored through the optical axis: Weiszfeld's focal is not positive
        def infer(self, images, **kwargs):
            out = super().infer(images, **kwargs)
            flip = torch.tensor([-1.0, -1.0, 1.0])
            return Fast3ROutput(out.pts3d_global * flip, out.conf_global, out.pts3d_local * flip, out.conf_local,
                                out.image_ids)

    rec = reconstruct(views[:2], Mirrored(views), progress=False)
    assert rec.info["focal_fallback"] is True
    assert torch.allclose(rec.cameras.fx, torch.tensor(W / (2 * np.tan(np.radians(30))), dtype=torch.float32))
    assert reconstruct(views[:2], OracleFast3R(views), progress=False).info["focal_fallback"] is False


def test_image_files_of_different_sizes_follow_the_loader_policy(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for k, (h, w) in enumerate([(60, 90), (80, 100), (90, 60)]):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    rec = reconstruct(paths, Fast3R(MICRO_FAST3R), size=64, square=False, progress=False)
    assert rec.images.shape == (3, 3, 32, 64)  # long side 64, 60x90's aspect rounded down to multiples of 16
    square = reconstruct(paths, Fast3R(MICRO_FAST3R), size=32, progress=False)  # <= 224: square by default
    assert square.images.shape == (3, 3, 32, 32)
    assert reconstruction_policy(224).size == (224, 224) and reconstruction_policy(512).long_side == 512
    assert reconstruction_policy(240).long_side == 240 and reconstruction_policy(112).size == (112, 112)


def test_bad_inputs(views, tmp_path):
    model = Fast3R(MICRO_FAST3R)
    with pytest.raises(ManyviewError, match="multiple of the patch size"):
        reconstruct(torch.rand(2, 3, 30, 48), model, progress=False)
    with pytest.raises(ManyviewError, match="no images"):
        reconstruct([], model, progress=False)
    with pytest.raises(ManyviewError, match="Fast3R or PairwiseNet"):
        reconstruct(views, torch.nn.Linear(2, 2), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ManyviewError, match="sees no CUDA GPU"):
            reconstruct(views, model, device="cuda", progress=False)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ManyviewError, match="bad.jpg"):
        reconstruct([tmp_path / "bad.jpg"], model, progress=False)
    with pytest.raises(ManyviewError, match="unknown dtype"):
        reconstruct(views, model, dtype="float8", progress=False)
