"""``manyview eval``: score models against ground truth: reconstructions (:mod:`manyview.recon.evaluate`),
novel views (:mod:`manyview.nvs.evaluate`), the scene repository (:mod:`manyview.repository.evaluate`) and dense
features (:mod:`manyview.features.evaluate`).

    manyview eval reconstruction                                  # bundled Fast3R (+BA) and COLMAP, 4/8/16 views
    manyview eval reconstruction --weights runs/fast3r_bundled/final --views 8 --scenes 10 --no-colmap
    manyview eval reconstruction --real data/real/family --views 8 --no-synthetic
    manyview eval nvs --re10k re10k/test --index evaluation_index_re10k.json --weights model_dir
    manyview eval repository --real ../shared/data/real/family ../shared/data/real/teddybear
    manyview eval features --weights runs/condense_bundled/final --real runs/family_colmap runs/teddybear_colmap
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import tyro

from manyview.errors import ManyviewError, require


@dataclass
class EvalReconstruction:
    """Fast3R (default: the bundled weights), Fast3R + bundle adjustment, COLMAP SfM and the pairwise baseline on
    held-out synthetic scenes (and optionally real photos against COLMAP's poses). Prints a Markdown table and writes
    JSON."""

    weights: Path | None = None
    """Fast3R weights: a folder with config.json + model.safetensors, or a trainer checkpoint folder (then
    --preset gives the architecture). Default: the bundled weights."""
    preset: str = "tiny"
    """Architecture for weights without config.json."""
    fast3r: bool = True
    """Evaluate Fast3R (--no-fast3r for COLMAP / pairwise only)."""
    pairwise_weights: Path | None = None
    """Weights of the pairwise (DUSt3R-style) baseline; evaluated when given."""
    colmap: bool = True
    """Also run COLMAP incremental SfM (pycolmap) on the same images."""
    identity: bool = True
    """Also score the trivial answer "all cameras at one pose": the RRA a method gets for free."""
    refine: bool = True
    """Also Fast3R's cameras refined by bundle adjustment (fast3r+ba, as `reconstruct --model fast3r --refine`)."""
    ba_size: int = 448
    """Synthetic scenes: side of the renders bundle adjustment matches features on (Fast3R sees --size)."""
    views: tuple[int, ...] = (4, 8, 16)
    scenes: int = 5
    """Held-out scenes per kind and view count."""
    kinds: tuple[Literal["object", "room"], ...] = ("object", "room")
    size: int = 112
    """Image height and width (synthetic renders; square crops of real photos)."""
    first_scene: int = 0
    synthetic: bool = True
    """Evaluate on held-out synthetic scenes (--no-synthetic with --real for photos only)."""
    real: tuple[Path, ...] = ()
    """Folders of photos scored against COLMAP's poses of all their frames (e.g. data/real/family)."""
    out: Path = Path("results/eval_reconstruction.json")
    threads: int | None = None
    """torch CPU threads (default: torch's choice)."""

    def __post_init__(self):
        require(len(self.views) > 0 and all(n >= 2 for n in self.views), "--views", "counts of at least 2 views",
                self.views)
        require(self.scenes >= 1, "--scenes", "at least 1", self.scenes)
        require(self.size >= 16 and self.size % 16 == 0, "--size", "a positive multiple of 16", self.size)
        require(self.first_scene >= 0, "--first-scene", "at least 0", self.first_scene)
        require(self.ba_size >= 32, "--ba-size", "at least 32", self.ba_size)
        if self.threads is not None:
            require(self.threads >= 1, "--threads", "at least 1", self.threads)

    def interrupted(self) -> str:
        return f"{self.out} was not written (it is written at the end)"

    def run(self) -> None:
        import torch

        from manyview.io.atomic import atomic_open, check_output_file
        from manyview.recon import evaluate as ev

        if not (self.synthetic or self.real):
            raise ManyviewError("nothing to evaluate: --no-synthetic needs --real FOLDER")
        if not (self.fast3r or self.pairwise_weights or self.colmap or self.identity):
            raise ManyviewError("no method to evaluate: --no-fast3r needs --pairwise-weights, --colmap or --identity")
        check_output_file(self.out)
        for folder in self.real:
            if not folder.is_dir():
                raise ManyviewError("--real needs a folder of photos", folder)
        if self.threads:
            torch.set_num_threads(self.threads)
        fast3r = ev.load_fast3r(self.weights, self.preset) if self.fast3r else None
        pairwise = ev.load_pairwise(self.pairwise_weights) if self.pairwise_weights else None
        report = ev.EvalReport(config={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()})
        if self.synthetic:
            cfg = ev.SyntheticEval(views=self.views, scenes=self.scenes, kinds=self.kinds, height=self.size,
                                   width=self.size, first_scene=self.first_scene, ba_size=self.ba_size)
            report.records = ev.evaluate_synthetic(cfg, fast3r=fast3r, pairwise=pairwise, colmap=self.colmap,
                                                  identity=self.identity, refine=self.refine and self.fast3r)
            report.summary = ev.summarize(report.records)
            report.goal = ev.goal_check(report.summary)
            print()
            print(ev.markdown_table(report.summary, ev.SYNTHETIC_COLUMNS))
            if report.goal:
                g = report.goal
                print(f"\nFast3R at {g['views']} views: RRA@15 {g['RRA@15']:.1f}, RTA@15 {g['RTA@15']:.1f}, "
                      f"mAA@30 {g['mAA@30']:.1f} -> goal (95 / 90 / 80) {'met' if g['met'] else 'not met'}")
        for folder in self.real:
            report.real += ev.evaluate_real(folder, self.views, fast3r=fast3r, pairwise=pairwise, size=self.size,
                                            refine=self.refine and self.fast3r)
        if report.real:
            print()
            print(ev.markdown_table(report.real, ev.REAL_COLUMNS))
        with atomic_open(self.out, "w") as f:
            json.dump(report.to_json(), f, indent=1)
        print(f"\nwrote {self.out}")


@dataclass
class EvalNVS:
    """Score LVSM / Efficient-LVSM (default: the bundled model) and two naive baselines (copy the nearest input
    view; the mean of the inputs) by the pixelSplat protocol: PSNR, SSIM, LPIPS-VGG (n/a without its weights),
    averaged over each scene's targets, then over scenes. Datasets: a RealEstate10K chunk folder with an evaluation
    index (--re10k, --index), and held-out synthetic scenes (--synthetic N). Prints Markdown tables, writes JSON."""

    weights: str | None = None
    """A model folder, a released checkpoint, or a Hugging Face repo id; default: the bundled model."""
    model: Literal["auto", "lvsm", "efficient-lvsm"] = "auto"
    re10k: Path | None = None
    """RealEstate10K chunk folder (pixelSplat layout: *.torch + index.json), e.g. re10k/test."""
    index: Path | None = None
    """Evaluation index JSON ({scene: {"context": [...], "target": [...]} | null}), e.g. pixelSplat's
    evaluation_index_re10k.json."""
    synthetic: int = 16
    """Held-out synthetic scenes to score (0: none)."""
    size: int | None = None
    """Square evaluation size; default 256 for RealEstate10K (the protocol) and the model's training size for
    synthetic scenes."""
    limit: int | None = None
    """Score at most this many RealEstate10K scenes (in index order)."""
    lpips_weights: Path | None = None
    """LPIPS weights (see manyview.metrics.image); default $MANYVIEW_LPIPS_WEIGHTS."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    target_batch_size: int | None = None
    out: Path = Path("results/eval_nvs.json")

    def __post_init__(self):
        require(self.synthetic >= 0, "--synthetic", "at least 0", self.synthetic)
        for option, value in (("--size", self.size), ("--limit", self.limit),
                              ("--target-batch-size", self.target_batch_size)):
            if value is not None:
                require(value >= 1, option, "at least 1", value)

    def interrupted(self) -> str:
        return f"{self.out} was not written (it is written at the end)"

    def run(self) -> None:
        from manyview.cli.common import model_size
        from manyview.device import resolve_device
        from manyview.io.atomic import atomic_open, check_output_file
        from manyview.nvs import evaluate as ev
        from manyview.nvs.pipeline import load_nvs_model
        from manyview.progress import progress
        from manyview.train.lvsm_task import LVSMDataConfig

        if self.re10k is None and self.synthetic <= 0:
            raise ManyviewError("nothing to evaluate: pass --re10k FOLDER --index JSON and/or --synthetic N")
        if (self.re10k is None) != (self.index is None):
            raise ManyviewError("--re10k and --index go together (the chunk folder and its evaluation index)")
        check_output_file(self.out)
        model, source = load_nvs_model(self.weights, self.model, resolve_device(self.device))
        report = {"model": model.config.describe(), "weights": source}
        tables = []
        if self.re10k is not None:
            size = model_size(model, self.size or ev.PROTOCOL_SIZE)
            if size != model.config.image_size:
                print(f"note: evaluating at {size}x{size}; the model was trained at {model.config.image_size}")
            info = {"protocol": f"pixelSplat index, LANCZOS + centre crop to {size}", "size": size}
            examples = ev.re10k_examples(self.re10k, self.index, size, self.limit, info)
            bar = progress(total=self.limit, desc="re10k")
            try:
                result = ev.evaluate(model, examples, f"RealEstate10K ({self.re10k})", self.lpips_weights,
                                     self.target_batch_size, progress=lambda i: bar.update(1))
            finally:
                bar.close()
            result.info.update(info)
            report["re10k"] = result.to_dict()
            tables.append(result.markdown())
        if self.synthetic > 0:
            size = model_size(model, self.size)
            data = LVSMDataConfig(image_size=size)
            bar = progress(total=self.synthetic, desc="synthetic")
            try:
                result = ev.evaluate(model, ev.synthetic_examples(data, self.synthetic), "held-out synthetic scenes",
                                     self.lpips_weights, self.target_batch_size, progress=lambda i: bar.update(1))
            finally:
                bar.close()
            result.info.update(protocol=f"2 inputs (window ends), 3 targets between them, {size}x{size}",
                               size=size, frames=data.frames, kinds=list(data.kinds))
            report["synthetic"] = result.to_dict()
            tables.append(result.markdown())
        print(f"\n{model.config.describe()} ({source})\n")
        print("\n\n".join(tables))
        with atomic_open(self.out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
            fh.write("\n")
        print(f"\nwrote {self.out}")


@dataclass
class EvalRepository:
    """The searchable repository (manyview index / query) on an evaluation repository: --scenes held-out synthetic
    scenes, the first --duplicates captured a second time (other cameras, lighting, fewer views), held-out photos
    of each queried (recall@1 / @5, pose error of the located photo, with the focal given and swept), duplicate
    precision / recall / F1, text -> scene recall of their captions; --real photo folders (COLMAP-posed) join as
    scenes among the synthetic distractors. Prints Markdown tables, writes JSON (repository.evaluate)."""

    scenes: int = 100
    """M synthetic scenes (object scenes and rooms alternate)."""
    duplicates: int = 20
    """How many of them are captured twice."""
    views: int = 12
    """Indexed views per capture (the second capture has 3/4 as many)."""
    size: int = 256
    """Render size, pixels (square)."""
    real: tuple[Path, ...] = ()
    """Folders of photos indexed among the synthetic scenes (e.g. ../shared/data/real/family)."""
    db: str | None = None
    """The repository to build: a new SQLite file or an empty postgresql:// database (default: a temporary file)."""
    out: Path = Path("results/eval_repository.json")
    threads: int | None = 1
    """torch CPU threads."""

    def __post_init__(self):
        require(self.scenes >= 2, "--scenes", "at least 2", self.scenes)
        require(0 <= self.duplicates <= self.scenes, "--duplicates", f"between 0 and --scenes ({self.scenes})",
                self.duplicates)
        require(self.views >= 4, "--views", "at least 4", self.views)
        require(self.size >= 32, "--size", "at least 32", self.size)
        if self.threads is not None:
            require(self.threads >= 1, "--threads", "at least 1", self.threads)

    def interrupted(self) -> str:
        return f"{self.out} was not written (it is written at the end)"

    def run(self) -> None:
        import os
        import tempfile

        # numba's OpenMP threads (the synthetic renderer) otherwise keep spinning and slow torch's convolutions
        # many times over on a busy machine; only effective before numba is first imported.
        os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
        import torch

        from manyview.io.atomic import atomic_open, check_output_file
        from manyview.repository import evaluate as ev
        from manyview.repository.index import Indexer
        from manyview.repository.store import is_postgres_url, open_store

        check_output_file(self.out)
        for folder in self.real:
            if not folder.is_dir():
                raise ManyviewError("--real needs a folder of photos", folder)
        if self.db is not None and not is_postgres_url(self.db) and Path(self.db).exists():
            raise ManyviewError("--db must be a new file (the evaluation builds its own repository)", self.db)
        if self.threads:
            torch.set_num_threads(self.threads)
        cfg = ev.RepositoryEvalConfig(scenes=self.scenes, duplicates=self.duplicates, views=self.views,
                                      size=self.size, real=self.real)
        indexer = Indexer()
        with tempfile.TemporaryDirectory(prefix="manyview-eval-repository-") as tmp:
            store = open_store(self.db or ev.default_eval_db(tmp), indexer.settings, create=True)
            try:
                if store.count():
                    raise ManyviewError("--db already holds scenes: give a new, empty repository", store.where)
                report = ev.evaluate_repository(store, indexer, cfg)
            finally:
                store.close()
        print()
        print(ev.markdown(report))
        with atomic_open(self.out, "w", encoding="utf-8") as fh:
            json.dump(report.to_json(), fh, indent=1)
            fh.write("\n")
        print(f"\nwrote {self.out}")


@dataclass
class EvalFeatures:
    """Multi-view consistency of dense features (manyview.features.evaluate): correspondence recall @5 / 10 / 20 px
    by the angle between two views (0-15, 15-30, 30-60, 60-180 degrees) for the teacher, a ConDense model's 2D
    student and its 3D student rendered into the views, on held-out synthetic scenes (exact depth) and on
    reconstruction folders of real photos (--real: `manyview reconstruct PHOTOS --model colmap --out DIR`; its SfM
    points and cameras are the pseudo ground truth); key-point repeatability and matching score (synthetic).
    Prints Markdown tables, writes JSON."""

    weights: Path | None = None
    """A ConDense model folder (config.json + model.safetensors); default: the bundled model when this
    installation ships it, else the teacher alone."""
    teacher: bool = True
    """Also evaluate the model's teacher (--no-teacher: the model only)."""
    teacher_name: str | None = None
    """The teacher to evaluate without a model (default: efficientnet-lite0; with a model, its own teacher)."""
    teacher_weights: Path | None = None
    """The teacher's checkpoint (DINOv2 / CLIP)."""
    synthetic: bool = True
    """Evaluate on held-out synthetic scenes (--no-synthetic with --real for photos only)."""
    scenes: int = 4
    """Held-out synthetic scenes per kind (object orbits and room walkthroughs)."""
    views: int = 6
    size: int = 224
    """Synthetic image size; real photos are resized to this short side."""
    points: int = 4096
    """Surface points per synthetic scene for the 3D student."""
    keypoints: int = 256
    """Key points per view (at most)."""
    real: tuple[Path, ...] = ()
    """Reconstruction folders of real photos (COLMAP cameras and points)."""
    max_views: int | None = None
    """Real photos: the first N views only."""
    out: Path = Path("results/eval_features.json")
    threads: int | None = 1
    """torch CPU threads."""

    def __post_init__(self):
        require(self.scenes >= 1, "--scenes", "at least 1", self.scenes)
        require(self.views >= 2, "--views", "at least 2", self.views)
        require(self.size >= 32, "--size", "at least 32", self.size)
        require(self.points >= 16, "--points", "at least 16", self.points)
        require(self.keypoints >= 1, "--keypoints", "at least 1", self.keypoints)
        if self.max_views is not None:
            require(self.max_views >= 2, "--max-views", "at least 2", self.max_views)
        if self.threads is not None:
            require(self.threads >= 1, "--threads", "at least 1", self.threads)

    def interrupted(self) -> str:
        return f"{self.out} was not written (it is written at the end)"

    def run(self) -> None:
        import os

        os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")  # see EvalRepository
        import torch

        from manyview.features import evaluate as ev
        from manyview.features.teachers import DEFAULT_TEACHER, TEACHERS, load_teacher
        from manyview.io.atomic import atomic_open, check_output_file
        from manyview.progress import progress

        if not (self.synthetic or self.real):
            raise ManyviewError("nothing to evaluate: --no-synthetic needs --real FOLDER")
        if self.teacher_name is not None and self.teacher_name not in TEACHERS:
            raise ManyviewError(f"--teacher-name must be one of {', '.join(TEACHERS)}, got {self.teacher_name!r}")
        check_output_file(self.out)
        for folder in self.real:
            if not folder.is_dir():
                raise ManyviewError("--real needs a reconstruction folder (manyview reconstruct --model colmap)",
                                    folder)
        if self.threads:
            torch.set_num_threads(self.threads)
        model, source = _condense_model(self.weights)
        if model is None and not self.teacher:
            raise ManyviewError("nothing to evaluate: no ConDense weights (pass --weights) and --no-teacher")
        teacher = None
        if self.teacher:
            name = self.teacher_name or (model.config.teacher if model is not None else DEFAULT_TEACHER)
            teacher = load_teacher(name, self.teacher_weights)
        methods = ev.model_methods(model, teacher)
        report = {"weights": source, "teacher": None if teacher is None else teacher.name,
                  "config": {k: (str(v) if isinstance(v, Path) else
                                 [str(x) for x in v] if isinstance(v, tuple) else v)
                             for k, v in asdict(self).items()}}
        syn = ev.SyntheticFeatureEval(scenes=self.scenes, views=self.views, size=self.size, points=self.points,
                                      max_keypoints=self.keypoints) if self.synthetic else None
        total = (2 * self.scenes if self.synthetic else 0) + len(self.real)
        bar = progress(total=total, desc="features")
        try:
            report.update(ev.evaluate_features(methods, syn, self.real,
                                               ev.RealFeatureEval(short_side=self.size, max_views=self.max_views),
                                               progress=lambda _: bar.update(1)))
        finally:
            bar.close()
        print(f"\n{source}\n")
        print(ev.markdown(report))
        with atomic_open(self.out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
            fh.write("\n")
        print(f"\nwrote {self.out}")


def _condense_model(weights: Path | None):
    """(ConDense model or None, where it came from)."""
    from manyview.features.condense import ConDense

    if weights is not None:
        if not weights.exists():
            raise ManyviewError("ConDense weights not found", weights)
        return ConDense.from_pretrained(weights), str(weights)
    from manyview.assets import bundled_model_dir

    bundled = bundled_model_dir("condense")
    if bundled is None:
        return None, "no ConDense weights (bundled or --weights): the teacher alone"
    return ConDense.from_pretrained(bundled), f"bundled ({bundled})"


Eval = Union[Annotated[EvalReconstruction, tyro.conf.subcommand("reconstruction", default=EvalReconstruction())],
             Annotated[EvalNVS, tyro.conf.subcommand("nvs", default=EvalNVS())],
             Annotated[EvalRepository, tyro.conf.subcommand("repository", default=EvalRepository())],
             Annotated[EvalFeatures, tyro.conf.subcommand("features", default=EvalFeatures())]]
"""The ``eval`` command: ``manyview eval {reconstruction,nvs,repository,features} [options]``."""
