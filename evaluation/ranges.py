"""Numbers that carry their noise: a generator scored on `k` disjoint seed ranges (FD and KID on each),
the mean and spread over the ranges, and paired ratios to a reference generator (the same seeds for both,
a ratio per range, then their mean and spread). A difference within the spread is a tie
(docs/conventions.md §7: one range's FD-digits is good to about ±25%)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .fid import data_features, features_of
from .frechet import FeatureStats, frechet_distance
from .kid import SUBSETS, kid

STARTS = (100_000, 200_000, 300_000)  # the held-out ranges: away from calibration (0-999) and tuning (900000..)


def moments(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The mean and unbiased covariance of (n, d) features (float64, `FeatureStats`)."""
    stats = FeatureStats(features.shape[1])
    stats.update(features)
    return stats.mu_sigma()


@dataclass(frozen=True)
class Reference:
    """What samples are scored against: the mean and covariance of the reference features (FD) and the
    features themselves (KID)."""
    mu: np.ndarray
    sigma: np.ndarray
    features: torch.Tensor

    @classmethod
    def of(cls, features: torch.Tensor) -> "Reference":
        return cls(*moments(features), features.double().cpu())


def reference_of(images, extractor, batch_size: int = 256, device=None) -> Reference:
    """The Reference of a data set (the 1797 digits) in the feature space of `extractor`."""
    return Reference.of(data_features(images, extractor, batch_size, device))


def seed_ranges(starts, n: int) -> list[range]:
    """`range(start, start + n)` for each start; overlapping ranges are refused (`check_disjoint`)."""
    if n < 2:
        raise ValueError(f"a seed range needs at least 2 samples, got n={n}")
    return check_disjoint([range(int(s), int(s) + n) for s in starts])


def check_disjoint(ranges: list[range]) -> list[range]:
    """`ranges`, refused in one line naming two that overlap."""
    ordered = sorted(ranges, key=lambda r: r.start)
    for a, b in zip(ordered, ordered[1:]):
        if b.start < a.stop:
            raise ValueError(f"the seed ranges {a.start}-{a.stop - 1} and {b.start}-{b.stop - 1} overlap: "
                             f"start them at least {len(a)} apart")
    return ranges


def score(features: torch.Tensor, reference: Reference, with_kid: bool = True, kid_subsets: int = SUBSETS) -> dict:
    """`{"fd", "kid"}` of (n, d) sample features against `reference` (KID only `with_kid`)."""
    scores = {"fd": frechet_distance(*moments(features), reference.mu, reference.sigma)}
    if with_kid:
        scores["kid"] = kid(features, reference.features, subsets=kid_subsets)[0]
    return scores


def score_seeds(sample_fn, seeds, extractor, reference: Reference, batch_size: int = 64, device=None,
                accelerator=None, with_kid: bool = True, kid_subsets: int = SUBSETS) -> dict:
    """`score` of the samples of `seeds` (`fid.features_of`)."""
    features = features_of(sample_fn, seeds, extractor, accelerator, batch_size, device, progress=False)
    return score(features, reference, with_kid, kid_subsets)


def score_ranges(sample_fn, ranges, extractor, reference: Reference, **options) -> list[dict]:
    """`score_seeds` on each seed range (`seed_ranges`), in order; `options`: score_seeds's keywords."""
    return [score_seeds(sample_fn, seeds, extractor, reference, **options) for seeds in ranges]


def summary(values) -> dict:
    """`{"mean", "std" (ddof 1; 0 for one value), "min", "max", "values"}` of per-range values."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("a summary needs at least one value, got none")
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std, "min": min(values), "max": max(values), "values": values}


def spread(per_range: list[dict], metrics=("fd", "kid")) -> dict:
    """`{metric: summary}` over the ranges' scores (`score` dicts, one per range)."""
    return {m: summary([s[m] for s in per_range]) for m in metrics if all(m in s for s in per_range)}


def paired_ratios(candidate: list[dict], reference: list[dict], metrics=("fd", "kid")) -> dict:
    """`{metric: summary of candidate / reference per range}`, the two scored on the same seed ranges in
    the same order; a reference value at or below 0 (an unbiased KID can be) gives a NaN ratio."""
    if len(candidate) != len(reference):
        raise ValueError(f"paired ratios need the same seed ranges: {len(candidate)} scores against "
                         f"{len(reference)}")
    return {m: summary([c[m] / r[m] if r[m] > 0 else float("nan") for c, r in zip(candidate, reference)])
            for m in metrics if all(m in s for s in candidate + reference)}


def carried(scores: list[dict], converged: list[dict] | None = None) -> dict:
    """The scores of a generator on `k` seed ranges with their noise: `{"ranges": scores, metric:
    summary, ..., "ratio": {metric: summary}}`, the ratio paired with `converged`'s scores on the same
    ranges (no ratio without them)."""
    out = {"ranges": scores, **spread(scores)}
    return out if converged is None else {**out, "ratio": paired_ratios(scores, converged)}


def tie(a: dict, b) -> bool:
    """Whether summaries `a` and `b` (or a plain number `b`) differ by no more than the larger spread (std)."""
    b = b if isinstance(b, dict) else {"mean": float(b), "std": 0.0}
    return abs(a["mean"] - b["mean"]) <= max(a["std"], b["std"])


def shown(s: dict, digits: int = 3) -> str:
    """A summary as `mean ± std`."""
    return f"{s['mean']:.{digits}g} ± {s['std']:.{digits - 1}g}"
