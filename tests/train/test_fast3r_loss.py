import torch

from manyview.geometry.rotation import random_rotation
from manyview.geometry.transforms import invert_rigid, rigid
from manyview.train.losses import _to_frame, fast3r_loss


def _scene(B=2, N=3, H=4, W=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    world = torch.randn(B, N, H, W, 3, generator=g, dtype=torch.float64) + torch.tensor([0, 0, 4.0], dtype=torch.float64)
    c2w = rigid(random_rotation(B * N, g).reshape(B, N, 3, 3), torch.randn(B, N, 3, generator=g, dtype=torch.float64))
    valid = torch.rand(B, N, H, W, generator=g) > 0.2
    return world, c2w, valid


def test_perfect_prediction_at_any_scale_has_zero_regression_error():
    world, c2w, valid = _scene()
    gt_global = _to_frame(world, c2w[:, 0])
    gt_local = _to_frame(world, c2w)
    # Global: one scale per sample; local: one scale per view. Both must be normalised away.
    pred_g = gt_global * torch.tensor([2.5, 0.3], dtype=torch.float64)[:, None, None, None, None]
    pred_l = gt_local * torch.rand(2, 3, 1, 1, 1, dtype=torch.float64).add(0.5)
    conf = torch.full(valid.shape, 1.5, dtype=torch.float64)
    loss, parts = fast3r_loss(pred_g, conf, pred_l, conf, world, c2w, valid)
    assert parts["regr_global"] < 1e-12 and parts["regr_local"] < 1e-12
    # With zero error the loss is the confidence regulariser alone: -alpha * log(1.5).
    assert torch.isclose(loss, -0.2 * torch.log(torch.tensor(1.5, dtype=torch.float64)))


def test_global_head_must_share_one_scale_across_views():
    world, c2w, valid = _scene()
    gt_global = _to_frame(world, c2w[:, 0])
    pred_g = gt_global.clone()
    pred_g[:, 1] *= 2.0  # view 1 at a different scale from the others: a real error for the global head
    conf = torch.full(valid.shape, 1.5, dtype=torch.float64)
    _, parts = fast3r_loss(pred_g, conf, _to_frame(world, c2w), conf, world, c2w, valid)
    assert parts["regr_global"] > 1e-2 and parts["regr_local"] < 1e-12


def test_to_frame_matches_inverse_pose():
    world, c2w, _ = _scene(B=1, N=2)
    local = _to_frame(world, c2w)
    w2c = invert_rigid(c2w[0, 1])
    expected = world[0, 1] @ w2c[:3, :3].T + w2c[:3, 3]
    assert torch.allclose(local[0, 1], expected)


def test_invalid_pixels_do_not_contribute():
    world, c2w, valid = _scene()
    conf = torch.full(valid.shape, 2.0, dtype=torch.float64)
    pred_g, pred_l = _to_frame(world, c2w[:, 0]), _to_frame(world, c2w)
    base, _ = fast3r_loss(pred_g, conf, pred_l, conf, world, c2w, valid)
    garbage = torch.where(valid[..., None], pred_g, torch.full_like(pred_g, 1e6))
    garbage_l = torch.where(valid[..., None], pred_l, torch.full_like(pred_l, -1e6))
    loss, _ = fast3r_loss(garbage, conf, garbage_l, conf, world, c2w, valid)
    assert torch.isclose(loss, base)
