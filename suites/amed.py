"""AMED-Solver and AMED-Plugin, learned and frozen, against the other samplers in the AMED paper's
setting and on their own grids: FD-digits of the digits DDPM, and the mixture's ODE error."""
from __future__ import annotations

import json
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from fewstep import samplers as sampling
from fewstep.evaluation import frechet_of, get_extractor
from fewstep.evaluation.fid import data_stats
from fewstep.evaluation.generators import SamplerFn
from fewstep.evaluation.report import nfe_plot, nfe_table
from fewstep.tuning import amed_predictor, schedule_tables
from fewstep.tuning.amed_distill import AMEDDistillation, NoiseDataset
from fewstep.tuning.schedule_search import run_search
from fewstep.suites.sweep import default_grid, gmm_model, mixture_truth, output_dir, write_suite
from fewstep.training import Trainer
from fewstep.training.data import digits

AMED_SAMPLERS = ["ddim", "heun", "dpm_2", "dpmpp_2m", "ipndm", "amed", "amed_plugin"]
LEARNED = ("amed", "amed_plugin")
NFE = list(range(3, 11))


def paper_grid(name: str, denoiser, nfe: int, options) -> torch.Tensor:
    """The AMED paper's grid: Karras rho 7 from 80 to the model's sigma_min, the sample returned there, the
    most steps within `nfe` with `options` (AFS)."""
    steps = sampling.steps_for_nfe(name, nfe, options, ends_at_zero=False)
    return sampling.get_sigmas("karras", steps, denoiser.sigma_min, 80.0, rho=7.0, final_sigmas_type="sigma_min")


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
            done[key] = {"label": label, "sampler": name, "nfe": sampling.nfe(name, sigmas, options), **metrics,
                         "seconds": round(time.perf_counter() - start, 2), "sigmas": sigmas.tolist()}
        results.append({**done[key], "target_nfe": target})
        print(json.dumps(results[-1]), flush=True)
    return results


def mixture_predictors(gmm, targets) -> dict[str, dict[int, tuple]]:
    """Time-only AMED predictors of the mixture (it has no UNet), trained here as scripts/train_amed.py
    trains the digits ones (paper grid, AFS, Heun teacher with 3 inserted times, 100 Adam steps of 128
    noises at lr 5e-3), at each odd target."""
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
            found.setdefault(name, {})[nfe] = (amed_predictor.AMEDPredictor.from_pretrained(str(run / "model")),
                                               json.loads((run / "model" / "frozen_table.json").read_text()))
    return found


def shipped_predictors(denoiser, targets) -> dict[str, dict[int, tuple]]:
    """The digits model's own predictors (`assets/digits_ddpm/amed/`) at the targets, with their frozen tables."""
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
    predictor = next(p for by_nfe in predictors.values() for p, _ in by_nfe.values())
    unet = amed_predictor.network(denoiser)
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


def mixture_results(names, targets, seeds) -> list[dict]:
    """The mixture's mean distance to the exact ODE solution of the noises of `seeds` for the rows of
    `amed_rows`, with predictors trained here and dpm_2 and amed_plugin grids searched here."""
    gmm = gmm_model()
    noise, exact = mixture_truth(gmm, seeds)
    searched = {name: {r.nfe: r.best.sigmas for r in run_search(name, gmm, targets, num_noises=256,
                                                                log=lambda line: None)}
                for name in ("dpm_2", "amed_plugin") if name in names}

    def ode_error(name, options, sigmas):
        x = sampling.sample(name, gmm, noise, sigmas, **options).double()
        return {"ode_error": (x - exact).norm(dim=1).mean().item()}

    rows = amed_rows(gmm, names, targets, mixture_predictors(gmm, targets),
                     lambda name, nfe: searched.get(name, {}).get(nfe))
    return run_rows(rows, ode_error)


def frozen_tables(predictors) -> str:
    """The markdown rows of the predictors' frozen tables: sampler, NFE, grid, r and c."""
    return "\n".join(f"| {name} | {nfe} | {', '.join(f'{s:.4g}' for s in table['sigmas'])} | "
                     f"{', '.join(f'{v:.3f}' for v in table['sampler_options']['r'])} | "
                     f"{', '.join(f'{v:.4f}' for v in table['sampler_options']['c'])} |"
                     for name, by_nfe in predictors.items() for nfe, (_, table) in sorted(by_nfe.items()))


def ratios_sentence(results, converged: float) -> str:
    """AMED's FD at NFE 5 as a share of the baselines', and the best row at NFE 5."""
    fd5 = {r["label"]: r["fd"] for r in results if r["target_nfe"] == 5}
    ratio = lambda a, b: (f"{fd5[a] / fd5[b]:.2f}x" if a in fd5 and b in fd5 else "–")  # noqa: E731
    best5 = min((r for r in results if r["target_nfe"] == 5), key=lambda r: r["fd"], default=None)
    return (f"At NFE 5 in the paper's "
            f"setting AMED-Solver is {ratio('amed learned', 'ipndm paper')} iPNDM's FD and "
            f"{ratio('amed learned', 'ddim paper')} DDIM's (the paper on CIFAR-10: 0.56x and 0.15x); AMED-Plugin "
            f"{ratio('amed_plugin learned', 'ipndm paper')} iPNDM's; the learned predictor against its frozen table: "
            f"amed {ratio('amed learned', 'amed frozen table')}, amed_plugin "
            f"{ratio('amed_plugin learned', 'amed_plugin frozen table')}."
            + (f" Best at NFE 5: {best5['label']} {best5['fd']:.2f} ({best5['fd'] / converged:.2f}x converged)."
               if best5 else ""))


@torch.no_grad()
def amed(out_dir, *, samplers=AMED_SAMPLERS, nfe=NFE, num_samples: int = 2000, seed: int = 100_000,
         batch_size: int = 500, gmm_samples: int = 10000) -> list[Path]:
    """Write `amed.md`, `amed.json` and `amed_fd.png` into `out_dir`; return their paths."""
    out_dir = output_dir(out_dir)
    denoiser = sampling.from_pretrained("digits_ddpm").eval()
    extractor, seeds = get_extractor("digits"), range(seed, seed + num_samples)
    reference = data_stats(digits(), extractor)
    predictors = shipped_predictors(denoiser, nfe)

    def searched(name, target):  # the shipped table's best grid within the budget, as schedule.kind=auto takes it
        path = schedule_tables.default_path(denoiser, name)
        found = schedule_tables.best_within(path, denoiser, name, {}, target) if path.is_file() else None
        return None if found is None else found[1]

    def fd(name, options, sigmas):
        return {"fd": frechet_of(SamplerFn(name, denoiser, sigmas, denoiser.sample_shape, options=options), seeds,
                                 extractor, reference, batch_size=batch_size)}

    results = run_rows(amed_rows(denoiser, samplers, nfe, predictors, searched), fd)
    converged = frechet_of(SamplerFn("dpmpp_2m", denoiser, default_grid("dpmpp_2m", denoiser, 50),
                                     denoiser.sample_shape), seeds, extractor, reference, batch_size=batch_size)
    picture = nfe_plot([r for r in results if "paper" in r["label"] or "learned" in r["label"]], "fd",
                       out_dir / "amed_fd.png", "digits DDPM: Karras from 80, AFS (the AMED paper's setting)")
    gmm_results = mixture_results(samplers, nfe, range(seed, seed + gmm_samples))
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
            f"{num_samples} samples, seeds {seed}-{seed + num_samples - 1}, against the 1797 "
            f"digits. A cell's NFE in brackets: fewer were spent.\n\n{nfe_table(results, 'fd', nfe)}\n\n"
            f"Converged sampling (dpmpp_2m, NFE 50, default grid): FD {converged:.2f}. "
            f"{ratios_sentence(results, converged)}"
            f"\n\n{predictor_cost(denoiser, predictors) if predictors else ''}\n\n![FD](benchmarks/amed_fd.png)\n\n"
            f"The frozen tables (the intermediate time s_n = t_n+1^r t_n^(1-r) and the scale c of each step; a step "
            f"to 0 has none):\n\n| sampler | NFE | grid | r | c |\n|---|---|---|---|---|\n"
            f"{frozen_tables(predictors)}\n\n"
            f"The analytic mixture (`conf/model/gmm.yaml`): time-only predictors trained here (100 Adam steps of 128 "
            f"noises, Heun teacher with 3 inserted times), grids of dpm_2 and amed_plugin searched here (256 noises "
            f"of seeds 900000..); the mean distance to the exact ODE solution (dopri5, rtol = atol = 1e-8) of "
            f"{gmm_samples} noises of seeds {seed}..:\n\n{nfe_table(gmm_results, 'ode_error', nfe)}")
    return write_suite(out_dir, "amed", "AMED: learned mid-value steps", body, results + gmm_results, [picture])
