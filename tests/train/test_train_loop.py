"""The trainer in one process: exact resume, accumulation, atomic checkpoints, precision, the metrics log."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from manyview.errors import ManyviewError
from manyview.train import checkpoint as ckpt
from manyview.train.config import OptimConfig, ParallelConfig, ScheduleConfig, TrainConfig
from manyview.train.logging import read_metrics
from manyview.train.toy import ToyConfig, ToyTask, ToyTransformer
from manyview.train.trainer import train


class Crash(Exception):
    pass


class CrashingToy(ToyTask):
    """Dies in the forward of update ``crash_step`` (1-based), like a killed process would."""

    def __init__(self, cfg, crash_step, grad_accum=1):
        super().__init__(cfg)
        self.calls, self.crash_call = 0, (crash_step - 1) * grad_accum + 1

    def loss(self, model, batch):
        self.calls += 1
        if self.calls == self.crash_call:
            raise Crash
        return super().loss(model, batch)


TOY = ToyConfig(dropout=0.1)  # dropout: resume must restore the RNG, not only weights and data


def _cfg(out_dir, **kw) -> TrainConfig:
    base = TrainConfig(out_dir=Path(out_dir), steps=6, batch_size=4, log_every=1, ckpt_every=2, keep_last=2,
                       optim=OptimConfig(lr=3e-3, grad_clip=0.5),
                       schedule=ScheduleConfig(warmup_steps=2, min_lr=1e-4), seed=11, progress=False)
    return replace(base, **kw)


def _losses(history):
    return [(r["step"], r["loss"], r["grad_norm"], r["mae"]) for r in history]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ref")
    return out, train(_cfg(out), ToyTask(TOY))


def test_reference_run_logs_and_keeps_last_checkpoints(reference):
    out, result = reference
    assert result.step == 6 and [r["step"] for r in result.history] == [1, 2, 3, 4, 5, 6]
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["step_000000004", "step_000000006"]
    assert result.checkpoint == out / "checkpoints" / "step_000000006"
    rows = read_metrics(out / "metrics.csv")
    assert list(rows[0]) == ["step", "loss", "lr", "grad_norm", "time", "mae"]
    assert [float(r["loss"]) for r in rows] == [r["loss"] for r in result.history]  # exact round trip
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.history[-1]["lr"] == pytest.approx(1e-4)
    # The exported final weights are the last checkpoint's weights and load into a fresh model.
    final = load_file(out / "final" / "model.safetensors")
    last = load_file(out / "checkpoints" / "step_000000006" / "model.safetensors")
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    ToyTransformer(TOY).load_state_dict(final)


def test_killed_run_resumes_bit_for_bit(reference, tmp_path):
    _, ref = reference
    with pytest.raises(Crash):
        train(_cfg(tmp_path), CrashingToy(TOY, crash_step=6))  # last checkpoint: step 4
    resumed = train(_cfg(tmp_path, resume=True), ToyTask(TOY))
    assert _losses(resumed.history) == _losses(ref.history)[4:]
    rows = read_metrics(tmp_path / "metrics.csv")  # rows past the checkpoint were dropped, then rewritten
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [float(r["loss"]) for r in rows] == [r["loss"] for r in ref.history]


def test_resume_from_an_explicit_checkpoint_path(reference, tmp_path):
    ref_out, ref = reference
    resumed = train(_cfg(tmp_path, resume=ref_out / "checkpoints" / "step_000000004"), ToyTask(TOY))
    assert _losses(resumed.history) == _losses(ref.history)[4:]


def test_failed_save_leaves_previous_checkpoint_intact(reference, tmp_path, monkeypatch):
    _, ref = reference
    real_write, calls = ckpt._write_model, []

    def failing_write(state, path, step):
        calls.append(step)
        if step == 4:
            real_write(state, path, step)  # a partial file exists when the failure hits
            raise OSError("disk full")
        real_write(state, path, step)

    monkeypatch.setattr(ckpt, "_write_model", failing_write)
    with pytest.raises(OSError, match="disk full"):
        train(_cfg(tmp_path), ToyTask(TOY))
    monkeypatch.undo()
    root = tmp_path / "checkpoints"
    assert calls == [2, 4]
    assert sorted(p.name for p in root.iterdir()) == ["step_000000002"]  # no temporary directory left behind
    assert ckpt.read_meta(root / "step_000000002")["step"] == 2
    resumed = train(_cfg(tmp_path, resume=True), ToyTask(TOY))
    assert _losses(resumed.history) == _losses(ref.history)[2:]


def test_fresh_run_refuses_to_overwrite_checkpoints(reference):
    out, _ = reference
    with pytest.raises(ManyviewError, match="resume=True"):
        train(_cfg(out), ToyTask(TOY))


def test_grad_accumulation_2x1_equals_1x2(tmp_path):
    toy = ToyConfig()  # no dropout: the two runs draw random numbers differently
    one = train(_cfg(tmp_path / "a", batch_size=2, grad_accum=1, steps=4), ToyTask(toy))
    two = train(_cfg(tmp_path / "b", batch_size=2, grad_accum=2, steps=4), ToyTask(toy))
    assert len(one.history) == len(two.history) == 4
    for a, b in zip(one.history, two.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    wa = load_file(one.checkpoint / "model.safetensors")
    wb = load_file(two.checkpoint / "model.safetensors")
    # The key part of qkv.bias has an exactly zero gradient (softmax ignores it), so Adam turns rounding noise
    # into lr-sized steps there; every other weight must agree closely.
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa if not k.endswith("qkv.bias"))


def test_crash_inside_accumulation_resumes_exactly(tmp_path):
    toy = ToyConfig(dropout=0.1)
    ref = train(_cfg(tmp_path / "ref", batch_size=4, grad_accum=2, steps=4), ToyTask(toy))
    with pytest.raises(Crash):
        train(_cfg(tmp_path / "run", batch_size=4, grad_accum=2, steps=4), CrashingToy(toy, 4, grad_accum=2))
    resumed = train(_cfg(tmp_path / "run", batch_size=4, grad_accum=2, steps=4, resume=True), ToyTask(toy))
    assert _losses(resumed.history) == _losses(ref.history)[2:]


@pytest.mark.filterwarnings("ignore:FSDP2-wrapped module")
def test_fsdp_and_ddp_in_a_world_of_one_match_plain_training(tmp_path):
    toy = ToyConfig()
    plain = train(_cfg(tmp_path / "plain", steps=3), ToyTask(toy))
    for mode in ("ddp", "fsdp"):
        wrapped = train(_cfg(tmp_path / mode, steps=3, parallel=ParallelConfig(mode=mode)), ToyTask(toy))
        assert len(wrapped.history) == len(plain.history) == 3
        for a, b in zip(plain.history, wrapped.history):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    assert not torch.distributed.is_initialized()  # the trainer leaves the group it created


def test_precision_bf16_on_cpu_only_when_asked(tmp_path):
    auto, bf16 = ToyTask(), ToyTask()
    train(_cfg(tmp_path / "auto", steps=1), auto)
    run = train(_cfg(tmp_path / "bf16", steps=2, precision="bf16"), bf16)
    assert auto.output_dtypes == {torch.float32}
    assert bf16.output_dtypes == {torch.bfloat16}
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in run.history)
    weights = load_file(run.checkpoint / "model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())  # autocast: master weights stay fp32


def test_bad_configs_are_refused(tmp_path):
    with pytest.raises(ManyviewError, match="not divisible"):
        train(_cfg(tmp_path, batch_size=3, grad_accum=2), ToyTask())
    with pytest.raises(ManyviewError, match="steps"):
        train(_cfg(tmp_path, steps=0), ToyTask())
    with pytest.raises(ManyviewError, match="meta.json"):
        train(_cfg(tmp_path, resume=tmp_path / "nowhere"), ToyTask())


def test_non_finite_loss_stops_the_run(tmp_path):
    with pytest.raises(ManyviewError, match="loss became"):
        train(_cfg(tmp_path, optim=OptimConfig(lr=float("inf"), grad_clip=None), steps=3), ToyTask())


def test_tensorboard_needs_its_package(tmp_path):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ManyviewError, match="tensorboard"):
            train(_cfg(tmp_path, steps=1, tensorboard=True), ToyTask())
    else:
        train(_cfg(tmp_path, steps=1, tensorboard=True), ToyTask())
        assert any((tmp_path / "tb").iterdir())



def _add_unused_parameter(model):
    model.unused = torch.nn.Linear(3, 3)  # never called, so it never gets a gradient nor Adam state
    return model


class ToyWithUnusedParameter(ToyTask):
    def build_model(self):
        return _add_unused_parameter(super().build_model())


class CrashingToyWithUnusedParameter(CrashingToy):
    def build_model(self):
        return _add_unused_parameter(super().build_model())


def test_parameters_without_gradients_do_not_block_resume(tmp_path):
    ref = train(_cfg(tmp_path / "ref"), ToyWithUnusedParameter(TOY))
    with pytest.raises(Crash):
        train(_cfg(tmp_path / "run"), CrashingToyWithUnusedParameter(TOY, crash_step=6))
    resumed = train(_cfg(tmp_path / "run", resume=True), ToyWithUnusedParameter(TOY))
    assert _losses(resumed.history) == _losses(ref.history)[4:]
