"""One-step generators: the ReFlow-derived GAN against WGAN-GP trained here in 2-D (`gan_2d`), and the
shipped digits generators and given GAN runs (`gan_digits`)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import torch

from fewstep.assets import names as asset_names
from fewstep.evaluation import frechet_of, get_extractor
from fewstep.evaluation.fid import accumulate, data_stats, fd_to
from fewstep.evaluation.generators import GeneratorFn
from fewstep.evaluation.report import scatter_panels, side_by_side
from fewstep.gan import GANObjective, MLPCritic, MLPGenerator, load_generator
from fewstep.suites.sweep import output_dir, write_suite
from fewstep.training import Trainer, data2d
from fewstep.training.data import digits

# The shipped one-step generators of the digits: label -> asset name.
SHIPPED = {"ReFlow-GAN (digits_gan)": "digits_gan", "distilled one-step flow (digits_rf_1step)": "digits_rf_1step",
           "GAN-tuned one-step flow (digits_rf_gan)": "digits_rf_gan"}


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


def gan_2d_table(results: list[dict]) -> str:
    """The markdown table of the 2-D GAN rows; modes and good samples where measured (8 Gaussians)."""
    table = ["| data | objective | generator updates | FD | modes covered (of 8) | good samples |",
             "|---|---|---|---|---|---|"]
    for r in results:
        table.append(f"| {r['data']} | {r['objective']} | {r['generator_updates']} | {r['fd']:.4f} | "
                     f"{r.get('modes', '–')} | {100 * r['good']:.1f}% |" if "good" in r else
                     f"| {r['data']} | {r['objective']} | {r['generator_updates']} | {r['fd']:.4f} | – | – |")
    return "\n".join(table)


def train_gan_2d(objective, train, out_dir: Path, steps: int):
    """An MLP generator and critic trained with `objective` on `train`; returns the Trainer and the
    generator it exported."""
    torch.manual_seed(0)
    nets = {"generator": MLPGenerator(), "critic": MLPCritic()}
    with torch.enable_grad():
        trainer = Trainer(nets, objective, train, out_dir=out_dir, steps=steps, batch_size=256, lr=1e-4,
                          optimizer="adam", betas=(0.0, 0.9), grad_clip=None, ema_decay=0.999,
                          networks={"critic": {"ema_decay": None}}, checkpoint_every=steps, log_every=steps // 10,
                          cpu=True).fit()
    return trainer, load_generator(out_dir / "model")


@torch.no_grad()
def gan_2d(out_dir, *, num_samples: int = 5000, seed: int = 100_000, gan_steps: int = 12000,
           work_dir=Path("runs") / "benchmark-gan-2d") -> list[Path]:
    """ReFlow-GAN against WGAN-GP, `gan_steps` training steps each on 8 Gaussians and moons (kept in
    `work_dir`): FD, modes covered. Write `gan-2d.md`, `gan-2d.json` and `gan_2d_<data>.png` into
    `out_dir`; return their paths."""
    out_dir, work = output_dir(out_dir), Path(work_dir)
    seeds = range(seed, seed + num_samples)
    raw = get_extractor("raw")
    objectives = {"reflow_gan": GANObjective(), "wgan_gp": GANObjective("wgan_gp", "plain", penalty_weight=10.0,
                                                                        n_critic=5)}
    results, panels, lines, pictures = [], {}, [], []
    for name in ("gaussians8", "moons"):
        make = getattr(data2d, name)
        train, truth = make(n=20000, seed=0), make(n=num_samples, seed=1)
        reference = accumulate([truth], raw).mu_sigma()
        floor = fd_to(reference, accumulate([make(n=num_samples, seed=2)], raw))
        lines.append(f"{name}: a second sample of the data scores FD {floor:.4f}")
        for label, objective in objectives.items():
            trainer, generator = train_gan_2d(objective, train, work / name / label, gan_steps)
            samples = GeneratorFn(generator)(seeds)
            row = {"data": name, "objective": label, "generator_updates": trainer.updates()["generator"],
                   "fd": fd_to(reference, accumulate([samples], raw))}
            if name == "gaussians8":
                row["modes"], row["good"] = mode_coverage(samples, truth)
            print(json.dumps(row), flush=True)
            results.append(row)
            panels[f"{name}: {label}"] = samples
        pictures.append(scatter_panels({k: v for k, v in panels.items() if k.startswith(name)}, truth,
                                       out_dir / f"gan_2d_{name}.png"))
    body = (f"An MLP generator and critic (`net=gan2d`) per data set and objective, {gan_steps} training steps "
            f"each (5 critic updates per generator update for both, so equal numbers of generator updates), Adam "
            f"1e-4 with betas (0, 0.9) for both networks, batch 256, the generator's EMA (0.999) evaluated. "
            f"`reflow_gan`: the critic loss with the zero-centred penalty of weight 1/2 and the regression "
            f"generator update (K = 1, eta 1); `wgan_gp`: lambda 10. Fréchet distance (exact moments of the 2-D "
            f"points) of {num_samples} samples to {num_samples} fresh points; "
            + "; ".join(lines) + ". On the 8 Gaussians a sample is good within 3 standard deviations of a mode, "
            "and a mode is covered with at least a quarter of its fair share of good samples.\n\n"
            + gan_2d_table(results) + "\n\n![8 Gaussians](benchmarks/gan_2d_gaussians8.png)\n\n"
            "![moons](benchmarks/gan_2d_moons.png)")
    return write_suite(out_dir, "gan-2d", "ReFlow-derived GAN against WGAN-GP in 2-D", body, results, pictures)


def training_curves(runs, path) -> Path | None:
    """FD-digits against generator updates from the `metrics.csv` of each run folder that has one,
    plotted to `path`; None when no run has one."""
    curves = {run: list(csv.DictReader((Path(run) / "metrics.csv").read_text().splitlines())) for run in runs
              if (Path(run) / "metrics.csv").is_file()}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run, rows in curves.items():
        summary = json.loads((Path(run) / "run.json").read_text())["objective_settings"]
        per_cycle = summary["n_critic"] + summary["generator_steps"]
        ax.plot([int(r["step"]) // per_cycle * summary["generator_steps"] for r in rows],
                [float(r["fd_digits"]) for r in rows], marker="o", label=f"{summary['critic_loss']} ({run})")
    ax.set(yscale="log", xlabel="generator updates", ylabel="FD-digits (1000 samples)", title="digits GANs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


@torch.no_grad()
def gan_digits(out_dir, *, num_samples: int = 2000, seed: int = 100_000, batch_size: int = 500,
               gan_runs=()) -> list[Path]:
    """FD-digits of the shipped one-step generators and of the GAN run folders `gan_runs` on three
    seed ranges, and their training curves: write `gan-digits.md`, `gan-digits.json`,
    `gan_digits_grids.png` and (with curves) `gan_digits_fd.png` into `out_dir`; return their paths."""
    out_dir = output_dir(out_dir)
    extractor = get_extractor("digits")
    reference = data_stats(digits(), extractor)
    ranges = [range(seed + k * num_samples, seed + (k + 1) * num_samples) for k in range(3)]
    generators = {label: load_generator(name) for label, name in SHIPPED.items() if name in asset_names()}
    generators.update({f"run {run}": load_generator(Path(run) / "model") for run in gan_runs})
    results, grids = [], {}
    for label, generator in generators.items():
        fn = GeneratorFn(generator.eval())
        fds = [frechet_of(fn, seeds, extractor, reference, batch_size=batch_size) for seeds in ranges]
        row = {"label": label, "fd": fds, "mean": float(np.mean(fds))}
        print(json.dumps(row), flush=True)
        results.append(row)
        grids[label.split(" (")[0]] = fn(range(16))
    pictures = [side_by_side(grids, out_dir / "gan_digits_grids.png"),
                training_curves(gan_runs, out_dir / "gan_digits_fd.png")]
    table = ["| generator | FD-digits, 3 seed ranges | mean |", "|---|---|---|"]
    table += [f"| {r['label']} | {', '.join(f'{v:.2f}' for v in r['fd'])} | {r['mean']:.2f} |" for r in results]
    body = (f"One-step generators on the digits, FD-digits of {num_samples} samples against the 1797 digits, on "
            f"three disjoint seed ranges from {seed} (held out: the runs' own monitoring uses seeds 0-999). "
            f"The `run` rows are the GAN runs given with `--gan-runs`, made by `python scripts/train.py "
            f"objective=reflow_gan|wgan_gp net=dcgan train.steps=15000 train.batch_size=64 "
            f"train.checkpoint_every=1500 out_dir=RUN` (the same networks, optimiser and 5 critic updates per "
            f"generator update, so equal generator updates).\n\n" + "\n".join(table)
            + "\n\nFD-digits during training (the EMA generator, 1000 samples, written to `metrics.csv` at each "
            "checkpoint):\n\n![curves](benchmarks/gan_digits_fd.png)\n\nSamples (seeds 0-15):\n\n"
            "![grids](benchmarks/gan_digits_grids.png)")
    return write_suite(out_dir, "gan-digits", "One-step generators on the digits: ReFlow-GAN, WGAN-GP, distilled and "
                       "GAN-tuned flows", body, results, [p for p in pictures if p is not None])
