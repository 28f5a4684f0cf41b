"""The analytic 2-D mixture: the exact Fréchet distance of each sampler's samples to the true
distribution, and their mean distance to the exact ODE solution from the same noise."""
from __future__ import annotations

from pathlib import Path

import torch

from fewstep.evaluation import get_extractor
from fewstep.evaluation.fid import accumulate, fd_to, gmm_stats
from fewstep.evaluation.report import nfe_plot, nfe_table
from fewstep.samplers import get_sigmas, sample_seeds
from fewstep.suites.sweep import NFE_TARGETS, SAMPLERS, grid_of, gmm_model, output_dir, plain_rows, sweep, write_suite


@torch.no_grad()
def gmm(out_dir, *, samplers=SAMPLERS, nfe=NFE_TARGETS, num_samples: int = 10000, seed: int = 100_000,
        batch_size: int = 500, grid: dict | None = None) -> list[Path]:
    """Write `gmm.md`, `gmm.json`, `gmm_fd.png` and `gmm_ode_error.png` into `out_dir`; return their paths."""
    out_dir, model = output_dir(out_dir), gmm_model()
    reference = gmm_stats(model)
    seeds = range(seed, seed + num_samples)
    exact = torch.cat(list(sample_seeds("dopri5", model, seeds, get_sigmas("karras", 2, model.sigma_min,
                                                                           model.sigma_max),
                                        model.sample_shape, batch_size, options={"rtol": 1e-8, "atol": 1e-8})))
    raw = get_extractor("raw")
    exact_fd = fd_to(reference, accumulate([exact], raw))

    def measure(x):
        return {"ode_error": (x.double() - exact.double()).norm(dim=1).mean().item()}

    results = sweep(model, plain_rows(samplers, nfe), seeds, model.sample_shape, batch_size, raw, reference, measure,
                    grid_of(grid))
    pictures = [nfe_plot(results, "fd", out_dir / "gmm_fd.png", "analytic mixture: FD to the truth"),
                nfe_plot(results, "ode_error", out_dir / "gmm_ode_error.png", "analytic mixture: error vs exact ODE")]
    intro = (f"{num_samples} samples of the 2-D mixture in `conf/model/gmm.yaml`, the same seeds for every cell. "
             f"The exact ODE solution (dopri5, rtol = atol = 1e-8) of the same noise has FD {exact_fd:.4f} to the "
             "truth: that is the floor the sample size allows. The Fréchet distance compares only means and "
             "covariances, so on a mixture it can be small for a wrong distribution and need not fall monotonically "
             "with NFE; the distance to the exact ODE solution is the sharper measure of a sampler's error.")
    tables = [f"{title}:\n\n{nfe_table(results, metric, nfe)}" for title, metric in (
        ("Fréchet distance to the true mixture (exact moments)", "fd"),
        ("Mean distance to the exact ODE solution from the same noise", "ode_error"))]
    body = "\n\n".join([intro, *tables, "![FD](benchmarks/gmm_fd.png) ![ODE error](benchmarks/gmm_ode_error.png)"])
    return write_suite(out_dir, "gmm", "Analytic Gaussian mixture", body, results, pictures)
