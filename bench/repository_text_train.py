"""Train the text alignment of ``manyview query --text`` on synthetic scenes and their generated captions.

    python bench/repository_text_train.py                      # writes src/manyview/assets/repository_text/

Training scenes use seeds [0, S) (half object scenes, half rooms), rendered as ``manyview eval repository``
captures them (object scenes orbited all round, rooms walked through; 12 views of 256 x 256); the recall is measured
on held-out evaluation seeds (manyview.synth.samples.eval_scene_seed), whose scenes and captions were never seen.
Writes alignment.safetensors, training_log.csv and summary.json into the assets folder, and prints the held-out
text -> scene recall@1 / @5.
"""

from __future__ import annotations

import os

# numba's OpenMP threads (the synthetic renderer) otherwise stay spinning and slow torch's convolutions ~100x on a
# busy 2-core machine; set before numba is imported.
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from manyview.features.teachers import load_teacher  # noqa: E402
from manyview.repository.captions import caption  # noqa: E402
from manyview.repository.descriptor import scene_vector, view_descriptors  # noqa: E402
from manyview.repository.text import SentenceEncoder, bundled_alignment_path, fit_alignment, text_recall  # noqa: E402
from manyview.synth import generate  # noqa: E402
from manyview.synth.samples import eval_scene_seed  # noqa: E402

VARIANTS = 8  # captions per training scene (shuffled subsets of the facts) besides the full one


def scene_data(seeds, teacher, encoder, views: int, size: int, variants: int):
    vectors, captions, owner = [], [], []
    for s, seed in enumerate(seeds):
        kind = "object" if s % 2 == 0 else "room"
        scene, v = generate(seed, kind, num_views=views, height=size, width=size,
                            **({"arc_deg": 360.0} if kind == "object" else {}))
        _, descs, _ = view_descriptors(teacher, v.images)
        vectors.append(scene_vector(descs))
        texts = [caption(scene)] + [caption(scene, variant=seed * 100 + i) for i in range(variants)]
        captions += texts
        owner += [s] * len(texts)
    return torch.stack(vectors), encoder(captions), torch.tensor(owner)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=300)
    ap.add_argument("--eval-scenes", type=int, default=100)
    ap.add_argument("--views", type=int, default=12)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--out", type=Path, default=bundled_alignment_path())
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    t0 = time.time()
    teacher, encoder = load_teacher(), SentenceEncoder()
    train = scene_data(range(args.scenes), teacher, encoder, args.views, args.size, VARIANTS)
    held = scene_data([eval_scene_seed(i) for i in range(args.eval_scenes)], teacher, encoder, args.views,
                      args.size, 0)
    print(f"descriptors of {args.scenes} + {args.eval_scenes} scenes in {time.time() - t0:.0f} s")
    alignment, losses = fit_alignment(*train, dim=args.dim, steps=args.steps)
    recall = text_recall(alignment, *held)
    train_recall = text_recall(alignment, train[0], train[1][::VARIANTS + 1], torch.arange(args.scenes))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    alignment.save(args.out)
    with open(args.out.parent / "training_log.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "loss"])
        w.writerows((i, f"{l:.5f}") for i, l in enumerate(losses) if i % 50 == 0 or i == len(losses) - 1)
    summary = {"held_out_recall@1": recall[1], "held_out_recall@5": recall[5], "train_recall@1": train_recall[1],
               "train_recall@5": train_recall[5], "scenes": args.scenes, "eval_scenes": args.eval_scenes,
               "seconds": round(time.time() - t0)}
    (args.out.parent / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
