"""What the entry points share: the `${repo:}` config resolver, one-line errors and the config
schemas Hydra validates against."""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from omegaconf import MISSING, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
OmegaConf.register_new_resolver("repo", lambda: str(REPO_ROOT), replace=True)

USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, InstantiationException)


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
    spacing: Spacing = Spacing.leading
    steps_offset: int = 0
    eps_s: float = 1e-3


@dataclass
class SamplerConfig:
    name: str = MISSING
    options: Dict[str, Any] = field(default_factory=dict)


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
