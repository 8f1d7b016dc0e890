"""Fast3R training: multi-view data streams (determinism, sharding, held-out seeds, variable N, dataset folders),
the Fast3R task (a short run lowers the loss, exports loadable weights), presets and the CLI."""

import pytest
import torch

from manyview.cli.main import main
from manyview.errors import ManyviewError
from manyview.geometry.projection import project
from manyview.geometry.transforms import invert_rigid
from manyview.models.fast3r import Fast3R, Fast3RConfig, _preset
from manyview.train.config import OptimConfig, ScheduleConfig, TrainConfig
from manyview.synth.samples import EVAL_SEED_START, eval_sample, eval_scene_seed
from manyview.train.data import FolderDataset, SampleMaker, StreamConfig, multiview_stream, views_for_group
from manyview.train.fast3r_task import Fast3RTask, Fast3RTaskConfig, preset
from manyview.train.trainer import train

SMALL = StreamConfig(height=32, width=32, min_views=2, max_views=4, color_jitter=0.1)


def reprojection(pts3d, fxfycxcy, c2w):
    """Pixel coordinates (..., H, W, 2) and depth (..., H, W) of world pointmaps (..., H, W, 3) in their cameras."""
    h, w = pts3d.shape[-3:-1]
    uv, z = project(pts3d.flatten(-3, -2), fxfycxcy, invert_rigid(c2w))
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return uv.unflatten(-2, (h, w)), z.unflatten(-1, (h, w)), torch.stack([u, v], -1)


def batches(cfg, rank=0, world=1, seed=0, micro=2, start=0, count=3):
    it = iter(multiview_stream(cfg, rank, world, seed, micro, start))
    return [next(it) for _ in range(count)]


# ------------------------------------------------------------------------------------------------ stream
def test_stream_sample_format_and_ground_truth_geometry():
    (b,) = batches(SMALL, count=1)
    B, N = b["images"].shape[:2]
    assert B == 2 and 2 <= N <= 4
    assert b["images"].shape == (B, N, 3, 32, 32) and b["images"].min() >= 0 and b["images"].max() <= 1
    assert b["pts3d"].shape == (B, N, 32, 32, 3) and b["valid"].shape == (B, N, 32, 32)
    assert b["c2w"].shape == (B, N, 4, 4) and b["valid"].dtype == torch.bool and b["valid"].any()
    # every valid world point projects back onto its own pixel centre with positive depth (offset 0.5)
    uv, z, centres = reprojection(b["pts3d"], b["fxfycxcy"], b["c2w"])
    valid = b["valid"]
    assert (z[valid] > 0).all()
    assert torch.allclose(uv[valid], centres.expand_as(uv)[valid], atol=1e-2)
    assert (b["pts3d"][~valid] == 0).all()


def test_stream_is_deterministic_and_resumes_without_replay():
    a = batches(SMALL, seed=3, count=3)
    b = batches(SMALL, seed=3, count=3)
    for x, y in zip(a, b):
        assert torch.equal(x["images"], y["images"]) and torch.equal(x["pts3d"], y["pts3d"])
    later = batches(SMALL, seed=3, start=2, count=1)[0]  # micro-batch 2, built directly
    assert torch.equal(later["images"], a[2]["images"]) and torch.equal(later["scene_seed"], a[2]["scene_seed"])
    other = batches(SMALL, seed=4, count=1)[0]
    assert not torch.equal(other["scene_seed"], a[0]["scene_seed"])


def test_stream_shards_disjointly_by_rank_and_matches_the_single_rank_union():
    r0 = batches(SMALL, rank=0, world=2, micro=1, count=2)
    r1 = batches(SMALL, rank=1, world=2, micro=1, count=2)
    seeds0 = {int(s) for b in r0 for s in b["scene_seed"]}
    seeds1 = {int(s) for b in r1 for s in b["scene_seed"]}
    assert len(seeds0) == 2 and len(seeds1) == 2 and not seeds0 & seeds1
    # the union over 2 ranks of micro-batch k (1 sample each) is micro-batch k of one rank with 2 samples
    single = batches(SMALL, rank=0, world=1, micro=2, count=2)
    for k in range(2):
        assert single[k]["scene_seed"].tolist() == [int(r0[k]["scene_seed"]), int(r1[k]["scene_seed"])]


def test_views_per_sample_vary_between_micro_batches_and_agree_within_one():
    maker = SampleMaker(StreamConfig(min_views=2, max_views=8), seed=0, micro_batch=4)
    counts = [maker.num_views(i) for i in range(400)]
    for g in range(100):
        assert len(set(counts[4 * g: 4 * g + 4])) == 1
    assert set(counts) == set(range(2, 9))
    assert views_for_group(0, 5, 3, 3) == 3
    for b in batches(SMALL, micro=3, count=4):
        assert b["images"].shape[1] == b["pts3d"].shape[1] == b["c2w"].shape[1]


def test_training_seeds_never_reach_the_held_out_range():
    from manyview.train.task import sample_generator

    maker = SampleMaker(SMALL, seed=0, micro_batch=1)
    draws = [int(torch.randint(0, EVAL_SEED_START, (2,), generator=sample_generator(0, i))[0]) for i in range(200)]
    assert max(draws) < EVAL_SEED_START
    assert eval_scene_seed(0) == EVAL_SEED_START and eval_scene_seed(7) == EVAL_SEED_START + 7
    with pytest.raises(ManyviewError):
        eval_scene_seed(-1)
    s = maker(0, sample_generator(0, 0))
    assert 0 <= int(s["scene_seed"]) < EVAL_SEED_START
    ev = eval_sample(0, "object", 3, 32, 32)
    assert int(ev["scene_seed"]) == EVAL_SEED_START and ev["images"].shape == (3, 3, 32, 32)


def test_orbit_spacing_bounds_the_angle_between_consecutive_object_views():
    cfg = StreamConfig(height=32, width=32, min_views=3, max_views=3, kinds=("object",), orbit_spacing_deg=(10, 20))
    maker = SampleMaker(cfg, seed=0, micro_batch=1)
    for index in range(3):
        sample = maker(index, torch.Generator().manual_seed(index))
        forward = sample["c2w"][:, :2, 2]  # horizontal viewing directions: orbit cameras look at the centre
        heading = torch.atan2(forward[:, 1], forward[:, 0])
        step = torch.rad2deg(torch.remainder(heading.diff() + torch.pi, 2 * torch.pi) - torch.pi).abs()
        # spacing in [10, 20] degrees, +-25 % view jitter and the jittered look-at targets
        assert (step > 4).all() and (step < 30).all(), step
    full = SampleMaker(StreamConfig(height=32, width=32, min_views=2, max_views=2, kinds=("object",)), 0, 1)
    forward = full(0, torch.Generator().manual_seed(0))["c2w"][:, :2, 2]
    assert torch.dot(forward[0], forward[1]) < 0  # without it, two views sit on opposite sides of the orbit


def test_bad_stream_configs_are_refused():
    for cfg in (StreamConfig(min_views=5, max_views=3), StreamConfig(kinds=("cave",)),
                StreamConfig(folder_fraction=0.5), StreamConfig(orbit_spacing_deg=(30, 10))):
        with pytest.raises(ManyviewError):
            cfg.check()


# ------------------------------------------------------------------------------------------------ folders
@pytest.fixture(scope="module")
def dataset_folder(tmp_path_factory):
    from manyview.io.dataset import write_dataset
    from manyview.synth import generate

    _, views = generate(EVAL_SEED_START + 5, kind="room", num_views=5, height=48, width=64)
    root = tmp_path_factory.mktemp("ds") / "room"
    write_dataset(root, views)
    return root, views


def test_folder_dataset_windows_and_geometry(dataset_folder):
    root, views = dataset_folder
    ds = FolderDataset([root], num_views=2, height=32, width=32)
    assert len(ds) == 2  # windows [0, 2) and [2, 4) of 5 views
    s = ds[1]
    assert s["images"].shape == (2, 3, 32, 32) and s["pts3d"].shape == (2, 32, 32, 3)
    # cropping / resizing moved the intrinsics with the pixels: points still project onto their pixels
    uv, z, centres = reprojection(s["pts3d"], s["fxfycxcy"], s["c2w"])
    ok = s["valid"]
    assert ok.float().mean() > 0.9 and (z[ok] > 0).all()
    assert torch.allclose(uv[ok], centres.expand_as(uv)[ok], atol=0.6)
    assert torch.allclose(s["c2w"], views.cameras.c2w[2:4].float(), atol=1e-5)


def test_folder_samples_mix_into_the_stream(dataset_folder):
    root, _ = dataset_folder
    cfg = StreamConfig(height=32, width=32, min_views=2, max_views=3, folders=[root], folder_fraction=1.0)
    (b,) = batches(cfg, count=1)
    assert (b["scene_seed"] == -1).all() and b["images"].shape[-2:] == (32, 32)


def test_folder_without_depth_is_refused_naming_it(tmp_path):
    from manyview.io.image_writers import write_image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        write_image(folder / f"{i}.png", torch.rand(3, 16, 16))
    with pytest.raises(ManyviewError, match="photos"):
        FolderDataset([folder], num_views=2, height=16, width=16)


# ------------------------------------------------------------------------------------------------ task
def micro_config() -> Fast3RConfig:
    return _preset((32, 2, 2), (32, 4, 2), (16, 8, [8, 16, 16, 32]))


class MicroFast3RTask(Fast3RTask):
    def build_model(self):
        return Fast3R(micro_config())


def test_train_mode_draws_image_indices_from_the_whole_table():
    model = Fast3R(micro_config()).train()
    torch.manual_seed(0)
    ids = model(torch.rand(2, 4, 3, 32, 32)).image_ids
    assert (ids[:, 0] == 0).all() and (ids[:, 1:] >= 1).all() and (ids <= 999).all()
    assert ids[:, 1:].max() > 4  # not the sequential 0..N-1 of inference
    assert all(len(set(r.tolist())) == 4 for r in ids)


@pytest.mark.slow
def test_short_fast3r_training_lowers_the_loss_and_exports_loadable_weights(tmp_path):
    cfg = TrainConfig(out_dir=tmp_path / "run", steps=40, batch_size=2, log_every=1, ckpt_every=40,
                      progress=False, optim=OptimConfig(lr=1e-3), schedule=ScheduleConfig(warmup_steps=5),
                      device="cpu", precision="fp32")
    task = MicroFast3RTask(Fast3RTaskConfig(data=StreamConfig(height=32, width=32, min_views=2, max_views=3)))
    result = train(cfg, task)
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 40
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first - 0.1, (first, last)
    model = Fast3R.from_pretrained(tmp_path / "run" / "final")
    expected = micro_config()
    expected.encoder_args.img_size = 32  # the training crop is recorded, as the released config records 512
    assert model.config.to_dict() == expected.to_dict()
    out = model.infer(torch.rand(3, 3, 32, 32))
    assert out.pts3d_global.shape == (1, 3, 32, 32, 3) and torch.isfinite(out.pts3d_global).all()


def test_presets_are_independent_copies_and_fit_the_size_budget():
    a, b = preset("bundled"), preset("bundled")
    a.train.steps = 1
    assert b.train.steps > 1000
    assert b.task.data.height % 16 == 0 and b.task.data.width % 16 == 0
    assert b.train.schedule.warmup_steps < b.train.steps and 1e-4 <= b.train.optim.lr <= 3e-4
    params = sum(p.numel() for p in Fast3R(b.task.model).parameters())
    assert params * 4 <= 25e6  # <= 25 MB of float32 safetensors
    with pytest.raises(ManyviewError):
        preset("huge")


def test_cli_train_fast3r_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "fast3r", "bundled", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--train.steps" in text and "--task.data.max-views" in text and "--out" in text
    with pytest.raises(SystemExit) as e:
        main(["train", "fast3r", "--help"])
    assert e.value.code == 0
    assert "bundled" in capsys.readouterr().out


def test_cli_train_fast3r_runs_and_resumes(tmp_path, monkeypatch, capsys):
    calls = []
    import manyview.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "train", lambda cfg, task: calls.append((cfg, task)) or
                        trainer_module.TrainResult(step=cfg.steps))
    assert main(["train", "fast3r", "tiny", "--out", str(tmp_path / "x"), "--train.steps", "3",
                 "--train.resume", "True", "--task.data.max-views", "5"]) == 0
    (cfg, task), = calls
    assert cfg.out_dir == tmp_path / "x" and cfg.steps == 3 and cfg.resume is True
    assert task.cfg.data.max_views == 5 and task.cfg.data.height == preset("tiny").task.data.height
