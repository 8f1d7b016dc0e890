"""Measuring a block of work: peak memory and wall time per stage."""

import time

import torch

from manyview.profiling import MemoryMeter, StageTimer


def test_memory_meter_sees_an_allocation():
    with MemoryMeter("cpu") as meter:
        block = torch.ones(40_000_000)  # 160 MB, every page touched
        del block
    assert meter.increase_bytes > 120e6 and meter.peak_bytes >= meter.increase_bytes
    assert meter.as_dict()["kind"] == "cpu_resident_set"


def test_stage_timer_records_each_stage():
    stages = StageTimer("cpu")
    with stages("short"):
        pass
    with stages("sleep"):
        time.sleep(0.05)
    assert set(stages.times) == {"short", "sleep"}
    assert stages.times["sleep"] >= 0.05 > stages.times["short"]
