"""Our Fréchet distance against pytorch-fid's on 2048-d statistics: agreement and speed."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from fewstep.evaluation import FeatureStats, frechet_distance
from fewstep.suites.sweep import output_dir, write_suite


def correlated_stats(dim: int = 2048, count: int = 6000) -> list[tuple]:
    """(mu, sigma) of `count` correlated Gaussian features in `dim` dimensions, at shifts 0 and 0.1 (seed 0)."""
    rng = np.random.default_rng(0)
    stats = []
    for shift in (0.0, 0.1):
        s = FeatureStats(dim)
        f = rng.standard_normal((count, dim)) @ (rng.standard_normal((dim, dim)) / 45) + shift
        s.update(torch.from_numpy(f))
        stats.append(s.mu_sigma())
    return stats


def fd_speed(out_dir, *, repeats: int = 3, dim: int = 2048, count: int = 6000) -> list[Path]:
    """Time both Fréchet distances `repeats` times, interleaved, and compare their values: write
    `fd-speed.md` and `fd-speed.json` into `out_dir`; return their paths."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    out_dir = output_dir(out_dir)
    (m1, s1), (m2, s2) = correlated_stats(dim, count)
    timings = {"ours": [], "pytorch-fid": []}
    values = {}
    for _ in range(repeats):
        for label, fn in (("ours", frechet_distance), ("pytorch-fid", calculate_frechet_distance)):
            start = time.perf_counter()
            values[label] = float(fn(m1, s1, m2, s2))
            timings[label].append(time.perf_counter() - start)
    ours, theirs = (float(np.median(timings[k])) for k in ("ours", "pytorch-fid"))
    rel = abs(values["ours"] - values["pytorch-fid"]) / abs(values["pytorch-fid"])
    body = ("| | FD | median seconds |\n|---|---|---|\n"
            f"| fewstep `frechet_distance` | {values['ours']:.6f} | {ours:.3f} |\n"
            f"| pytorch-fid `calculate_frechet_distance` | {values['pytorch-fid']:.6f} | {theirs:.3f} |\n\n"
            f"{dim}-d statistics of {count} correlated Gaussian features each, {repeats} runs interleaved. "
            f"Relative difference {rel:.2e}; ours is {theirs / ours:.1f}x faster.")
    return write_suite(out_dir, "fd-speed", "Fréchet distance: agreement and speed", body, [], [])
