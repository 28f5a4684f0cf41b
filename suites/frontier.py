"""The few-step frontier (issue 35): for the digits DDPM and the digits flows, at each NFE, the best
candidate the toolkit has (`suites.candidates`), chosen by FD-digits on a tuning seed range and scored only
on held-out ranges (FD-digits and KID, mean and spread, ratios paired with converged sampling on the same
seeds); and the same choice on the 2-D mixture by the error against its exact ODE."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from fewstep import samplers as sampling
from fewstep.evaluation import get_extractor
from fewstep.evaluation.generators import SamplerFn
from fewstep.evaluation.kid import SUBSETS
from fewstep.evaluation.ranges import STARTS, carried, check_disjoint, reference_of, score_ranges, score_seeds, \
    seed_ranges, shown, tie
from fewstep.evaluation.report import spread_plot
from fewstep.suites.candidates import KINDS, SAMPLERS, Candidate, candidates, load_model
from fewstep.suites.frontier_mixture import mixture_frontier, mixture_table, nfe_cell
from fewstep.suites.sweep import default_grid, output_dir, write_suite
from fewstep.training.data import digits

# model -> the models whose candidates compete at its NFEs (the one-step generators distilled from digits_rf2)
FAMILIES = {"digits_ddpm": ("digits_ddpm",), "digits_rf1": ("digits_rf1",),
            "digits_rf2": ("digits_rf2", "digits_rf_1step", "digits_rf_gan")}
NFE = list(range(1, 11))
TUNING_SEED = 900_000
CONVERGED = ("digits_ddpm", "dpmpp_2m", 50)  # converged sampling: model, sampler, NFE on its default grid


class Scores:
    """The scores of candidates, each computed once (by `Candidate.key`): FD on the tuning range (the
    choice), FD and KID on each held-out range (`evaluation.ranges.score_ranges`)."""

    def __init__(self, extractor, reference, tuning: range, held_out: list[range], batch_size: int,
                 kid_subsets: int = SUBSETS):
        self.extractor, self.reference, self.tuning_seeds, self.held_out_seeds = extractor, reference, tuning, held_out
        self.options = {"batch_size": batch_size, "kid_subsets": kid_subsets}
        self.tuned, self.held = {}, {}

    def tuning(self, c: Candidate) -> dict:
        if c.key not in self.tuned:
            self.tuned[c.key] = score_seeds(c.sample_fn, self.tuning_seeds, self.extractor, self.reference,
                                            with_kid=False, **self.options)
            print(json.dumps({"tuning": c.name, "nfe": c.nfe, **self.tuned[c.key]}), flush=True)
        return self.tuned[c.key]

    def held_out(self, c: Candidate) -> list[dict]:
        if c.key not in self.held:
            self.held[c.key] = score_ranges(c.sample_fn, self.held_out_seeds, self.extractor, self.reference,
                                            **self.options)
        return self.held[c.key]


def choose(pool: list[Candidate], tuned: dict) -> Candidate:
    """The candidate of `pool` with the lowest tuning FD (`tuned[key]["fd"]`); a tie goes to the first."""
    return min(pool, key=lambda c: tuned[c.key]["fd"])


def family_rows(family: str, members, targets, names, kinds, scores: Scores, converged: list[dict]) -> list[dict]:
    """At each target NFE the best candidate of the `members` models on the tuning range, scored on the
    held-out ranges with ratios paired with `converged`; a target without candidates has no row."""
    loaded, rows = {m: load_model(m) for m in members}, []
    for target in targets:
        pool = [c for m in members for c in candidates(m, loaded[m], target, names, kinds)]
        if not pool:
            continue
        tuned = {c.key: scores.tuning(c) for c in pool}
        best = choose(pool, tuned)
        row = {"model": family, "target_nfe": target, "entry": best.name, "source": best.source,
               "nfe": best.nfe, "detail": best.detail, "sigmas": best.sigmas,
               "tuning_fd": {c.name: tuned[c.key]["fd"] for c in pool},
               **carried(scores.held_out(best), converged)}
        print(json.dumps({k: row[k] for k in ("model", "target_nfe", "entry", "source", "nfe")}
                         | {"fd": row["fd"]["mean"], "ratio": row["ratio"]["fd"]["mean"]}), flush=True)
        rows.append(row)
    return rows


def converged_row(scores: Scores, nfe: int) -> dict:
    """Converged sampling (CONVERGED: dpmpp_2m on the DDPM's default grid, at `nfe`) on the held-out ranges."""
    model, name, _ = CONVERGED
    denoiser = sampling.from_pretrained(model).eval()
    sigmas = default_grid(name, denoiser, nfe)
    c = Candidate(model, f"{name} karras", "grid", sampling.nfe(name, sigmas),
                  SamplerFn(name, denoiser, sigmas, denoiser.sample_shape), sigmas.tolist())
    return {"model": "converged", "target_nfe": nfe, "entry": c.name, "source": "grid", "nfe": c.nfe,
            **carried(scores.held_out(c))}


def frontier_table(rows: list[dict], converged: dict) -> str:
    """The frontier as markdown: one line per model and NFE, then the converged row."""
    lines = ["| model | NFE | best entry | from | FD-digits | KID | FD / converged | KID / converged |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratios = [shown(r["ratio"][m]) + (" (tie)" if tie(r["ratio"][m], 1.0) else "") for m in ("fd", "kid")]
        lines.append(f"| {r['model']} | {nfe_cell(r)} | {r['entry']} | {r['source']} | {shown(r['fd'])} | "
                     f"{shown(r['kid'])} | {ratios[0]} | {ratios[1]} |")
    lines.append(f"| converged | {converged['nfe']} | {converged['entry']} | grid | {shown(converged['fd'])} | "
                 f"{shown(converged['kid'])} | 1 | 1 |")
    return "\n".join(lines)


def ratio_plot(rows: list[dict], path) -> Path:
    """FD / converged against NFE, one curve per model, error bars of one std over the ranges."""
    series = {}
    for r in rows:
        series.setdefault(r["model"], []).append((r["nfe"], r["ratio"]["fd"]["mean"], r["ratio"]["fd"]["std"]))
    return spread_plot(series, path, "FD-digits / converged", "the few-step frontier (held-out seeds)", line=1.0)


@torch.no_grad()
def frontier(out_dir, *, families=None, samplers=SAMPLERS, nfe=NFE, kinds=KINDS, num_samples: int = 2000,
             tuning_samples: int | None = None, tuning_seed: int = TUNING_SEED, held_out_seeds=STARTS,
             batch_size: int = 500, gmm_samples: int = 10000, converged_nfe: int = CONVERGED[2],
             kid_subsets: int = SUBSETS) -> list[Path]:
    """Write `frontier.md`, `frontier.json` and `frontier_ratio.png` into `out_dir`; return their paths.
    `families`: FAMILIES or a part of it; `kinds`: the candidate kinds (candidates.KINDS) tried; each NFE's
    best is chosen on `tuning_samples` (default `num_samples`) seeds from `tuning_seed` and scored on
    `num_samples` seeds from each of `held_out_seeds`."""
    out_dir, families = output_dir(out_dir), FAMILIES if families is None else families
    held_out = seed_ranges(held_out_seeds, num_samples)
    tuning = range(tuning_seed, tuning_seed + (tuning_samples or num_samples))
    check_disjoint([tuning, *held_out])
    extractor = get_extractor("digits")
    scores = Scores(extractor, reference_of(digits(), extractor), tuning, held_out, batch_size, kid_subsets)
    converged = converged_row(scores, converged_nfe)
    rows = [row for family, members in families.items()
            for row in family_rows(family, members, nfe, samplers, kinds, scores, converged["ranges"])]
    mixture = mixture_frontier(samplers, nfe, kinds, tuning_seed, held_out_seeds, gmm_samples)
    picture = ratio_plot(rows, out_dir / "frontier_ratio.png")
    ranges_text = ", ".join(f"{r.start}-{r.stop - 1}" for r in held_out)
    body = (f"At each NFE, every candidate of the model (`suites/candidates.py`; `from`: `grid` a classic sampler on "
            f"the default grid, `table` on the model's searched grid, `predictor` AMED with the model's predictor, "
            f"`learned` the model's learned solver, `skiptune` Skip-Tuning at the model's factors, `generator` a "
            f"one-step generator) is scored by FD-digits on {len(tuning)} tuning seeds ({tuning.start}-"
            f"{tuning.stop - 1}); the best is then scored on {num_samples} samples of each held-out range "
            f"({ranges_text}), against the 1797 digits: FD-digits and KID (unbiased, "
            f"{kid_subsets} subsets), mean ± std over the ranges, and the ratio to converged sampling "
            f"({CONVERGED[1]} at NFE {converged_nfe} on the {CONVERGED[0]}'s default grid) on the same seeds, one "
            f"ratio per range; `(tie)`: within one std of 1. digits_rf2's NFE 1 includes the one-step generators "
            f"distilled from it. An NFE in brackets: the entry spends fewer.\n\n{frontier_table(rows, converged)}\n\n"
            f"![ratio](benchmarks/frontier_ratio.png)\n\n"
            f"The analytic mixture (`conf/model/gmm.yaml`), the same kinds of candidates made here (grids searched, "
            f"AMED predictors and learned solvers fitted on noises of seeds {tuning_seed}..): chosen by the mean "
            f"distance to the exact ODE solution (dopri5, rtol = atol = 1e-8) on {gmm_samples} noises from "
            f"{tuning_seed}, scored on {gmm_samples} noises of each held-out range, beside the best classic sampler "
            f"on the default grid:\n\n{mixture_table(mixture)}")
    return write_suite(out_dir, "frontier", "The few-step frontier", body, rows + [converged] + mixture, [picture])
