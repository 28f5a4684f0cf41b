"""What the entry points share: one-line errors, the run's record in its out_dir (its config, and its log
file: `logs`), the device choice and the config folder. The config schemas are in `schemas`."""
from __future__ import annotations

import functools
import sys
from importlib.resources import files
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from ..training.processes import warn_if_alone
from . import logs

CONFIG_PATH = "pkg://fewstep.conf"  # the configs travel with the package


def config_dir() -> Path:
    """The folder of the Hydra configs (the tracked conf/ in a checkout)."""
    return Path(str(files("fewstep.conf")))


USER_ERRORS = (ValueError, OSError, FloatingPointError, InstantiationException, MissingMandatoryValue)


def counted(n: int, noun: str) -> str:
    """`1 step`, `3 steps`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def check_out_dir(cfg) -> None:
    """Refuse a config whose `out_dir` (or the nearest of its folders that exists) is a file."""
    if cfg.get("out_dir") is None:
        return
    path = Path(cfg.out_dir).expanduser()
    there = next(p for p in (path, *path.parents) if p.exists())  # "." exists
    if not there.is_dir():
        raise ValueError(f"out_dir={cfg.out_dir} is a file; give a directory" if there == path else
                         f"out_dir={cfg.out_dir} cannot be made: {there} is a file")


def record_config(cfg) -> Path:
    """Write the run's config and command-line overrides to `<out_dir>/.hydra/` (`config.yaml`,
    `overrides.yaml`, as Hydra would) and start its log file, `<out_dir>/<command>.log`, with what the
    command said so far (`logs.keep`), once the run is accepted: the configs set `hydra.output_subdir:
    null`, so that a refused run writes nothing and leaves the record of the run before it."""
    folder = Path(cfg.out_dir).expanduser() / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    OmegaConf.save(OmegaConf.create(overrides), folder / "overrides.yaml")
    logs.keep(folder.parent)
    return folder


def one_line_errors(main):
    """Bad input ends the run with `error: <what is wrong>` on stderr and exit code 2; an out_dir that
    is a file is refused first (`check_out_dir`)."""

    @functools.wraps(main)
    def wrapper(cfg, *args, **kwargs):
        try:
            check_out_dir(cfg)
            return main(cfg, *args, **kwargs)
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

