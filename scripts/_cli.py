"""What the entry points share: one-line errors, the device choice and the config schemas Hydra
validates against."""
from __future__ import annotations

import contextlib
import functools
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from importlib.resources import files

import torch
from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import MissingMandatoryValue

CONFIG_PATH = "pkg://fewstep.conf"  # the configs travel with the package


def config_dir() -> Path:
    """The folder of the Hydra configs (the tracked conf/ in a checkout)."""
    return Path(str(files("fewstep.conf")))


USER_ERRORS = (ValueError, OSError, FloatingPointError, InstantiationException, MissingMandatoryValue)


def one_line_errors(main):
    """Bad input ends the run with `error: <what is wrong>` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as err:
            while isinstance(err, InstantiationException) and err.__cause__ is not None:
                err = err.__cause__
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper


# -- config schemas: Hydra checks types and choices against these -----------------------------
class ScheduleKind(Enum):
    karras = "karras"
    logsnr = "logsnr"
    time_uniform = "time_uniform"
    discrete = "discrete"


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
class SampleConfig:
    model: Any = MISSING
    sampler: SamplerConfig = MISSING
    steps: int = 10
    nfe: Optional[int] = None
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    num_samples: int = 64
    batch_size: int = 64
    image_size: Optional[int] = None
    seed: int = 0
    device: str = "auto"
    out_dir: str = MISSING
    prompt: Optional[str] = None             # text-to-image pipelines only
    guidance_scale: Optional[float] = None   # text-to-image pipelines only; None: the pipeline's default


@dataclass
class TrainerConfig:
    """training.Trainer keywords (documented there)."""
    steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: Optional[float] = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 50
    mixed_precision: str = "no"
    cpu: Optional[bool] = None
    num_workers: int = 0


@dataclass
class TrainConfig:
    net: Any = MISSING
    data: Any = MISSING
    objective: Any = MISSING
    seed: int = 0
    out_dir: str = MISSING
    train: TrainerConfig = field(default_factory=TrainerConfig)


ConfigStore.instance().store(name="sample_schema", node=SampleConfig)
ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def resolve_device(name: str) -> torch.device:
    """"auto": CUDA when present, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@dataclass
class EvalConfig(SampleConfig):
    """eval_fid.py: SampleConfig plus the feature space and the reference statistics."""
    num_samples: int = 2000
    data: Any = None                       # the reference data set (a conf/data entry)
    extractor: str = "digits"              # raw | digits | inception
    extractor_weights: Optional[str] = None
    reference: str = "data"                # data | analytic (the model's exact moments) | PATH.npz
    cache_dir: str = "runs/cache"


ConfigStore.instance().store(name="eval_schema", node=EvalConfig)


@dataclass
class CalibrateConfig(EvalConfig):
    """calibrate_skiptune.py: EvalConfig plus the Skip-Tuning grid and the NFEs to calibrate."""
    rho_grid: List[float] = field(default_factory=lambda: [0.7, 0.8, 0.9, 1.0])
    rho_top_grid: List[float] = field(default_factory=lambda: [1.0])
    nfes: List[int] = field(default_factory=lambda: [5, 10, 20])
    write: bool = False
    table: Optional[str] = None            # where write=true puts it; None: conf/sampler/<sampler>+skiptune.yaml


ConfigStore.instance().store(name="calibrate_schema", node=CalibrateConfig)


def sampling_setup(cfg, device):
    """The denoiser, sample shape, step count and sigma grid a sample config asks for."""
    from fewstep import samplers
    from hydra.utils import instantiate

    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be at least 1, got {cfg.num_samples} and {cfg.batch_size}")
    denoiser = instantiate(cfg.model, _convert_="all").to(device).eval()
    if denoiser.sample_shape is None:
        raise ValueError(f"{type(denoiser).__name__} does not know its sample shape (no sample_size in its config)")
    shape = tuple(denoiser.sample_shape)
    if cfg.image_size is not None:
        shape = (shape[0], cfg.image_size, cfg.image_size)
    if hasattr(denoiser, "check_shape"):
        denoiser.check_shape(shape)
    name, options = cfg.sampler.name, dict(cfg.sampler.options)
    steps = cfg.steps if cfg.nfe is None else samplers.steps_for_nfe(name, cfg.nfe, **options)
    sc = cfg.schedule
    sigmas = samplers.get_sigmas(
        sc.kind.value, steps,
        sigma_min=denoiser.sigma_min if sc.sigma_min is None else sc.sigma_min,
        sigma_max=denoiser.sigma_max if sc.sigma_max is None else sc.sigma_max,
        rho=sc.rho, alphas_cumprod=getattr(denoiser, "alphas_cumprod", None),
        spacing="leading" if sc.spacing is None else sc.spacing.value,
        steps_offset=sc.steps_offset or 0, eps_s=sc.eps_s, mirror=name, device=device)
    return denoiser, shape, steps, sigmas


def skip_tuning_for(cfg, denoiser, nfe):
    """The Skip-Tuning the sampler config asks for at this NFE (a context manager), or a no-op."""
    from fewstep import samplers
    from fewstep.samplers.skip_tuning import calibrated_rho

    skip = cfg.sampler.get("skip")
    if skip is None:
        return contextlib.nullcontext()
    rho_bottom = skip.rho_bottom if skip.rho_bottom is not None else calibrated_rho(skip.by_nfe, nfe)
    sigma_range = None if skip.sigma_range is None else list(skip.sigma_range)
    handle = samplers.skip_tuning(denoiser, skip.rho_top, rho_bottom, sigma_range)
    print(f"Skip-Tuning: rho_top {handle.rho_top}, rho_bottom {handle.rho_bottom}"
          + (f", sigma in {sigma_range}" if sigma_range else ""))
    return handle
