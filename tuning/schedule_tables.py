"""Searched schedules, stored next to the model they were searched for.

A table is one JSON file per sampler, `<model dir>/schedules/<sampler>.json`, or `<sampler>-cfg<W>.json`
for the model under guidance W: `{"sampler", "options" (those not at their defaults), "model",
"fingerprint", "objective", "guidance_scale", "conditioning", "by_nfe": {"5": {"sigmas": [...], "command",
...}}}`. `fingerprint` identifies the model's weights, so a table is never applied to
another model; each entry holds the exact grid of that NFE (`n + 1` sigmas, ending at 0 or at the
sigma where the sample is returned) and the command that searched it. `schedule.kind=auto` (the
default of the sampling commands) samples on the entry for the sampler and NFE asked when one
exists, and on the Karras grid otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..samplers.fingerprints import fingerprint
from ..samplers.solvers import check_sigmas, get_solver, nfe as nfe_of, resolve_options
from . import store

FOLDER = "schedules"


def default_path(denoiser, sampler: str) -> Path | None:
    """`<model dir>/schedules/<sampler>[-cfg<W>].json` (W: the denoiser's guidance scale) for a model loaded
    from a directory, else None."""
    return store.beside(denoiser, FOLDER, f"{store.keyed(sampler, store.guidance_of(denoiser))}.json")


def scales(denoiser, sampler: str) -> list[float]:
    """The guidance scales of the model's tables of `sampler`."""
    return store.scales_beside(denoiser, FOLDER, sampler, r"\.json")


def changed_options(sampler: str, options) -> dict:
    """The sampler options that differ from its defaults: what a table records and matches, so a
    table stays valid when a sampler gains an option."""
    defaults = get_solver(sampler).options
    return {k: v for k, v in resolve_options(sampler, options).items() if v != defaults[k]}


def load(path) -> dict:
    """A table file; one that is not a table is refused naming the file."""
    return store.read_table(path, "schedule table", ("sampler", "options", "fingerprint", "by_nfe"))


def _check_sampler(table: dict, path: Path, sampler: str, options: dict) -> None:
    """Refuse a table of another sampler or options, in one line naming both."""
    if table["sampler"] != sampler or table["options"] != changed_options(sampler, options):
        raise ValueError(f"{path} holds grids of sampler {table['sampler']} {table['options']}, "
                         f"not of {sampler} {changed_options(sampler, options)}")


def check_start(sigmas: torch.Tensor, sigma_max: float, grid: str, whose: str) -> torch.Tensor:
    """`sigmas` (checked by `check_sigmas`), refused when they start above `whose` `sigma_max`."""
    sigmas = check_sigmas(sigmas)
    if sigmas[0] > sigma_max * (1 + 1e-9):
        raise ValueError(f"{grid} starts at sigma {float(sigmas[0]):.6g}, above {whose} sigma_max {sigma_max:.6g}")
    return sigmas


def lookup(path, denoiser, sampler: str, options: dict, nfe: int) -> torch.Tensor:
    """The grid of table `path` for `sampler` with `options` at exactly `nfe` NFE on `denoiser`;
    a table made for another model, sampler, options or NFE, or a grid the sampler or the model
    cannot take, is refused in one line naming both values."""
    table, path = load(path), Path(path).expanduser()
    mine = fingerprint(denoiser)
    if table["fingerprint"] != mine:
        raise ValueError(f"{path} was searched for another model ({table.get('model')}, weights {table['fingerprint']}); "
                         f"this one's weights are {mine}: search it again (scripts/search_schedule.py)")
    _check_sampler(table, path, sampler, options)
    store.check_guidance(table.get("guidance_scale"), denoiser, path)
    entry = table["by_nfe"].get(str(nfe))
    if entry is None:
        raise ValueError(f"{path} has no grid for NFE {nfe}: it has NFE {', '.join(sorted(table['by_nfe'], key=int))}")
    sigmas = check_start(entry["sigmas"], float(denoiser.sigma_max), f"{path} NFE {nfe}", "the model's")
    if nfe_of(sampler, sigmas, options) != nfe:
        raise ValueError(f"{path} NFE {nfe}: its grid of {len(sigmas) - 1} steps costs {sampler} "
                         f"{nfe_of(sampler, sigmas, options)} NFE, not {nfe}")
    return sigmas


def best_within(path, denoiser, sampler: str, options: dict, budget: int) -> tuple[int, torch.Tensor] | None:
    """`(nfe, grid)` of the entry with the lowest held-out ODE error among those of at most `budget`
    NFE (Heun's even NFE must end at sigma_min, which can do worse than one NFE less), checked as
    `lookup` checks it; None when the table has none within the budget."""
    within = {nfe: e for nfe, e in entries(path).items() if nfe <= budget}
    if not within:
        return None
    nfe = min(within, key=lambda n: (within[n].get("held_out_ode_error", float("inf")), -n))
    return nfe, lookup(path, denoiser, sampler, options, nfe)


def entries(path) -> dict[int, dict]:
    """`{nfe: entry}` of a table file, or {} when there is none."""
    path = Path(path)
    return {int(k): v for k, v in load(path)["by_nfe"].items()} if path.is_file() else {}


def check_writable(path, denoiser, sampler: str, options: dict) -> dict | None:
    """The table at `path` that grids of `denoiser`, `sampler` and `options` may join (None: no file yet); one
    of another model, sampler, options or guidance scale is refused in one line naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        return None
    old, options = load(path), changed_options(sampler, options)
    if (old["fingerprint"], old["sampler"], old["options"]) != (fingerprint(denoiser), sampler, options):
        raise ValueError(f"{path} holds grids of another model or sampler ({old.get('model')} {old['sampler']} "
                         f"{old['options']}); write to another table=")
    store.check_guidance(old.get("guidance_scale"), denoiser, path)
    return old


def write(path, denoiser, sampler: str, options: dict, model: str, objective: str, nfe: int, sigmas,
          conditioning: dict | None = None, **details) -> Path:
    """Store the grid of `sampler` at `nfe` in the table `path` (made if missing; the other NFEs
    of a table of the same model, sampler, options and guidance scale are kept), with `details` (the command,
    the errors measured) beside it; `conditioning`: what the noises were conditioned on (e.g. classes)."""
    path = Path(path).expanduser()
    sigmas = check_sigmas(torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu())
    options = changed_options(sampler, options)
    table = {"sampler": sampler, "options": options, "model": model, "fingerprint": fingerprint(denoiser),
             "objective": objective, **store.guidance_record(denoiser, conditioning), "by_nfe": {}}
    old = check_writable(path, denoiser, sampler, options)
    if old is not None:
        table["by_nfe"] = old["by_nfe"]
    table["by_nfe"][str(nfe)] = {"sigmas": sigmas.tolist(), **details}
    table["by_nfe"] = dict(sorted(table["by_nfe"].items(), key=lambda kv: int(kv[0])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1) + "\n")
    return path


def table_file(given, sampler: str, guidance_scale: float | None = None) -> Path:
    """A table named by a scheduler config: a file, or a model directory or a shipped model's name
    (its table for `sampler` at `guidance_scale`, `<sampler>-cfg<W>.json`; a scale it has none for is
    refused in one line naming the scales it has)."""
    from ..assets import resolve

    path = resolve(given, lambda root: root.is_file() or (root / FOLDER).is_dir())
    if not path.is_dir():
        return path
    file = path / FOLDER / f"{store.keyed(sampler, guidance_scale)}.json"
    if guidance_scale is not None and not file.is_file():
        have = store.scales_in(path / FOLDER, sampler, r"\.json")
        raise ValueError(f"{path} has no schedule table of {sampler} for guidance_scale={guidance_scale:g} "
                         f"{store.at_scales(have)}")
    return file


def grid_of_steps(path, sampler: str, options: dict, steps: int, sigma_max: float,
                  guidance_scale: float | None = None) -> torch.Tensor:
    """The grid of `steps` steps in table `path` (of the lowest NFE when two have as many steps,
    Heun's ending at 0 and at sigma_min), for a scheduler that cannot see the model's weights: the
    sampler, options, guidance scale and `sigma_max` are checked, the fingerprint cannot be."""
    table, path = load(path), Path(path).expanduser()
    _check_sampler(table, path, sampler, options)
    recorded = table.get("guidance_scale")
    if (None if recorded is None else float(recorded)) != guidance_scale:
        raise ValueError(f"{path} was searched at {store.scale_words(recorded)}, not at "
                         f"{store.scale_words(guidance_scale)} (guidance_scale={guidance_scale})")
    found = sorted((int(nfe), entry["sigmas"]) for nfe, entry in table["by_nfe"].items()
                   if len(entry["sigmas"]) - 1 == steps)
    if not found:
        have = sorted({len(e["sigmas"]) - 1 for e in table["by_nfe"].values()})
        raise ValueError(f"{path} has no grid of {steps} steps: it has {', '.join(map(str, have))}")
    return check_start(found[0][1], sigma_max, f"{path}'s grid of {steps} steps", "this scheduler's")
