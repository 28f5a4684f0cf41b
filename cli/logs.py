"""The commands' logging, as conf/hydra/job_logging/fewstep.yaml sets it: which process says what
(`ProcessFilter`), and the run's log file, `<out_dir>/<command>.log`, written only once the run is accepted
(`RunLog`, opened by `keep`), so that a refused run writes nothing."""
from __future__ import annotations

import logging
import os
from logging.handlers import MemoryHandler
from pathlib import Path


class ProcessFilter(logging.Filter):
    """The records a handler takes: those under level `below` (all when None), and of them the warnings
    of every process but the rest of the first only (`RANK` 0, or no launcher), so that several processes
    say a thing once."""

    def __init__(self, below: str | int | None = None):
        super().__init__()
        self.below = None if below is None else logging.getLevelName(below) if isinstance(below, str) else below

    def filter(self, record: logging.LogRecord) -> bool:
        if self.below is not None and record.levelno >= self.below:
            return False
        return record.levelno >= logging.WARNING or os.environ.get("RANK", "0") == "0"


class RunLog(MemoryHandler):
    """The run's log file `filename` in its out_dir: the records are held in memory until the run is
    accepted (`open`), then written there with this handler's formatter, those held first; a refused
    run's are dropped. A MemoryHandler without a target keeps every record; with capacity 1 it passes
    each one on at once when it has one."""

    def __init__(self, filename: str):
        super().__init__(capacity=1)
        self.filename = filename

    def open(self, out_dir) -> None:
        """Append what was held, and every record to come, to `<out_dir>/<filename>`."""
        file = logging.FileHandler(Path(out_dir) / self.filename, encoding="utf-8")
        file.setFormatter(self.formatter)
        self.setTarget(file)
        self.flush()

    def close(self):
        target = self.target
        super().close()
        if target is not None:
            target.close()


def keep(out_dir) -> None:
    """Open this process's run log (`RunLog`, on the root or accelerate's logger) in `out_dir`, once."""
    for handler in {*logging.getLogger().handlers, *logging.getLogger("accelerate").handlers}:
        if isinstance(handler, RunLog) and handler.target is None:
            handler.open(out_dir)
