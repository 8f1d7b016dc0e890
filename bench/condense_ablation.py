"""ConDense ablations: consistency only, teacher anchor only, both; scored by ``manyview eval features``.

Trains the three ablation presets (``manyview train condense ablation-{both,consistency,anchor}``: the bundled
recipe shortened to the same number of steps, differing only in the loss weights), evaluates each with ``manyview
eval features`` (the teacher is the baseline in every run: the same scenes and pairs), then writes
bench/results/condense_ablation.json and the table ``condense_ablation`` in bench/README.md.

    python bench/condense_ablation.py --real runs/family_colmap runs/teddybear_colmap      # train + evaluate
    python bench/condense_ablation.py --skip-train --runs /tmp/abl ...                     # evaluate existing runs
    python bench/condense_ablation.py --skip-train --bundled --runs /tmp/abl ...           # + the bundled model

``--real`` takes reconstruction folders (``manyview reconstruct PHOTOS --model colmap --out DIR``). Every command
runs in its own process with one torch thread (the benchmark machine's 2 cores are shared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from readme_table import write_table

from manyview.features.evaluate import ANGLE_BINS_DEG

ABLATIONS = {"both": "consistency + anchor", "consistency": "consistency only", "anchor": "anchor only"}
BUNDLED = "consistency + anchor: the bundled model"
RESULTS = Path(__file__).resolve().parent / "results" / "condense_ablation.json"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
       "NUMBA_THREADING_LAYER": "workqueue"}


def manyview(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "manyview.cli.main", *args], check=True, env=ENV)


def pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}"


def table(reports: dict[str, dict]) -> str:
    """Rows: the teacher (from the first run), then each ablation's 2D student and rendered 3D features."""
    first = next(iter(reports.values()))
    real = list(first.get("real", {}))
    bins = [f"{lo:g}-{hi:g}" for lo, hi in ANGLE_BINS_DEG]
    head = ["features", "loss"] + [f"syn @10 {b}" for b in bins] + ["syn @5 / @20 30-60", "rep@3 / @8 30-60",
                                                                     "MS@3 / @8 30-60"]
    head += [f"{name} @10 all / 30-60" for name in real]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label: str, loss: str, report: dict, method: str) -> str:
        syn = report["synthetic"][method]
        r, k = syn["recall"], syn["keypoints"]["30-60"]
        cells = [label, loss] + [pct(r[b]["recall@10"]) for b in bins]
        cells += [f"{pct(r['30-60']['recall@5'])} / {pct(r['30-60']['recall@20'])}",
                  f"{pct(k['repeatability@3'])} / {pct(k['repeatability@8'])}",
                  f"{pct(k['matching_score@3'])} / {pct(k['matching_score@8'])}"]
        for name in real:
            t = report["real"][name][method]["recall"]
            cells.append(f"{pct(t['all']['recall@10'])} / {pct(t['30-60']['recall@10'])}")
        return "| " + " | ".join(cells) + " |"

    lines.append(row(f"teacher ({first['teacher']})", "-", first, "teacher"))
    for key, report in reports.items():
        loss = ABLATIONS.get(key, BUNDLED)
        lines.append(row("2D student", loss, report, "student2d"))
        lines.append(row("3D rendered", loss, report, "rendered3d"))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/condense_ablation"))
    ap.add_argument("--real", type=Path, nargs="*", default=[])
    ap.add_argument("--skip-train", action="store_true", help="evaluate RUNS/{both,consistency,anchor}/final")
    ap.add_argument("--eval-args", default="", help="extra options for manyview eval features")
    ap.add_argument("--bundled", action="store_true", help="also evaluate the bundled model (RUNS/bundled)")
    args = ap.parse_args()
    reports = {}
    for key in [*ABLATIONS, *(["bundled"] if args.bundled else [])]:
        run = args.runs / key
        if key != "bundled" and not args.skip_train and not (run / "final").is_dir():
            manyview("train", "condense", f"ablation-{key}", "--out", str(run), "--train.no-progress")
        out = run / "eval_features.json"
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            weights = [] if key == "bundled" else ["--weights", str(run / "final")]  # no --weights: the bundled one
            manyview("eval", "features", *weights, "--out", str(out),
                     *(["--real", *map(str, args.real)] if args.real else []), *args.eval_args.split())
        reports[key] = json.loads(out.read_text())
        reports[key]["metrics_csv_last"] = (run / "metrics.csv").read_text().splitlines()[-1] \
            if (run / "metrics.csv").is_file() else None
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(reports, indent=1) + "\n")
    body = table(reports)
    print(body)
    write_table("condense_ablation", body, "ConDense features and their ablations (`bench/condense_ablation.py`)")
    print(f"wrote {RESULTS} and bench/README.md")


if __name__ == "__main__":
    main()
