"""Skip-Tuning factors calibrated for a model (docs/conventions.md §6), stored beside it
(`tuning.store`): one JSON file per sampler, `<model dir>/skiptune/<sampler>[-cfg<W>].json` (W: the
guidance scale of a guided model), `{"sampler", "model", "fingerprint", "objective", "guidance_scale",
"conditioning", "rho_top", "by_nfe": {"5": {"rho_bottom", "fd_plain", "fd", "grid", "command"}}}`. A model
without a table has no factors: it never borrows another model's, nor another guidance scale's.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..samplers.fingerprints import fingerprint
from . import store

FOLDER = "skiptune"


def default_path(model, sampler: str) -> Path | None:
    """`<model dir>/skiptune/<sampler>[-cfg<W>].json`, or None for a model not loaded from a directory."""
    return store.beside(model, FOLDER, f"{store.keyed(sampler, store.guidance_of(model))}.json")


def missing_at_scale(model, sampler: str) -> str | None:
    """For a guided model without factors at its scale, the line saying so (it samples without them);
    None otherwise."""
    guidance, path = store.guidance_of(model), default_path(model, sampler)
    if guidance is None or path is None or path.is_file():
        return None
    have = store.scales_beside(model, FOLDER, sampler, r"\.json")
    return f"Skip-Tuning: no factors of {sampler} for guidance {guidance:g} {store.at_scales(have)}: none applied"


def load(path) -> dict:
    """A table file; a missing file or one that is not a table is refused naming the file."""
    table = store.read_table(path, "Skip-Tuning table", ("sampler", "fingerprint", "rho_top", "by_nfe"))
    if not table["by_nfe"]:
        raise ValueError(f"{Path(path).expanduser()} is no Skip-Tuning table: it has no factors (by_nfe is empty)")
    return table


def nearest(by_nfe: dict, nfe: int) -> int:
    """The calibrated NFE nearest to `nfe` (ties: the smaller)."""
    return min((int(k) for k in by_nfe), key=lambda k: (abs(k - nfe), k))


def factors(model, sampler: str, nfe: int, path=None) -> tuple[float, float, str]:
    """`(rho_top, rho_bottom, where)`: the factors calibrated for `model` and `sampler` at the NFE
    nearest to `nfe`, from `path` (None: the model's own table), and a line saying where they come
    from. No table, or one made for other weights or another sampler, is refused in one line."""
    path = default_path(model, sampler) if path is None else Path(path).expanduser()
    if path is None or not path.is_file():
        where = f"no {path}" if path is not None else f"{type(model).__name__} was not loaded from a directory"
        raise ValueError(f"this model has no calibrated Skip-Tuning factors for {sampler} ({where}): calibrate them "
                         f"(calibrate_skiptune.py sampler={sampler} write=true) or set sampler.skip.rho_bottom")
    table = load(path)
    if table["sampler"] != sampler:
        raise ValueError(f"{path} holds the factors of sampler {table['sampler']}, not of {sampler}")
    store.check_made_for(table["fingerprint"], model, path)
    store.check_guidance(table.get("guidance_scale"), model, path)
    chosen = nearest(table["by_nfe"], nfe)
    rho_bottom = table["by_nfe"][str(chosen)]["rho_bottom"]
    return float(table["rho_top"]), float(rho_bottom), f"calibrated at NFE {chosen} ({path})"


def write(path, model, sampler: str, model_name: str, objective: str, rho_top: float, by_nfe: dict,
          conditioning: dict | None = None) -> Path:
    """Store the factors of `sampler` in table `path`: one `rho_top`, and per NFE an entry of
    `by_nfe` (`rho_bottom` and what was measured and run); the model's guidance scale and `conditioning`
    (the classes) recorded. A table of other weights, another sampler or guidance scale there is refused;
    its other NFEs are kept when `rho_top` is the same."""
    path = Path(path).expanduser()
    table = {"sampler": sampler, "model": model_name, "fingerprint": fingerprint(model), "objective": objective,
             **store.guidance_record(model, conditioning), "rho_top": rho_top, "by_nfe": {}}
    if path.is_file():
        old = load(path)
        if (old["fingerprint"], old["sampler"]) != (table["fingerprint"], sampler):
            raise ValueError(f"{path} holds the factors of another model or sampler ({old.get('model')} "
                             f"{old['sampler']}); write to another table=")
        store.check_guidance(old.get("guidance_scale"), model, path)
        table["by_nfe"] = old["by_nfe"] if old["rho_top"] == rho_top else {}
    table["by_nfe"].update({str(nfe): entry for nfe, entry in by_nfe.items()})
    table["by_nfe"] = dict(sorted(table["by_nfe"].items(), key=lambda kv: int(kv[0])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1) + "\n")
    return path
