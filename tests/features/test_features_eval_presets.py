"""The ConDense presets behind the evaluation: the bundled model fits the 25 MB budget, and the three ablation runs
differ from one another in nothing but the loss weights."""

from __future__ import annotations

import dataclasses

from manyview.features.condense import ConDense
from manyview.train.condense_task import preset


def test_bundled_weights_fit_25_mb():
    run = preset("bundled")
    model = ConDense(run.task.model)  # the teacher's architecture, randomly initialised: only the size matters
    assert sum(p.numel() for p in model.parameters()) * 4 <= 25e6
    assert run.task.consistency_weight > 0 and run.task.anchor_weight > 0 and run.train.steps >= 1000


def test_ablations_differ_only_in_their_loss_weights():
    runs = {name: preset(f"ablation-{name}") for name in ("both", "consistency", "anchor")}
    weights = {name: (r.task.consistency_weight, r.task.anchor_weight) for name, r in runs.items()}
    assert weights == {"both": (1.0, 1.0), "consistency": (1.0, 0.0), "anchor": (0.0, 1.0)}
    same = [dataclasses.replace(r.task, consistency_weight=0.0, anchor_weight=0.0) for r in runs.values()]
    assert same[0] == same[1] == same[2]
    trains = [dataclasses.replace(r.train, out_dir=None) for r in runs.values()]
    assert trains[0] == trains[1] == trains[2]
    bundled = preset("bundled")
    assert runs["both"].task.model == bundled.task.model and runs["both"].train.optim == bundled.train.optim
