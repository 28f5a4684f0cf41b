"""What the entry points share: one-line errors, the device choice, the config folder and the filter of
the commands' logging (conf/hydra/job_logging/fewstep.yaml). The config schemas are in `schemas`."""
from __future__ import annotations

import functools
import logging
import os
import sys
from importlib.resources import files
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from omegaconf.errors import MissingMandatoryValue

from ..training.processes import warn_if_alone

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


# Device types torch can be asked about, and how.
_AVAILABLE = {"cpu": lambda: True, "cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}


def resolve_device(name: str) -> torch.device:
    """"auto": CUDA when present, else the CPU. A malformed name, or a device torch does not see,
    is refused with a ValueError naming it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in _AVAILABLE:
        raise ValueError(f"device={name} is not a device to run on: use auto, cpu, cuda, cuda:N or mps")
    if not _AVAILABLE[device.type]():
        raise ValueError(f"device={name} asked for, but torch sees no {device.type.upper()} device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device={name} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def accelerator_for(name: str):
    """This process's Accelerator and the device it runs on: `name` (resolve_device), or under
    `accelerate launch` with several processes the device accelerate gives the process."""
    from accelerate import Accelerator

    device = resolve_device(name)
    accelerator = Accelerator(cpu=device.type == "cpu")
    warn_if_alone(accelerator.num_processes)
    return accelerator, accelerator.device if accelerator.num_processes > 1 else device



class ProcessFilter(logging.Filter):
    """The records a handler of conf/hydra/job_logging/fewstep.yaml takes: those under level `below`
    (all when None), and of them the warnings of every process but the rest of the first only
    (`RANK` 0, or no launcher), so that several processes say a thing once."""

    def __init__(self, below: str | int | None = None):
        super().__init__()
        self.below = None if below is None else logging.getLevelName(below) if isinstance(below, str) else below

    def filter(self, record: logging.LogRecord) -> bool:
        if self.below is not None and record.levelno >= self.below:
            return False
        return record.levelno >= logging.WARNING or os.environ.get("RANK", "0") == "0"
