"""Calibrate the duplicate threshold of ``manyview query --duplicates`` on training scenes (never the evaluation's).

    python bench/repository_duplicates_calibrate.py            # writes bench/results/repository_duplicates_calibration.json

Scenes of training seeds [1000, 1000 + N) (object scenes and rooms alternate), the first half captured a second
time as ``manyview eval repository`` does (other trajectory and focal, darker tinted light, 3/4 of the views).
Every pair is scored by :func:`manyview.repository.query.same_place` (both directions, the smaller count) and by
the cosine of the scene descriptors (the baseline); prints the scores of true and false pairs and the F1 each
threshold gives, for both.
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")  # see bench/repository_text_train.py

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from manyview.repository.evaluate import SECOND_CAPTURE, duplicate_scores, synthetic_capture  # noqa: E402
from manyview.repository.index import Indexer  # noqa: E402
from manyview.repository.query import same_place  # noqa: E402

FIRST_SEED = 1000


def best_f1(scores: dict, truth: set) -> dict:
    best = {"f1": -1.0}
    for t in sorted(set(scores.values())):
        d = duplicate_scores({p for p, s in scores.items() if s >= t}, truth)
        if d["f1"] > best["f1"]:
            best = {"threshold": t, **d}
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("bench/results/repository_duplicates_calibration.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    indexer = Indexer(alignment=None)
    described = {}
    for i in range(args.scenes):
        for second in [False, True] if i < args.scenes // 2 else [False]:
            capture, _ = synthetic_capture(i, second=second, seed=FIRST_SEED + i)
            described[capture.name] = indexer.describe_views(capture.views, capture.points)
    truth = {(n.removesuffix(SECOND_CAPTURE), n) for n in described if n.endswith(SECOND_CAPTURE)}
    truth = {tuple(sorted(p)) for p in truth}
    inliers, cosine = {}, {}
    for a, b in itertools.combinations(sorted(described), 2):
        da, db = described[a], described[b]
        inliers[a, b] = min(same_place(da.keypoints, da.keypoint_descriptors, da.scale, db.keypoints,
                                       db.keypoint_descriptors)[0],
                            same_place(db.keypoints, db.keypoint_descriptors, db.scale, da.keypoints,
                                       da.keypoint_descriptors)[0])
        cosine[a, b] = round(float(np.dot(da.scene, db.scene)), 4)
    result = {"scenes": args.scenes, "first_seed": FIRST_SEED, "true_pairs": len(truth)}
    for label, scores in (("inliers", inliers), ("cosine", cosine)):
        true = sorted(scores[p] for p in truth)
        false = sorted((s for p, s in scores.items() if p not in truth), reverse=True)
        result[label] = {"true_pair_scores": true, "false_pair_scores_top": false[:10], "best": best_f1(scores, truth)}
        print(f"{label}: true pairs {true}; highest false {false[:6]}; best F1 {result[label]['best']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
