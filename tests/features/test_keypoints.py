"""Sparse features (manyview.features.keypoints) and the lifting baseline (manyview.features.lift): NMS against its
reference, its limits, saliency, descriptors, and 2D detections re-finding the projections of 3D key points."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from manyview.features.keypoints import (cell_centres, corner_response, subcell_offsets, greedy_nms, greedy_nms_reference, keypoints2d, keypoints3d,
                                         match_descriptors, saliency2d, sample_descriptors)
from manyview.features.lift import apply_pca, lift_features, pca_project, visible_points


@pytest.mark.parametrize("radius,max_keep", [(0.0, 7), (0.15, 300), (0.3, 5), (0.05, 40)])
def test_nms_matches_its_reference_keeps_at_most_k_and_respects_the_radius(radius, max_keep):
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(200, 3, generator=g)
    scores = torch.rand(200, generator=g).round(decimals=2)  # ties on purpose
    kept = greedy_nms(pts, scores, radius, max_keep)
    torch.testing.assert_close(kept, greedy_nms_reference(pts, scores, radius, max_keep))
    assert len(kept) <= max_keep and len(set(kept.tolist())) == len(kept)
    d = torch.cdist(pts[kept], pts[kept]) + torch.eye(len(kept)) * 10
    assert float(d.min()) >= radius
    assert torch.all(scores[kept][:-1] >= scores[kept][1:])
    if radius > 0 and len(kept) < max_keep:  # suppression stopped it: every point is within radius of a kept one
        assert float(torch.cdist(pts, pts[kept]).min(1).values.max()) < radius


def test_saliency_is_high_where_features_change_and_descriptors_sample_bilinearly():
    fmap = torch.zeros(2, 8, 8)
    fmap[0, :, :4] = 1.0
    fmap[1, :, 4:] = 1.0  # two flat halves, orthogonal features
    s = saliency2d(fmap)
    assert torch.all(s[:, 3:5] > 0.3) and torch.all(s[:, :2] < 1e-6) and torch.all(s[:, 6:] < 1e-6)
    kp = keypoints2d(fmap, (32, 32), max_keypoints=4, radius_px=6)
    assert len(kp.xy) == 4 and torch.all((kp.xy[:, 0] - 16).abs() <= 4)  # on the edge, 4 px cells either side
    ramp = torch.arange(16.0).reshape(1, 4, 4)  # value 4 i + j at cell (i, j)
    xy = torch.tensor([[2.0, 2.0], [4.0, 2.0], [6.0, 6.0]])  # cell (0, 0)'s centre, half-way to (0, 1), (1, 1)'s
    torch.testing.assert_close(sample_descriptors(ramp, xy, (16, 16))[:, 0], torch.tensor([0.0, 0.5, 5.0]))


def test_keypoints3d_keeps_salient_points_within_k_and_radius():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(2000, 3, generator=g)
    feats = torch.where(pts[:, :1] < 0.5, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))  # a plane x = 0.5
    kp = keypoints3d(pts, feats, max_keypoints=20, radius=0.1)
    assert len(kp.positions) == 20 and torch.all((kp.positions[:, 0] - 0.5).abs() < 0.15)
    torch.testing.assert_close(kp.descriptors.norm(dim=-1), torch.ones(20))
    assert len(keypoints3d(pts, feats, max_keypoints=5).positions) == 5


def test_mutual_matches_and_pca():
    g = torch.Generator().manual_seed(0)
    b = torch.randn(10, 6, generator=g)
    perm = torch.randperm(10, generator=g)
    ia, ib, sim = match_descriptors(b[perm] + 0.01 * torch.randn(10, 6, generator=g), b)
    assert torch.equal(ib, perm[ia]) and len(ia) == 10 and torch.all(sim > 0.99)
    x = torch.randn(500, 5, generator=g) @ torch.diag(torch.tensor([5.0, 3.0, 1.0, 0.1, 0.01]))
    proj, mean, basis = pca_project(x, 2)
    assert proj.shape == (500, 2) and proj[:, 0].var() > proj[:, 1].var() > 5
    torch.testing.assert_close(apply_pca(x.T.reshape(5, 20, 25), mean, basis), proj.T.reshape(2, 20, 25))


@pytest.mark.slow
def test_2d_detection_re_finds_projected_3d_key_points_more_often_than_chance():
    """Teacher features of three held-out object orbits: 3D features lifted from views 0-2, key points detected in
    view 3 (never lifted from) land near the projections of the 3D key points it sees, and the descriptors there
    pick the right 3D key point, both far more often than chance."""
    from manyview.features.teachers import load_teacher
    from manyview.synth import generate
    from manyview.synth.samples import eval_scene_seed, views_to_sample

    teacher = load_teacher()
    hits = chance = correct = total = 0.0
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        _, views = generate(eval_scene_seed(i), "object", 4, 128, 128, arc_deg=90.0)
        s = views_to_sample(views)
        with torch.no_grad():
            fmap = F.interpolate(teacher(s["images"]), size=(32, 32), mode="bilinear", align_corners=False)
        where = s["valid"][:3].nonzero()
        v, r, c = where[torch.randperm(len(where), generator=g)[:4000]].unbind(-1)
        pts = s["pts3d"][:3][v, r, c].float()
        depths = views.depths.float()
        f3d, count = lift_features(pts, fmap[:3], s["fxfycxcy"][:3], s["c2w"][:3], (128, 128), depths[:3])
        assert torch.all(count > 0), "every point comes from a pixel of views 0-2, so they see it"
        kp3 = keypoints3d(pts, f3d, 64)
        seen, uv = visible_points(kp3.positions, s["fxfycxcy"][3], s["c2w"][3], (128, 128), (32, 32), depths[3])
        proj = uv[seen]
        kp2 = keypoints2d(fmap[3], (128, 128), 64)
        hits += float((torch.cdist(proj, kp2.xy).min(1).values <= 6).sum())
        centres = cell_centres((32, 32), (128, 128))
        fg = centres[s["valid"][3][centres[:, 1].long(), centres[:, 0].long()]]
        for _ in range(20):  # as many points drawn at random on the object
            rnd = fg[torch.randperm(len(fg), generator=g)[: len(kp2.xy)]]
            chance += float((torch.cdist(proj, rnd).min(1).values <= 6).sum()) / 20
        d2 = F.normalize(sample_descriptors(fmap[3], proj, (128, 128)), dim=-1)
        correct += float(((d2 @ kp3.descriptors[seen].T).argmax(1) == torch.arange(len(proj))).sum())
        total += len(proj)
    assert total >= 40
    assert hits > 1.2 * chance, (hits, chance)
    assert correct / total > 0.25, correct / total  # chance: about 1 / 30


@pytest.mark.parametrize("x0,y0", [(5.3, 4.0), (6.0, 3.72), (4.55, 5.45)])
def test_subcell_offsets_find_the_vertex_of_a_quadratic_peak(x0, y0):
    """A saliency that is a paraboloid peaked between cell centres: the refinement lands on the peak exactly;
    a cell on the border, or not at a maximum along an axis, stays on its centre along that axis."""
    h, w = 9, 11
    ii, jj = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    saliency = 10 - (jj - x0) ** 2 - 0.5 * (ii - y0) ** 2
    peak = torch.tensor([int(round(y0)) * w + int(round(x0))])
    offset = subcell_offsets(saliency, peak)[0]
    assert torch.allclose(offset, torch.tensor([x0 - round(x0), y0 - round(y0)], dtype=torch.float64), atol=1e-9)
    border = torch.tensor([0 * w + 0, (h - 1) * w + (w - 1)])
    assert torch.equal(subcell_offsets(saliency, border), torch.zeros(2, 2, dtype=torch.float64))
    flat = torch.zeros(h, w, dtype=torch.float64)
    assert torch.equal(subcell_offsets(flat, peak), torch.zeros(1, 2, dtype=torch.float64))


def test_2d_key_points_move_with_the_image_to_a_fraction_of_a_pixel():
    """Key points must follow the scene, not a grid: blobs shifted by (2.4, 1.3) px give key points shifted by the
    same within half a pixel, even though the feature map (stride 8) is the same coarse grid in both images."""
    torch.manual_seed(0)
    H = W = 96
    grid = torch.stack(torch.meshgrid(torch.arange(3.0), torch.arange(3.0), indexing="xy"), -1).reshape(-1, 2)
    centres = 20 + 28 * grid + (torch.rand(9, 2) - 0.5) * 6  # apart, so that no blob moves another's peak

    def image(shift) -> torch.Tensor:
        yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
        grey = sum(torch.exp(-((xx - x - shift[0]) ** 2 + (yy - y - shift[1]) ** 2) / (2 * 2.0 ** 2))
                   for x, y in centres)
        return grey.clamp(0, 1).expand(3, H, W)

    fmap = torch.randn(8, H // 8, W // 8)
    a = keypoints2d(fmap, (H, W), max_keypoints=9, image=image((0.0, 0.0)))
    b = keypoints2d(fmap, (H, W), max_keypoints=9, image=image((2.4, 1.3)))
    assert torch.cdist(a.xy, centres).min(dim=1).values.max() < 0.5  # on the blobs
    nearest = torch.cdist(a.xy + torch.tensor([2.4, 1.3]), b.xy).min(dim=1).values
    assert nearest.max() < 0.5, nearest


def test_corner_response_is_high_at_corners_only():
    img = torch.zeros(3, 40, 40)
    img[:, 10:30, 10:30] = 1.0  # a square: four corners, four straight edges, flat inside and out
    r = corner_response(img)
    corner, edge, flat = r[10, 10], r[20, 10], r[20, 20]
    assert corner > 20 * edge and flat.abs() < 1e-6 and edge >= 0
