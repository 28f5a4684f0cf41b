"""Calibrating Skip-Tuning (docs/conventions.md §6): the Fréchet distance of a generator's samples
over a grid of factors, on the same seeds, and the best factors per NFE (stored by `skiptune_tables`)."""
from __future__ import annotations

from typing import Iterator

from ..samplers.skip_tuning import skip_tuning
from ..evaluation.fid import frechet_of


def scan(sample_fn, model, seeds, extractor, reference, rho_tops, rho_bottoms, accelerator=None,
         batch_size: int = 64, device=None) -> Iterator[dict]:
    """`{"rho_top", "rho_bottom", "fd"}` for every pair of the grid, with Skip-Tuning on `model`
    (the network inside `sample_fn`) while the samples of `seeds` are drawn."""
    for rho_top in rho_tops:
        for rho_bottom in rho_bottoms:
            with skip_tuning(model, rho_top, rho_bottom):
                fd = frechet_of(sample_fn, seeds, extractor, reference, accelerator, batch_size, device)
            yield {"rho_top": rho_top, "rho_bottom": rho_bottom, "fd": fd}


def best_factors(results: dict) -> tuple[float, dict]:
    """From the scans `{nfe: rows}`: one `rho_top` (the commonest among the best rows of the NFEs) and
    per NFE `{"rho_bottom", "fd", "fd_plain"}`: the best `rho_bottom` under it, its FD, and the plain
    sampler's (rho_top = rho_bottom = 1; None when the scan does not include it)."""
    best = {nfe: min(rows, key=lambda r: r["fd"]) for nfe, rows in results.items()}
    tops = {b["rho_top"] for b in best.values()}
    if len(tops) > 1:  # one rho_top per table: keep the commonest, re-pick rho_bottom under it
        top = max(tops, key=lambda t: sum(b["rho_top"] == t for b in best.values()))
        best = {nfe: min((r for r in rows if r["rho_top"] == top), key=lambda r: r["fd"]) for nfe, rows in results.items()}
    plain = {nfe: next((r["fd"] for r in rows if r["rho_top"] == r["rho_bottom"] == 1.0), None)
             for nfe, rows in results.items()}
    rho_top = next(iter(best.values()))["rho_top"]
    return rho_top, {nfe: {"rho_bottom": b["rho_bottom"], "fd": b["fd"], "fd_plain": plain[nfe]} for nfe, b in best.items()}
