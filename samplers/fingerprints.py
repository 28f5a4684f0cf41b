"""A model's weight fingerprint: what every artifact made from a model records (searched schedules, AMED
predictors, Skip-Tuning factors in `tuning.store`; reflow pairs in `flows.pairs`), so that an artifact of
other weights is refused however the model is named or wherever it lies.

A model "from a directory" is a denoiser with `pretrained_path` (`samplers.from_pretrained`); its
fingerprint covers the weight files under that directory and ignores the folders the store keeps there
(`KINDS`), so storing an artifact beside a model never changes it.
"""
from __future__ import annotations

import hashlib
import weakref
from pathlib import Path

KINDS = ("schedules", "amed", "skiptune", "solvers")  # the folders of tuned artifacts beside a model (`tuning.store`)
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
    elif hasattr(model, "state_dict"):
        for key, value in sorted(model.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    else:
        raise TypeError(f"a weight fingerprint needs a torch module or a model loaded from a directory, got "
                        f"{type(model).__name__}")
    return digest.hexdigest()[:16]


def fingerprint(model) -> str:
    """The first 16 hex digits of a sha256 over the model's weights: the weight files under its
    directory (whatever dtype they are loaded in; computed once per loaded model), else its state dict."""
    if model_dir(model) is None:
        return _digest(model)
    if model not in _FINGERPRINTS:
        _FINGERPRINTS[model] = _digest(model)
    return _FINGERPRINTS[model]
