"""From a checked evaluation or training config to the plain objects the libraries take: the reference
statistics (`reference`, with the cache file keyed by the data config), the networks, objective and data
of a training run (`training_parts`), AMED's distillation objective (`amed_parts`); data of another
sample shape than the networks' is refused before anything is written (`check_shapes`)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ..evaluation.reference import reference_stats
from ..samplers.denoisers import sample_shape_of
from ..training.data import shapes
from .conditioning import conditioned
from .sampling import planned_grid


def cache_path(data, extractor: str, weights, cache_dir) -> Path:
    """The file that caches the statistics of the data set `data` (a conf/data config) in the feature
    space `extractor`: named by the data set's class, a hash of its config and of the weights file
    (path, size, modification time), and the extractor."""
    weights = Path(weights).expanduser() if weights else None
    weights_id = f"{weights.resolve()}:{weights.stat().st_size}:{weights.stat().st_mtime_ns}" if weights else ""
    key = hashlib.sha1((OmegaConf.to_yaml(data) + weights_id).encode()).hexdigest()[:10]
    return Path(cache_dir) / f"{data._target_.rsplit('.', 1)[-1]}-{key}-{extractor}.npz"


def reference(cfg, model, extractor, shape, accelerator=None, device=None):
    """`evaluation.reference.reference_stats` of an evaluation config (`schemas.EvalConfig`), refused
    before any sampling when they have another dimension than the extractor's features of samples of
    `shape` (read from two blank ones)."""
    data = cfg.data
    cache = None if data is None else cache_path(data, cfg.extractor, cfg.extractor_weights, cfg.cache_dir)
    make_data = None if data is None else (lambda: instantiate(data))
    mu, sigma = reference_stats(cfg.reference, extractor, cfg.extractor, model, make_data, cache, accelerator, device)
    with torch.no_grad():
        dim = extractor(torch.zeros(2, *shape, device=device)).shape[1]
    if np.size(mu) != dim:
        raise ValueError(f"reference={cfg.reference} holds statistics of {np.size(mu)} features; extractor="
                         f"{cfg.extractor} gives {dim} for samples of shape {tuple(shape)}")
    return mu, sigma


def model_of(cfg):
    """The model a config's `model` node names (a denoiser, or a one-step generator)."""
    return instantiate(cfg.model, _convert_="all")


def trainer_keywords(cfg) -> dict:
    """`training.Trainer` keywords of a config's `train` node, as plain Python values."""
    return OmegaConf.to_container(cfg.train, resolve=True)


def check_shapes(data, nets) -> None:
    """Refuse, in one line naming both shapes, data whose samples (the first part of a tuple item: a
    pair's sample) have another shape than one of `nets` (`{name: network}`) makes, where the network
    knows its sample shape (`samplers.denoisers.sample_shape_of`): pairs made at 8x8 for a 16x16 UNet."""
    item = shapes(data[0])
    sample = item[0] if item and isinstance(item[0], list) else item
    for name, net in sorted(nets.items()):
        own = sample_shape_of(net)
        if own is not None and isinstance(sample, list) and list(own) != sample:
            where = f" at {data.root}" if hasattr(data, "root") else ""
            raise ValueError(f"the data ({type(data).__name__}{where}) has samples of shape {tuple(sample)}; {name} "
                             f"({type(net).__name__}) makes samples of shape {tuple(own)}: use data and network of "
                             f"one shape")


def training_parts(cfg):
    """The networks (one module, or `{name: module}`), the objective and the data set of `train.py`,
    the data's sample shape checked against the networks' (`check_shapes`)."""
    nets, objective, data = instantiate(cfg.net, _convert_="all"), instantiate(cfg.objective), instantiate(cfg.data)
    check_shapes(data, {"net": nets} if isinstance(nets, torch.nn.Module) else nets)
    return nets, objective, data


def amed_parts(cfg, model_name: str):
    """The model (guided for a conditional one: `conditioning.conditioned`), AMED's distillation objective on
    the grid the config plans (`sampling.planned_grid`; a conditional model's noise `i` conditioned as sample
    `i` of a run), a line saying which grid, and the noise data set of `train_amed.py`, of the model's sample
    shape."""
    given = conditioned(cfg, model_of(cfg).eval())
    denoiser = given.denoiser.eval()
    _, sigmas, how = planned_grid(cfg, denoiser)
    extra = {} if given.keywords is None else {"cond_of": given.cond_of, "conditioning": given.record}
    objective = instantiate(cfg.objective, _partial_=True)(
        denoiser=denoiser, sigmas=sigmas, sampler=cfg.sampler.name, options=dict(cfg.sampler.options), nfe=cfg.nfe,
        model=model_name, **extra)
    shape = denoiser.sample_shape if cfg.data.get("shape") is None else cfg.data.shape
    noise = instantiate(cfg.data, shape=list(shape), **({} if given.keywords is None else {"indexed": True}))
    check_shapes(noise, {"the model": denoiser})
    return denoiser, objective, how if given.line is None else f"{given.line}; {how}", noise
