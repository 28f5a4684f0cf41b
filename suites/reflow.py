"""Rectified flows: the shipped digits flows beside the DDPM (`reflow`), and 1-RF, 2-RF and a
distilled one-step flow trained here on 2-D data (`reflow_2d`)."""
from __future__ import annotations

from pathlib import Path

import torch

from fewstep import samplers as sampling
from fewstep.evaluation import get_extractor
from fewstep.evaluation.fid import accumulate, data_stats, fd_to
from fewstep.evaluation.report import nfe_plot, nfe_table, trajectory_plot
from fewstep.flows import DistillationObjective, MLPVelocity, PairsDataset, RectifiedFlowObjective, write_pairs
from fewstep.suites.sweep import (FLOW_GRID, REFLOW_NFE, REFLOW_SAMPLERS, adaptive_row, flow_straightness, grid_of,
                                  output_dir, split_adaptive, sweep, write_suite)
from fewstep.training import Trainer, data2d
from fewstep.training.data import digits
from fewstep.training.init import load_weights

DOPRI5_MODELS = ("digits_ddpm", "digits_rf1", "digits_rf2")


@torch.no_grad()
def reflow(out_dir, *, samplers=REFLOW_SAMPLERS, nfe=REFLOW_NFE, num_samples: int = 2000, seed: int = 100_000,
           batch_size: int = 500, grid: dict | None = None, dopri5=DOPRI5_MODELS) -> list[Path]:
    """FD-digits of digits_ddpm (on `grid`), digits_rf1 and digits_rf2 (on FLOW_GRID) at each NFE, the
    models of `dopri5` also with dopri5, and digits_rf_1step at 1 NFE: write `reflow.md`, `reflow.json`
    and `reflow_fd.png` into `out_dir`; return their paths."""
    out_dir, grid = output_dir(out_dir), grid_of(grid)
    extractor = get_extractor("digits")
    reference = data_stats(digits(), extractor)
    seeds = range(seed, seed + num_samples)
    models = {"digits_ddpm": (sampling.DiffusersUNetDenoiser.from_pretrained("digits_ddpm").eval(), grid),
              "digits_rf1": (sampling.from_pretrained("digits_rf1").eval(), FLOW_GRID),
              "digits_rf2": (sampling.from_pretrained("digits_rf2").eval(), FLOW_GRID)}
    results, straight = [], {}
    for model, (denoiser, model_grid) in models.items():
        rows = [(f"{model} {name}", name, {}, nfe, None) for name in samplers]
        results += sweep(denoiser, rows, seeds, denoiser.sample_shape, batch_size, extractor, reference,
                         lambda x: {}, model_grid)
        if model in dopri5:
            results.append(adaptive_row(f"{model} dopri5", denoiser, seeds, denoiser.sample_shape, batch_size,
                                        extractor, reference))
        if isinstance(denoiser, sampling.FlowDenoiser):
            straight[model] = flow_straightness(denoiser, seed)
    one_step = sampling.from_pretrained("digits_rf_1step", sigma_max=1e8).eval()
    results += sweep(one_step, [("digits_rf_1step euler", "euler", {}, [1], None)], seeds, one_step.sample_shape,
                     batch_size, extractor, reference, lambda x: {}, FLOW_GRID)
    plotted, adaptive = split_adaptive(results)
    picture = nfe_plot(plotted, "fd", out_dir / "reflow_fd.png", "digits: DDPM and rectified flows")
    body = (f"{num_samples} samples (seeds {seed}-{seed + num_samples - 1}, the same noise for "
            f"every cell), FD-digits against the 1797 digits. The flows sample on their own grid (uniform in t, "
            f"`schedule.kind=flow_uniform schedule.final_sigmas_type=sigma_min`: from t = 0.999 to 0.002, where the "
            f"sample is returned), the DDPM on its default grid "
            f"({grid['kind']}). digits_rf_1step is one Euler step from t = 1.\n\n"
            f"{nfe_table(plotted, 'fd', nfe)}\n\n"
            + (f"Adaptive `dopri5` (rtol = atol = 1e-5), the NFE it took per sample:\n\n| model | FD | NFE |\n"
               f"|---|---|---|\n{adaptive}\n\n" if adaptive else "")
            + "Straightness (`flows.straightness`, 500 noises, 100 Euler steps; 0: straight paths): "
            + ", ".join(f"{m} {v:.4f}" for m, v in straight.items()) + ".\n\n![FD](benchmarks/reflow_fd.png)")
    return write_suite(out_dir, "reflow", "Rectified flows on the digits (FD-digits)", body, results, [picture])


def train_2d(net, objective, data, out_dir, steps, lr, init=None):
    """Train a 2-D network with `objective` on `data` (one CPU process) and return the exported flow."""
    if init is not None:
        load_weights(net, init)
    with torch.enable_grad():  # the suites sample without gradients
        Trainer(net, objective, data, out_dir=out_dir, steps=steps, batch_size=512, lr=lr, warmup_steps=0,
                ema_decay=0.999, checkpoint_every=steps, log_every=max(steps // 10, 1), cpu=True).fit()
    return Path(out_dir) / "model"


def ode_paths(denoiser, noise, steps: int = 100) -> torch.Tensor:
    """The Euler path of a flow in its own coordinates `x_t = x / (1 + sigma)`: (steps + 1, n, 2)."""
    sigmas = sampling.get_sigmas("flow_uniform", steps, denoiser.sigma_min, 1e8)
    xs = []
    final = sampling.sample("euler", denoiser, noise.double(), sigmas,
                            callback=lambda c: xs.append(c["x"] / (1 + c["sigma"])))
    return torch.stack([*xs, final])


def train_flows(name: str, train, work: Path, steps: int) -> tuple[dict, object]:
    """1-RF on `train`, 2-RF on 20000 pairs of it and a one-step flow distilled from 20000 pairs of the
    2-RF, all under `work / name`: ({"rf1": ..., "rf2": ...}, the one-step flow)."""
    grid = sampling.get_sigmas("flow_uniform", 50, 0.002, 999.0)
    rf1 = train_2d(MLPVelocity(), RectifiedFlowObjective(), train, work / name / "rf1", steps, 2e-3)
    flows = {"rf1": sampling.from_pretrained(rf1)}
    pairs = write_pairs(flows["rf1"], "heun", grid, (2,), range(1_000_000, 1_020_000), work / name / "pairs1",
                        shard_size=5000, batch_size=5000)
    rf2 = train_2d(MLPVelocity(), RectifiedFlowObjective(), PairsDataset(pairs), work / name / "rf2", steps // 2,
                   1e-3, init=rf1)
    flows["rf2"] = sampling.from_pretrained(rf2)
    pairs2 = write_pairs(flows["rf2"], "heun", grid, (2,), range(1_000_000, 1_020_000), work / name / "pairs2",
                         shard_size=5000, batch_size=5000)
    one = train_2d(MLPVelocity(), DistillationObjective(), PairsDataset(pairs2), work / name / "one_step",
                   steps // 2, 1e-3, init=rf2)
    return flows, sampling.from_pretrained(one, sigma_max=1e8)


@torch.no_grad()
def reflow_2d(out_dir, *, samplers=REFLOW_SAMPLERS, nfe=REFLOW_NFE, num_samples: int = 5000, seed: int = 100_000,
              batch_size: int = 500, steps_2d: int = 4000,
              work_dir=Path("runs") / "benchmark-reflow-2d") -> list[Path]:
    """1-RF (`steps_2d` steps), 2-RF and a one-step flow trained on moons and checkerboard (kept in
    `work_dir`): FD to fresh data, straightness, Euler paths. Write `reflow-2d.md`, `reflow-2d.json`
    and `reflow_2d_<data>.png` into `out_dir`; return their paths."""
    out_dir, work = output_dir(out_dir), Path(work_dir)
    seeds = range(seed, seed + num_samples)
    raw = get_extractor("raw")
    results, straight, paths, sections, pictures = [], {}, {}, [], []
    for name in ("moons", "checkerboard"):
        make = getattr(data2d, name)
        train, truth = make(n=20000, seed=0), make(n=num_samples, seed=1)
        reference = accumulate([truth], raw).mu_sigma()
        floor = fd_to(reference, accumulate([make(n=num_samples, seed=2)], raw))
        torch.manual_seed(0)
        flows, one_step = train_flows(name, train, work, steps_2d)
        for label, denoiser in flows.items():
            rows = [(f"{name} {label} {s}", s, {}, nfe, None) for s in samplers]
            results += sweep(denoiser, rows, seeds, (2,), batch_size, raw, reference, lambda x: {}, FLOW_GRID)
            results.append(adaptive_row(f"{name} {label} dopri5", denoiser, seeds, (2,), batch_size, raw, reference))
            straight[f"{name} {label}"] = flow_straightness(denoiser, seed, n=2000)
        results += sweep(one_step, [(f"{name} one-step euler", "euler", {}, [1], None)], seeds, (2,), batch_size,
                         raw, reference, lambda x: {}, FLOW_GRID)
        noise = torch.randn(200, 2, generator=torch.Generator().manual_seed(seed))
        for label, denoiser in flows.items():
            paths[f"{name}: {label}"] = ode_paths(denoiser, noise)
        sections.append(f"{name}: a second sample of {num_samples} points of the data scores {floor:.4f} "
                        f"(the floor the sample size allows)")
        pictures.append(trajectory_plot({k: v for k, v in paths.items() if k.startswith(name)}, truth,
                                        out_dir / f"reflow_2d_{name}.png"))
    plotted, adaptive = split_adaptive(results)
    body = (f"An MLP velocity field (`net=mlp2d`) per data set, trained here: 1-RF {steps_2d} steps on "
            f"20000 points, 2-RF {steps_2d // 2} steps on 20000 pairs of the 1-RF (heun, 50 steps) from its "
            f"weights, and a one-step model distilled {steps_2d // 2} steps on 20000 pairs of the 2-RF from the "
            f"2-RF's weights (batch 512, EMA 0.999). Fréchet distance (exact moments of the 2-D points) of "
            f"{num_samples} samples to {num_samples} fresh points of the data; "
            + "; ".join(sections) + ". The Fréchet distance sees only means and covariances: the pictures show "
            "what it misses.\n\n"
            f"{nfe_table(plotted, 'fd', nfe)}\n\n| flow | FD | NFE |\n|---|---|---|\n{adaptive}\n\n"
            "Straightness (2000 noises, 100 Euler steps): "
            + ", ".join(f"{m} {v:.4f}" for m, v in straight.items()) + ".\n\n"
            "Euler paths (100 steps) of the same 200 noises before and after one reflow round:\n\n"
            "![moons](benchmarks/reflow_2d_moons.png)\n\n![checkerboard](benchmarks/reflow_2d_checkerboard.png)")
    return write_suite(out_dir, "reflow-2d", "Rectified flows in 2-D: reflow and one-step distillation", body,
                       results, pictures)
