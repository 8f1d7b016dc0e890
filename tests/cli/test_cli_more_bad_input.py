"""More bad inputs, in the spirit of issue 13, across every command (the list with the outcomes before and after
the fix: /work/notes/h1_cases.md). Each is refused with one line naming the option or file, exit 2, no traceback,
no "internal error", before any output is written."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import listing, refused, splat_checkpoint

from manyview.cli.main import main


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_dataset, tiny_splat) -> dict[str, Path]:
    """Broken, foreign and misplaced inputs, made once."""
    from manyview.models.fast3r import Fast3R

    root = tmp_path_factory.mktemp("bad_inputs")
    f = {"DS": tiny_dataset, "SPLAT": tiny_splat, "NOTES": root / "notes.txt", "GARBAGE_PLY": root / "garbage.ply",
         "EMPTY_JSON": root / "empty.json", "GARBAGE_JSON": root / "garbage.json", "GARBAGE_BIN": root / "garbage.bin",
         "TRUNC_PLY": root / "trunc.ply", "NOFRAMES": root / "noframes.json", "USER": root / "user",
         "EVIL": root / "evil.pt", "F3R_TRUNC": root / "f3r_trunc", "EMPTYDIR": root / "emptydir",
         "FAKEIMG": root / "fakeimg", "BADMARKER": root / "badmarker", "MISSING": root / "missing.png"}
    f["NOTES"].write_text("hello\n")
    f["GARBAGE_PLY"].write_bytes(b"ply\nformat nonsense\n\x00\x01")
    f["EMPTY_JSON"].write_bytes(b"")
    f["GARBAGE_JSON"].write_text("{not json")
    f["GARBAGE_BIN"].write_bytes(bytes(range(256)))
    data = tiny_splat.read_bytes()
    f["TRUNC_PLY"].write_bytes(data[: len(data) // 2])
    meta = json.loads((tiny_dataset / "transforms.json").read_text())
    f["NOFRAMES"].write_text(json.dumps({**meta, "frames": []}))
    f["USER"].mkdir()
    (f["USER"] / "keep.txt").write_text("mine")

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {root / 'pwned'}",))

    torch.save({"model": Payload()}, f["EVIL"])
    torch.manual_seed(0)
    Fast3R("tiny").save_pretrained(root / "f3r")
    f["F3R"] = root / "f3r"
    f["F3R_TRUNC"].mkdir()
    shutil.copy(root / "f3r" / "config.json", f["F3R_TRUNC"] / "config.json")
    (f["F3R_TRUNC"] / "model.safetensors").write_bytes((root / "f3r" / "model.safetensors").read_bytes()[:5000])
    f["EMPTYDIR"].mkdir()
    f["FAKEIMG"].mkdir()
    for name in ("a.png", "b.png"):
        (f["FAKEIMG"] / name).write_text("not an image at all")
    shutil.copytree(tiny_dataset, f["BADMARKER"])
    (f["BADMARKER"] / "manyview.json").write_text("{broken")
    return f


# (command line, what the one line must name); OUT is a fresh folder that must not appear
CASES = [
    # info
    ("info NOTES", ["NOTES", "unknown file type"]),
    ("info GARBAGE_PLY", ["GARBAGE_PLY", "PLY"]),
    ("info EMPTY_JSON", ["EMPTY_JSON", "JSON"]),
    ("info BADMARKER", ["manyview.json", "JSON"]),
    # render
    ("render DS/points.ply --cameras DS --out OUT", ["points.ply", "3DGS"]),
    ("render SPLAT --cameras GARBAGE_JSON --out OUT", ["GARBAGE_JSON"]),
    ("render SPLAT --cameras GARBAGE_BIN --out OUT", ["GARBAGE_BIN"]),
    ("render SPLAT --orbit 2 --width 0 --out OUT", ["--width must be at least 1, got 0"]),
    ("render SPLAT --orbit -1 --out OUT", ["--orbit must be at least 0, got -1"]),
    ("render SPLAT --orbit 2 --fps 0 --out OUT", ["--fps must be at least 1, got 0"]),
    ("render TRUNC_PLY --cameras DS --out OUT", ["TRUNC_PLY", "PLY"]),
    ("render SPLAT --orbit 2 --out DS", ["DS", "refusing"]),
    ("render SPLAT --cameras NOFRAMES --out OUT", ["NOFRAMES", "frames"]),
    # splat
    ("splat MISSING --out OUT", ["MISSING", "no such"]),
    ("splat DS --out OUT --backend nonsense", ["--backend must be one of"]),
    ("splat DS --out OUT --checkpoint-every -1", ["--checkpoint-every must be at least 0, got -1"]),
    ("splat DS --out OUT --eval-every -3", ["--eval-every must be at least 0, got -3"]),
    ("splat DS --out OUT --test-every -1", ["--test-every must be at least 0, got -1"]),
    ("splat DS --out OUT --random-init-points 0", ["--random-init-points must be at least 1, got 0"]),
    ("splat DS --out OUT --background 0 0 5", ["--background must be three numbers between 0 and 1"]),
    ("splat DS --out OUT --iterations 0", ["--iterations must be at least 1, got 0"]),
    ("splat DS --out USER", ["USER", "keep.txt"]),
    ("splat DS --out DS", ["DS", "holds other files"]),
    ("splat NOFRAMES --out OUT", ["NOFRAMES", "frames"]),
    ("splat DS --out OUT --densify.refine-every 0", ["--densify.refine-every must be at least 1, got 0"]),
    # nvs
    ("nvs --inputs DS/images --cameras DS --orbit 0 --out OUT", ["--orbit must be at least 1, got 0"]),
    ("nvs --inputs DS/images --cameras DS --orbit 2 --size 7 --out OUT", ["--size", "patch size", "got 7"]),
    ("nvs --inputs DS/images --cameras DS --orbit 2 --target-batch-size 0 --out OUT",
     ["--target-batch-size must be at least 1, got 0"]),
    ("nvs --inputs DS/images --cameras GARBAGE_JSON --orbit 2 --out OUT", ["GARBAGE_JSON"]),
    ("nvs --inputs MISSING --cameras DS --orbit 2 --out OUT", ["MISSING", "no such"]),
    ("nvs --inputs DS/images --cameras DS --orbit 2 --weights EVIL --out OUT", ["EVIL", "pickle"]),
    ("nvs --inputs DS/images --cameras DS --orbit 2 --fps 0 --out OUT", ["--fps must be at least 1, got 0"]),
    ("nvs --inputs DS/images --cameras DS --orbit 2 --out NOTES", ["NOTES", "not a folder"]),
    # reconstruct
    ("reconstruct DS/images --max-views 0 --out OUT", ["--max-views must be at least 1, got 0"]),
    ("reconstruct DS/images --size 100 --out OUT", ["--size must be a positive multiple of 16, got 100"]),
    ("reconstruct DS/images --ga-iterations -1 --out OUT", ["--ga-iterations must be at least 0, got -1"]),
    ("reconstruct DS/images --batch-size 0 --out OUT", ["--batch-size must be at least 1, got 0"]),
    ("reconstruct DS/images --weights F3R_TRUNC --out OUT", ["F3R_TRUNC/model.safetensors", "damaged"]),
    ("reconstruct DS/images --weights EMPTYDIR --out OUT", ["EMPTYDIR", "not a model folder"]),
    ("reconstruct FAKEIMG --weights F3R --out OUT", ["FAKEIMG/a.png", "image"]),
    ("reconstruct DS/images --out NOTES", ["NOTES", "not a folder"]),
    ("reconstruct DS/images --weights EVIL --model fast3r --out OUT", ["EVIL", "pickle"]),
    # eval
    ("eval reconstruction --views 1 --out OUT/e.json", ["--views must be counts of at least 2 views, got 1"]),
    ("eval reconstruction --scenes 0 --out OUT/e.json", ["--scenes must be at least 1, got 0"]),
    ("eval reconstruction --size 50 --out OUT/e.json", ["--size must be a positive multiple of 16, got 50"]),
    ("eval reconstruction --out USER --scenes 1 --views 2 --no-colmap", ["USER", "is a folder"]),
    ("eval reconstruction --no-synthetic --out OUT/e.json", ["--no-synthetic", "--real"]),
    ("eval reconstruction --real MISSING --no-synthetic --out OUT/e.json", ["MISSING", "--real"]),
    ("eval nvs --synthetic -1 --out OUT/e.json", ["--synthetic must be at least 0, got -1"]),
    ("eval nvs --limit 0 --out OUT/e.json", ["--limit must be at least 1, got 0"]),
    ("eval nvs --out USER --synthetic 1", ["USER", "is a folder"]),
    # train
    ("train toy --train.steps 0 --train.out-dir OUT", ["--train.steps must be at least 1, got 0"]),
    ("train toy --train.batch-size 0 --train.out-dir OUT", ["--train.batch-size must be at least 1, got 0"]),
    ("train fast3r tiny --train.optim.lr -1 --out OUT", ["--train.optim.lr must be a number >= 0, got -1"]),
    ("train toy --train.keep-last 0 --train.out-dir OUT", ["--train.keep-last must be at least 1, got 0"]),
    ("train lvsm tiny --train.schedule.warmup-steps -2 --out OUT",
     ["--train.schedule.warmup-steps must be at least 0, got -2"]),
    ("train toy --train.out-dir NOTES", ["NOTES", "not a folder"]),
    # synth
    ("synth --kind object --width 0 --out OUT", ["--width must be at least 1, got 0"]),
    ("synth --supersample 0 --out OUT", ["--supersample must be at least 1, got 0"]),
    ("synth --height 64 --out OUT", ["--height", "--kind object"]),
    ("synth --out USER", ["USER", "refusing"]),
]


@pytest.mark.parametrize("line, mentions", CASES, ids=[c[0] for c in CASES])
def test_bad_input(line, mentions, files, tmp_path, capsys):
    out = tmp_path / "out"
    paths = {**{k: str(v) for k, v in files.items()}, "OUT": str(out)}
    pattern = re.compile("|".join(sorted(paths, key=len, reverse=True)))

    def fill(word: str) -> str:  # one pass: a filled-in path is not scanned again
        return pattern.sub(lambda m: paths[m.group(0)], word)

    user_before = listing(files["USER"])
    refused(capsys, [fill(w) for w in line.split()], *[fill(m) for m in mentions])
    assert not out.exists() or not any(out.iterdir())
    assert listing(files["USER"]) == user_before and not (files["EVIL"].parent / "pwned").exists()


def test_unwritable_places_are_named(files, tmp_path, capsys):
    """/proc takes no new folders, even from root."""
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc")
    for args in (["synth", "--out", "/proc/manyview_synth"],
                 ["train", "toy", "--train.steps", "1", "--train.out-dir", "/proc/manyview_train"],
                 ["splat", files["DS"], "--out", "/proc/manyview_splat"],
                 ["eval", "nvs", "--synthetic", "1", "--out", "/proc/manyview/e.json"]):
        line = refused(capsys, args, "/proc/manyview")
        assert "cannot" in line and ".tmp" not in line


def test_resume_with_another_sh_degree_is_refused(tiny_dataset, tmp_path, capsys):
    """A checkpoint of SH degree 0 resumed with --sh-degree 1 once trained on silently at the old degree."""
    out = tmp_path / "run"
    splat_checkpoint(tiny_dataset, out, sh_degree=0)
    before = listing(out)
    refused(capsys, ["splat", tiny_dataset, "--out", out, "--max-width", 16, "--sh-degree", 1, "--iterations", 2,
                     "--resume"], "SH degree 0", "--sh-degree 0")
    assert listing(out) == before


def test_resume_with_a_missing_checkpoint_file_names_it(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    ckpt = splat_checkpoint(tiny_dataset, out)
    (ckpt / "state.pt").unlink()
    refused(capsys, ["splat", tiny_dataset, "--out", out, "--max-width", 16, "--sh-degree", 0, "--iterations", 2,
                     "--resume"], ckpt / "state.pt", "missing", "without --resume")


def test_train_resume_from_a_damaged_checkpoint_points_to_the_previous_one(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "toy", "--train.steps", "2", "--train.ckpt-every", "1", "--train.out-dir", str(out)]) == 0
    capsys.readouterr()
    older, latest = sorted((out / "checkpoints").iterdir())
    (latest / "optim.pt").write_text("junk")
    refused(capsys, ["train", "toy", "--train.steps", "3", "--train.out-dir", out, "--train.resume", "True"],
            latest / "optim.pt", "damaged", f"resume from {older.name}")


@pytest.mark.parametrize("command", ["nvs", "reconstruct"])
def test_cuda_asked_for_without_a_gpu(command, files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = {"nvs": ["nvs", "--inputs", files["DS"] / "images", "--cameras", files["DS"], "--orbit", 2],
            "reconstruct": ["reconstruct", files["DS"] / "images", "--weights", files["F3R"], "--size", 32]}[command]
    refused(capsys, args + ["--device", "cuda", "--out", tmp_path / "out"], "cuda", "--device cpu")
    assert not (tmp_path / "out").exists()


def test_smallest_valid_inputs_still_work(files, tmp_path, capsys):
    """Validation refuses nonsense, not small but meaningful input: one view, 1 x 1 renders, one photo."""
    assert main(["synth", "--kind", "object", "--views", "1", "--height", "16", "--width", "16", "--out",
                 str(tmp_path / "one")]) == 0
    assert main(["synth", "--kind", "room", "--views", "2", "--height", "1", "--width", "1", "--out",
                 str(tmp_path / "pixel")]) == 0
    assert main(["reconstruct", str(files["DS"] / "images" / "00000.png"), "--weights", str(files["F3R"]), "--size",
                 "32", "--device", "cpu", "--out", str(tmp_path / "single")]) == 0
    out = capsys.readouterr().out
    assert "wrote 1 views (16x16)" in out and "wrote 2 views (1x1)" in out and "reconstructed 1 views" in out


def test_options_of_the_other_model_are_refused(files, tmp_path, capsys):
    """--graph / --batch-size / --ga-* drive the pairwise model only, --seed Fast3R only: with the other model they
    once did nothing, silently."""
    base = ["reconstruct", files["DS"] / "images", "--weights", files["F3R"], "--size", 32, "--out", tmp_path / "o"]
    refused(capsys, base + ["--graph", "swin-2"], "--graph is an option of the pairwise model", "Fast3R")
    refused(capsys, base + ["--batch-size", 2, "--ga.lr", 0.1], "--batch-size", "--ga", "are options of the pairwise")
    assert not (tmp_path / "o").exists()
