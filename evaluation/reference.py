"""The reference statistics an evaluation is measured against: a data set's (cached in a file), the
exact moments of the analytic mixture, or a saved `.npz`."""
from __future__ import annotations

import logging
from pathlib import Path

from ..samplers import GMMDenoiser
from .fid import data_stats, gmm_stats
from .frechet import load_stats

log = logging.getLogger(__name__)


def reference_stats(reference: str, extractor, extractor_name: str, model=None, make_data=None, cache=None,
                    accelerator=None, device=None):
    """`mu`, `sigma` of `reference`: "data" (the data set `make_data()` in the feature space of
    `extractor`, cached in the file `cache`; with several processes the main one fills the cache and
    the others read it), "analytic" (`model` a GMMDenoiser, `extractor_name` raw), or a `.npz` path."""
    if reference == "analytic":
        if not isinstance(model, GMMDenoiser) or extractor_name != "raw":
            raise ValueError("reference=analytic needs model=gmm and extractor=raw")
        return gmm_stats(model)
    if reference != "data":
        return load_stats(reference)
    if make_data is None:
        raise ValueError("reference=data needs a data set (data=...)")
    if (accelerator is None or accelerator.is_main_process) and not (cache is not None and Path(cache).is_file()):
        log.info(f"reference statistics of the data ({extractor_name} features): {cache}")
        data_stats(make_data(), extractor, cache, device=device)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return load_stats(cache)
