"""One store for what is tuned for a model: every artifact lies beside the model it was tuned for, in
`<model dir>/<kind>/`, and records the model's weight fingerprint and the command that made it.

    schedules/<sampler>.json            searched sigma grids per NFE (`tuning.schedule_tables`)
    amed/<sampler>[-<base>]-nfe<N>/     AMED predictors and their frozen tables (`tuning.amed_predictor`)
    skiptune/<sampler>.json             Skip-Tuning factors per NFE (`tuning.skiptune_tables`)

A model "from a directory" is a denoiser with `pretrained_path` (`samplers.from_pretrained`); the
fingerprint covers its weight files and ignores these folders, so storing an artifact never changes it.
"""
from __future__ import annotations

import hashlib
import json
import sys
import weakref
from pathlib import Path

KINDS = ("schedules", "amed", "skiptune")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
_FINGERPRINTS = weakref.WeakKeyDictionary()  # a model loaded from files: its weights do not change


def model_dir(model) -> Path | None:
    """The directory `model` was loaded from, or None."""
    root = getattr(model, "pretrained_path", None)
    return None if root is None else Path(root)


def _digest(model) -> str:
    digest = hashlib.sha256()
    root = model_dir(model)
    if root is not None:
        for file in sorted(p for p in root.rglob("*") if p.suffix in WEIGHT_SUFFIXES
                           and not set(KINDS) & set(p.relative_to(root).parts)):
            digest.update(file.relative_to(root).as_posix().encode())
            digest.update(file.read_bytes())
    else:
        for key, value in sorted(model.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def fingerprint(model) -> str:
    """The first 16 hex digits of a sha256 over the model's weights: the weight files under its
    directory (whatever dtype they are loaded in; computed once per loaded model), else its state dict."""
    if model_dir(model) is None:
        return _digest(model)
    if model not in _FINGERPRINTS:
        _FINGERPRINTS[model] = _digest(model)
    return _FINGERPRINTS[model]


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
