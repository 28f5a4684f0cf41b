"""The sampling configs Hydra checks `conf/sample.yaml` (and its `model/`, `sampler/` groups)
against, and what they set up: the denoiser, the sample shape, the step count and the sigma grid,
or a text-to-image pipeline with `FewstepScheduler` in place of its own scheduler."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ScheduleKind(Enum):
    auto = "auto"
    table = "table"
    karras = "karras"
    logsnr = "logsnr"
    time_uniform = "time_uniform"
    flow_uniform = "flow_uniform"
    discrete = "discrete"


class FinalSigmas(Enum):
    zero = "zero"
    sigma_min = "sigma_min"


class Spacing(Enum):
    leading = "leading"
    trailing = "trailing"
    linspace = "linspace"


@dataclass
class ScheduleConfig:
    """samplers.get_sigmas keywords, or a searched table (samplers.schedule_tables). kind auto: the
    searched grid of the model, sampler and NFE when the model has one and no other value below is
    set, else karras. A value left None takes its default: rho 7, eps_s 1e-3, final_sigmas_type
    zero, sigma_min/sigma_max the model's own range."""
    kind: ScheduleKind = ScheduleKind.auto
    rho: Optional[float] = None
    sigma_min: Optional[float] = None
    sigma_max: Optional[float] = None
    spacing: Optional[Spacing] = None      # discrete only; None: leading (a text-to-image pipeline: its own)
    steps_offset: Optional[int] = None     # discrete only; None: 0 (a text-to-image pipeline: its own)
    eps_s: Optional[float] = None
    final_sigmas_type: Optional[FinalSigmas] = None   # zero: a last step to 0; sigma_min: stop there
    table: Optional[str] = None            # kind table: the table file (kind auto: the model's own)


@dataclass
class SkipConfig:
    """Skip-Tuning (samplers.skip_tuning) on top of a sampler: conf/sampler/<name>+skiptune.yaml."""
    rho_top: float = 1.0
    rho_bottom: Optional[float] = None      # None: the calibrated value at the nearest NFE of by_nfe
    sigma_range: Optional[List[float]] = None
    by_nfe: Dict[int, float] = field(default_factory=dict)


@dataclass
class SamplerConfig:
    name: str = MISSING
    options: Dict[str, Any] = field(default_factory=dict)
    skip: Optional[SkipConfig] = None


@dataclass
class SamplingConfig:
    """What every command that samples a model shares (sample, eval, reflow pairs): the model, the
    sampler, the step count or NFE budget, the grid, the batch and the device."""
    model: Any = MISSING
    sampler: SamplerConfig = MISSING
    steps: int = 10
    nfe: Optional[int] = None
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    batch_size: int = 64
    image_size: Optional[int] = None
    device: str = "auto"
    out_dir: str = MISSING


@dataclass
class SampleConfig(SamplingConfig):
    num_samples: int = 64
    seed: int = 0
    prompt: Optional[str] = None             # text-to-image pipelines only
    guidance_scale: Optional[float] = None   # text-to-image pipelines only; None: the pipeline's default


ConfigStore.instance().store(name="sample_schema", node=SampleConfig)


@dataclass
class SearchConfig:
    """search_schedule.py: the model and sampler, the NFEs to search, the noises and the optimiser
    of samplers.schedule_search, and where the result goes."""
    model: Any = MISSING
    sampler: SamplerConfig = MISSING
    nfes: List[int] = field(default_factory=lambda: [3, 4, 5, 6, 7, 8, 9, 10])
    num_noises: int = 64                   # in each of the training and the held-out batch
    seed: int = 900000                     # noise i of the training batch from seed + i, then the held-out ones
    iterations: int = 30
    lr: float = 0.05
    rtol: float = 1e-5                     # of the dopri5 reference
    atol: float = 1e-5
    write: bool = False
    table: Optional[str] = None            # where write=true puts it; None: <model dir>/schedules/<sampler>.json
    device: str = "auto"
    out_dir: str = MISSING


ConfigStore.instance().store(name="search_schema", node=SearchConfig)


GRID_VALUES = ("rho", "sigma_min", "sigma_max", "spacing", "steps_offset", "eps_s", "final_sigmas_type")


def _value(v):
    return v.value if isinstance(v, Enum) else v


def steps_of(cfg) -> int:
    """The sampler steps a sample config asks for on a computed grid: `steps`, or the most that
    fit the budget `nfe`."""
    from . import steps_for_nfe

    if cfg.nfe is None:
        return cfg.steps
    return steps_for_nfe(cfg.sampler.name, cfg.nfe, dict(cfg.sampler.options),
                         ends_at_zero=_value(cfg.schedule.final_sigmas_type) in (None, "zero"))


def computed_grid(kind: str, steps: int, sc, denoiser, sampler: str, device=None):
    """`get_sigmas` of the schedule config `sc` (its unset values at their defaults) on `denoiser`."""
    from . import get_sigmas

    return get_sigmas(
        kind, steps,
        sigma_min=denoiser.sigma_min if sc.sigma_min is None else sc.sigma_min,
        sigma_max=denoiser.sigma_max if sc.sigma_max is None else sc.sigma_max,
        rho=7.0 if sc.rho is None else sc.rho, alphas_cumprod=getattr(denoiser, "alphas_cumprod", None),
        spacing="leading" if sc.spacing is None else _value(sc.spacing), steps_offset=sc.steps_offset or 0,
        eps_s=1e-3 if sc.eps_s is None else sc.eps_s, mirror=sampler,
        final_sigmas_type=_value(sc.final_sigmas_type) or "zero", device=device)


def planned_grid(cfg, denoiser, device=None, predictor=None):
    """The step count, sigma grid and a line saying which grid, for a sample config on `denoiser`.

    predictor: the config's AMED predictor (`amed_predictor`): its own grid, refused beside any
    schedule value.

    schedule.kind auto: the model's searched table (`schedule_tables.default_path`) when it has a
    grid for this sampler, its options and the NFE asked, and no other schedule value is set; else
    karras. With `nfe=N` the table's best grid within N NFE (`schedule_tables.best_within`: Heun
    at an even N may do better with one less), with `steps=N` its grid of N steps at the NFE they
    cost on a grid ending at 0. schedule.kind table: the same from `schedule.table`, or one line
    saying why not."""
    from . import nfe as nfe_of
    from . import schedule_tables
    from .solvers import get_solver

    sc, name, options = cfg.schedule, cfg.sampler.name, dict(cfg.sampler.options)
    kind = sc.kind.value
    others = [f"schedule.{key}={_value(getattr(sc, key))}" for key in GRID_VALUES if getattr(sc, key) is not None]
    if predictor is not None and predictor.config.sigmas is not None:
        path = predictor.config._name_or_path
        if kind != "auto" or others or sc.table is not None:
            raise ValueError(f"the AMED predictor {path} samples on the grid it was trained on: drop "
                             f"{', '.join(others) or f'schedule.kind={kind}'}")
        sigmas = torch.tensor(predictor.config.sigmas, dtype=torch.float64, device=device)
        return len(sigmas) - 1, sigmas, (f"schedule: the grid the AMED predictor {path} was trained on "
                                         f"(NFE {predictor.config.nfe}, afs {predictor.config.afs})")
    if sc.table is not None and kind != "table":
        raise ValueError(f"schedule.table={sc.table} is read with schedule.kind=table, not kind={kind}")
    if kind == "table" and (sc.table is None or others):
        raise ValueError(f"schedule.kind=table takes its whole grid from schedule.table="
                         f"{sc.table if sc.table is not None else '(unset: give the table file)'}"
                         + (f"; drop {', '.join(others)}" if others else ""))
    if kind in ("auto", "table") and get_solver(name).adaptive:
        kind = "karras"  # dopri5 uses only the grid's ends
    if kind in ("auto", "table"):
        steps = steps_of(cfg)
        path = Path(sc.table).expanduser() if kind == "table" else schedule_tables.default_path(denoiser, name)
        if kind == "table" and not path.is_file():
            raise FileNotFoundError(f"no schedule table at {path}")
        table = schedule_tables.load(path) if path is not None and path.is_file() else None
        usable = table is not None and (kind == "table" or (
            not others and table["options"] == schedule_tables.changed_options(name, options)))
        if usable and cfg.nfe is not None:  # an NFE the table covers: its best searched grid within that budget
            covered = str(cfg.nfe) in table["by_nfe"]
            if not covered and kind == "table":
                raise ValueError(f"{path} has no grid for NFE {cfg.nfe}: it has NFE "
                                 f"{', '.join(map(str, sorted(schedule_tables.entries(path))))}")
            found = schedule_tables.best_within(path, denoiser, name, options, cfg.nfe) if covered else None
        elif usable:  # a step count: the entry of that many steps at the NFE they cost on a grid ending at 0
            target = nfe_of(name, computed_grid("karras", steps, sc, denoiser, name), options)
            entry = table["by_nfe"].get(str(target))
            found = (target, schedule_tables.lookup(path, denoiser, name, options, target)) \
                if kind == "table" or (entry is not None and len(entry["sigmas"]) - 1 == steps) else None
        else:
            found = None
        if found is not None:
            nfe, sigmas = found
            budget = f" (budget {cfg.nfe})" if cfg.nfe is not None and cfg.nfe != nfe else ""
            return len(sigmas) - 1, sigmas.to(device), f"schedule: {kind}, the searched grid for NFE {nfe}{budget} ({path})"
        asked = f"NFE {cfg.nfe}" if cfg.nfe is not None else f"{steps} steps"
        why = ("other schedule values are set" if others
               else f"no searched grid of {name} {schedule_tables.changed_options(name, options) or ''} for {asked} "
                    f"on this model".replace("  ", " "))
        sigmas = computed_grid("karras", steps, sc, denoiser, name, device)
        return steps, sigmas, f"schedule: auto, karras rho {7.0 if sc.rho is None else sc.rho:g} ({why})"
    steps = steps_of(cfg)
    return steps, computed_grid(kind, steps, sc, denoiser, name, device), f"schedule: {kind}"


def amed_predictor(cfg, denoiser, device=None):
    """The AMED predictor a sample config asks for (None: none, fixed r and c): `sampler.options.predictor`
    auto, the model's own for the NFE asked (or, without `nfe`, for `steps` steps; `amed_predictor.find`),
    or a directory (`AMEDPredictor.save_pretrained`); refused in one line if it is for another sampler
    or NFE."""
    from . import amed_predictor as predictors
    from .solvers import get_solver, resolve_options

    name, value = cfg.sampler.name, cfg.sampler.options.get("predictor")
    if value is None or name not in ("amed", "amed_plugin"):
        return None
    options = resolve_options(name, dict(cfg.sampler.options))
    fixed = [f"sampler.options.{key}={options[key]}" for key in ("r", "c")
             if options[key] != get_solver(name).options[key]]
    if fixed:
        raise ValueError(f"{', '.join(fixed)} fixes what the predictor ({value}) learns: add "
                         f"sampler.options.predictor=null")
    base = options.get("base")
    path = (predictors.find(denoiser, name, base, cfg.nfe, None if cfg.nfe is not None else cfg.steps)
            if value == "auto" else value)
    return predictors.load(path, name, base, cfg.nfe).to(device)


def sampler_options(cfg, predictor=None) -> dict:
    """`sampler.options` of a sample config with its AMED predictor (`amed_predictor`) in place of
    the name, and the afs it was trained with."""
    options = dict(cfg.sampler.options)
    if predictor is not None:
        options.update(predictor=predictor, afs=predictor.config.afs)
    return options


def printable(options: dict) -> dict:
    """Sampler options to print: a predictor shown by its directory."""
    learned = options.get("predictor")
    return {**options, "predictor": learned.config._name_or_path} if isinstance(learned, torch.nn.Module) else options


def sampling_setup(cfg, device, denoiser=None):
    """The denoiser (`denoiser`, else the config's model), sample shape, step count, sigma grid a
    sample config asks for, a line saying which grid (`planned_grid`) and the sampler options
    (`sampler_options`, its AMED predictor loaded once for both)."""
    from hydra.utils import instantiate

    denoiser = (instantiate(cfg.model, _convert_="all") if denoiser is None else denoiser).to(device).eval()
    if denoiser.sample_shape is None:
        raise ValueError(f"{type(denoiser).__name__} does not know its sample shape (no sample_size in its config)")
    shape = tuple(denoiser.sample_shape)
    if cfg.image_size is not None:
        shape = (shape[0], cfg.image_size, cfg.image_size)
    if hasattr(denoiser, "check_shape"):
        denoiser.check_shape(shape)
    predictor = amed_predictor(cfg, denoiser, device)
    steps, sigmas, how = planned_grid(cfg, denoiser, device, predictor)
    return denoiser, shape, steps, sigmas, how, sampler_options(cfg, predictor)


def text_to_image_dir(cfg) -> Path | None:
    """The model directory when it holds a diffusers pipeline with a text encoder (Stable-Diffusion style)."""
    path = cfg.model.get("path")
    index = Path(str(path)).expanduser() / "model_index.json" if path is not None else None
    if index is None or not index.is_file():
        return None
    return index.parent if json.loads(index.read_text()).get("text_encoder", [None])[0] else None


def pipeline_setup(cfg, path: Path, device):
    """The text-to-image pipeline at `path` with `FewstepScheduler` in place of its scheduler, its
    timesteps set for the steps the config asks for: prompt encoding, classifier-free guidance and
    VAE decoding stay diffusers' own, and the noise table and prediction_type come from the
    pipeline's scheduler config (as do spacing and steps_offset when the config leaves them unset).
    Returns the pipeline and its step count."""
    from diffusers import DiffusionPipeline

    from . import FewstepScheduler

    sc, steps = cfg.schedule, steps_of(cfg)
    pipe = DiffusionPipeline.from_pretrained(str(path)).to(device)
    pipe.set_progress_bar_config(disable=True)
    own = {k: v for k, v in (("timestep_spacing", sc.spacing and sc.spacing.value), ("steps_offset", sc.steps_offset))
           if v is not None}  # unset: the pipeline's own
    if sc.kind.value == "table":
        raise ValueError("schedule.kind=table reads a table searched on a denoiser; a text-to-image pipeline takes "
                         "it as FewstepScheduler(schedule_table=...) in Python")
    pipe.scheduler = FewstepScheduler.from_config(
        pipe.scheduler.config, sampler=cfg.sampler.name, sampler_options=dict(cfg.sampler.options),
        schedule="karras" if sc.kind.value == "auto" else sc.kind.value, rho=7.0 if sc.rho is None else sc.rho,
        sigma_min=sc.sigma_min, sigma_max=sc.sigma_max, eps_s=1e-3 if sc.eps_s is None else sc.eps_s,
        final_sigmas_type=_value(sc.final_sigmas_type) or "zero", **own)
    pipe.scheduler.set_timesteps(steps, device=device)
    return pipe, steps
