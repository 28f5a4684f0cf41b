"""The reference statistics an evaluation config asks for (`reference=`): a data set's, cached;
the exact moments of the analytic mixture; or a saved `.npz`."""
from __future__ import annotations

import hashlib
from pathlib import Path

from .fid import data_stats, gmm_stats
from .frechet import load_stats


def cache_path(data, extractor: str, weights, cache_dir) -> Path:
    """The file that caches the statistics of the data set `data` (a conf/data config) in the feature
    space `extractor`: named by the data set's class, a hash of its config and of the weights file
    (path, size, modification time), and the extractor."""
    from omegaconf import OmegaConf

    weights = Path(weights).expanduser() if weights else None
    weights_id = f"{weights.resolve()}:{weights.stat().st_size}:{weights.stat().st_mtime_ns}" if weights else ""
    key = hashlib.sha1((OmegaConf.to_yaml(data) + weights_id).encode()).hexdigest()[:10]
    return Path(cache_dir) / f"{data._target_.rsplit('.', 1)[-1]}-{key}-{extractor}.npz"


def reference_stats(cfg, model, extractor, accelerator=None, device=None):
    """`mu`, `sigma` of `cfg.reference` (evaluation.config.EvalConfig): "data" (the data set
    `cfg.data`, cached under `cfg.cache_dir`; with several processes the main one fills the cache
    and the others read it), "analytic" (`model` a GMMDenoiser, `cfg.extractor` raw), or a path."""
    from ..samplers import GMMDenoiser

    if cfg.reference == "analytic":
        if not isinstance(model, GMMDenoiser) or cfg.extractor != "raw":
            raise ValueError("reference=analytic needs model=gmm and extractor=raw")
        return gmm_stats(model)
    if cfg.reference != "data":
        return load_stats(cfg.reference)
    if cfg.data is None:
        raise ValueError("reference=data needs a data set (data=...)")
    from hydra.utils import instantiate

    cache = cache_path(cfg.data, cfg.extractor, cfg.extractor_weights, cfg.cache_dir)
    if accelerator is None or accelerator.is_main_process:
        data_stats(instantiate(cfg.data), extractor, cache, device=device)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return load_stats(cache)
