"""From a checked sample config (`schemas.SampleConfig` and its kin) to what the libraries take: the
denoiser, the sample shape, the step count and sigma grid (`planned_grid`: the model's searched table,
an AMED predictor's grid, or `samplers.get_sigmas` with only the values the config sets), the sampler
options, Skip-Tuning factors, or a text-to-image pipeline with `FewstepScheduler` in place of its own
scheduler; and `from_config`, all of it as one `Sampling`."""
from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from ..evaluation.generators import GeneratorFn, PipelineFn, SamplerFn
from ..pipelines import FewstepScheduler
from ..samplers import get_sigmas, nfe as nfe_of, skip_tuning, steps_for_nfe
from ..samplers.schedules import RHO
from ..samplers.solvers import get_solver, resolve_options
from ..tuning import amed_predictor as predictors, schedule_tables, skiptune_tables, solver_tables, store
from .common import counted
from .conditioning import conditioned

GRID_VALUES = ("rho", "sigma_min", "sigma_max", "spacing", "steps_offset", "eps_s", "final_sigmas_type")


def _value(v):
    return v.value if isinstance(v, Enum) else v


def grid_values(sc) -> dict:
    """The `get_sigmas` keywords a schedule config sets (the others keep `get_sigmas`' defaults)."""
    return {key: _value(getattr(sc, key)) for key in GRID_VALUES if getattr(sc, key) is not None}


def command_line_keys() -> set[str] | None:
    """The keys the running Hydra app's command line sets (`sampler`, `schedule.rho`); None outside one."""
    if not HydraConfig.initialized():
        return None
    return {o.lstrip("+~").split("=")[0] for o in HydraConfig.get().overrides.task}


def given_values(sc) -> dict:
    """The schedule values a run gives beside `schedule.kind` (those a searched, table or predictor grid
    refuses): under a command, those its command line sets (a command's yaml may set defaults for its
    computed grid, as train_amed's sigma_max 80); else every value set."""
    named = command_line_keys()
    return {key: value for key, value in grid_values(sc).items() if named is None or f"schedule.{key}" in named}


def steps_of(cfg) -> int:
    """The sampler steps a sample config asks for on a computed grid: `steps`, or the most that
    fit the budget `nfe`."""
    if cfg.nfe is None:
        return cfg.steps
    return steps_for_nfe(cfg.sampler.name, cfg.nfe, dict(cfg.sampler.options),
                         ends_at_zero=_value(cfg.schedule.final_sigmas_type) in (None, "zero"))


def computed_grid(kind: str, steps: int, sc, denoiser, sampler: str, device=None):
    """`get_sigmas` with the values the schedule config `sc` sets, over the model's range by default; a
    flow's own grid (flow_uniform) shifted by the model's shift (`FlowDenoiser.shifted`)."""
    levers = {"sigma_min": denoiser.sigma_min, "sigma_max": denoiser.sigma_max, **grid_values(sc)}
    grid = get_sigmas(kind, steps, alphas_cumprod=getattr(denoiser, "alphas_cumprod", None), mirror=sampler,
                      device=device, **levers)
    return denoiser.shifted(grid) if kind == "flow_uniform" and hasattr(denoiser, "shifted") else grid


def _predictor_grid(kind, others, sc, predictor, device):
    """The grid an AMED predictor was trained on, refused beside any schedule value."""
    path = predictor.config._name_or_path
    if kind != "auto" or others or sc.table is not None:
        raise ValueError(f"the AMED predictor {path} samples on the grid it was trained on: drop "
                         f"{', '.join(others) or f'schedule.kind={kind}'}")
    sigmas = torch.tensor(predictor.config.sigmas, dtype=torch.float64, device=device)
    scale = predictor.config.guidance_scale
    return len(sigmas) - 1, sigmas, (f"schedule: the grid the AMED predictor {path} was trained on "
                                     f"(NFE {predictor.config.nfe}, afs {predictor.config.afs}"
                                     f"{'' if scale is None else f', at guidance {scale:g}'})")


def _searched(cfg, kind, others, denoiser, path, steps: int):
    """`(nfe, sigmas)` of the table at `path` for the config (`steps`: its step count on a computed
    grid), or None (schedule.kind auto falls back)."""
    sc, name, options = cfg.schedule, cfg.sampler.name, dict(cfg.sampler.options)
    table = schedule_tables.load(path) if path is not None and path.is_file() else None
    usable = table is not None and (kind == "table" or (
        not others and table["options"] == schedule_tables.changed_options(name, options)))
    if not usable:
        return None
    if cfg.nfe is not None:  # an NFE the table covers: its best searched grid within that budget
        if str(cfg.nfe) not in table["by_nfe"]:
            if kind == "table":
                raise ValueError(f"{path} has no grid for NFE {cfg.nfe}: it has NFE "
                                 f"{', '.join(map(str, sorted(schedule_tables.entries(path))))}")
            return None
        return schedule_tables.best_within(path, denoiser, name, options, cfg.nfe)
    # a step count: the entry of that many steps at the NFE they cost on a grid ending at 0
    target = nfe_of(name, computed_grid("karras", steps, sc, denoiser, name), options)
    entry = table["by_nfe"].get(str(target))
    if kind == "table" or (entry is not None and len(entry["sigmas"]) - 1 == steps):
        return target, schedule_tables.lookup(path, denoiser, name, options, target)
    return None


def _no_table(denoiser, name: str, options: dict, asked: str, path) -> str:
    """Why schedule.kind=auto takes the Karras grid when no other schedule value is set."""
    scale = store.guidance_of(denoiser)
    if scale is not None and path is not None and not path.is_file():
        return f"no schedule table of {name} for guidance {scale:g} {store.at_scales(schedule_tables.scales(denoiser, name))}"
    return (f"no searched grid of {name} {schedule_tables.changed_options(name, options) or ''} for {asked} "
            f"on this model").replace("  ", " ")


def planned_grid(cfg, denoiser, device=None, predictor=None):
    """The step count, sigma grid and a line saying which grid, for a sample config on `denoiser`.

    predictor: the config's AMED predictor (`amed_predictor`): its own grid, refused beside any
    schedule value. schedule.kind auto: the model's searched table (`schedule_tables.default_path`)
    when it has a grid for this sampler, its options and the NFE asked, and no other schedule value
    is set; else karras. With `nfe=N` the table's best grid within N NFE (`schedule_tables.best_within`),
    with `steps=N` its grid of N steps at the NFE they cost on a grid ending at 0. schedule.kind
    table: the same from `schedule.table`, or one line saying why not."""
    sc, name, options = cfg.schedule, cfg.sampler.name, dict(cfg.sampler.options)
    kind = sc.kind.value
    others = [f"schedule.{key}={value}" for key, value in given_values(sc).items()]
    if predictor is not None and predictor.config.sigmas is not None:
        return _predictor_grid(kind, others, sc, predictor, device)
    if sc.table is not None and kind != "table":
        raise ValueError(f"schedule.table={sc.table} is read with schedule.kind=table, not kind={kind}")
    if kind == "table" and (sc.table is None or others):
        raise ValueError(f"schedule.kind=table takes its whole grid from schedule.table="
                         f"{sc.table if sc.table is not None else '(unset: give the table file)'}"
                         + (f"; drop {', '.join(others)}" if others else ""))
    if kind in ("auto", "table") and get_solver(name).adaptive:
        kind = "karras"  # dopri5 uses only the grid's ends
    steps = steps_of(cfg)
    if kind not in ("auto", "table"):
        return steps, computed_grid(kind, steps, sc, denoiser, name, device), f"schedule: {kind}"
    path = Path(sc.table).expanduser() if kind == "table" else schedule_tables.default_path(denoiser, name)
    if kind == "table" and not path.is_file():
        raise FileNotFoundError(f"no schedule table at {path}")
    found = _searched(cfg, kind, others, denoiser, path, steps)
    if found is not None:
        nfe, sigmas = found
        budget = f" (budget {cfg.nfe})" if cfg.nfe is not None and cfg.nfe != nfe else ""
        scale = store.guidance_of(denoiser)
        at = "" if scale is None else f" at guidance {scale:g}"
        return (len(sigmas) - 1, sigmas.to(device),
                f"schedule: {kind}, the searched grid for NFE {nfe}{budget}{at} ({path})")
    asked = f"NFE {cfg.nfe}" if cfg.nfe is not None else counted(steps, "step")
    why = ("other schedule values are set" if others else _no_table(denoiser, name, options, asked, path))
    rho = sc.rho if sc.rho is not None else RHO
    return steps, computed_grid("karras", steps, sc, denoiser, name, device), f"schedule: auto, karras rho {rho:g} ({why})"


def amed_predictor(cfg, denoiser, device=None):
    """The AMED predictor a sample config asks for (None: none, fixed r and c): `sampler.options.predictor`
    auto, the model's own for the NFE asked (or, without `nfe`, for `steps` steps; `amed_predictor.find`),
    or a directory (`AMEDPredictor.save_pretrained`); refused in one line if it is for another sampler
    or NFE."""
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


def fitted_solver(cfg, denoiser, device=None):
    """`(steps, sigmas, line, weights)` of the learned solver a sample config asks for with
    `sampler.options.weights` auto (the model's own table, `solver_tables.default_path`) or a table file, at
    the NFE asked (`nfe`, else `steps`: one call per step), on the grid it was fitted on, refused beside
    any schedule value; None when the sampler is not `learned` or its weights are null (DPM-Solver++(2M)'s).
    auto without a fit at that NFE gives DPM-Solver++(2M)'s weights on the planned grid (None), and
    `fitted_solver_missing` the line saying why."""
    value = cfg.sampler.options.get("weights")
    if cfg.sampler.name != "learned" or value is None:
        return None
    path = solver_tables.default_path(denoiser) if value == "auto" else Path(str(value)).expanduser()
    nfe = cfg.nfe if cfg.nfe is not None else cfg.steps
    if value == "auto" and (path is None or nfe not in solver_tables.nfes(path)):
        return None
    others = [f"schedule.{key}={v}" for key, v in given_values(cfg.schedule).items()]
    if others or cfg.schedule.kind.value != "auto":
        raise ValueError(f"the learned solver {path} samples on the grid it was fitted on: drop "
                         f"{', '.join(others) or f'schedule.kind={cfg.schedule.kind.value}'}")
    sigmas, weights = solver_tables.lookup(path, denoiser, nfe)
    return (len(sigmas) - 1, sigmas.to(device), f"schedule: the grid the learned solver was fitted on for NFE {nfe} "
            f"({path})", weights)


def fitted_solver_missing(cfg, denoiser) -> str | None:
    """The line saying why `sampler=learned` with weights auto runs DPM-Solver++(2M)'s weights; None otherwise."""
    if cfg.sampler.name != "learned" or cfg.sampler.options.get("weights") != "auto":
        return None
    path, nfe = solver_tables.default_path(denoiser), cfg.nfe if cfg.nfe is not None else cfg.steps
    fitted = solver_tables.nfes(path) if path is not None else []
    return (f"learned: no solver fitted for NFE {nfe} on this model (fitted: {', '.join(map(str, fitted)) or 'none'}; "
            f"scripts/fit_solver.py): DPM-Solver++(2M)'s weights")


def sampler_options(cfg, predictor=None, weights=None) -> dict:
    """`sampler.options` of a sample config with its AMED predictor (`amed_predictor`) in place of
    the name, and the afs it was trained with; a learned solver's fitted `weights` (None with weights
    auto: DPM-Solver++(2M)'s) in place of the name."""
    options = dict(cfg.sampler.options)
    if predictor is not None:
        options.update(predictor=predictor, afs=predictor.config.afs)
    if cfg.sampler.name == "learned" and options.get("weights") is not None:
        options["weights"] = weights
    return options


def printable(options: dict) -> dict:
    """Sampler options to print: a predictor shown by its directory, fitted weights by their shape."""
    learned, weights = options.get("predictor"), options.get("weights")
    if torch.is_tensor(weights):
        options = {**options, "weights": f"fitted {tuple(weights.shape)}"}
    return {**options, "predictor": learned.config._name_or_path} if isinstance(learned, torch.nn.Module) else options


def sampling_setup(cfg, device, denoiser=None):
    """The denoiser (`denoiser`, else the config's model), sample shape, step count, sigma grid a
    sample config asks for, a line saying which grid (`planned_grid`) and the sampler options
    (`sampler_options`, its AMED predictor loaded once for both)."""
    denoiser = (instantiate(cfg.model, _convert_="all") if denoiser is None else denoiser).to(device).eval()
    if denoiser.sample_shape is None:
        raise ValueError(f"{type(denoiser).__name__} does not know its sample shape (no sample_size in its config)")
    shape = tuple(denoiser.sample_shape)
    if cfg.image_size is not None:
        shape = (shape[0], cfg.image_size, cfg.image_size)
    if hasattr(denoiser, "check_shape"):
        denoiser.check_shape(shape)
    predictor, fitted = amed_predictor(cfg, denoiser, device), fitted_solver(cfg, denoiser, device)
    if fitted is not None:
        steps, sigmas, how, weights = fitted
    else:
        (steps, sigmas, how), weights = planned_grid(cfg, denoiser, device, predictor), None
        missing = fitted_solver_missing(cfg, denoiser)
        how = how if missing is None else f"{missing}; {how}"
    return denoiser, shape, steps, sigmas, how, sampler_options(cfg, predictor, weights)


def skip_tuning_for(cfg, model, nfe: int):
    """The Skip-Tuning a config's `sampler.skip` asks for at `nfe` on `model`, as a context (a no-op
    without `skip`): `rho_bottom` when set (`rho_top` 1 unless set), else the factors calibrated for
    the model (`skiptune_tables.factors`; a model without them is refused in one line, a guided model
    without factors at its guidance scale samples without them and the context gives the line saying so)."""
    skip = cfg.sampler.get("skip")
    if skip is None:
        return nullcontext()
    if skip.rho_bottom is not None:
        rho_top, rho_bottom = (1.0 if skip.rho_top is None else skip.rho_top), skip.rho_bottom
    elif skiptune_tables.missing_at_scale(model, cfg.sampler.name) is not None:
        return nullcontext(skiptune_tables.missing_at_scale(model, cfg.sampler.name))
    else:
        rho_top, rho_bottom, _ = skiptune_tables.factors(model, cfg.sampler.name, nfe)
        rho_top = rho_top if skip.rho_top is None else skip.rho_top
    sigma_range = None if skip.sigma_range is None else list(skip.sigma_range)
    return skip_tuning(model, rho_top, rho_bottom, sigma_range)


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

    sc, steps = cfg.schedule, steps_of(cfg)
    if sc.kind.value == "table":
        raise ValueError("schedule.kind=table reads a table searched on a denoiser; a text-to-image pipeline takes "
                         "it as FewstepScheduler(schedule_table=...) in Python")
    pipe = DiffusionPipeline.from_pretrained(str(path)).to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe.pretrained_path = path  # where what is tuned for it lies (tuning.store)
    levers = grid_values(sc)  # unset: the scheduler's defaults, spacing and steps_offset the pipeline's own
    if "spacing" in levers:
        levers["timestep_spacing"] = levers.pop("spacing")
    levers = {"sigma_min": None, "sigma_max": None, "final_sigmas_type": "zero", **levers}  # not the replaced scheduler's
    pipe.scheduler = FewstepScheduler.from_config(
        pipe.scheduler.config, sampler=cfg.sampler.name, sampler_options=dict(cfg.sampler.options),
        schedule="karras" if sc.kind.value == "auto" else sc.kind.value, **levers)
    pipe.scheduler.set_timesteps(steps, device=device)
    return pipe, steps


@dataclass
class Sampling:
    """What a sample config sets up. `model` is what Skip-Tuning tunes (the denoiser or the
    pipeline); `options` are the sampler's as text (an AMED predictor by its directory);
    `planned_nfe` is None for an adaptive sampler; `shape` is one sample's; `lines` say what will
    run; `metadata` are the extra keys of samples.npz; `cond`: a conditional model's `seeds -> conditioning
    keywords` (`conditioning.Conditioning.of_seeds`), `conditioning` what a tuned artifact records of it."""
    sample_fn: SamplerFn | GeneratorFn | PipelineFn
    model: Any
    name: str
    options: dict
    steps: int
    sigmas: torch.Tensor
    planned_nfe: int | None
    shape: tuple
    lines: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    cond: Callable[[list], dict] | None = None
    conditioning: dict | None = None


def sampler_given() -> bool:
    """Whether the command line of the running Hydra app names a sampler (`sampler=...`)."""
    return "sampler" in (command_line_keys() or ())


def _one_step(cfg, generator, device) -> Sampling:
    """A one-step generator's Sampling: no sampler, no grid, 1 NFE."""
    if sampler_given():
        raise ValueError(f"the model is a one-step generator ({type(generator).__name__}) and takes no sampler; "
                         f"got sampler={cfg.sampler.name}")
    size = tuple(generator.sample_shape)[1:]
    if cfg.image_size is not None and size != (cfg.image_size, cfg.image_size):
        raise ValueError(f"the generator makes samples of shape {tuple(generator.sample_shape)}; it cannot make "
                         f"image_size={cfg.image_size}")
    generator = generator.to(device).eval()
    line = (f"one-step generator {type(generator).__name__}: NFE 1, latent {tuple(generator.latent_shape)}, "
            f"{cfg.num_samples} samples of {tuple(generator.sample_shape)}")
    return Sampling(GeneratorFn(generator, device), generator, "generator", {}, 1, torch.zeros(0), 1,
                    tuple(generator.sample_shape), [line])


def from_config(cfg, device) -> Sampling:
    """The generator of a sample config (`schemas.SampleConfig`): a text-to-image pipeline
    when `model.path` holds one, a one-step generator (`gan.load_generator`: a model with a
    `latent_shape`) as it is, else the model's denoiser with the sampler on the sigma grid."""
    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be at least 1, got {cfg.num_samples} and {cfg.batch_size}")
    name, options = cfg.sampler.name, dict(cfg.sampler.options)
    path = text_to_image_dir(cfg)
    if path is not None:
        if cfg.get("classes") is not None:
            raise ValueError(f"classes={list(cfg.classes)} needs a class-conditional model; {path} is a text-to-image "
                             f"pipeline (prompt=)")
        pipe, steps = pipeline_setup(cfg, path, device)
        size = cfg.image_size or pipe.unet.config.sample_size * pipe.vae_scale_factor
        fn = PipelineFn(pipe, cfg.prompt or "", size, steps, cfg.guidance_scale)
        shape, sigmas, planned = (pipe.vae.config.out_channels, size, size), pipe.scheduler.grid, fn.nfe
        first = [f"{type(pipe).__name__} ({pipe.scheduler.config.prediction_type}), prompt {fn.prompt!r}, "
                 f"guidance_scale {fn.guidance_scale}"]
        metadata, model = {"prompt": fn.prompt, "guidance_scale": fn.guidance_scale}, pipe
        cond = record = None
    else:
        if cfg.get("prompt") is not None:
            raise ValueError(f"prompt={cfg.prompt!r} needs a text-to-image pipeline directory (model=diffusers "
                             f"model.path=DIR)")
        given = conditioned(cfg, instantiate(cfg.model, _convert_="all"))
        if getattr(given.denoiser, "latent_shape", None) is not None:
            return _one_step(cfg, given.denoiser, device)
        model, shape, steps, sigmas, how, options = sampling_setup(cfg, device, given.denoiser)
        fn = SamplerFn(name, model, sigmas, shape, device, options, cond=given.of_seeds(cfg.get("seed", 0)))
        planned, cond, record = nfe_of(name, sigmas, options), fn.cond, given.record
        metadata = {} if given.line is None else {"guidance_scale": given.denoiser.guidance_scale}
        first = [how if given.line is None else f"{given.line}; {how}"]
    shown = printable(options)
    line = (f"{name} {shown}: {counted(steps, 'step')}, NFE {planned if planned is not None else 'adaptive'}, "
            f"sigma {' -> '.join(f'{float(s):.4g}' for s in (sigmas[0], sigmas[-2], sigmas[-1]))}, "
            f"{cfg.num_samples} samples of {shape}")
    return Sampling(fn, model, name, shown, steps, sigmas, planned, tuple(shape), [*first, line], metadata, cond,
                    record)
