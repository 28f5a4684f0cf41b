"""Searched schedules against the default grid: FD-digits of each sampler on both grids of the
digits DDPM, and the mixture's error against the exact ODE on grids searched here."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from fewstep import samplers as sampling
from fewstep.evaluation import frechet_of, get_extractor
from fewstep.evaluation.fid import data_stats
from fewstep.evaluation.generators import SamplerFn
from fewstep.evaluation.report import nfe_plot, nfe_table
from fewstep.tuning import schedule_tables
from fewstep.tuning.schedule_search import run_search
from fewstep.suites.sweep import SAMPLERS, default_grid, gmm_model, mixture_truth, output_dir, write_suite
from fewstep.training.data import digits

NFE = list(range(3, 11))


def grid_rows(denoiser, names, targets, searched) -> list[tuple[str, str, int, torch.Tensor]]:
    """`(label, sampler, target NFE, sigmas)`: each sampler on the default grid, then on its
    searched grid `searched(name, nfe)` (None: no row) at each target."""
    rows = [(f"{name} karras", name, t, default_grid(name, denoiser, t)) for name in names for t in targets]
    for name in names:
        rows += [(f"{name} searched", name, t, grid) for t in targets if (grid := searched(name, t)) is not None]
    return rows


def searched_grids_table(tables: dict[str, dict], targets) -> str:
    """The searched grids: one row per sampler and NFE, the sigmas and where the search started."""
    lines = ["| sampler | NFE | sigmas | found from | search s |", "|---|---|---|---|---|"]
    for name, entries in tables.items():
        for nfe in targets:
            if nfe in entries:
                e = entries[nfe]
                lines.append(f"| {name} | {nfe} | {', '.join(f'{s:.3g}' for s in e['sigmas'])} | {e['how']} | "
                             f"{e['seconds']:.0f} |")
    return "\n".join(lines)


def digits_rows(denoiser, rows, seeds, extractor, reference, batch_size) -> list[dict]:
    """FD-digits of every `grid_rows` row, once per label and grid (Heun's even NFE reuse the odd one's)."""
    results, done = [], {}
    for label, name, target, sigmas in rows:
        key = (label, tuple(sigmas.tolist()))
        if key not in done:
            start = time.perf_counter()
            fd = frechet_of(SamplerFn(name, denoiser, sigmas, denoiser.sample_shape), seeds, extractor, reference,
                            batch_size=batch_size)
            done[key] = {"label": label, "sampler": name, "nfe": sampling.nfe(name, sigmas), "fd": fd,
                         "seconds": round(time.perf_counter() - start, 2), "sigmas": sigmas.tolist()}
        results.append({**done[key], "target_nfe": target})
        print(json.dumps(results[-1]), flush=True)
    return results


def mixture_rows(names, targets, seeds) -> list[dict]:
    """The mixture's mean distance to the exact ODE solution of the noises of `seeds`, for each sampler on
    the default grid and on a grid searched here (256 noises of seeds 900000.., 256 held out)."""
    model = gmm_model()
    noise, exact = mixture_truth(model, seeds)
    searched = {name: {r.nfe: r.best.sigmas for r in run_search(name, model, targets, num_noises=256,
                                                                 log=lambda line: None)} for name in names}
    results = []
    for label, name, target, sigmas in grid_rows(model, names, targets, lambda name, nfe: searched[name].get(nfe)):
        x = sampling.sample(name, model, noise, sigmas).double()
        results.append({"label": label, "sampler": name, "target_nfe": target, "nfe": sampling.nfe(name, sigmas),
                        "ode_error": (x - exact).norm(dim=1).mean().item()})
    return results


def best_sentence(results, converged: float, names) -> str:
    """The searched grids' gain at NFE 5 and the best rows at NFE 5 and 10, as a sentence ("" without them)."""
    best5 = min((r for r in results if r["target_nfe"] == 5), key=lambda r: r["fd"], default=None)
    best10 = min((r for r in results if r["target_nfe"] == 10), key=lambda r: r["fd"], default=None)
    fd5 = {r["label"]: r["fd"] for r in results if r["target_nfe"] == 5}
    ratios = ", ".join(f"{name} {fd5[f'{name} karras'] / fd5[f'{name} searched']:.1f}x" for name in names
                       if f"{name} searched" in fd5)
    bests = "; ".join(part for part in (
        best5 and (f"At NFE 5 the searched grid improves FD by {ratios} (default / searched). Best at NFE 5: "
                   f"{best5['label']} {best5['fd']:.2f} ({best5['fd'] / converged:.2f}x converged)"),
        best10 and f"at NFE 10: {best10['label']} {best10['fd']:.2f} ({best10['fd'] / converged:.2f}x)") if part)
    return f" {bests[0].upper()}{bests[1:]}." if bests else ""


@torch.no_grad()
def schedules(out_dir, *, samplers=SAMPLERS, nfe=NFE, num_samples: int = 2000, seed: int = 100_000,
              batch_size: int = 500, gmm_samples: int = 10000) -> list[Path]:
    """Write `schedules.md`, `schedules.json`, `schedules_fd.png` and `schedules_gmm.png` into `out_dir`;
    return their paths."""
    out_dir = output_dir(out_dir)
    denoiser = sampling.from_pretrained("digits_ddpm").eval()
    extractor, seeds = get_extractor("digits"), range(seed, seed + num_samples)
    reference = data_stats(digits(), extractor)
    tables = {name: schedule_tables.entries(schedule_tables.default_path(denoiser, name)) for name in samplers}

    def shipped(name, target):  # as schedule.kind=auto with nfe=N: the best searched grid within the budget
        if not tables[name]:
            return None
        found = schedule_tables.best_within(schedule_tables.default_path(denoiser, name), denoiser, name, {}, target)
        return None if found is None else found[1]

    results = digits_rows(denoiser, grid_rows(denoiser, samplers, nfe, shipped), seeds, extractor, reference,
                          batch_size)
    converged = frechet_of(SamplerFn("dpmpp_2m", denoiser, default_grid("dpmpp_2m", denoiser, 50),
                                     denoiser.sample_shape), seeds, extractor, reference, batch_size=batch_size)
    pictures = [nfe_plot(results, "fd", out_dir / "schedules_fd.png", "digits DDPM: default vs searched grids")]
    gmm_results = mixture_rows(samplers, nfe, range(seed, seed + gmm_samples))
    pictures.append(nfe_plot(gmm_results, "ode_error", out_dir / "schedules_gmm.png", "mixture: error vs exact ODE"))
    body = (f"Each sampler on today's default grid (`karras`: rho 7 over the model's range 0.01-157, a last step to "
            f"0, the most steps within the NFE) and on its searched grid (`searched`: the table "
            f"`assets/digits_ddpm/schedules/<sampler>.json` that `schedule.kind=auto` samples on, made by "
            f"`python scripts/search_schedule.py sampler=<sampler> write=true`: the lowest distance to the dopri5 "
            f"solution on 64 noises of seeds 900000-900063, checked on the next 64). "
            f"FD-digits of {num_samples} samples, seeds {seed}-{seed + num_samples - 1} (held "
            f"out from the search), against the 1797 digits. A cell's NFE in brackets: fewer were spent. On the "
            f"default grid the sampler cannot spend exactly the target (Heun on a grid ending at 0: odd NFE only); "
            f"on the searched grids `schedule.kind=auto` takes the table's best grid within the budget by held-out "
            f"ODE error, which can be a lower NFE's (Heun at an even NFE, dpmpp_2m at 5).\n\n"
            f"{nfe_table(results, 'fd', nfe)}\n\n"
            f"Converged sampling (dpmpp_2m, NFE 50, default grid): FD {converged:.2f}."
            f"{best_sentence(results, converged, samplers)}\n\n"
            f"![FD](benchmarks/schedules_fd.png)\n\n"
            f"The analytic mixture (`conf/model/gmm.yaml`): grids searched here the same way (256 noises of seeds "
            f"900000.., 256 held out), then the mean distance to the exact ODE solution (dopri5, rtol = atol = 1e-8) "
            f"of {gmm_samples} noises of seeds {seed}..:\n\n{nfe_table(gmm_results, 'ode_error', nfe)}"
            f"\n\n![mixture](benchmarks/schedules_gmm.png)\n\nThe shipped digits grids:\n\n"
            f"{searched_grids_table(tables, nfe)}")
    return write_suite(out_dir, "schedules", "Searched schedules against the default grid", body,
                       results + gmm_results, pictures)
