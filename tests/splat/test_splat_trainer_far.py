"""Far-field initialisation and distance-aware pruning: the shell's colours match a per-point projection
reference, the trainer adds the shell to the dataset's points, and a far Gaussian keeps the size that a
near one would lose."""

from __future__ import annotations

import torch

from manyview.scene import PointCloud, Views
from manyview.splat import Gaussians
from manyview.splat.far_field import far_field_points, fibonacci_sphere
from manyview.splat.strategy import DensifyStrategy
from manyview.splat.trainer import SplatTrainConfig, initial_gaussians, scene_extent
from manyview.splat.types import RenderOutput

from splat_scenes import make_cameras


def _far_colours_reference(views: Views, xyz: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """Point by point, photo by photo: the pixel of the first photo (in ``ids`` order) whose image holds the
    point's projection K (R^T (X - C)) in front of the camera; the mean colour of those photos where none does."""
    cams = views.cameras.to(torch.float64)
    images = views.images[ids].to(torch.float64)
    out = torch.empty(len(xyz), 3, dtype=torch.float64)
    for p, point in enumerate(xyz):
        out[p] = images.mean((0, 2, 3))
        for k, i in enumerate(ids):
            rot, centre = cams.c2w[i, :3, :3], cams.c2w[i, :3, 3]
            local = rot.T @ (point - centre)
            if local[2] <= 0:
                continue
            pix = cams.K[i] @ (local / local[2])
            u, v = pix[0].item(), pix[1].item()
            if 0 <= u < views.width and 0 <= v < views.height:
                out[p] = images[k, :, int(v), int(u)]
                break
    return out


def _views(n: int = 3) -> Views:
    cams = make_cameras(n, 12, 16)
    gen = torch.Generator().manual_seed(0)
    return Views(images=torch.rand(n, 3, 12, 16, generator=gen, dtype=torch.float64), cameras=cams,
                 names=[f"{i}.png" for i in range(n)])


def test_fibonacci_sphere_is_nearly_uniform():
    d = fibonacci_sphere(400)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(400, dtype=torch.float64))
    assert d.mean(0).norm() < 0.01  # balanced
    nearest = torch.cdist(d, d).fill_diagonal_(9).amin(1)
    assert nearest.max() < 2.5 * nearest.min()  # no clumps, no holes


def test_far_points_take_the_colour_of_the_first_photo_that_sees_them():
    views = _views()
    cams = views.cameras
    ids = [2, 0]  # photo 1 is a held-out one: its pixels must not be used
    shell = far_field_points(views, 300, radius=3.0, ids=ids)
    centre = cams.centers[ids].mean(0)
    torch.testing.assert_close((shell.xyz - centre).norm(dim=-1), torch.full((300,), 3.0, dtype=torch.float64))
    reference = _far_colours_reference(views, shell.xyz, ids)
    torch.testing.assert_close(shell.rgb, reference)
    seen = (reference != views.images[ids].mean((0, 2, 3))).any(-1)
    assert 10 < seen.sum() < 290  # some points seen, some not: both branches are exercised


def test_the_trainer_adds_the_shell_to_the_dataset_points():
    views = _views(4)
    points = PointCloud(torch.randn(30, 3, dtype=torch.float64) * 0.3, torch.rand(30, 3, dtype=torch.float64))
    cfg = SplatTrainConfig(sh_degree=0, far_points=50, far_radius=4.0)
    g = initial_gaussians(views, points, cfg, train_ids=[1, 2, 3])
    assert len(g) == 80
    radius = (g.means[30:].double() - views.cameras.centers[[1, 2, 3]].mean(0)).norm(dim=-1)
    torch.testing.assert_close(radius, torch.full((50,), 4.0 * scene_extent(views), dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g.means[:30].double(), points.xyz, rtol=1e-6, atol=1e-6)
    assert len(initial_gaussians(views, points, SplatTrainConfig(sh_degree=0), train_ids=[1, 2, 3])) == 30


def _pruning_step(by_distance: bool, centre=None) -> tuple[int, torch.Tensor]:
    """Gaussians of world size 0.5 at distances 0, 2 and 8 (scene scale 1, prune above 0.1 x scale, times the
    distance when ``by_distance``), after the first opacity reset: how many survive."""
    means = torch.tensor([[0.0, 0, 0], [2.0, 0, 0], [0, 8.0, 0]])
    sizes = torch.tensor([0.5, 0.5, 0.5])
    if centre is not None:
        means = means + centre
    g = Gaussians(means, sizes.log()[:, None].expand(3, 3).clone(), torch.tensor([[1.0, 0, 0, 0]] * 3),
                  torch.zeros(3), torch.rand(3, 1, 3), torch.zeros(3, 0, 3))
    params = {k: torch.nn.Parameter(v.clone()) for k, v in g.as_dict().items()}
    opts = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strat = DensifyStrategy(refine_start_iter=0, refine_every=100, reset_every=100, prune_scale3d=0.1,
                            prune_scale_by_distance=by_distance)
    state = strat.initialize_state(3)
    means2d = torch.zeros(1, 3, 2, requires_grad=True)
    means2d.grad = torch.zeros(1, 3, 2)
    out = RenderOutput(torch.zeros(1, 3, 4, 4), torch.zeros(1), torch.zeros(1), means2d, torch.ones(1, 3, 2))
    strat.step_post_backward(params, opts, state, step=200, out=out, scene_scale=1.0, scene_center=centre)
    return params["means"].shape[0], params["means"].detach()


def test_pruning_by_distance_keeps_far_large_gaussians_only():
    n, _ = _pruning_step(False)
    assert n == 0  # 3DGS: all three are larger than 0.1 x scene scale
    n, kept = _pruning_step(True)
    # limits 0.1 (distance 0 -> factor 1), 0.2, 0.8: only the one at distance 8 keeps its 0.5
    assert n == 1 and kept[0].tolist() == [0.0, 8.0, 0.0]
    centre = torch.tensor([5.0, -3.0, 1.0])
    n, kept = _pruning_step(True, centre)  # distances are measured from the scene centre
    assert n == 1 and torch.equal(kept[0], torch.tensor([0.0, 8.0, 0.0]) + centre)
