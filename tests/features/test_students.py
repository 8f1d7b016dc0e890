"""The students: the point backbone's symmetries and neighbourhoods, the 2D student's grid, frozen batch norms and
trainable backbone."""

from __future__ import annotations

import torch

from manyview.features.efficientnet import EfficientNetLite0
from manyview.features.student2d import Student2D
from manyview.features.student3d import PointBackboneConfig, PointStudent, gather_neighbours, knn_indices
from manyview.features.teachers import EfficientNetTeacher

CFG = PointBackboneConfig(width=32, depth=2, heads=4, k=8)


def cloud(P=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(P, 3, generator=g), torch.rand(P, 3, generator=g)


def test_knn_finds_the_nearest_points_themselves_first():
    pts, _ = cloud(50)
    idx = knn_indices(pts[None], 5, chunk=7)[0]
    d = torch.cdist(pts, pts)
    assert torch.equal(idx[:, 0], torch.arange(50))
    expected = d.topk(5, largest=False).values
    torch.testing.assert_close(d.gather(1, idx), expected)
    x = torch.arange(50.0)[None, :, None]
    assert torch.equal(gather_neighbours(x, idx[None])[0, :, :, 0], idx.float())


def test_point_features_follow_the_points_and_ignore_pose_and_scale():
    torch.manual_seed(0)
    net = PointStudent(24, CFG).eval()
    pts, rgb = cloud()
    with torch.no_grad():
        out = net(pts, rgb)
        perm = torch.randperm(len(pts), generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(net(pts[perm], rgb[perm]), out[perm], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(net(pts * 3.5 + torch.tensor([10.0, -4.0, 2.0]), rgb), out, atol=1e-4, rtol=1e-4)
        batched = net(torch.stack((pts, pts[perm])), torch.stack((rgb, rgb[perm])))
    assert out.shape == (200, 24) and batched.shape == (2, 200, 24)
    torch.testing.assert_close(batched[0], out, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out[0], out[1]), "features must differ between points"
    with torch.no_grad():
        assert not torch.allclose(net(pts, 1 - rgb), out), "colours are an input"


def test_each_point_sees_only_its_neighbourhood():
    """Moving points that are in no one's neighbourhood changes nobody else's features (the two far points are
    moved symmetrically, so the scene's mean and RMS radius, which normalise every position, stay the same)."""
    torch.manual_seed(0)
    net = PointStudent(8, PointBackboneConfig(width=16, depth=1, heads=2, k=4, use_colors=False)).eval()
    pts = torch.cat((torch.randn(20, 3) * 0.1, torch.tensor([[5.0, 0, 0], [-5.0, 0, 0]])))
    moved = pts.clone()
    moved[-2:] = torch.tensor([[0, 5.0, 0], [0, -5.0, 0]])
    with torch.no_grad():
        a, b = net(pts), net(moved)
    torch.testing.assert_close(a[:20], b[:20], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[20:], b[20:])


def test_2d_student_keeps_the_teacher_grid_and_its_batch_statistics():
    teacher = EfficientNetTeacher(EfficientNetLite0().eval(), (2, 4)).requires_grad_(False)
    student = Student2D(teacher, dim=16, hidden=32).train()
    assert all(p.requires_grad for p in student.backbone.parameters()), "the backbone copy is fine-tuned"
    assert not any(p.requires_grad for p in teacher.parameters()), "the teacher itself stays frozen"
    bn = student.backbone.net._bn0
    assert not bn.training
    before = bn.running_mean.clone()
    out = student(torch.rand(2, 3, 64, 96))
    assert out.shape == (2, 16, *teacher.grid(64, 96)) == (2, 16, 8, 12)
    assert torch.equal(bn.running_mean, before)
    out.square().mean().backward()
    assert student.backbone.net._conv_stem.weight.grad is not None
    assert teacher.net._conv_stem.weight.grad is None
