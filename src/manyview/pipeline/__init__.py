"""Photos to a scene you can look at, in one call: poses (COLMAP, Fast3R, Fast3R + bundle adjustment) -> Gaussian
splat -> held-out evaluation -> orbit video and stills -> a self-contained report.html; resumable stage by stage.

``run_pipeline(photos, out, RunConfig(...))`` is what ``manyview run`` calls (:mod:`manyview.pipeline.runner`);
the stages live in :mod:`manyview.pipeline.stages`, the run folder's layout and commit rule in
:mod:`manyview.pipeline.run_folder`, the page in :mod:`manyview.pipeline.report`.
"""

from manyview.pipeline.config import RunConfig
from manyview.pipeline.run_folder import STAGES
from manyview.pipeline.runner import PipelineRun, run_pipeline

__all__ = ["PipelineRun", "RunConfig", "STAGES", "run_pipeline"]
