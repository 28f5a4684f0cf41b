"""Learned solvers, stored next to the model they were fitted for (`tuning.store`).

A table is one JSON file, `<model dir>/solvers/learned.json`: `{"sampler": "learned", "model",
"fingerprint", "by_nfe": {"5": {"sigmas": [...], "weights": [[...], ...], "order", "command",
"held_out_ode_error", "start", "curve", ...}}}`. Only a fit that beat its start on held-out noises is
written, and a failed fit writes nothing, so the stored tables stay as they were.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..samplers.fingerprints import fingerprint
from ..samplers.learned import check_weights
from ..samplers.solvers import check_sigmas
from . import store
from .learned_solver import NAME

FOLDER = "solvers"


def default_path(denoiser) -> Path | None:
    """`<model dir>/solvers/learned.json` for a model loaded from a directory, else None."""
    return store.beside(denoiser, FOLDER, f"{NAME}.json")


def load(path) -> dict:
    """A table file; one that is not a learned-solver table is refused naming the file."""
    table = store.read_table(path, "learned-solver table", ("sampler", "fingerprint", "by_nfe"))
    if table["sampler"] != NAME:
        raise ValueError(f"{path} holds a table of sampler {table['sampler']}, not of {NAME}")
    return table


def nfes(path) -> list[int]:
    """The NFEs a table has (none for a missing file)."""
    return sorted(int(k) for k in load(path)["by_nfe"]) if Path(path).is_file() else []


def lookup(path, denoiser, nfe: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(sigmas, weights)` of the table `path` at exactly `nfe` NFE for `denoiser`; a table fitted for other
    weights, or one without that NFE, is refused in one line naming both values."""
    table, path = load(path), Path(path).expanduser()
    store.check_made_for(table["fingerprint"], denoiser, str(path))
    return entry(table, path, nfe)


def entry(table: dict, path, nfe: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(sigmas, weights)` of the loaded `table` (read from `path`) at exactly `nfe` NFE, its fingerprint
    unchecked (a diffusers scheduler cannot see the weights); a missing NFE is refused in one line naming
    the NFEs there are."""
    found = table["by_nfe"].get(str(nfe))
    if found is None:
        raise ValueError(f"{path} has no learned solver for NFE {nfe}: it has NFE "
                         f"{', '.join(sorted(table['by_nfe'], key=int)) or 'none'}")
    sigmas = check_sigmas(found["sigmas"])
    return sigmas, check_weights(found["weights"], len(sigmas) - 1)


def table_file(given) -> Path:
    """A table named by a scheduler config: its file, or a model directory or a shipped model's name
    (`<dir>/solvers/learned.json`)."""
    from ..assets import resolve

    path = resolve(given, lambda root: root.is_file() or (root / FOLDER).is_dir())
    return path / FOLDER / f"{NAME}.json" if path.is_dir() else path


def write(path, denoiser, model: str, fit, **details) -> Path:
    """Store `fit` (`learned_solver.SolverFit`) at its NFE in the table `path` (made if missing; the other
    NFEs of a table of the same model are kept), with `details` (the command) beside it."""
    path = Path(path).expanduser()
    table = {"sampler": NAME, "model": model, "fingerprint": fingerprint(denoiser), "by_nfe": {}}
    if path.is_file():
        old = load(path)
        store.check_made_for(old["fingerprint"], denoiser, str(path))
        table["by_nfe"] = old["by_nfe"]
    table["by_nfe"][str(fit.nfe)] = {"sigmas": fit.sigmas.tolist(), "weights": fit.weights.tolist(),
                                     "order": fit.weights.shape[1], **details, **fit.record()}
    table["by_nfe"] = dict(sorted(table["by_nfe"].items(), key=lambda kv: int(kv[0])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1) + "\n")
    return path
