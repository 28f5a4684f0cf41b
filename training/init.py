"""Start a run from trained weights (a reflow round from the previous round's model)."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from .engine import checkpoints

WEIGHTS = "diffusion_pytorch_model.safetensors"  # what diffusers' save_pretrained writes

log = logging.getLogger(__name__)


def weights_file(path) -> Path:
    """The weights of a pipeline directory (`path/unet/`) or of a model directory (`path/`)."""
    root = Path(path).expanduser()
    for candidate in (root / "unet" / WEIGHTS, root / WEIGHTS):
        if candidate.is_file():
            return candidate
    if not root.exists():
        raise FileNotFoundError(f"init_from path does not exist: {root}")
    raise FileNotFoundError(f"no {WEIGHTS} in {root / 'unet'} or {root}")


def load_weights(net: torch.nn.Module, path) -> Path:
    """Load the weights at `path` (`weights_file`) into `net`; they must fit it exactly: the same
    names and shapes. Returns the file read."""
    file = weights_file(path)
    state, own = load_file(str(file)), net.state_dict()
    for key in own:
        if key not in state:
            raise ValueError(f"the weights in {file} do not fit the network: they have no {key}")
        if state[key].shape != own[key].shape:
            raise ValueError(f"the weights in {file} do not fit the network: {key} has shape "
                             f"{tuple(state[key].shape)} there, {tuple(own[key].shape)} here")
    extra = sorted(set(state) - set(own))
    if extra:
        raise ValueError(f"the weights in {file} do not fit the network: it has no {extra[0]}")
    net.load_state_dict(state)
    return file


def init_from(nets, path, out_dir) -> bool:
    """On a fresh start of the run in `out_dir` (no checkpoint there yet), load the weights at
    `path` into the run's network; a run that resumes loads its checkpoint instead, and `path`
    None loads nothing. `nets`: one module or `{name: module}` with one entry. Returns whether the
    weights were loaded."""
    if path is None:
        return False
    nets = {"net": nets} if isinstance(nets, torch.nn.Module) else dict(nets)
    if len(nets) != 1:
        raise ValueError(f"init_from loads one network; this run trains {len(nets)} ({', '.join(sorted(nets))})")
    if checkpoints(Path(out_dir) / "checkpoints"):
        return False
    file = load_weights(next(iter(nets.values())), path)
    log.info(f"initialised the network from {file}")
    return True
