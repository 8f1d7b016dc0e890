"""DUSt3R-style global alignment: pairwise pointmaps -> one consistent scene (cameras, depths, pointmaps).

A pairwise network predicts, for each ordered pair (i, j), both views' pointmaps in view i's camera frame
(``pts_i``, ``pts_j``) with confidences. Each pair has its own unknown scale and frame, so the predictions are
glued together by optimising, as DUSt3R's ``PointCloudOptimizer`` does:

- per view: a log-depth map, a pose (quaternion + signed-log translation), a log-focal (x ``focal_break``),
  a principal point (frozen at the image centre unless ``optimize_pp``);
- per edge: a Sim(3) (quaternion, signed-log translation, log-scale), the scales normalised so that their
  geometric mean is ``base_scale`` (which fixes the otherwise free global scale);
- loss: for every edge, the confidence-weighted (weight = log conf) Euclidean distance between each view's
  depth-derived world pointmap and the edge prediction moved by the edge Sim(3), summed over pixels and edges,
  divided by the total pixel area, i- and j-terms added;
- initialisation by the maximum-confidence spanning tree of the pair graph: edges are chained strongest first
  by weighted Umeyama (Sim(3) Procrustes), focals come from Weiszfeld's estimator, views the chain does not pose
  directly are posed by RANSAC PnP on their chained pointmap;
- Adam(lr 0.01, betas (0.9, 0.9)), 300 iterations, cosine decay to 1e-6.

Pixel convention. DUSt3R samples pixel (row r, column c) at (c, r) and puts the principal point at (W/2, H/2)
in those integer coordinates (``pixel_offset=0.0``, the default here). manyview intrinsics place pixel centres
at +0.5 (COLMAP), so the returned cameras have cx = W/2 + 0.5 - pixel_offset (W/2 + 0.5 for DUSt3R-trained
predictions, W/2 for predictions made with ``pixel_offset=0.5``). Internally everything is computed in the
manyview convention with that principal point, which is the same geometry.

Output frame. The optimisation's own frame is arbitrary (every pose is free); results are re-expressed rigidly
in the camera frame of view 0 (its c2w is the identity), at the optimisation's scale (set by ``base_scale``).

Differences from DUSt3R: all views share one (H, W) (as manyview's ``Views`` do); a tree view's focal is
estimated from the edge being chained (DUSt3R reads a stale edge there); PnP is seeded and, when sweeping
focals, breaks inlier-count ties by reprojection error. Not carried over: pairwise xy/z adaptors (off by default
there), ``init='known_poses'``, ``clean_pointcloud`` and sky masking. Use symmetrised pair graphs: a view that is
never the first of a pair gets its focal only from the PnP sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import torch
from torch import Tensor, nn

from manyview.errors import ManyviewError
from manyview.geometry.alignment import umeyama
from manyview.geometry.focal import estimate_focal_weiszfeld
from manyview.geometry.pnp import pnp_ransac
from manyview.geometry.projection import depth_to_pointmap, project
from manyview.geometry.rays import pixel_grid
from manyview.geometry.rotation import matrix_to_quaternion, quaternion_to_matrix
from manyview.geometry.transforms import invert_rigid, rigid, transform_points
from manyview.scene.cameras import Cameras
from manyview.scene.pointcloud import PointCloud
from manyview.scene.reconstruction import Reconstruction

# progress(iterations_done, iterations_total, loss)
ProgressCallback = Callable[[int, int, float], None]


@dataclass
class GlobalAlignmentConfig:
    iterations: int = 300  # Adam steps; 0 returns the spanning-tree initialisation
    lr: float = 0.01
    lr_min: float = 1e-6
    schedule: Literal["cosine", "linear"] = "cosine"
    base_scale: float = 0.5  # geometric mean of the per-edge scales
    focal_break: float = 20.0  # log-focal is stored multiplied by this (a per-parameter learning-rate gain)
    optimize_pp: bool = False
    min_conf_thr: float = 3.0  # pixels used by the PnP of the initialisation (and default point-cloud filter)
    pnp_iterations: int = 10  # RANSAC iterations of that PnP
    pixel_offset: float = 0.0  # where pixel centres sit in the predictions' pixel grid (DUSt3R: 0.0)


@dataclass(frozen=True, eq=False)
class GlobalAlignmentResult:
    cameras: Cameras  # (N,) c2w in view 0's camera frame
    depths: Tensor  # (N, H, W) z-depth
    pointmaps: Tensor  # (N, H, W, 3) world (view 0 frame)
    confidences: Tensor  # (N, H, W) per view, the largest confidence any edge gave a pixel
    losses: list[float]  # loss before each step and after the last: iterations + 1 values
    edges: list[tuple[int, int]] = field(default_factory=list)

    def to_reconstruction(self, images: Tensor | None = None, names: Sequence[str] = (),
                          min_confidence: float = 3.0) -> Reconstruction:
        """A :class:`Reconstruction`; its point cloud keeps pixels with confidence above ``min_confidence``."""
        keep = self.confidences > min_confidence
        rgb = None
        if images is not None:
            if tuple(images.shape) != (len(self.cameras), 3) + tuple(self.depths.shape[1:]):
                raise ManyviewError(f"images of shape {tuple(images.shape)} do not match the aligned views "
                                    f"{(len(self.cameras), 3) + tuple(self.depths.shape[1:])}")
            rgb = images.permute(0, 2, 3, 1)[keep].to(self.pointmaps.dtype)
        points = PointCloud(self.pointmaps[keep], rgb, self.confidences[keep])
        local = depth_to_pointmap(self.depths, self.cameras.fxfycxcy)
        return Reconstruction(self.cameras, self.pointmaps, self.confidences, points, images=images,
                              names=list(names), local_pointmaps=local, local_confidences=self.confidences,
                              info={"method": "global_alignment", "edges": list(self.edges),
                                    "final_loss": self.losses[-1]})


# ------------------------------------------------------------------ small helpers
def _signed_log1p(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def _signed_expm1(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


def _umeyama(src: Tensor, dst: Tensor, weights: Tensor) -> tuple[float, Tensor, Tensor]:
    """Weighted Sim(3) (scale, R, t), dst ~ scale R src + t, fitted in float64; src, dst (P, 3), weights (P,)."""
    scale, R, t = umeyama(src.double(), dst.double(), weights.double())
    return float(scale), R, t


def _focal(pts: Tensor, pp: Tensor) -> float:
    """Weiszfeld focal of a camera-frame pointmap (H, W, 3), all pixels, 10 iterations as DUSt3R's init.

    A degenerate pointmap (e.g. from an untrained network: no pinhole structure, points behind the camera) gives
    f <= 0, whose log-focal does not exist; DUSt3R's default focal max(H, W) / (2 tan 30 deg) is used instead."""
    f = float(estimate_focal_weiszfeld(pts.double(), principal_point=pp.double(), iterations=10, offset=0.5))
    return f if math.isfinite(f) and f > 0 else max(pts.shape[0], pts.shape[1]) / (2 * math.tan(math.radians(30)))


def _pnp(pts: Tensor, mask: Tensor, focal: float | None, pp: Tensor, iterations: int) -> tuple[float, Tensor] | None:
    """RANSAC SQPnP (5 px) of a world pointmap (H, W, 3) against its pixel grid -> (focal, c2w (4, 4)) or None.

    With ``focal`` None, 21 focals between S/2 and 3S (S = max(H, W)) are tried and the one with most inliers
    is kept, as DUSt3R does; ties (common: the 5 px threshold is loose on small images) go to the smallest
    mean reprojection error over the inliers instead of to the first focal tried.
    """
    if int(mask.sum()) < 4:
        return None
    h, w, _ = pts.shape
    obj = pts[mask].double().cpu()
    img = pixel_grid(h, w, 0.5, torch.float64)[mask.cpu()]
    cx, cy = (float(v) for v in pp)
    focals = [focal] if focal is not None else [float(f) for f in np.geomspace(max(h, w) / 2, max(h, w) * 3, 21)]
    best = None
    for f in focals:
        K = torch.tensor([[f, 0, cx], [0, f, cy], [0, 0, 1]], dtype=torch.float64)
        ok, c2w, inliers = pnp_ransac(obj, img, K, iterations=iterations, reprojection_error=5.0)
        if not ok:
            continue
        uv, _ = project(obj[inliers][None], K.new_tensor([f, f, cx, cy])[None], invert_rigid(c2w)[None])
        score = (len(inliers), -float((uv[0] - img[inliers]).norm(dim=-1).mean()))
        if best is None or score > best[0]:
            best = (score, f, c2w)
    if best is None:
        return None
    return best[1], best[2].to(pts)


def learning_rate(config: GlobalAlignmentConfig, iteration: int) -> float:
    """Learning rate of step ``iteration`` (0-based): ``lr`` at step 0, tending to ``lr_min`` at ``iterations``."""
    t = iteration / config.iterations
    if config.schedule == "cosine":
        return config.lr_min + (config.lr - config.lr_min) * (1 + math.cos(math.pi * t)) / 2
    if config.schedule == "linear":
        return config.lr + (config.lr_min - config.lr) * t
    raise ManyviewError(f"unknown learning-rate schedule {config.schedule!r}; expected 'cosine' or 'linear'")


def _apply(T: Tensor, points: Tensor) -> Tensor:
    """(B, 4, 4) transforms (rotation block may be scaled) applied to (B, P, 3) points, as one fused baddbmm."""
    return torch.baddbmm(T[:, None, :3, 3], points, T[:, :3, :3].transpose(-1, -2))


# ------------------------------------------------------------------ the optimiser
class PointCloudOptimizer(nn.Module):
    """All parameters and the loss of the global alignment; see the module docstring.

    Inputs, E edges over N views of one size (H, W):
      edges: E pairs (i, j); pts_i, pts_j (E, H, W, 3) both in view i's frame; conf_i, conf_j (E, H, W) >= 1.
    """

    def __init__(self, edges: Sequence[tuple[int, int]], pts_i: Tensor, pts_j: Tensor, conf_i: Tensor,
                 conf_j: Tensor, config: GlobalAlignmentConfig | None = None):
        super().__init__()
        self.config = cfg = config or GlobalAlignmentConfig()
        if (cfg.iterations < 0 or cfg.schedule not in ("cosine", "linear") or cfg.base_scale <= 0
                or cfg.focal_break <= 0):
            raise ManyviewError(f"invalid global alignment settings: iterations={cfg.iterations} (>= 0), "
                                f"schedule={cfg.schedule!r} (cosine or linear), base_scale={cfg.base_scale} (> 0), "
                                f"focal_break={cfg.focal_break} (> 0)")
        self.edges = [(int(i), int(j)) for i, j in edges]
        self.n_views = _check_inputs(self.edges, pts_i, pts_j, conf_i, conf_j)
        e, h, w, _ = pts_i.shape
        self.height, self.width = h, w
        dtype = pts_i.dtype if pts_i.dtype in (torch.float32, torch.float64) else torch.float32
        device = pts_i.device
        n = self.n_views

        # inputs, flattened over pixels: (E, HW, 3) and (E, HW)
        self.register_buffer("pred_i", pts_i.detach().to(dtype).reshape(e, h * w, 3))
        self.register_buffer("pred_j", pts_j.detach().to(dtype).reshape(e, h * w, 3))
        self.register_buffer("conf_i", conf_i.detach().to(dtype).reshape(e, h * w))
        self.register_buffer("conf_j", conf_j.detach().to(dtype).reshape(e, h * w))
        self.register_buffer("weight_i", self.conf_i.log())
        self.register_buffer("weight_j", self.conf_j.log())
        self.register_buffer("ei", torch.tensor([i for i, _ in self.edges], device=device))
        self.register_buffer("ej", torch.tensor([j for _, j in self.edges], device=device))
        self.register_buffer("grid", pixel_grid(h, w, 0.5, dtype, device).reshape(h * w, 2))
        shift = 0.5 - cfg.pixel_offset
        self.register_buffer("pp0", torch.tensor([w / 2 + shift, h / 2 + shift], dtype=dtype, device=device))

        # per view confidence: the largest over the edges that predict the view
        im_conf = torch.zeros(n, h * w, dtype=dtype, device=device)
        for e_, (i, j) in enumerate(self.edges):
            im_conf[i] = torch.maximum(im_conf[i], self.conf_i[e_])
            im_conf[j] = torch.maximum(im_conf[j], self.conf_j[e_])
        self.register_buffer("im_conf", im_conf)

        # parameters; the spanning-tree initialisation overwrites them
        identity_pose = torch.tensor([1.0, 0, 0, 0, 0, 0, 0], dtype=dtype, device=device)
        self.log_depth = nn.Parameter(torch.zeros(n, h * w, dtype=dtype, device=device))
        self.im_poses = nn.Parameter(identity_pose.repeat(n, 1))  # (N, 7) quat wxyz, signed-log translation
        start_focal = cfg.focal_break * math.log(max(h, w))
        self.log_focal = nn.Parameter(torch.full((n, 1), start_focal, dtype=dtype, device=device))
        self.pp_delta = nn.Parameter(torch.zeros(n, 2, dtype=dtype, device=device), requires_grad=cfg.optimize_pp)
        self.pw_poses = nn.Parameter(torch.cat([identity_pose, identity_pose[:1] * 0]).repeat(e, 1))  # (E, 8)

    # ------------------------------------------------------------ parameter -> geometry
    @staticmethod
    def _poses(params: Tensor) -> Tensor:
        """(K, 7+) parameters -> (K, 4, 4) rigid transforms."""
        return rigid(quaternion_to_matrix(params[:, :4]), _signed_expm1(params[:, 4:7]))

    def focals(self) -> Tensor:
        """(N,) focal lengths in pixels."""
        return (self.log_focal[:, 0] / self.config.focal_break).exp()

    def principal_points(self) -> Tensor:
        """(N, 2) in manyview pixel coordinates (centres at +0.5)."""
        return self.pp0 + 10 * self.pp_delta

    def image_poses(self) -> Tensor:
        """(N, 4, 4) camera-to-world in the optimisation frame."""
        return self._poses(self.im_poses)

    def pairwise_scales(self) -> Tensor:
        """(E,) edge scales, normalised so that their geometric mean is ``base_scale``."""
        log_s = self.pw_poses[:, 7]
        return (log_s - log_s.mean()).exp() * self.config.base_scale

    def pairwise_poses(self) -> Tensor:
        """(E, 4, 4) similarity transforms edge frame -> world: rotation and translation rows scaled."""
        T = self._poses(self.pw_poses)
        scale = torch.cat([self.pairwise_scales()[:, None, None].expand(-1, 3, 4),
                           torch.ones_like(T[:, 3:])], dim=1)
        return T * scale

    def depths(self) -> Tensor:
        """(N, HW) z-depths."""
        return self.log_depth.exp()

    def pointmaps(self) -> Tensor:
        """(N, HW, 3) world points of each view's depth map."""
        d = self.depths()[..., None]
        xy = (self.grid - self.principal_points()[:, None]) / self.focals()[:, None, None]
        return _apply(self.image_poses(), torch.cat([d * xy, d], dim=-1))

    def forward(self) -> Tensor:
        """The alignment loss (a scalar)."""
        pw = self.pairwise_poses()
        world = self.pointmaps()
        area = self.pred_i.shape[0] * self.pred_i.shape[1]  # every view has the same H W
        li = ((world[self.ei] - _apply(pw, self.pred_i)).norm(dim=-1) * self.weight_i).sum() / area
        lj = ((world[self.ej] - _apply(pw, self.pred_j)).norm(dim=-1) * self.weight_j).sum() / area
        return li + lj

    def loss_reference(self) -> Tensor:
        """The loss as DUSt3R's per-edge loop writes it, from explicit pinhole formulas (tests hold it to forward)."""
        f, pp, poses, pw = self.focals(), self.principal_points(), self.image_poses(), self.pairwise_poses()
        depth = self.depths()
        total = 0.0
        for e, (i, j) in enumerate(self.edges):
            for v, pred, weight in ((i, self.pred_i[e], self.weight_i[e]), (j, self.pred_j[e], self.weight_j[e])):
                x = (self.grid[:, 0] - pp[v, 0]) / f[v] * depth[v]
                y = (self.grid[:, 1] - pp[v, 1]) / f[v] * depth[v]
                world = torch.stack([x, y, depth[v]], -1) @ poses[v, :3, :3].T + poses[v, :3, 3]
                target = pred @ pw[e, :3, :3].T + pw[e, :3, 3]
                total = total + ((world - target).norm(dim=-1) * weight).sum()
        return total / (len(self.edges) * self.height * self.width)

    # ------------------------------------------------------------ parameter setters (no grad)
    def _set_pose(self, params: Tensor, index: int, c2w: Tensor, scale: float | None = None) -> None:
        params.data[index, :4] = matrix_to_quaternion(c2w[:3, :3]).to(params)
        params.data[index, 4:7] = _signed_log1p(c2w[:3, 3] / (scale or 1.0)).to(params)
        if scale is not None:
            params.data[index, 7] = math.log(scale)

    # ------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_mst(self) -> None:
        """Maximum-confidence spanning tree initialisation of every parameter (DUSt3R's ``init='mst'``)."""
        cfg, n, h, w = self.config, self.n_views, self.height, self.width
        pred_i = self.pred_i.reshape(-1, h, w, 3)
        pred_j = self.pred_j.reshape(-1, h, w, 3)
        pp = self.principal_points()[0]
        scores = (self.conf_i.mean(1) * self.conf_j.mean(1)).tolist()

        # strongest directed edge per unordered pair; the tree is built on those
        best: dict[tuple[int, int], int] = {}
        for e, (i, j) in enumerate(self.edges):
            key = (min(i, j), max(i, j))
            if key not in best or scores[e] > scores[best[key]]:
                best[key] = e
        rows, cols = zip(*best.keys())
        graph = scipy.sparse.coo_matrix(([-scores[e] for e in best.values()], (rows, cols)), shape=(n, n))
        tree = scipy.sparse.csgraph.minimum_spanning_tree(graph.tocsr()).tocoo()
        todo = sorted((scores[best[(min(r, c), max(r, c))]], best[(min(r, c), max(r, c))])
                      for r, c in zip(tree.row.tolist(), tree.col.tolist()))
        if len(todo) != n - 1:
            raise ManyviewError(f"the pair graph does not connect all {n} views")

        pts3d: list[Tensor | None] = [None] * n
        poses: list[Tensor | None] = [None] * n
        focals: list[float | None] = [None] * n
        _, e = todo.pop()
        i, j = self.edges[e]
        pts3d[i], pts3d[j] = pred_i[e].clone(), pred_j[e].clone()
        poses[i] = torch.eye(4, dtype=pred_i.dtype, device=pred_i.device)
        focals[i] = _focal(pred_i[e], pp)
        done = {i, j}
        while todo:
            score, e = todo.pop()
            i, j = self.edges[e]
            if focals[i] is None:
                focals[i] = _focal(pred_i[e], pp)
            if i in done or j in done:
                # register the edge's prediction of the known view onto its chained points
                if i in done:
                    src, dst, conf, new = pred_i[e], pts3d[i], self.conf_i[e], j
                else:
                    src, dst, conf, new = pred_j[e], pts3d[j], self.conf_j[e], i
                s, R, t = _umeyama(src.reshape(-1, 3), dst.reshape(-1, 3), conf)
                sim = rigid(s * R, t).to(src)
                pts3d[new] = transform_points(sim, pred_j[e] if new == j else pred_i[e])
                done.add(new)
                if poses[i] is None:  # the edge frame is view i's camera frame
                    poses[i] = rigid(R, t).to(src)
            else:
                todo.insert(0, (score, e))  # neither end placed yet: retry after the others

        # focals of views never the first of a tree edge: from their strongest edge as first view
        for e in sorted(range(len(self.edges)), key=lambda k: -scores[k]):
            i = self.edges[e][0]
            if focals[i] is None:
                focals[i] = _focal(pred_i[e], pp)
        im_conf = self.im_conf.reshape(n, h, w)
        for v in range(n):
            if poses[v] is None:
                found = _pnp(pts3d[v], im_conf[v] > cfg.min_conf_thr, focals[v], pp, cfg.pnp_iterations)
                if found is not None:
                    focals[v], poses[v] = found
            if poses[v] is None:
                poses[v] = torch.eye(4, dtype=pred_i.dtype, device=pred_i.device)

        # edge Sim(3)s from each edge's view-i prediction to the chained points, then the scale normalisation
        for e, (i, _) in enumerate(self.edges):
            s, R, t = _umeyama(pred_i[e].reshape(-1, 3), pts3d[i].reshape(-1, 3), self.conf_i[e])
            self._set_pose(self.pw_poses, e, rigid(R, t), scale=s)
        factor = float(cfg.base_scale / self.pw_poses[:, 7].mean().exp())
        for v in range(n):
            c2w = poses[v].clone()
            c2w[:3, 3] *= factor
            cam = transform_points(invert_rigid(c2w), pts3d[v] * factor)
            self.log_depth.data[v] = cam[..., 2].reshape(-1).log().nan_to_num(nan=0.0, neginf=0.0)
            self._set_pose(self.im_poses, v, c2w)
            if focals[v] is not None:
                self.log_focal.data[v] = cfg.focal_break * math.log(focals[v])

    # ------------------------------------------------------------ optimisation
    def optimize(self, progress: ProgressCallback | None = None) -> list[float]:
        """Run the Adam loop; returns the loss before every step and after the last one."""
        cfg = self.config
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.9))
        losses = []
        for it in range(cfg.iterations):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, it)
            optimizer.zero_grad()
            loss = self()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(it + 1, cfg.iterations, losses[-1])
        with torch.no_grad():
            losses.append(float(self()))
        return losses

    @torch.no_grad()
    def result(self, losses: list[float]) -> GlobalAlignmentResult:
        """Current state as cameras, depths and pointmaps in view 0's camera frame."""
        n, h, w = self.n_views, self.height, self.width
        to_view0 = invert_rigid(self.image_poses()[0])
        c2w = to_view0 @ self.image_poses()
        f = self.focals()
        fxfycxcy = torch.cat([f[:, None], f[:, None], self.principal_points()], dim=-1)
        size = torch.tensor([h, w], device=c2w.device).expand(n, 2)
        pointmaps = transform_points(to_view0, self.pointmaps())
        return GlobalAlignmentResult(
            cameras=Cameras(fxfycxcy.clone(), c2w, size),
            depths=self.depths().reshape(n, h, w).clone(),
            pointmaps=pointmaps.reshape(n, h, w, 3),
            confidences=self.im_conf.reshape(n, h, w).clone(),
            losses=losses,
            edges=list(self.edges),
        )


def _check_inputs(edges, pts_i, pts_j, conf_i, conf_j) -> int:
    """Validate the pairwise predictions; returns the number of views."""
    for name, t in (("pts_i", pts_i), ("pts_j", pts_j), ("conf_i", conf_i), ("conf_j", conf_j)):
        if not isinstance(t, Tensor):
            raise ManyviewError(f"{name} must be a tensor, got {type(t).__name__}")
    e = len(edges)
    if e == 0:
        raise ManyviewError("global alignment needs at least one pair")
    if pts_i.dim() != 4 or pts_i.shape[0] != e or pts_i.shape[-1] != 3:
        raise ManyviewError(f"pts_i must be ({e}, H, W, 3) for {e} pairs, got {tuple(pts_i.shape)}")
    for name, t, shape in (("pts_j", pts_j, pts_i.shape), ("conf_i", conf_i, pts_i.shape[:-1]),
                           ("conf_j", conf_j, pts_i.shape[:-1])):
        if t.shape != shape:
            raise ManyviewError(f"{name} must be {tuple(shape)}, got {tuple(t.shape)}")
    if any(i == j for i, j in edges):
        raise ManyviewError("a pair joins a view with itself")
    views = sorted({v for edge in edges for v in edge})
    if views != list(range(len(views))):
        raise ManyviewError(f"pair view indices must cover 0..N-1 without gaps, got {views}")
    for name, t in (("pts_i", pts_i), ("pts_j", pts_j), ("conf_i", conf_i), ("conf_j", conf_j)):
        if not bool(torch.isfinite(t).all()):
            raise ManyviewError(f"{name} has non-finite values")
    if bool((conf_i < 1).any() or (conf_j < 1).any()):
        raise ManyviewError("confidences must be >= 1 (the loss weights pixels by log(confidence))")
    return len(views)


def global_alignment(edges: Sequence[tuple[int, int]], pts_i: Tensor, pts_j: Tensor, conf_i: Tensor,
                     conf_j: Tensor, config: GlobalAlignmentConfig | None = None,
                     progress: ProgressCallback | None = None) -> GlobalAlignmentResult:
    """Align pairwise pointmaps into one scene (DUSt3R's ``PointCloudOptimizer`` with ``init='mst'``).

    edges: E ordered pairs (i, j) (e.g. from :func:`manyview.recon.pairs.make_pairs`);
    pts_i, pts_j: (E, H, W, 3) the pair's two pointmaps, both in view i's camera frame;
    conf_i, conf_j: (E, H, W) confidences >= 1.
    """
    optimizer = PointCloudOptimizer(edges, pts_i, pts_j, conf_i, conf_j, config)
    optimizer.init_mst()
    losses = optimizer.optimize(progress)
    return optimizer.result(losses)
