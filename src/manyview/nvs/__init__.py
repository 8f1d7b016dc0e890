"""Novel view synthesis with the LVSM family from files on disk: rendering (:mod:`manyview.nvs.pipeline`) and
evaluation (:mod:`manyview.nvs.evaluate`: the pixelSplat protocol with naive baselines). The networks themselves
are in :mod:`manyview.models.lvsm` and :mod:`manyview.models.efficient_lvsm`."""

from manyview.nvs.pipeline import (fit_cameras, load_nvs_model, load_posed_inputs, orbit_cameras, read_cameras,
                                   render_views, scene_center)

__all__ = ["fit_cameras", "load_nvs_model", "load_posed_inputs", "orbit_cameras", "read_cameras", "render_views",
           "scene_center"]
