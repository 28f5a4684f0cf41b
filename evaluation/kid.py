"""Kernel inception distance (Binkowski et al. 2018, "Demystifying MMD GANs"): the squared maximum mean
discrepancy with the cubic polynomial kernel `k(x, y) = (x . y / d + 1)^3` on features of dimension `d`,

    KID = 1/(m(m-1)) sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] - 2/m^2 sum_{i, j} k(x_i, y_j),

unbiased at any sample count (its expectation is the population MMD^2, 0 for equal distributions, so a
value may come out slightly negative), averaged over `subsets` random subsets of `m` features of each set,
as torch-fidelity computes it (`kid_features_to_metric`, which this calls: 100 subsets of 1000 by default,
`m` here lowered to the smaller set's size when that is smaller)."""
from __future__ import annotations

import numpy as np
import torch

SUBSETS, SUBSET_SIZE, SEED = 100, 1000, 2020  # torch-fidelity's defaults (kid_subsets, kid_subset_size, rng_seed)


def kid(features_1, features_2, subsets: int = SUBSETS, subset_size: int = SUBSET_SIZE,
        seed: int = SEED) -> tuple[float, float]:
    """`(mean, std)` of the unbiased KID over `subsets` subsets of `min(subset_size, n_1, n_2)` rows of
    each (n, d) feature set (float64); the subsets are drawn by numpy's `RandomState(seed)`."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    f1, f2 = (torch.as_tensor(np.asarray(f), dtype=torch.float64).cpu() for f in (features_1, features_2))
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"KID needs two (n, d) feature sets of one d, got {tuple(f1.shape)} and {tuple(f2.shape)}")
    size = min(subset_size, len(f1), len(f2))
    if size < 2 or subsets < 1:
        raise ValueError(f"KID needs subsets of at least 2 features and at least 1 subset, got "
                         f"{size} features ({len(f1)} and {len(f2)} given) and {subsets} subsets")
    out = kid_features_to_metric(f1, f2, kid_subsets=subsets, kid_subset_size=size, rng_seed=seed, verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]
