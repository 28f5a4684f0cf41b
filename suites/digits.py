"""The embedded digits DDPM: FD-digits of each sampler, with and without Skip-Tuning, against NFE,
and sample grids at one NFE."""
from __future__ import annotations

from pathlib import Path

import torch

from fewstep.evaluation import get_extractor
from fewstep.evaluation.fid import accumulate, data_stats, fd_to
from fewstep.evaluation.report import nfe_plot, nfe_table, side_by_side
from fewstep.samplers import DiffusersUNetDenoiser
from fewstep.suites.sweep import (NFE_TARGETS, SAMPLERS, SKIPTUNE_SAMPLERS, grid_of, output_dir, plain_rows,
                                  skiptune_rows, skiptune_summary, sweep, write_suite)
from fewstep.training.data import digits as digits_data


@torch.no_grad()
def digits(out_dir, *, samplers=SAMPLERS, nfe=NFE_TARGETS, num_samples: int = 2000, seed: int = 100_000,
           batch_size: int = 500, grid: dict | None = None) -> list[Path]:
    """Write `digits.md`, `digits.json`, `digits_fd.png` and `digits_grids_nfe<N>.png` (N: 5 if it is a
    target, else the first) into `out_dir`; return their paths."""
    out_dir = output_dir(out_dir)
    denoiser = DiffusersUNetDenoiser.from_pretrained("digits_ddpm").eval()
    extractor = get_extractor("digits")
    real = digits_data()
    reference = data_stats(real, extractor)
    seeds = range(seed, seed + num_samples)
    half_fd = fd_to(reference, accumulate(real[: len(real) // 2].split(256), extractor))
    rows = plain_rows(samplers, nfe) + skiptune_rows(denoiser, [s for s in SKIPTUNE_SAMPLERS if s in samplers], nfe)
    results = sweep(denoiser, rows, seeds, denoiser.sample_shape, batch_size, extractor, reference,
                    lambda x: {"grid": x[:16]}, grid_of(grid))
    grid_nfe = 5 if 5 in nfe else nfe[0]
    grids = {f"{r['label']} (NFE {r['nfe']})": r["grid"] for r in results if r["target_nfe"] == grid_nfe}
    pictures = [side_by_side(grids, out_dir / f"digits_grids_nfe{grid_nfe}.png")]
    for r in results:
        del r["grid"]
    pictures.append(nfe_plot(results, "fd", out_dir / "digits_fd.png", "digits DDPM: FD-digits"))
    body = (f"The embedded digits DDPM (`assets/digits_ddpm`), {num_samples} samples (the same seeds for every "
            f"cell), FD-digits against all 1797 digits. For scale: the first half of the real digits (898 images) "
            f"scores {half_fd:.2f} against the whole set.\n\n"
            f"{nfe_table(results, 'fd', nfe)}\n\n"
            f"`+skiptune` rows: Skip-Tuning (rho_top 1) at the rho_bottom calibrated per NFE in "
            f"`assets/digits_ddpm/skiptune/<sampler>.json` by `scripts/calibrate_skiptune.py` on 1000 samples of seeds "
            f"0-999; these rows use seeds {seed}-{seed + num_samples - 1}, so the choice of rho is "
            f"not scored on the samples that picked it. {skiptune_summary(results)}\n\n"
            f"![FD-digits](benchmarks/digits_fd.png)\n\n"
            f"Samples at NFE {grid_nfe}, the same seeds in every panel:\n\n"
            f"![grids](benchmarks/digits_grids_nfe{grid_nfe}.png)")
    return write_suite(out_dir, "digits", "Digits DDPM (FD-digits)", body, results, pictures)
