"""One store for what is tuned for a model: every artifact lies beside the model it was tuned for, in
`<model dir>/<kind>/`, and records the model's weight fingerprint and the command that made it.

    schedules/<sampler>.json            searched sigma grids per NFE (`tuning.schedule_tables`)
    amed/<sampler>[-<base>]-nfe<N>/     AMED predictors and their frozen tables (`tuning.amed_predictor`)
    skiptune/<sampler>.json             Skip-Tuning factors per NFE (`tuning.skiptune_tables`)
    solvers/learned.json                learned solvers per NFE: grid and weights (`tuning.solver_tables`)

A model "from a directory" is a denoiser with `pretrained_path` (`samplers.from_pretrained`); its
fingerprint (`samplers.fingerprint`) covers its weight files and ignores these folders, so storing an
artifact never changes it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..samplers.fingerprints import KINDS, fingerprint, model_dir


def beside(model, kind: str, name: str) -> Path | None:
    """`<model dir>/<kind>/<name>`, or None for a model not loaded from a directory."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of tuned artifact {kind!r}: use one of {', '.join(KINDS)}")
    root = model_dir(model)
    return None if root is None else root / kind / name


def check_made_for(recorded: str, model, what) -> None:
    """Refuse, in one line naming both fingerprints, an artifact made for other weights than `model`'s."""
    mine = fingerprint(model)
    if recorded != mine:
        raise ValueError(f"{what} was tuned for another model (weights {recorded}); this one's weights are {mine}")


def read_table(path, what: str, keys) -> dict:
    """The JSON table `what` at `path`: a missing file, or one that is not JSON or lacks any of `keys`,
    is refused in one line naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is no {what}: {err}") from None
    missing = set(keys) - set(table) if isinstance(table, dict) else {"all keys"}
    if missing:
        raise ValueError(f"{path} is no {what}: it lacks {', '.join(sorted(missing))}")
    return table


def command() -> str:
    """The command line of the running process, as an artifact records it."""
    return "python " + " ".join(sys.argv)
