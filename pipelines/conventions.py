"""The conventions `FewstepScheduler` takes from the diffusers scheduler each sampler mirrors
(`schedules.DISCRETE_MIRRORS`, docs/conventions.md §5): the defaults a config leaves out, the clipping
of the denoised estimate, where the sample is returned at a last sigma above 0, and the tables a
saved pipeline carries with it.
"""
from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import diffusers
import torch
from diffusers import DDIMScheduler

from ..samplers.schedules import DISCRETE_MIRRORS
from ..tuning import solver_tables
from ..tuning.store import keyed

# The options that change the denoised estimate D (diffusers' pred_original_sample), per sampler as its
# mirrored scheduler has them: DDIMScheduler clips or thresholds x0 and keeps the model's epsilon
# (unless use_clipped_model_output); HeunDiscreteScheduler clips x0 and takes its slope from it;
# DPMSolverMultistepScheduler thresholds x0.
CLIPPING = {"ddim": ("clip_sample", "thresholding"), "heun": ("clip_sample",), "dpmpp_2m": ("thresholding",)}
CLIPPING_KEYS = ("clip_sample", "thresholding")
# Schedulers that keep their sample in sigma space return it unscaled at a last sigma above 0.
SIGMA_SPACE_MIRRORS = ("EulerDiscreteScheduler", "HeunDiscreteScheduler")
TABLE_KEYS = ("schedule_table", "frozen_table", "solver_table")


def mirror_default(sampler: str, key: str):
    """The default of `key` in the `__init__` of the diffusers scheduler `sampler` mirrors (None: it
    mirrors none)."""
    if sampler not in DISCRETE_MIRRORS:
        return None
    parameter = inspect.signature(getattr(diffusers, DISCRETE_MIRRORS[sampler]).__init__).parameters.get(key)
    return None if parameter is None else parameter.default


def check_clipping(sampler: str, options: dict) -> None:
    """Refuse, in one line, a clipping option the sampler's mirrored scheduler does not apply."""
    refused = [key for key in CLIPPING_KEYS if options[key] and key not in CLIPPING.get(sampler, ())]
    if refused:
        takers = ", ".join(f"{name} ({' and '.join(keys)})" for name, keys in CLIPPING.items())
        raise ValueError(f"sampler {sampler!r} does not take {refused[0]}=True (its diffusers counterpart has no such "
                         f"option); the ones that do: {takers}")


def adopted(config: dict, sampler: str, own_defaults: dict) -> dict:
    """Another scheduler's config as `sampler`'s mirrored scheduler's `from_config` reads it: without
    the clipping keys that scheduler lacks (a DDPM config's clip_sample does not reach Euler), and
    with that scheduler's own default, where it is not `own_defaults`', for a clipping key the config
    leaves out or holds only as its own class's default (DDIMScheduler's clip_sample=True)."""
    config = {k: v for k, v in config.items() if k not in CLIPPING_KEYS or k in CLIPPING.get(sampler, ())}
    defaulted = set(config.get("_use_default_values", []))
    changed = {key for key in CLIPPING.get(sampler, ()) if mirror_default(sampler, key) != own_defaults[key]}
    for key in changed:
        if key not in config or key in defaulted:
            config[key] = mirror_default(sampler, key)
    if defaulted & changed:
        config["_use_default_values"] = sorted(defaulted - changed)
    return config


def clipped(scheduler, denoised: torch.Tensor) -> torch.Tensor:
    """D after the configured clipping: dynamic thresholding (Saharia et al. 2022, diffusers'
    `_threshold_sample`, read from the config's ratio and sample_max_value), else `clamp` to
    ±clip_sample_range; D itself when neither is on."""
    c = scheduler.config
    if c.thresholding:
        return DDIMScheduler._threshold_sample(scheduler, denoised)
    if c.clip_sample:
        return denoised.clamp(-c.clip_sample_range, c.clip_sample_range)
    return denoised


def returns_unscaled(sampler: str) -> bool:
    """Whether a trajectory that stops above sigma 0 returns the sigma-space `x` (Euler, Heun) rather
    than the VP `x / sqrt(1 + sigma^2)` (DDIM, DPM-Solver)."""
    return DISCRETE_MIRRORS.get(sampler) in SIGMA_SPACE_MIRRORS


def carry_tables(config: dict, save_directory) -> dict:
    """Copy the table files the config names into `save_directory` and name them there relatively
    (`<key>.json`), so the saved folder can move; a shipped model's name stays as it is."""
    carried = {}
    for key in TABLE_KEYS:
        given = config.get(key)
        if given is None or not Path(given).expanduser().exists():
            continue
        path = Path(given).expanduser()
        source = path / "frozen_table.json" if key == "frozen_table" and path.is_dir() else path
        if key == "schedule_table" and path.is_dir():
            source = path / "schedules" / f"{keyed(config['sampler'], config.get('guidance_scale'))}.json"
        if key == "solver_table" and path.is_dir():
            source = solver_tables.table_file(path)
        shutil.copyfile(source, Path(save_directory) / f"{key}.json")
        carried[key] = f"{key}.json"
    return carried


def resolve_tables(config: dict, directory) -> dict:
    """The table names of a saved config that are relative to its folder, made absolute."""
    return {key: str(Path(directory) / config[key]) for key in TABLE_KEYS
            if isinstance(config.get(key), str) and (Path(directory) / config[key]).is_file()}
