"""The objective contract of the training engine (docs/conventions.md §8), as a `typing.Protocol`: what
`Trainer` calls. An objective may also carry `state_dict()` / `load_state_dict(state)` (state kept from
step to step, saved with each checkpoint) and `report(nets, step, out_dir) -> {metric: value}` (after
every checkpoint); the engine looks for those and does without them."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Protocol, runtime_checkable

import torch


@runtime_checkable
class Objective(Protocol):
    """networks: the names of the networks it trains. losses: `{name: scalar loss}` for the networks due
    an update at `step`; `seeds` holds one seed per row of `batch`, `(run seed, step, the row's place in
    the global batch)`, from which every random number of a row is drawn (`samplers.noise.generators`),
    so that a run does not depend on the number of processes. export: write the trained networks (EMA
    copies) to `out_dir`. settings: the plain values (numbers, strings, None) that define it, which
    `run.json` records and a resumed run must share."""
    networks: tuple[str, ...]

    def losses(self, nets: Mapping[str, torch.nn.Module], batch, step: int,
               seeds: list[tuple[int, int, int]]) -> dict[str, torch.Tensor]: ...

    def export(self, nets: Mapping[str, torch.nn.Module], out_dir: str | Path) -> None: ...

    def settings(self) -> dict: ...
