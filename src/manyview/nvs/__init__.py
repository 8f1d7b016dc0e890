"""Novel view synthesis with the LVSM family from files on disk: rendering (:mod:`manyview.nvs.pipeline`) and
evaluation (:mod:`manyview.nvs.evaluate`: the pixelSplat protocol with naive baselines). The networks themselves
are in :mod:`manyview.models.lvsm` and :mod:`manyview.models.efficient_lvsm`; target cameras come from
:func:`manyview.io.dataset.read_cameras` or :meth:`manyview.scene.Cameras.orbit`."""

from manyview.nvs.pipeline import load_nvs_model, load_posed_inputs, render_views

__all__ = ["load_nvs_model", "load_posed_inputs", "render_views"]
