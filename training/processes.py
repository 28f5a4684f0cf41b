"""The processes a launch asked for, against those a run has: `accelerate launch --cpu --num_processes 2`
starts one process (docs/conventions.md §8), and a run that should have several but has one says so."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)


def _launcher_num_processes(cmdline: Path) -> int:
    """The `--num_processes` of the launcher's command line (`/proc/<pid>/cmdline`), 0 when unknown."""
    try:
        args = cmdline.read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return 0
    for i, arg in enumerate(args):
        found = re.fullmatch(r"--num[_-]processes(?:=(\d+))?", arg)
        if found:
            value = found.group(1) or (args[i + 1] if i + 1 < len(args) else "")
            return int(value) if value.isdigit() else 0
    return 0


def requested_processes(environ=None) -> int | None:
    """How many processes the launch asked for: torchrun's `WORLD_SIZE` (`accelerate launch --multi_gpu`),
    or, under accelerate's one-process launcher, which sets `MASTER_PORT` only when several were asked for,
    the `--num_processes` of its command line (0: several, how many unknown). None: no launch for several."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env:
        return int(env["WORLD_SIZE"])
    if "ACCELERATE_USE_CPU" in env and "MASTER_PORT" in env:
        return _launcher_num_processes(Path(f"/proc/{os.getppid()}/cmdline"))
    return None


def warn_if_alone(num_processes: int, environ=None) -> str | None:
    """A warning (logged, and returned) when the launch asked for more processes than `num_processes`,
    the run's; said by the first process only."""
    env = os.environ if environ is None else environ
    asked = requested_processes(env)
    if asked is None or (asked or 2) <= num_processes or env.get("RANK", "0") != "0":
        return None
    line = (f"accelerate launch asked for {asked or 'several'} processes, but this run has {num_processes}: several CPU "
            f"processes need `accelerate launch --multi_gpu --num_processes {asked or 'N'} ...` "
            f"(--cpu starts one process)")
    log.warning(line)
    return line
