"""The models the project trained itself and ships (each folder's README.md has the command that
made it). `path(name)` finds one by its name, in a checkout and in an installed wheel alike."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def names() -> list[str]:
    """The shipped assets: every folder here with a README.md."""
    return sorted(p.name for p in files(__name__).iterdir() if p.is_dir() and (p / "README.md").is_file())


def path(name: str) -> Path:
    """The folder of the shipped asset `name` (e.g. "digits_ddpm"); an unknown name is refused with
    the list of known ones."""
    if name not in names():
        raise FileNotFoundError(f"no shipped asset named {name!r}: the shipped ones are {', '.join(names())}")
    return Path(str(files(__name__) / name))


def resolve(given, holds_model) -> Path:
    """`given` as a directory: a bare name of a shipped asset is that asset (as diffusers resolves a
    hub name), unless `holds_model(Path(given))` says a local directory of that name holds a model
    (a run directory named like the model does not hide it)."""
    root = Path(given).expanduser()
    if root.name == str(given) and str(given) in names() and not holds_model(root):
        return path(str(given))
    return root
