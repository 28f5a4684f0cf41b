"""The tables this toolkit is judged by: quality against NFE for every sampler.

    python scripts/benchmark.py                              # all suites -> benchmarks/*.md, BENCHMARKS.md
    python scripts/benchmark.py --suite gmm --num-samples 2000

Suites: `gmm` (the analytic 2-D mixture: exact Fréchet distance to the true distribution, and the
mean distance to the exact ODE solution from the same noise), `digits` (FD-digits of the embedded
model against the 1797 digits, plus sample grids at 5 NFE), `reflow` (FD-digits of the shipped
rectified flows digits_rf1, digits_rf2 and digits_rf_1step beside the DDPM at 1-10 NFE, dopri5,
straightness), `reflow-2d` (1-RF, 2-RF and a distilled one-step flow trained here on 2-D moons and
checkerboard: FD to fresh data, straightness, trajectory pictures), `gan-2d` (the ReFlow-derived
GAN against WGAN-GP on 8 Gaussians and moons at equal generator updates: modes covered, FD),
`gan-digits` (the shipped one-step generators and given GAN runs: FD-digits on three seed ranges,
FD against generator updates, sample grids),
`schedules` (each sampler at NFE 3-10 on the default grid and on its searched grid: FD-digits, and the
mixture's error against the exact ODE), `amed` (AMED-Solver and AMED-Plugin, learned and frozen, against the
other samplers in the AMED paper's setting and on their own grids: FD-digits, the mixture's ODE error), `fd-speed` (our Fréchet distance against pytorch-fid's on 2048-d statistics). Schedules: Karras (rho 7) over the model's range
by default; --schedule, --rho, --sigma-min, --sigma-max and --final-sigmas-type change the grid.
"""
import argparse
import csv
import json
import math
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fewstep import samplers
from fewstep.pipelines import FewstepScheduler
from fewstep.assets import names as asset_names
from fewstep.evaluation import FeatureStats, frechet_distance, frechet_of, get_extractor
from fewstep.evaluation.fid import accumulate, data_stats, fd_to, gmm_stats
from fewstep.evaluation.generators import GeneratorFn, SamplerFn
from fewstep.evaluation.report import (assemble, nfe_plot, nfe_table, scatter_panels, section, side_by_side,
                                       trajectory_plot)
from fewstep.flows import (DistillationObjective, MLPVelocity, PairsDataset, RectifiedFlowObjective, straightness,
                           write_pairs)
from fewstep.gan import GANObjective, MLPCritic, MLPGenerator, load_generator
from fewstep.tuning import skiptune_tables
from fewstep.training import Trainer, data2d
from fewstep.training.data import digits
from fewstep.training.init import load_weights
from fewstep.cli.common import config_dir

NFE_TARGETS = [3, 4, 5, 6, 8, 10, 20, 50]
SAMPLERS = ["ddim", "euler", "heun", "dpmpp_2m", "ipndm"]
REFLOW_NFE = [1, 2, 3, 5, 10]
REFLOW_SAMPLERS = ["euler", "dpmpp_2m", "ipndm"]
# A flow's own grid: uniform in t from the model's sigma_max (t = 0.999; 1e8 for a one-step model) to its
# sigma_min (t = 0.002), where the sample is returned: with a last step to 0 instead, 2 Euler steps would
# spend their second on t in [0.002, 0] (the grid of FlowMatchEulerDiscreteScheduler).
FLOW_GRID = {"kind": "flow_uniform", "rho": 7.0, "sigma_min": None, "sigma_max": None, "final_sigmas_type": "sigma_min"}


SKIPTUNE_SAMPLERS = ["ddim", "heun", "dpmpp_2m", "ipndm"]
SKIPTUNE_NFE = [5, 10, 20]


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
    rows = plain_rows(args.samplers, args.nfe) + skiptune_rows(denoiser, [s for s in SKIPTUNE_SAMPLERS if s in args.samplers],
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


def suite_reflow(args):
    extractor = get_extractor("digits")
    reference = data_stats(digits(), extractor)
    seeds = range(args.seed, args.seed + args.num_samples)
    models = {"digits_ddpm": (samplers.DiffusersUNetDenoiser.from_pretrained("digits_ddpm").eval(), grid_of(args)),
              "digits_rf1": (samplers.from_pretrained("digits_rf1").eval(), FLOW_GRID),
              "digits_rf2": (samplers.from_pretrained("digits_rf2").eval(), FLOW_GRID)}
    results, straight = [], {}
    for model, (denoiser, grid) in models.items():
        rows = [(f"{model} {name}", name, {}, args.nfe, None) for name in args.samplers]
        results += sweep(denoiser, rows, seeds, denoiser.sample_shape, args.batch_size, extractor, reference,
                         lambda x: {}, grid)
        if model in args.dopri5:
            results.append(adaptive_row(f"{model} dopri5", denoiser, seeds, denoiser.sample_shape, args.batch_size,
                                        extractor, reference))
        if isinstance(denoiser, samplers.FlowDenoiser):
            straight[model] = flow_straightness(denoiser, args.seed)
    one_step = samplers.from_pretrained("digits_rf_1step", sigma_max=1e8).eval()
    results += sweep(one_step, [("digits_rf_1step euler", "euler", {}, [1], None)], seeds, one_step.sample_shape,
                     args.batch_size, extractor, reference, lambda x: {}, FLOW_GRID)
    plotted, adaptive = split_adaptive(results)
    nfe_plot(plotted, "fd", Path(args.out_dir) / "reflow_fd.png", "digits: DDPM and rectified flows")
    body = (f"{args.num_samples} samples (seeds {args.seed}-{args.seed + args.num_samples - 1}, the same noise for "
            f"every cell), FD-digits against the 1797 digits. The flows sample on their own grid (uniform in t, "
            f"`schedule.kind=flow_uniform schedule.final_sigmas_type=sigma_min`: from t = 0.999 to 0.002, where the "
            f"sample is returned), the DDPM on its default grid "
            f"({args.schedule}). digits_rf_1step is one Euler step from t = 1.\n\n"
            f"{nfe_table(plotted, 'fd', args.nfe)}\n\n"
            + (f"Adaptive `dopri5` (rtol = atol = 1e-5), the NFE it took per sample:\n\n| model | FD | NFE |\n"
               f"|---|---|---|\n{adaptive}\n\n" if adaptive else "")
            + "Straightness (`flows.straightness`, 500 noises, 100 Euler steps; 0: straight paths): "
            + ", ".join(f"{m} {v:.4f}" for m, v in straight.items()) + ".\n\n![FD](benchmarks/reflow_fd.png)")
    return results, "reflow", "Rectified flows on the digits (FD-digits)", body


def train_2d(net, objective, data, out_dir, steps, lr, init=None):
    """Train a 2-D network with `objective` on `data` (one CPU process) and return the exported flow."""
    if init is not None:
        load_weights(net, init)
    with torch.enable_grad():  # main() samples without gradients
        Trainer(net, objective, data, out_dir=out_dir, steps=steps, batch_size=512, lr=lr, warmup_steps=0,
                ema_decay=0.999, checkpoint_every=steps, log_every=max(steps // 10, 1), cpu=True).fit()
    return Path(out_dir) / "model"


def ode_paths(denoiser, noise, steps: int = 100) -> torch.Tensor:
    """The Euler path of a flow in its own coordinates `x_t = x / (1 + sigma)`: (steps + 1, n, 2)."""
    sigmas = samplers.get_sigmas("flow_uniform", steps, denoiser.sigma_min, 1e8)
    xs = []
    final = samplers.sample("euler", denoiser, noise.double(), sigmas,
                            callback=lambda c: xs.append(c["x"] / (1 + c["sigma"])))
    return torch.stack([*xs, final])


def suite_reflow_2d(args):
    seeds = range(args.seed, args.seed + args.num_samples)
    raw = get_extractor("raw")
    work = Path("runs") / "benchmark-reflow-2d"  # the trained flows and pairs, kept for a look (git-ignored)
    results, straight, paths, sections = [], {}, {}, []
    for name in ("moons", "checkerboard"):
        make = getattr(data2d, name)
        train, truth = make(n=20000, seed=0), make(n=args.num_samples, seed=1)
        reference = accumulate([truth], raw).mu_sigma()
        floor = fd_to(reference, accumulate([make(n=args.num_samples, seed=2)], raw))
        torch.manual_seed(0)
        rf1 = train_2d(MLPVelocity(), RectifiedFlowObjective(), train, work / name / "rf1", args.steps_2d, 2e-3)
        flows = {"rf1": samplers.from_pretrained(rf1)}
        pairs = write_pairs(flows["rf1"], "heun", samplers.get_sigmas("flow_uniform", 50, 0.002, 999.0), (2,),
                            range(1_000_000, 1_020_000), work / name / "pairs1", shard_size=5000, batch_size=5000)
        rf2 = train_2d(MLPVelocity(), RectifiedFlowObjective(), PairsDataset(pairs), work / name / "rf2",
                       args.steps_2d // 2, 1e-3, init=rf1)
        flows["rf2"] = samplers.from_pretrained(rf2)
        pairs2 = write_pairs(flows["rf2"], "heun", samplers.get_sigmas("flow_uniform", 50, 0.002, 999.0), (2,),
                             range(1_000_000, 1_020_000), work / name / "pairs2", shard_size=5000, batch_size=5000)
        one = train_2d(MLPVelocity(), DistillationObjective(), PairsDataset(pairs2), work / name / "one_step",
                       args.steps_2d // 2, 1e-3, init=rf2)
        one_step = samplers.from_pretrained(one, sigma_max=1e8)
        for label, denoiser in flows.items():
            rows = [(f"{name} {label} {s}", s, {}, args.nfe, None) for s in args.samplers]
            results += sweep(denoiser, rows, seeds, (2,), args.batch_size, raw, reference, lambda x: {}, FLOW_GRID)
            results.append(adaptive_row(f"{name} {label} dopri5", denoiser, seeds, (2,), args.batch_size, raw,
                                        reference))
            straight[f"{name} {label}"] = flow_straightness(denoiser, args.seed, n=2000)
        results += sweep(one_step, [(f"{name} one-step euler", "euler", {}, [1], None)], seeds, (2,), args.batch_size,
                         raw, reference, lambda x: {}, FLOW_GRID)
        noise = torch.randn(200, 2, generator=torch.Generator().manual_seed(args.seed))
        for label, denoiser in flows.items():
            paths[f"{name}: {label}"] = ode_paths(denoiser, noise)
        sections.append(f"{name}: a second sample of {args.num_samples} points of the data scores {floor:.4f} "
                        f"(the floor the sample size allows)")
        trajectory_plot({k: v for k, v in paths.items() if k.startswith(name)}, truth,
                        Path(args.out_dir) / f"reflow_2d_{name}.png")
    plotted, adaptive = split_adaptive(results)
    body = (f"An MLP velocity field (`net=mlp2d`) per data set, trained here: 1-RF {args.steps_2d} steps on "
            f"20000 points, 2-RF {args.steps_2d // 2} steps on 20000 pairs of the 1-RF (heun, 50 steps) from its "
            f"weights, and a one-step model distilled {args.steps_2d // 2} steps on 20000 pairs of the 2-RF from the "
            f"2-RF's weights (batch 512, EMA 0.999). Fréchet distance (exact moments of the 2-D points) of "
            f"{args.num_samples} samples to {args.num_samples} fresh points of the data; "
            + "; ".join(sections) + ". The Fréchet distance sees only means and covariances: the pictures show "
            "what it misses.\n\n"
            f"{nfe_table(plotted, 'fd', args.nfe)}\n\n| flow | FD | NFE |\n|---|---|---|\n{adaptive}\n\n"
            "Straightness (2000 noises, 100 Euler steps): "
            + ", ".join(f"{m} {v:.4f}" for m, v in straight.items()) + ".\n\n"
            "Euler paths (100 steps) of the same 200 noises before and after one reflow round:\n\n"
            "![moons](benchmarks/reflow_2d_moons.png)\n\n![checkerboard](benchmarks/reflow_2d_checkerboard.png)")
    return results, "reflow-2d", "Rectified flows in 2-D: reflow and one-step distillation", body


def mode_coverage(samples: torch.Tensor, truth: torch.Tensor, modes: int = 8) -> tuple[int, float]:
    """(modes covered, share of good samples) for the 8 Gaussians: the modes are the data's angle
    sectors, a sample is good within 3 standard deviations of its nearest mode's centre, and a mode
    is covered when it holds at least a quarter of its fair share (n / 8) of good samples."""
    sector = (torch.atan2(truth[:, 1], truth[:, 0]) / (2 * math.pi / modes)).round().remainder(modes).long()
    centres = torch.stack([truth[sector == k].mean(0) for k in range(modes)])
    spread = torch.stack([(truth[sector == k] - centres[k]).norm(dim=1).pow(2).mean().div(2).sqrt()
                          for k in range(modes)]).mean()
    distance = torch.cdist(samples.double(), centres.double())
    nearest, which = distance.min(dim=1)
    good = nearest < 3 * spread
    counts = torch.bincount(which[good], minlength=modes)
    return int((counts >= len(samples) / modes / 4).sum()), float(good.double().mean())


def suite_gan_2d(args):
    seeds = range(args.seed, args.seed + args.num_samples)
    raw = get_extractor("raw")
    work = Path("runs") / "benchmark-gan-2d"  # the trained networks (git-ignored)
    objectives = {"reflow_gan": GANObjective(), "wgan_gp": GANObjective("wgan_gp", "plain", penalty_weight=10.0,
                                                                        n_critic=5)}
    results, panels, lines = [], {}, []
    for name in ("gaussians8", "moons"):
        make = getattr(data2d, name)
        train, truth = make(n=20000, seed=0), make(n=args.num_samples, seed=1)
        reference = accumulate([truth], raw).mu_sigma()
        floor = fd_to(reference, accumulate([make(n=args.num_samples, seed=2)], raw))
        lines.append(f"{name}: a second sample of the data scores FD {floor:.4f}")
        for label, objective in objectives.items():
            torch.manual_seed(0)
            nets = {"generator": MLPGenerator(), "critic": MLPCritic()}
            with torch.enable_grad():
                trainer = Trainer(nets, objective, train, out_dir=work / name / label, steps=args.gan_steps,
                                  batch_size=256, lr=1e-4, optimizer="adam", betas=(0.0, 0.9), grad_clip=None,
                                  ema_decay=0.999, networks={"critic": {"ema_decay": None}},
                                  checkpoint_every=args.gan_steps, log_every=args.gan_steps // 10, cpu=True).fit()
            generator = load_generator(work / name / label / "model")
            samples = GeneratorFn(generator)(seeds)
            row = {"data": name, "objective": label, "generator_updates": trainer.updates()["generator"],
                   "fd": fd_to(reference, accumulate([samples], raw))}
            if name == "gaussians8":
                row["modes"], row["good"] = mode_coverage(samples, truth)
            print(json.dumps(row), flush=True)
            results.append(row)
            panels[f"{name}: {label}"] = samples
        scatter_panels({k: v for k, v in panels.items() if k.startswith(name)}, truth,
                       Path(args.out_dir) / f"gan_2d_{name}.png")
    table = ["| data | objective | generator updates | FD | modes covered (of 8) | good samples |",
             "|---|---|---|---|---|---|"]
    for r in results:
        table.append(f"| {r['data']} | {r['objective']} | {r['generator_updates']} | {r['fd']:.4f} | "
                     f"{r.get('modes', '–')} | {100 * r['good']:.1f}% |" if "good" in r else
                     f"| {r['data']} | {r['objective']} | {r['generator_updates']} | {r['fd']:.4f} | – | – |")
    body = (f"An MLP generator and critic (`net=gan2d`) per data set and objective, {args.gan_steps} training steps "
            f"each (5 critic updates per generator update for both, so equal numbers of generator updates), Adam "
            f"1e-4 with betas (0, 0.9) for both networks, batch 256, the generator's EMA (0.999) evaluated. "
            f"`reflow_gan`: the critic loss with the zero-centred penalty of weight 1/2 and the regression "
            f"generator update (K = 1, eta 1); `wgan_gp`: lambda 10. Fréchet distance (exact moments of the 2-D "
            f"points) of {args.num_samples} samples to {args.num_samples} fresh points; "
            + "; ".join(lines) + ". On the 8 Gaussians a sample is good within 3 standard deviations of a mode, "
            "and a mode is covered with at least a quarter of its fair share of good samples.\n\n"
            + "\n".join(table) + "\n\n![8 Gaussians](benchmarks/gan_2d_gaussians8.png)\n\n"
            "![moons](benchmarks/gan_2d_moons.png)")
    return results, "gan-2d", "ReFlow-derived GAN against WGAN-GP in 2-D", body


def suite_gan_digits(args):
    extractor = get_extractor("digits")
    reference = data_stats(digits(), extractor)
    ranges = [range(args.seed + k * args.num_samples, args.seed + (k + 1) * args.num_samples) for k in range(3)]
    generators = {label: load_generator(path) for label, path in
                  (("ReFlow-GAN (digits_gan)", "digits_gan"), ("distilled one-step flow (digits_rf_1step)",
                   "digits_rf_1step"), ("GAN-tuned one-step flow (digits_rf_gan)", "digits_rf_gan"))
                  if path in asset_names()}
    generators.update({f"run {path}": load_generator(Path(path) / "model") for path in args.gan_runs})
    results, grids = [], {}
    for label, generator in generators.items():
        fn = GeneratorFn(generator.eval())
        fds = [frechet_of(fn, seeds, extractor, reference, batch_size=args.batch_size) for seeds in ranges]
        row = {"label": label, "fd": fds, "mean": float(np.mean(fds))}
        print(json.dumps(row), flush=True)
        results.append(row)
        grids[label.split(" (")[0]] = fn(range(16))
    side_by_side(grids, Path(args.out_dir) / "gan_digits_grids.png")
    curves = {path: list(csv.DictReader(open(Path(path) / "metrics.csv"))) for path in args.gan_runs
              if (Path(path) / "metrics.csv").is_file()}
    if curves:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for path, rows in curves.items():
            summary = json.loads((Path(path) / "run.json").read_text())["objective_settings"]
            per_cycle = summary["n_critic"] + summary["generator_steps"]
            ax.plot([int(r["step"]) // per_cycle * summary["generator_steps"] for r in rows],
                    [float(r["fd_digits"]) for r in rows], marker="o", label=f"{summary['critic_loss']} ({path})")
        ax.set(yscale="log", xlabel="generator updates", ylabel="FD-digits (1000 samples)", title="digits GANs")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.savefig(Path(args.out_dir) / "gan_digits_fd.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
    table = ["| generator | FD-digits, 3 seed ranges | mean |", "|---|---|---|"]
    table += [f"| {r['label']} | {', '.join(f'{v:.2f}' for v in r['fd'])} | {r['mean']:.2f} |" for r in results]
    body = (f"One-step generators on the digits, FD-digits of {args.num_samples} samples against the 1797 digits, on "
            f"three disjoint seed ranges from {args.seed} (held out: the runs' own monitoring uses seeds 0-999). "
            f"The `run` rows are the GAN runs given with `--gan-runs`, made by `python scripts/train.py "
            f"objective=reflow_gan|wgan_gp net=dcgan train.steps=15000 train.batch_size=64 "
            f"train.checkpoint_every=1500 out_dir=RUN` (the same networks, optimiser and 5 critic updates per "
            f"generator update, so equal generator updates).\n\n" + "\n".join(table)
            + "\n\nFD-digits during training (the EMA generator, 1000 samples, written to `metrics.csv` at each "
            "checkpoint):\n\n![curves](benchmarks/gan_digits_fd.png)\n\nSamples (seeds 0-15):\n\n"
            "![grids](benchmarks/gan_digits_grids.png)")
    return results, "gan-digits", "One-step generators on the digits: ReFlow-GAN, WGAN-GP, distilled and GAN-tuned flows", body


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


def default_grid(name: str, denoiser, nfe: int) -> torch.Tensor:
    """Today's default: Karras rho 7 over the model's range, a last step to 0, the most steps within `nfe`."""
    steps = samplers.steps_for_nfe(name, nfe)
    return samplers.get_sigmas("karras", steps, denoiser.sigma_min, denoiser.sigma_max)


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


def suite_schedules(args):
    from fewstep.tuning import schedule_tables
    from fewstep.samplers import seeded_noise
    from fewstep.tuning.schedule_search import run_search

    # digits: the shipped searched tables (assets/digits_ddpm/schedules), FD-digits on the seeds of this run
    denoiser = samplers.from_pretrained("digits_ddpm").eval()
    extractor, seeds = get_extractor("digits"), range(args.seed, args.seed + args.num_samples)
    reference = data_stats(digits(), extractor)
    tables = {name: schedule_tables.entries(schedule_tables.default_path(denoiser, name)) for name in args.samplers}

    def shipped(name, nfe):  # as schedule.kind=auto with nfe=N: the best searched grid within the budget
        if not tables[name]:
            return None
        found = schedule_tables.best_within(schedule_tables.default_path(denoiser, name), denoiser, name, {}, nfe)
        return None if found is None else found[1]

    results, done = [], {}  # (label, grid) -> row: a target whose grid is a lower one's (Heun's even NFE) runs once
    for label, name, target, sigmas in grid_rows(denoiser, args.samplers, args.nfe, shipped):
        key = (label, tuple(sigmas.tolist()))
        if key not in done:
            start = time.perf_counter()
            fd = frechet_of(SamplerFn(name, denoiser, sigmas, denoiser.sample_shape), seeds, extractor, reference,
                            batch_size=args.batch_size)
            done[key] = {"label": label, "sampler": name, "nfe": samplers.nfe(name, sigmas), "fd": fd,
                         "seconds": round(time.perf_counter() - start, 2), "sigmas": sigmas.tolist()}
        results.append({**done[key], "target_nfe": target})
        print(json.dumps(results[-1]), flush=True)
    converged = frechet_of(SamplerFn("dpmpp_2m", denoiser, default_grid("dpmpp_2m", denoiser, 50),
                                     denoiser.sample_shape), seeds, extractor, reference, batch_size=args.batch_size)
    nfe_plot(results, "fd", Path(args.out_dir) / "schedules_fd.png", "digits DDPM: default vs searched grids")

    # the mixture: searched here on seeds 900000.. (256 noises, 256 held out), measured against the exact ODE
    gmm = instantiate(OmegaConf.load(config_dir() / "model" / "gmm.yaml"), _convert_="all")
    gmm_seeds = range(args.seed, args.seed + args.gmm_samples)
    noise = seeded_noise(gmm_seeds, gmm.sample_shape)
    exact = samplers.sample("dopri5", gmm, noise, samplers.get_sigmas("karras", 2, gmm.sigma_min, gmm.sigma_max),
                            rtol=1e-8, atol=1e-8).double()
    gmm_search = {name: {r.nfe: r.best.sigmas for r in run_search(name, gmm, args.nfe, num_noises=256,
                                                                   log=lambda line: None)}
                  for name in args.samplers}
    gmm_results = []
    for label, name, target, sigmas in grid_rows(gmm, args.samplers, args.nfe,
                                                  lambda name, nfe: gmm_search[name].get(nfe)):
        x = samplers.sample(name, gmm, noise, sigmas).double()
        gmm_results.append({"label": label, "sampler": name, "target_nfe": target, "nfe": samplers.nfe(name, sigmas),
                            "ode_error": (x - exact).norm(dim=1).mean().item()})
    nfe_plot(gmm_results, "ode_error", Path(args.out_dir) / "schedules_gmm.png", "mixture: error vs exact ODE")

    best5 = min((r for r in results if r["target_nfe"] == 5), key=lambda r: r["fd"], default=None)
    best10 = min((r for r in results if r["target_nfe"] == 10), key=lambda r: r["fd"], default=None)
    fd5 = {r["label"]: r["fd"] for r in results if r["target_nfe"] == 5}
    ratios = ", ".join(f"{name} {fd5[f'{name} karras'] / fd5[f'{name} searched']:.1f}x" for name in args.samplers
                       if f"{name} searched" in fd5)
    bests = "; ".join(part for part in (
        best5 and (f"At NFE 5 the searched grid improves FD by {ratios} (default / searched). Best at NFE 5: "
                   f"{best5['label']} {best5['fd']:.2f} ({best5['fd'] / converged:.2f}x converged)"),
        best10 and f"at NFE 10: {best10['label']} {best10['fd']:.2f} ({best10['fd'] / converged:.2f}x)") if part)
    bests = f" {bests[0].upper()}{bests[1:]}." if bests else ""
    body = (f"Each sampler on today's default grid (`karras`: rho 7 over the model's range 0.01-157, a last step to "
            f"0, the most steps within the NFE) and on its searched grid (`searched`: the table "
            f"`assets/digits_ddpm/schedules/<sampler>.json` that `schedule.kind=auto` samples on, made by "
            f"`python scripts/search_schedule.py sampler=<sampler> write=true`: the lowest distance to the dopri5 "
            f"solution on 64 noises of seeds 900000-900063, checked on the next 64). "
            f"FD-digits of {args.num_samples} samples, seeds {args.seed}-{args.seed + args.num_samples - 1} (held "
            f"out from the search), against the 1797 digits. A cell's NFE in brackets: fewer were spent. On the "
            f"default grid the sampler cannot spend exactly the target (Heun on a grid ending at 0: odd NFE only); "
            f"on the searched grids `schedule.kind=auto` takes the table's best grid within the budget by held-out "
            f"ODE error, which can be a lower NFE's (Heun at an even NFE, dpmpp_2m at 5).\n\n"
            f"{nfe_table(results, 'fd', args.nfe)}\n\n"
            f"Converged sampling (dpmpp_2m, NFE 50, default grid): FD {converged:.2f}.{bests}\n\n"
            f"![FD](benchmarks/schedules_fd.png)\n\n"
            f"The analytic mixture (`conf/model/gmm.yaml`): grids searched here the same way (256 noises of seeds "
            f"900000.., 256 held out), then the mean distance to the exact ODE solution (dopri5, rtol = atol = 1e-8) "
            f"of {args.gmm_samples} noises of seeds {args.seed}..:\n\n{nfe_table(gmm_results, 'ode_error', args.nfe)}"
            f"\n\n![mixture](benchmarks/schedules_gmm.png)\n\nThe shipped digits grids:\n\n"
            f"{searched_grids_table(tables, args.nfe)}")
    return results + gmm_results, "schedules", "Searched schedules against the default grid", body


AMED_SAMPLERS = ["ddim", "heun", "dpm_2", "dpmpp_2m", "ipndm", "amed", "amed_plugin"]
LEARNED = ("amed", "amed_plugin")


def paper_grid(name: str, denoiser, nfe: int, options) -> torch.Tensor:
    """The AMED paper's grid: Karras rho 7 from 80 to the model's sigma_min, the sample returned there, the
    most steps within `nfe` with `options` (AFS)."""
    steps = samplers.steps_for_nfe(name, nfe, options, ends_at_zero=False)
    return samplers.get_sigmas("karras", steps, denoiser.sigma_min, 80.0, rho=7.0, final_sigmas_type="sigma_min")


def learned_rows(name: str, targets, predictors) -> list[tuple]:
    """`(label, sampler, options, target, sigmas)` of `name` with its predictor and with its frozen table
    (`predictors[nfe]`: `(AMEDPredictor, frozen_table.json as a dict)`) on the grid it was trained on."""
    rows = []
    for target in targets:
        if target in predictors:
            predictor, table = predictors[target]
            sigmas = torch.tensor(table["sigmas"], dtype=torch.float64)
            rows += [(f"{name} learned", name, {**table["sampler_options"], "r": 0.5, "c": 1.0,
                                                  "predictor": predictor}, target, sigmas),
                     (f"{name} frozen table", name, table["sampler_options"], target, sigmas)]
    return rows


def amed_rows(denoiser, names, targets, predictors, searched) -> list[tuple]:
    """`(label, sampler, options, target, sigmas)`: every sampler on the paper's grid with AFS (`paper_grid`;
    amed_plugin at r = 1/2, c = 1, and amed there is dpm_2), amed and amed_plugin learned and frozen
    (`learned_rows`), and dpm_2 and amed_plugin at r = 1/2 on the default grid and, last, on their
    searched grid (`searched(name, nfe)`, looked up when the row runs; None: no row)."""
    afs = {"afs": True}
    rows = [(f"{name}{' r=1/2' if name == 'amed_plugin' else ''} paper", name, afs, t, paper_grid(name, denoiser, t, afs))
            for name in names if name != "amed" for t in targets]
    for name in LEARNED:
        rows += learned_rows(name, targets, predictors.get(name, {})) if name in names else []
    for name in ("dpm_2", "amed_plugin"):
        label = f"{name}{' r=1/2' if name == 'amed_plugin' else ''}"
        rows += [(f"{label} karras", name, {}, t, default_grid(name, denoiser, t)) for t in targets if name in names]
        rows += [(f"{label} searched", name, {}, t, partial(searched, name, t)) for t in targets if name in names]
    return rows


def run_rows(rows, measure) -> list[dict]:
    """`measure(sampler, options, sigmas)` (a dict of metrics) of every row, once per distinct grid and
    options of a label (a target that rounds to a lower NFE's grid reuses it); `sigmas` may be a
    function giving them (or None: no row)."""
    results, done = [], {}
    for label, name, options, target, sigmas in rows:
        sigmas = sigmas() if callable(sigmas) else sigmas
        if sigmas is None:
            continue
        key = (label, tuple(sigmas.tolist()))
        if key not in done:
            start = time.perf_counter()
            metrics = measure(name, options, sigmas)
            done[key] = {"label": label, "sampler": name, "nfe": samplers.nfe(name, sigmas, options), **metrics,
                         "seconds": round(time.perf_counter() - start, 2), "sigmas": sigmas.tolist()}
        results.append({**done[key], "target_nfe": target})
        print(json.dumps(results[-1]), flush=True)
    return results


def mixture_predictors(gmm, targets) -> dict[str, dict[int, tuple]]:
    """Time-only AMED predictors of the mixture (it has no UNet), trained here as scripts/train_amed.py
    trains the digits ones (paper grid, AFS, Heun teacher with 3 inserted times, 100 Adam steps of 128
    noises at lr 5e-3), at each odd target."""
    import tempfile

    from fewstep.tuning.amed_distill import AMEDDistillation, NoiseDataset
    from fewstep.tuning.amed_predictor import AMEDPredictor

    found, out_dir = {}, tempfile.mkdtemp(prefix="amed-gmm-")
    for name in LEARNED:
        for nfe in (t for t in targets if t % 2):
            objective = AMEDDistillation(gmm, paper_grid(name, gmm, nfe, {"afs": True}), name, {"afs": True}, nfe=nfe)
            torch.manual_seed(0)
            run = Path(out_dir) / f"amed-gmm-{name}-nfe{nfe}"
            with torch.enable_grad():
                Trainer({"predictor": objective.new_predictor()}, objective, NoiseDataset(gmm.sample_shape),
                        out_dir=run, steps=100, batch_size=128, lr=5e-3, optimizer="adam", grad_clip=None,
                        ema_decay=None, checkpoint_every=100, cpu=True).fit()
            found.setdefault(name, {})[nfe] = (AMEDPredictor.from_pretrained(str(run / "model")),
                                               json.loads((run / "model" / "frozen_table.json").read_text()))
    return found


def shipped_predictors(denoiser, targets) -> dict[str, dict[int, tuple]]:
    """The digits model's own predictors (`assets/digits_ddpm/amed/`) at the targets, with their frozen tables."""
    from fewstep.tuning import amed_predictor

    found = {}
    for name in LEARNED:
        base = "ipndm" if name == "amed_plugin" else None
        for nfe, path in amed_predictor.shipped(denoiser, name, base).items():
            if nfe in targets:
                found.setdefault(name, {})[nfe] = (amed_predictor.load(path, name, base, nfe),
                                                   json.loads((path / "frozen_table.json").read_text()))
    return found


def predictor_cost(denoiser, predictors) -> str:
    """The digits predictor's size and its time per step against the UNet's, batch 500, on this machine."""
    from fewstep.tuning.amed_predictor import network

    predictor = next(p for by_nfe in predictors.values() for p, _ in by_nfe.values())
    unet = network(denoiser)
    x = torch.randn(500, *denoiser.sample_shape, dtype=torch.float64)
    features = torch.randn(500, predictor.config.feature_dim)

    def seconds(fn, repeats=20):
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats

    unet_s, pred_s = seconds(lambda: denoiser(x, torch.tensor(10.0))), seconds(lambda: predictor(features, 10.0, 5.0))
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    return (f"The predictor has {count(predictor):,} parameters ({count(predictor) / count(unet):.2%} of the UNet's "
            f"{count(unet):,}); one call on a batch of 500 takes {pred_s * 1e3:.2f} ms against the UNet's "
            f"{unet_s * 1e3:.0f} ms ({pred_s / unet_s:.2%}), once per step.")


def suite_amed(args):
    from fewstep.tuning import schedule_tables
    from fewstep.samplers import seeded_noise
    from fewstep.tuning.schedule_search import run_search

    denoiser = samplers.from_pretrained("digits_ddpm").eval()
    extractor, seeds = get_extractor("digits"), range(args.seed, args.seed + args.num_samples)
    reference = data_stats(digits(), extractor)
    predictors = shipped_predictors(denoiser, args.nfe)

    def searched(name, nfe):  # the shipped table's best grid within the budget, as schedule.kind=auto takes it
        path = schedule_tables.default_path(denoiser, name)
        found = schedule_tables.best_within(path, denoiser, name, {}, nfe) if path.is_file() else None
        return None if found is None else found[1]

    def fd(name, options, sigmas):
        return {"fd": frechet_of(SamplerFn(name, denoiser, sigmas, denoiser.sample_shape, options=options), seeds,
                                 extractor, reference, batch_size=args.batch_size)}

    results = run_rows(amed_rows(denoiser, args.samplers, args.nfe, predictors, searched), fd)
    converged = frechet_of(SamplerFn("dpmpp_2m", denoiser, default_grid("dpmpp_2m", denoiser, 50),
                                     denoiser.sample_shape), seeds, extractor, reference, batch_size=args.batch_size)
    nfe_plot([r for r in results if "paper" in r["label"] or "learned" in r["label"]], "fd",
             Path(args.out_dir) / "amed_fd.png", "digits DDPM: Karras from 80, AFS (the AMED paper's setting)")

    gmm = instantiate(OmegaConf.load(config_dir() / "model" / "gmm.yaml"), _convert_="all")
    noise = seeded_noise(range(args.seed, args.seed + args.gmm_samples), gmm.sample_shape)
    exact = samplers.sample("dopri5", gmm, noise, samplers.get_sigmas("karras", 2, gmm.sigma_min, gmm.sigma_max),
                            rtol=1e-8, atol=1e-8).double()
    gmm_search = {name: {r.nfe: r.best.sigmas for r in run_search(name, gmm, args.nfe, num_noises=256,
                                                                   log=lambda line: None)}
                  for name in ("dpm_2", "amed_plugin") if name in args.samplers}

    def ode_error(name, options, sigmas):
        x = samplers.sample(name, gmm, noise, sigmas, **options).double()
        return {"ode_error": (x - exact).norm(dim=1).mean().item()}

    gmm_rows = amed_rows(gmm, args.samplers, args.nfe, mixture_predictors(gmm, args.nfe),
                         lambda name, nfe: gmm_search.get(name, {}).get(nfe))
    gmm_results = run_rows(gmm_rows, ode_error)

    fd5 = {r["label"]: r["fd"] for r in results if r["target_nfe"] == 5}
    ratio = lambda a, b: (f"{fd5[a] / fd5[b]:.2f}x" if a in fd5 and b in fd5 else "–")  # noqa: E731
    best5 = min((r for r in results if r["target_nfe"] == 5), key=lambda r: r["fd"], default=None)
    tables = "\n".join(f"| {name} | {nfe} | {', '.join(f'{s:.4g}' for s in table['sigmas'])} | "
                       f"{', '.join(f'{v:.3f}' for v in table['sampler_options']['r'])} | "
                       f"{', '.join(f'{v:.4f}' for v in table['sampler_options']['c'])} |"
                       for name, by_nfe in predictors.items() for nfe, (_, table) in sorted(by_nfe.items()))
    body = (f"AMED-Solver (`amed`) and AMED-Plugin on iPNDM (`amed_plugin`) against the other samplers on the digits "
            f"DDPM. `paper`: the AMED paper's setting, Karras rho 7 from sigma 80 to the model's sigma_min (0.01), "
            f"the sample returned there, the analytical first step (AFS) for every sampler, the most steps within "
            f"the NFE (`amed_plugin r=1/2` is the plugin untrained, iPNDM with the geometric midpoints inserted; "
            f"`amed` at r = 1/2 is `dpm_2`). `learned`: the shipped predictor of that NFE "
            f"(`assets/digits_ddpm/amed/`, `sampler.options.predictor=auto`), on the paper grid it was trained on; "
            f"`frozen table`: its per-step r and c averaged over 64 noises, no features (what `FewstepScheduler` "
            f"runs). `karras`: the default grid (rho 7 over the model's range 0.01-157, a last step to 0); "
            f"`searched`: the shipped searched table. ddim, heun, dpmpp_2m and ipndm on the default and searched "
            f"grids are in the section \"Searched schedules against the default grid\". FD-digits of "
            f"{args.num_samples} samples, seeds {args.seed}-{args.seed + args.num_samples - 1}, against the 1797 "
            f"digits. A cell's NFE in brackets: fewer were spent.\n\n{nfe_table(results, 'fd', args.nfe)}\n\n"
            f"Converged sampling (dpmpp_2m, NFE 50, default grid): FD {converged:.2f}. At NFE 5 in the paper's "
            f"setting AMED-Solver is {ratio('amed learned', 'ipndm paper')} iPNDM's FD and "
            f"{ratio('amed learned', 'ddim paper')} DDIM's (the paper on CIFAR-10: 0.56x and 0.15x); AMED-Plugin "
            f"{ratio('amed_plugin learned', 'ipndm paper')} iPNDM's; the learned predictor against its frozen table: "
            f"amed {ratio('amed learned', 'amed frozen table')}, amed_plugin "
            f"{ratio('amed_plugin learned', 'amed_plugin frozen table')}."
            + (f" Best at NFE 5: {best5['label']} {best5['fd']:.2f} ({best5['fd'] / converged:.2f}x converged)."
               if best5 else "")
            + f"\n\n{predictor_cost(denoiser, predictors) if predictors else ''}\n\n![FD](benchmarks/amed_fd.png)\n\n"
            f"The frozen tables (the intermediate time s_n = t_n+1^r t_n^(1-r) and the scale c of each step; a step "
            f"to 0 has none):\n\n| sampler | NFE | grid | r | c |\n|---|---|---|---|---|\n{tables}\n\n"
            f"The analytic mixture (`conf/model/gmm.yaml`): time-only predictors trained here (100 Adam steps of 128 "
            f"noises, Heun teacher with 3 inserted times), grids of dpm_2 and amed_plugin searched here (256 noises "
            f"of seeds 900000..); the mean distance to the exact ODE solution (dopri5, rtol = atol = 1e-8) of "
            f"{args.gmm_samples} noises of seeds {args.seed}..:\n\n{nfe_table(gmm_results, 'ode_error', args.nfe)}")
    return results + gmm_results, "amed", "AMED: learned mid-value steps", body


SUITES = {"gmm": suite_gmm, "digits": suite_digits, "reflow": suite_reflow, "reflow-2d": suite_reflow_2d,
          "gan-2d": suite_gan_2d, "gan-digits": suite_gan_digits, "fd-speed": suite_fd_speed,
          "schedules": suite_schedules, "amed": suite_amed}
# Each suite's sample count, NFE targets and samplers, where the command line gives none.
DEFAULTS = {"gmm": (10000, NFE_TARGETS, SAMPLERS), "digits": (2000, NFE_TARGETS, SAMPLERS),
            "reflow": (2000, REFLOW_NFE, REFLOW_SAMPLERS), "reflow-2d": (5000, REFLOW_NFE, REFLOW_SAMPLERS),
            "gan-2d": (5000, [], []), "gan-digits": (2000, [], []),
            "schedules": (2000, list(range(3, 11)), SAMPLERS), "amed": (2000, list(range(3, 11)), AMED_SAMPLERS)}


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", nargs="+", choices=list(SUITES), default=list(SUITES))
    parser.add_argument("--samplers", nargs="+", choices=list(dict.fromkeys(SAMPLERS + AMED_SAMPLERS)), default=None,
                        help="default: ddim euler heun dpmpp_2m ipndm (gmm, digits, schedules), euler dpmpp_2m "
                             "ipndm (reflow suites), those and dpm_2 amed amed_plugin but euler (amed)")
    parser.add_argument("--nfe", nargs="+", type=int, default=None,
                        help=f"default: {NFE_TARGETS} (gmm, digits), {REFLOW_NFE} (reflow suites)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="default: 10000 (gmm), 2000 (digits, reflow), 5000 (reflow-2d)")
    parser.add_argument("--dopri5", nargs="*", default=["digits_ddpm", "digits_rf1", "digits_rf2"],
                        help="reflow: the models also sampled with dopri5 (slow: hundreds of NFE)")
    parser.add_argument("--steps-2d", type=int, default=4000, help="reflow-2d: 1-RF training steps (half for the others)")
    parser.add_argument("--gan-steps", type=int, default=12000, help="gan-2d: training steps of each GAN")
    parser.add_argument("--gan-runs", nargs="*", default=[], help="gan-digits: GAN run directories to evaluate too")
    parser.add_argument("--gmm-samples", type=int, default=10000, help="schedules: noises of the mixture")
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
        count, nfe, names = DEFAULTS.get(suite, (0, [], []))
        suite_args.num_samples = count if args.num_samples is None else args.num_samples
        suite_args.nfe = nfe if args.nfe is None else args.nfe
        suite_args.samplers = names if args.samplers is None else args.samplers
        results, name, title, body = SUITES[suite](suite_args)
        (args.out_dir / f"{name}.md").write_text(section(title, body))
        (args.out_dir / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {assemble(args.out_dir, args.report)}")


if __name__ == "__main__":
    main()
