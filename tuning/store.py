"""One store for what is tuned for a model: every artifact lies beside the model it was tuned for, in
`<model dir>/<kind>/`, and records the model's weight fingerprint and the command that made it.

    schedules/<sampler>[-cfg<W>].json            searched sigma grids per NFE (`tuning.schedule_tables`)
    amed/<sampler>[-<base>][-cfg<W>]-nfe<N>/     AMED predictors and their frozen tables (`tuning.amed_predictor`)
    skiptune/<sampler>[-cfg<W>].json             Skip-Tuning factors per NFE (`tuning.skiptune_tables`)
    solvers/learned.json                         learned solvers per NFE: grid and weights (`tuning.solver_tables`)

`-cfg<W>`: tuned for the model under classifier-free guidance at scale W (`samplers.guidance.GuidedDenoiser`;
`cfg1` is a conditional model without guidance); an artifact records the scale and the conditioning it was
tuned with, and is found by the scale asked for (docs/conventions.md §10).

A model "from a directory" is a denoiser with `pretrained_path` (`samplers.from_pretrained`); its
fingerprint (`samplers.fingerprint`) covers its weight files and ignores these folders, so storing an
artifact never changes it.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from ..samplers.fingerprints import KINDS, fingerprint, model_dir
from ..samplers.guidance import GuidedDenoiser


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


def guidance_of(model) -> float | None:
    """The guidance scale a model samples at: a `GuidedDenoiser`'s, None for any other model."""
    return float(model.guidance_scale) if isinstance(model, GuidedDenoiser) else None


def guidance_record(model, conditioning: dict | None) -> dict:
    """What an artifact tuned for a guided model records of it: `guidance_scale` and `conditioning` (the
    classes); nothing for an unguided model, whose artifacts stay as they were."""
    scale = guidance_of(model)
    return {} if scale is None else {"guidance_scale": scale, "conditioning": conditioning}


def keyed(name: str, guidance_scale: float | None) -> str:
    """An artifact's name for a model at `guidance_scale`: `name` unguided, `name-cfg<W>` guided (cfg2, cfg7.5)."""
    return name if guidance_scale is None else f"{name}-cfg{float(guidance_scale):g}"


def scales_in(folder, stem: str, tail: str) -> list[float]:
    """The guidance scales of the artifacts `<stem>-cfg<W><tail>` (`tail` a regular expression) in `folder`."""
    if folder is None or not Path(folder).is_dir():
        return []
    pattern = re.compile(re.escape(stem) + r"-cfg([0-9.]+)" + tail)
    return sorted({float(m.group(1)) for p in Path(folder).iterdir() if (m := pattern.fullmatch(p.name))})


def scales_beside(model, kind: str, stem: str, tail: str) -> list[float]:
    """`scales_in` the model's folder of `kind`."""
    return scales_in(beside(model, kind, ""), stem, tail)


def scale_words(guidance_scale: float | None) -> str:
    """`guidance 2`, or `no guidance`."""
    return "no guidance" if guidance_scale is None else f"guidance {float(guidance_scale):g}"


def at_scales(scales) -> str:
    """`(tuned at guidance 2, 4)`, or `(none at any scale)`."""
    return f"(tuned at guidance {', '.join(f'{s:g}' for s in scales)})" if scales else "(none at any scale)"


def check_guidance(recorded, model, what) -> None:
    """Refuse, in one line naming both scales, an artifact tuned at another guidance scale than `model` samples at."""
    asked = guidance_of(model)
    if (None if recorded is None else float(recorded)) != asked:
        raise ValueError(f"{what} was tuned at {scale_words(recorded)}; this run samples at {scale_words(asked)}")
