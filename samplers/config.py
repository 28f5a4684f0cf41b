"""The sampling configs Hydra checks `conf/sample.yaml` (and its `model/`, `sampler/` groups)
against, and what they set up: the denoiser, the sample shape, the step count and the sigma grid,
or a text-to-image pipeline with `FewstepScheduler` in place of its own scheduler."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ScheduleKind(Enum):
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
    """samplers.get_sigmas keywords; sigma_min/sigma_max None: the model's own range."""
    kind: ScheduleKind = ScheduleKind.karras
    rho: float = 7.0
    sigma_min: Optional[float] = None
    sigma_max: Optional[float] = None
    spacing: Optional[Spacing] = None      # discrete only; None: leading (a text-to-image pipeline: its own)
    steps_offset: Optional[int] = None     # discrete only; None: 0 (a text-to-image pipeline: its own)
    eps_s: float = 1e-3
    final_sigmas_type: FinalSigmas = FinalSigmas.zero   # zero: a last step to 0; sigma_min: stop there


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


def steps_of(cfg) -> int:
    """The sampler steps a sample config asks for: `steps`, or the most that fit the budget `nfe`."""
    from . import steps_for_nfe

    if cfg.nfe is None:
        return cfg.steps
    return steps_for_nfe(cfg.sampler.name, cfg.nfe, dict(cfg.sampler.options),
                         ends_at_zero=cfg.schedule.final_sigmas_type.value == "zero")


def sampling_setup(cfg, device, denoiser=None):
    """The denoiser (`denoiser`, else the config's model), sample shape, step count and sigma grid a
    sample config asks for."""
    from hydra.utils import instantiate

    from . import get_sigmas

    denoiser = (instantiate(cfg.model, _convert_="all") if denoiser is None else denoiser).to(device).eval()
    if denoiser.sample_shape is None:
        raise ValueError(f"{type(denoiser).__name__} does not know its sample shape (no sample_size in its config)")
    shape = tuple(denoiser.sample_shape)
    if cfg.image_size is not None:
        shape = (shape[0], cfg.image_size, cfg.image_size)
    if hasattr(denoiser, "check_shape"):
        denoiser.check_shape(shape)
    steps, sc = steps_of(cfg), cfg.schedule
    sigmas = get_sigmas(
        sc.kind.value, steps,
        sigma_min=denoiser.sigma_min if sc.sigma_min is None else sc.sigma_min,
        sigma_max=denoiser.sigma_max if sc.sigma_max is None else sc.sigma_max,
        rho=sc.rho, alphas_cumprod=getattr(denoiser, "alphas_cumprod", None),
        spacing="leading" if sc.spacing is None else sc.spacing.value,
        steps_offset=sc.steps_offset or 0, eps_s=sc.eps_s, mirror=cfg.sampler.name,
        final_sigmas_type=sc.final_sigmas_type.value, device=device)
    return denoiser, shape, steps, sigmas


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
    pipe.scheduler = FewstepScheduler.from_config(
        pipe.scheduler.config, sampler=cfg.sampler.name, sampler_options=dict(cfg.sampler.options),
        schedule=sc.kind.value, rho=sc.rho, sigma_min=sc.sigma_min, sigma_max=sc.sigma_max, eps_s=sc.eps_s,
        final_sigmas_type=sc.final_sigmas_type.value, **own)
    pipe.scheduler.set_timesteps(steps, device=device)
    return pipe, steps
