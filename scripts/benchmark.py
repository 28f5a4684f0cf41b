"""The tables this toolkit is judged by: quality against NFE for every sampler.

    python scripts/benchmark.py                              # all suites -> benchmarks/*.md, BENCHMARKS.md
    python scripts/benchmark.py --suite gmm --num-samples 2000

Suites: `gmm` (the analytic 2-D mixture: exact Fréchet distance to the true distribution, and the
mean distance to the exact ODE solution from the same noise), `digits` (FD-digits of the embedded
model against the 1797 digits, plus sample grids at 5 NFE), `fd-speed` (our Fréchet distance
against pytorch-fid's on 2048-d statistics). Schedules: Karras (rho 7) over the model's range
by default; --schedule, --rho, --sigma-min, --sigma-max and --final-sigmas-type change the grid.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fewstep import samplers
from fewstep.evaluation import FeatureStats, frechet_distance, frechet_of, get_extractor
from fewstep.evaluation.fid import accumulate, data_stats, fd_to, gmm_stats
from fewstep.evaluation.generators import SamplerFn
from fewstep.evaluation.report import assemble, nfe_plot, nfe_table, section, side_by_side
from fewstep.samplers.skip_tuning import load_table, skip_tuning_for
from fewstep.training.data import digits
from fewstep.scripts._cli import config_dir

NFE_TARGETS = [3, 4, 5, 6, 8, 10, 20, 50]
SAMPLERS = ["ddim", "euler", "heun", "dpmpp_2m", "ipndm"]


SKIPTUNE_SAMPLERS = ["ddim", "heun", "dpmpp_2m", "ipndm"]
SKIPTUNE_NFE = [5, 10, 20]


def plain_rows(names, targets):
    """(label, sampler, options, NFE targets, Skip-Tuning settings) rows of the samplers as they are."""
    return [(name, name, {}, targets, None) for name in names]


def skiptune_rows(names, targets):
    """Rows with Skip-Tuning at the calibrated factors of conf/sampler/<name>+skiptune.yaml."""
    tables = {name: load_table(name) for name in names}
    return [(f"{name}+skiptune", name, {}, [t for t in targets if t in SKIPTUNE_NFE], skip)
            for name, skip in tables.items() if skip.by_nfe]


def sweep(denoiser, rows, seeds, shape, batch_size, extractor, reference, measure, grid):
    """Run every row at each of its NFE targets on the grid `grid` (get_sigmas keywords; sigma_min,
    sigma_max None: the model's range): the FD of its samples to `reference`, and
    `measure(samples)`, a dict of further metrics."""
    results = []
    for label, name, options, targets, skip in rows:
        done = {}  # steps -> row: targets that round to the same step count (Heun: odd NFE only) run once
        for target in targets:
            steps = samplers.steps_for_nfe(name, target, options, ends_at_zero=grid["final_sigmas_type"] == "zero")
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
            with skip_tuning_for(skip, denoiser, nfe):
                fd = frechet_of(keep, seeds, extractor, reference, batch_size=batch_size)
            row = {"label": label, "sampler": name, "options": options, "target_nfe": target, "steps": steps,
                   "nfe": nfe, "seconds": round(time.perf_counter() - start, 2), "fd": fd,
                   **measure(torch.cat(kept))}
            done[steps] = row
            print(json.dumps({k: v for k, v in row.items() if not torch.is_tensor(v)}), flush=True)
            results.append(row)
    return results


def skiptune_summary(results) -> str:
    """One sentence per Skip-Tuning row: the relative change of FD against the plain sampler."""
    parts = []
    for r in results:
        if r["label"].endswith("+skiptune"):
            plain = next(p for p in results if p["label"] == r["sampler"] and p["target_nfe"] == r["target_nfe"])
            parts.append(f"{r['sampler']} NFE {r['nfe']}: {plain['fd']:.2f} -> {r['fd']:.2f} "
                         f"({100 * (r['fd'] - plain['fd']) / plain['fd']:+.0f}%)")
    return ("Change with Skip-Tuning: " + "; ".join(parts) + ".") if parts else ""




def grid_of(args) -> dict:
    """The grid levers of the command line (get_sigmas keywords)."""
    return {"kind": args.schedule, "rho": args.rho, "sigma_min": args.sigma_min, "sigma_max": args.sigma_max,
            "final_sigmas_type": args.final_sigmas_type}


def suite_gmm(args):
    gmm = instantiate(OmegaConf.load(config_dir() / "model" / "gmm.yaml"), _convert_="all")
    reference = gmm_stats(gmm)
    seeds = range(args.seed, args.seed + args.num_samples)
    exact_sigmas = samplers.get_sigmas("karras", 2, gmm.sigma_min, gmm.sigma_max)
    exact = torch.cat(list(samplers.sample_seeds("dopri5", gmm, seeds, exact_sigmas, gmm.sample_shape,
                                                 args.batch_size, options={"rtol": 1e-8, "atol": 1e-8})))
    raw = get_extractor("raw")
    exact_fd = fd_to(reference, accumulate([exact], raw))

    def measure(x):
        return {"ode_error": (x.double() - exact.double()).norm(dim=1).mean().item()}

    results = sweep(gmm, plain_rows(args.samplers, args.nfe), seeds, gmm.sample_shape, args.batch_size, raw, reference,
                    measure, grid_of(args))
    nfe_plot(results, "fd", Path(args.out_dir) / "gmm_fd.png", "analytic mixture: FD to the truth")
    nfe_plot(results, "ode_error", Path(args.out_dir) / "gmm_ode_error.png", "analytic mixture: error vs exact ODE")
    intro = (f"{args.num_samples} samples of the 2-D mixture in `conf/model/gmm.yaml`, the same seeds for every cell. "
             f"The exact ODE solution (dopri5, rtol = atol = 1e-8) of the same noise has FD {exact_fd:.4f} to the "
             "truth: that is the floor the sample size allows. The Fréchet distance compares only means and "
             "covariances, so on a mixture it can be small for a wrong distribution and need not fall monotonically "
             "with NFE; the distance to the exact ODE solution is the sharper measure of a sampler's error.")
    tables = [f"{title}:\n\n{nfe_table(results, metric, args.nfe)}" for title, metric in (
        ("Fréchet distance to the true mixture (exact moments)", "fd"),
        ("Mean distance to the exact ODE solution from the same noise", "ode_error"))]
    body = "\n\n".join([intro, *tables, "![FD](benchmarks/gmm_fd.png) ![ODE error](benchmarks/gmm_ode_error.png)"])
    return results, "gmm", "Analytic Gaussian mixture", body


def suite_digits(args):
    denoiser = samplers.DiffusersUNetDenoiser.from_pretrained("digits_ddpm").eval()
    extractor = get_extractor("digits")
    real = digits()
    reference = data_stats(real, extractor)
    seeds = range(args.seed, args.seed + args.num_samples)
    half_fd = fd_to(reference, accumulate(real[: len(real) // 2].split(256), extractor))
    rows = plain_rows(args.samplers, args.nfe) + skiptune_rows([s for s in SKIPTUNE_SAMPLERS if s in args.samplers],
                                                               args.nfe)
    results = sweep(denoiser, rows, seeds, denoiser.sample_shape, args.batch_size, extractor, reference,
                    lambda x: {"grid": x[:16]}, grid_of(args))
    grid_nfe = 5 if 5 in args.nfe else args.nfe[0]
    grids = {f"{r['label']} (NFE {r['nfe']})": r["grid"] for r in results if r["target_nfe"] == grid_nfe}
    side_by_side(grids, Path(args.out_dir) / f"digits_grids_nfe{grid_nfe}.png")
    for r in results:
        del r["grid"]
    nfe_plot(results, "fd", Path(args.out_dir) / "digits_fd.png", "digits DDPM: FD-digits")
    body = (f"The embedded digits DDPM (`assets/digits_ddpm`), {args.num_samples} samples (the same seeds for every "
            f"cell), FD-digits against all 1797 digits. For scale: the first half of the real digits (898 images) "
            f"scores {half_fd:.2f} against the whole set.\n\n"
            f"{nfe_table(results, 'fd', args.nfe)}\n\n"
            f"`+skiptune` rows: Skip-Tuning (rho_top 1) at the rho_bottom calibrated per NFE in "
            f"`conf/sampler/<sampler>+skiptune.yaml` by `scripts/calibrate_skiptune.py` on 1000 samples of seeds "
            f"0-999; these rows use seeds {args.seed}-{args.seed + args.num_samples - 1}, so the choice of rho is "
            f"not scored on the samples that picked it. {skiptune_summary(results)}\n\n"
            f"![FD-digits](benchmarks/digits_fd.png)\n\n"
            f"Samples at NFE {grid_nfe}, the same seeds in every panel:\n\n"
            f"![grids](benchmarks/digits_grids_nfe{grid_nfe}.png)")
    return results, "digits", "Digits DDPM (FD-digits)", body


def suite_fd_speed(args):
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(0)
    stats = []
    for shift in (0.0, 0.1):
        s = FeatureStats(2048)
        f = rng.standard_normal((6000, 2048)) @ (rng.standard_normal((2048, 2048)) / 45) + shift
        s.update(torch.from_numpy(f))
        stats.append(s.mu_sigma())
    (m1, s1), (m2, s2) = stats
    timings = {"ours": [], "pytorch-fid": []}
    values = {}
    for _ in range(args.repeats):
        for label, fn in (("ours", frechet_distance), ("pytorch-fid", calculate_frechet_distance)):
            start = time.perf_counter()
            values[label] = float(fn(m1, s1, m2, s2))
            timings[label].append(time.perf_counter() - start)
    ours, theirs = (float(np.median(timings[k])) for k in ("ours", "pytorch-fid"))
    rel = abs(values["ours"] - values["pytorch-fid"]) / abs(values["pytorch-fid"])
    body = ("| | FD | median seconds |\n|---|---|---|\n"
            f"| fewstep `frechet_distance` | {values['ours']:.6f} | {ours:.3f} |\n"
            f"| pytorch-fid `calculate_frechet_distance` | {values['pytorch-fid']:.6f} | {theirs:.3f} |\n\n"
            f"2048-d statistics of 6000 correlated Gaussian features each, {args.repeats} runs interleaved. "
            f"Relative difference {rel:.2e}; ours is {theirs / ours:.1f}x faster.")
    return [], "fd-speed", "Fréchet distance: agreement and speed", body


SUITES = {"gmm": suite_gmm, "digits": suite_digits, "fd-speed": suite_fd_speed}


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", nargs="+", choices=list(SUITES), default=list(SUITES))
    parser.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=SAMPLERS)
    parser.add_argument("--nfe", nargs="+", type=int, default=NFE_TARGETS)
    parser.add_argument("--num-samples", type=int, default=None, help="default: 10000 (gmm), 2000 (digits)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=100_000, help="first seed (away from the calibration's 0-999)")
    parser.add_argument("--repeats", type=int, default=3, help="fd-speed repetitions")
    parser.add_argument("--schedule", choices=["karras", "logsnr", "time_uniform", "flow_uniform"], default="karras")
    parser.add_argument("--rho", type=float, default=7.0, help="karras only")
    parser.add_argument("--sigma-min", type=float, default=None, help="default: the model's own")
    parser.add_argument("--sigma-max", type=float, default=None, help="default: the model's own")
    parser.add_argument("--final-sigmas-type", choices=["zero", "sigma_min"], default="zero",
                        help="zero: a last step to 0; sigma_min: the sample returned at sigma_min")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks"))
    parser.add_argument("--report", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for suite in args.suite:
        suite_args = argparse.Namespace(**vars(args))
        if suite_args.num_samples is None:
            suite_args.num_samples = {"gmm": 10000, "digits": 2000}.get(suite, 0)
        results, name, title, body = SUITES[suite](suite_args)
        (args.out_dir / f"{name}.md").write_text(section(title, body))
        (args.out_dir / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {assemble(args.out_dir, args.report)}")


if __name__ == "__main__":
    main()
