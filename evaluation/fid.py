"""Fréchet distance of any generator's output (a `sample_fn`, evaluation.seeds) to reference
statistics, over any number of processes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .frechet import FeatureStats, frechet_distance, load_stats, save_stats
from .seeds import gather_by_seed, generate, split


@torch.no_grad()
def accumulate(batches, extractor, device=None) -> FeatureStats:
    """Feature statistics of image (or vector) batches in [-1, 1]; images are clamped to [-1, 1]
    first, as writing them to a picture would."""
    stats = None
    for x in batches:
        x = x.to(device)
        features = extractor(x.clamp(-1, 1) if x.ndim == 4 else x)
        if stats is None:
            stats = FeatureStats(features.shape[1], device=device)
        stats.update(features)
    if stats is None:
        raise ValueError("statistics need at least two samples, got 0")
    return stats


def data_stats(images, extractor, cache: Path | None = None, batch_size: int = 256, device=None,
               progress: bool = True):
    """`mu`, `sigma` of a data set's features, read from / written to the `.npz` `cache`; `progress`:
    a bar of the batches on stderr while they are computed."""
    if cache is not None and Path(cache).is_file():
        return load_stats(cache)
    batches = tqdm(DataLoader(images, batch_size=batch_size),  # a tensor or any data set of image tensors
                   desc="reference statistics", unit="batch", leave=False, disable=not progress)
    mu, sigma = accumulate(batches, extractor.to(device), device).mu_sigma()
    if cache is not None:
        save_stats(cache, mu, sigma)
    return mu, sigma


@torch.no_grad()
def data_features(images, extractor, batch_size: int = 256, device=None) -> torch.Tensor:
    """The (n, d) float64 features of a data set (a tensor or any data set of image tensors in [-1, 1])."""
    extractor = extractor.to(device)
    return torch.cat([extractor(x.to(device)).double().cpu() for x in DataLoader(images, batch_size=batch_size)])


def gmm_stats(gmm) -> tuple[np.ndarray, np.ndarray]:
    """The exact mean and covariance of a Gaussian mixture (raw features):
    `mu = sum w_k mu_k`, `Sigma = sum w_k (s_k^2 I + mu_k mu_k^T) - mu mu^T`."""
    w = gmm.weights.cpu().numpy()
    means = gmm.means.reshape(len(w), -1).cpu().numpy()
    var = gmm.stds.cpu().numpy() ** 2
    mu = w @ means
    sigma = np.eye(means.shape[1]) * (w @ var) + (means.T * w) @ means - np.outer(mu, mu)
    return mu, sigma


def fd_to(mu_sigma_ref, stats: FeatureStats) -> float:
    mu, sigma = stats.mu_sigma()
    return frechet_distance(mu, sigma, *mu_sigma_ref)


@torch.no_grad()
def statistics_of(sample_fn, seeds, extractor, accelerator=None, batch_size: int = 64, device=None,
                  progress: bool = True) -> FeatureStats:
    """The feature statistics of the samples of `seeds` (sample `i` from `seeds[i]`): each process
    runs its share of the seeds (`seeds.split`) in batches and sums in float64, then the sums of all
    processes are added, so every process returns the statistics of all the seeds. `progress`: a bar
    of the first process's batches on stderr."""
    processes = 1 if accelerator is None else accelerator.num_processes
    if len(seeds) < 2 * processes:
        who = "one process" if processes == 1 else f"{processes} processes"
        raise ValueError(f"num_samples={len(seeds)} is too few for {who} (need 2 each)")
    mine = split(seeds, accelerator)
    main = accelerator is None or accelerator.is_main_process
    batches = tqdm(generate(sample_fn, mine, batch_size), total=-(-len(mine) // batch_size), desc="samples",
                   unit="batch", leave=False, disable=not (progress and main))
    stats = accumulate(batches, extractor, device)
    return stats if accelerator is None else stats.reduce(accelerator)


def frechet_of(sample_fn, seeds, extractor, reference, accelerator=None, batch_size: int = 64, device=None,
               progress: bool = True) -> float:
    """The Fréchet distance of the samples of `seeds` to `reference` (`mu`, `sigma`) in the feature
    space of `extractor` (statistics_of)."""
    return fd_to(reference, statistics_of(sample_fn, seeds, extractor, accelerator, batch_size, device, progress))


@torch.no_grad()
def features_of(sample_fn, seeds, extractor, accelerator=None, batch_size: int = 64, device=None,
                progress: bool = True) -> torch.Tensor:
    """The (n, d) float64 features of the samples of `seeds` in their order (images clamped to [-1, 1]
    as `accumulate` does): each process runs its share (`seeds.split`) and every process gets all of
    them (`seeds.gather_by_seed`), for a metric that needs the features themselves (KID)."""
    mine = split(seeds, accelerator)
    main = accelerator is None or accelerator.is_main_process
    batches = tqdm(generate(sample_fn, mine, batch_size), total=-(-len(mine) // batch_size), desc="samples",
                   unit="batch", leave=False, disable=not (progress and main))
    extractor = extractor.to(device)
    features = (extractor(x.to(device).clamp(-1, 1) if x.ndim == 4 else x.to(device)).double() for x in batches)
    return gather_by_seed(list(seeds), features, accelerator)
