"""The frontier on the analytic 2-D mixture (`suites.frontier`): the candidate kinds of the digits made here
for the mixture (it has no tables, predictors or UNet of its own: grids are searched, AMED predictors and
learned solvers fitted on noises from the tuning seed; no Skip-Tuning, no one-step generator), each NFE's
best chosen by the error against the exact ODE on the tuning noises and scored on the held-out ranges."""
from __future__ import annotations

import json

import torch

from fewstep import samplers as sampling
from fewstep.evaluation.ranges import check_disjoint, seed_ranges, shown, summary
from fewstep.samplers import seeded_noise
from fewstep.suites.amed import LEARNED, learned_rows, mixture_predictors
from fewstep.suites.candidates import grid_sigmas
from fewstep.suites.sweep import DEFAULT_GRID, gmm_model, mixture_truth
from fewstep.tuning.learned_solver import fit_solver
from fewstep.tuning.schedule_search import ode_reference, run_search

FIT_NOISES = 256  # training noises of the searches and fits (and as many held out), from the tuning seed


def searched_grids(gmm, names, targets, seed: int) -> dict[str, dict[int, torch.Tensor]]:
    """`{sampler: {nfe: grid}}` searched here (`run_search`, FIT_NOISES noises from `seed`)."""
    return {name: {r.nfe: r.best.sigmas for r in run_search(name, gmm, targets, num_noises=FIT_NOISES, seed=seed,
                                                            log=lambda line: None, progress=False)}
            for name in names}


def learned_solvers(gmm, targets, seed: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """`{nfe: (sigmas, weights)}` of the learned solver fitted here at each target (`fit_solver`, FIT_NOISES
    noises from `seed`, as many held out), kept only where it beat its start on the held-out noises."""
    noise = seeded_noise(range(seed, seed + FIT_NOISES), gmm.sample_shape)
    held = seeded_noise(range(seed + FIT_NOISES, seed + 2 * FIT_NOISES), gmm.sample_shape)
    reference, held_reference = ode_reference(gmm, noise), ode_reference(gmm, held)
    fits = (fit_solver(gmm, t, noise, reference, held, held_reference, progress=False) for t in targets)
    return {fit.nfe: (fit.sigmas, fit.weights) for fit in fits if fit.kept}


def mixture_candidates(gmm, names, targets, kinds, seed: int) -> dict[int, list[tuple]]:
    """`{target: [(label, source, sampler, options, sigmas)]}` of the kinds the mixture can have (AMED
    predictors at NFE 3 and above, as the digits model's)."""
    grids = searched_grids(gmm, names, targets, seed) if "table" in kinds else {}
    predictors = mixture_predictors(gmm, [t for t in targets if t >= 3]) if "predictor" in kinds else {}
    solvers = learned_solvers(gmm, targets, seed) if "learned" in kinds else {}
    found = {}
    for t in targets:
        rows = [(f"{n} karras", "grid", n, {}, grid_sigmas(n, gmm, t, DEFAULT_GRID)) for n in names if "grid" in kinds]
        rows += [(f"{n} searched", "table", n, {}, grids[n].get(t)) for n in grids]
        rows += [(f"{name} predictor", "predictor", n, options, sigmas) for name in LEARNED  # [:1]: not the frozen
                 for _, n, options, _, sigmas in learned_rows(name, [t], predictors.get(name, {}))[:1]]
        rows += [("learned", "learned", "learned", {"weights": solvers[t][1]}, solvers[t][0])] if t in solvers else []
        found[t] = [row for row in rows if row[-1] is not None and within(row, t)]
    return found


def within(row, target: int) -> bool:
    """Whether a candidate row costs at most `target` NFE; one that costs more is dropped with a line saying
    so (the schedule search at NFE 1 can return a grid of more: a 1-step grid refined into 2 steps)."""
    label, _, name, options, sigmas = row
    cost = sampling.nfe(name, sigmas, options)
    if cost > target:
        print(f"mixture: {label} at NFE {target} costs {cost} NFE ({sigmas.tolist()}): dropped", flush=True)
    return cost <= target


def ode_errors(gmm, row, truths) -> list[float]:
    """The mean distance to the exact ODE solution of each `(noise, exact)` in `truths` for a candidate row."""
    _, _, name, options, sigmas = row
    return [(sampling.sample(name, gmm, noise, sigmas, **options).double() - exact).norm(dim=1).mean().item()
            for noise, exact in truths]


def mixture_frontier(names, targets, kinds, tuning_seed: int, held_out_seeds, samples: int) -> list[dict]:
    """At each target the candidate of lowest ODE error on `samples` noises from `tuning_seed`, and the best
    classic sampler on the default grid (`grid`) chosen the same way, both scored on `samples` noises of
    each held-out range: one row per target."""
    gmm, held_out = gmm_model(), seed_ranges(held_out_seeds, samples)
    tuning = range(tuning_seed, tuning_seed + samples)
    check_disjoint([tuning, *held_out])
    tuning_truth, held_truths = [mixture_truth(gmm, tuning)], [mixture_truth(gmm, seeds) for seeds in held_out]
    rows = []
    for target, pool in mixture_candidates(gmm, names, targets, kinds, tuning_seed).items():
        if not pool:
            continue
        tuned = [ode_errors(gmm, row, tuning_truth)[0] for row in pool]
        best = min(range(len(pool)), key=tuned.__getitem__)
        grid = [i for i in range(len(pool)) if pool[i][1] == "grid"]
        baseline = min(grid, key=tuned.__getitem__) if grid else best
        row = {"model": "mixture", "target_nfe": target, "entry": pool[best][0], "source": pool[best][1],
               "nfe": sampling.nfe(pool[best][2], pool[best][4], pool[best][3]),
               "ode_error": summary(ode_errors(gmm, pool[best], held_truths)), "baseline": pool[baseline][0],
               "baseline_ode_error": summary(ode_errors(gmm, pool[baseline], held_truths)),
               "tuning_ode_error": {r[0]: e for r, e in zip(pool, tuned)}}
        print(json.dumps({k: row[k] for k in ("model", "target_nfe", "entry", "source", "nfe")}
                         | {"ode_error": row["ode_error"]["mean"]}), flush=True)
        rows.append(row)
    return rows


def nfe_cell(row: dict) -> str:
    """A row's target NFE, with the NFE it spends in brackets when that is fewer."""
    return f"{row['target_nfe']}" + ("" if row["nfe"] == row["target_nfe"] else f" ({row['nfe']})")


def mixture_table(rows: list[dict]) -> str:
    """The mixture's frontier as markdown: the best entry and the best on the default grid, per NFE."""
    lines = ["| NFE | best entry | from | ODE error | best on the default grid | its ODE error |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {nfe_cell(r)} | {r['entry']} | {r['source']} | {shown(r['ode_error'])} | {r['baseline']} | "
              f"{shown(r['baseline_ode_error'])} |" for r in rows]
    return "\n".join(lines)
