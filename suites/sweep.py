"""What the suites share: the rows of a sweep (a sampler at each NFE target on a grid), the dopri5
row, the analytic mixture, and writing a suite's section and results."""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from importlib.resources import files
from pathlib import Path

import torch
import yaml

from fewstep import samplers
from fewstep.samplers.solvers import resolve_options
from fewstep.evaluation import frechet_of
from fewstep.evaluation.generators import SamplerFn
from fewstep.evaluation.report import section
from fewstep.flows import straightness
from fewstep.samplers import seeded_noise
from fewstep.samplers.schedules import RHO
from fewstep.tuning import skiptune_tables

NFE_TARGETS = [3, 4, 5, 6, 8, 10, 20, 50]
SAMPLERS = ["ddim", "euler", "heun", "dpmpp_2m", "ipndm"]
REFLOW_NFE = [1, 2, 3, 5, 10]
REFLOW_SAMPLERS = ["euler", "dpmpp_2m", "ipndm"]
SKIPTUNE_SAMPLERS = ["ddim", "heun", "dpmpp_2m", "ipndm"]
SKIPTUNE_NFE = [5, 10, 20]
# The default grid (get_sigmas keywords; sigma_min, sigma_max None: the model's range): Karras rho 7, a
# last step to 0.
DEFAULT_GRID = {"kind": "karras", "rho": RHO, "sigma_min": None, "sigma_max": None, "final_sigmas_type": "zero"}
# A flow's own grid: uniform in t from the model's sigma_max (t = 0.999; 1e8 for a one-step model) to its
# sigma_min (t = 0.002), where the sample is returned: with a last step to 0 instead, 2 Euler steps would
# spend their second on t in [0.002, 0] (the grid of FlowMatchEulerDiscreteScheduler).
FLOW_GRID = {"kind": "flow_uniform", "rho": RHO, "sigma_min": None, "sigma_max": None, "final_sigmas_type": "sigma_min"}


def grid_of(grid: dict | None) -> dict:
    """DEFAULT_GRID with the keys of `grid` changed; an unknown key is refused."""
    unknown = set(grid or {}) - set(DEFAULT_GRID)
    if unknown:
        raise ValueError(f"grid keys {sorted(unknown)} unknown: use {list(DEFAULT_GRID)}")
    return {**DEFAULT_GRID, **(grid or {})}


def gmm_model() -> samplers.GMMDenoiser:
    """The analytic 2-D mixture of `conf/model/gmm.yaml`."""
    config = yaml.safe_load((files("fewstep.conf") / "model" / "gmm.yaml").read_text())
    config.pop("_target_")
    return samplers.GMMDenoiser(**config)


def mixture_truth(model, seeds) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise of `seeds` and its exact ODE solution on the mixture `model` (dopri5, rtol = atol = 1e-8)."""
    noise = seeded_noise(seeds, model.sample_shape)
    sigmas = samplers.get_sigmas("karras", 2, model.sigma_min, model.sigma_max)
    return noise, samplers.sample("dopri5", model, noise, sigmas, rtol=1e-8, atol=1e-8).double()


def default_grid(name: str, denoiser, nfe: int) -> torch.Tensor:
    """Today's default: Karras rho 7 over the model's range, a last step to 0, the most steps within `nfe`."""
    steps = samplers.steps_for_nfe(name, nfe)
    return samplers.get_sigmas("karras", steps, denoiser.sigma_min, denoiser.sigma_max)


def plain_rows(names, targets):
    """(label, sampler, options, NFE targets, Skip-Tuning settings) rows of the samplers as they are."""
    return [(name, name, {}, targets, None) for name in names]


def skiptune_rows(denoiser, names, targets):
    """Rows with Skip-Tuning at the factors calibrated for the model (`tuning.skiptune_tables`)."""
    return [(f"{name}+skiptune", name, {}, [t for t in targets if t in SKIPTUNE_NFE], True)
            for name in names if skiptune_tables.default_path(denoiser, name).is_file()]


def sweep(denoiser, rows, seeds, shape, batch_size, extractor, reference, measure, grid):
    """Run every row at each of its NFE targets on the grid `grid` (get_sigmas keywords; sigma_min,
    sigma_max None: the model's range): the FD of its samples to `reference`, and
    `measure(samples)`, a dict of further metrics."""
    results = []
    for label, name, options, targets, skip in rows:
        done = {}  # steps -> row: targets that round to the same step count (Heun: odd NFE only) run once
        ends_at_zero = grid["final_sigmas_type"] == "zero"
        for target in targets:
            if samplers.SOLVERS[name].nfe(1, ends_at_zero, resolve_options(name, options)) > target:
                continue  # one step costs more (heun on a grid ending at sigma_min at NFE 1): the cell stays empty
            steps = samplers.steps_for_nfe(name, target, options, ends_at_zero=ends_at_zero)
            if steps in done:
                results.append({**done[steps], "target_nfe": target})
                continue
            sigmas = samplers.get_sigmas(grid["kind"], steps, grid["sigma_min"] or denoiser.sigma_min,
                                         grid["sigma_max"] or denoiser.sigma_max, rho=grid["rho"],
                                         final_sigmas_type=grid["final_sigmas_type"])
            nfe = samplers.nfe(name, sigmas, options)
            sample_fn, kept = SamplerFn(name, denoiser, sigmas, shape, options=options), []

            def keep(seeds):
                kept.append(sample_fn(seeds))
                return kept[-1]

            start = time.perf_counter()
            tuning = samplers.skip_tuning(denoiser, *skiptune_tables.factors(denoiser, name, nfe)[:2]) if skip \
                else nullcontext()
            with tuning:
                fd = frechet_of(keep, seeds, extractor, reference, batch_size=batch_size)
            row = {"label": label, "sampler": name, "options": options, "target_nfe": target, "steps": steps,
                   "nfe": nfe, "seconds": round(time.perf_counter() - start, 2), "fd": fd,
                   **measure(torch.cat(kept))}
            done[steps] = row
            print(json.dumps({k: v for k, v in row.items() if not torch.is_tensor(v)}), flush=True)
            results.append(row)
    return results


def adaptive_row(label, denoiser, seeds, shape, batch_size, extractor, reference, options=None) -> dict:
    """dopri5 (torchdiffeq) from the model's sigma_max to 0: its FD and the NFE it took per sample."""
    sigmas = samplers.get_sigmas("karras", 2, denoiser.sigma_min, denoiser.sigma_max)  # [sigma_max, sigma_min, 0]
    sample_fn = SamplerFn("dopri5", denoiser, sigmas, shape, options=options)
    start = time.perf_counter()
    fd = frechet_of(sample_fn, seeds, extractor, reference, batch_size=batch_size)
    row = {"label": label, "sampler": "dopri5", "options": options or {}, "target_nfe": "dopri5",
           "nfe": round(sample_fn.nfe, 1), "seconds": round(time.perf_counter() - start, 2), "fd": fd}
    print(json.dumps(row), flush=True)
    return row


def split_adaptive(results) -> tuple[list[dict], str]:
    """The fixed-grid rows (for the NFE table and plot), and the dopri5 rows as markdown table rows."""
    adaptive = "\n".join(f"| {r['label']} | {r['fd']:.3g} | {r['nfe']:g} |" for r in results
                          if r["target_nfe"] == "dopri5")
    return [r for r in results if r["target_nfe"] != "dopri5"], adaptive


def flow_straightness(denoiser, seed: int, n: int = 500, steps: int = 100) -> float:
    """`flows.straightness` of a FlowDenoiser's velocity network on `n` noises of seed `seed`."""
    noise = torch.randn(n, *denoiser.sample_shape, generator=torch.Generator().manual_seed(seed))
    return straightness(denoiser.velocity_model, noise, steps=steps, time_scale=denoiser.time_scale)


def skiptune_summary(results) -> str:
    """One sentence per Skip-Tuning row: the relative change of FD against the plain sampler."""
    parts = []
    for r in results:
        if r["label"].endswith("+skiptune"):
            plain = next(p for p in results if p["label"] == r["sampler"] and p["target_nfe"] == r["target_nfe"])
            parts.append(f"{r['sampler']} NFE {r['nfe']}: {plain['fd']:.2f} -> {r['fd']:.2f} "
                         f"({100 * (r['fd'] - plain['fd']) / plain['fd']:+.0f}%)")
    return ("Change with Skip-Tuning: " + "; ".join(parts) + ".") if parts else ""


def output_dir(out_dir) -> Path:
    """`out_dir` as a Path, made if missing."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def write_suite(out_dir, name: str, title: str, body: str, results: list[dict], pictures) -> list[Path]:
    """Write `<name>.md` (the section) and `<name>.json` (the results) into `out_dir`; return those
    paths and the pictures the suite drew."""
    md, results_json = Path(out_dir) / f"{name}.md", Path(out_dir) / f"{name}.json"
    md.write_text(section(title, body))
    results_json.write_text(json.dumps(results, indent=1) + "\n")
    return [md, results_json, *map(Path, pictures)]
