"""How each network of a run is trained: its optimiser, learning-rate warm-up, gradient clipping and
EMA (`NetworkOptim`), the run's defaults overridden per network (`network_settings`)."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


@dataclass(frozen=True)
class NetworkOptim:
    """How one network is trained. The `Trainer` keywords of the same names are the defaults of every
    network; its `networks` keyword overrides them per network.

    lr: the peak learning rate.
    optimizer: "adamw" (weight decay decoupled from the gradient, Loshchilov & Hutter 2019) or "adam"
        (weight decay added to the gradient). betas, weight_decay: the optimiser's.
    warmup_steps: linear warm-up: this network's update k (counted from 0) uses the learning rate
        `lr * min(1, k / warmup_steps)` (diffusers "constant_with_warmup").
    grad_clip: clip the norm of this network's gradient to this value (`None`: no clipping).
    ema_decay: decay of the exponential moving average of the weights (diffusers `EMAModel`): after
        this network's update k, `ema = d_k ema + (1 - d_k) theta` with the warm-up
        `d_k = min(ema_decay, k / (9 + k))` (`d_1 = 0`: the first update copies the weights).
        `None`: no EMA; the weights themselves are exported.
    """

    lr: float
    optimizer: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999

    def __post_init__(self):
        # Values from the command line arrive unchecked (train.networks.<name>.<setting> has no schema).
        for name, kinds in [("lr", (int, float)), ("weight_decay", (int, float)), ("warmup_steps", (int,)),
                            ("grad_clip", (int, float, type(None))), ("ema_decay", (int, float, type(None)))]:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ValueError(f"{name} must be {'an integer' if kinds == (int,) else 'a number'}, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}: use {' or '.join(OPTIMIZERS)}")
        if (isinstance(self.betas, str) or len(self.betas) != 2
                or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {self.ema_decay}")

    def build(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return OPTIMIZERS[self.optimizer](params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)


def network_settings(names, defaults: dict, networks) -> dict[str, NetworkOptim]:
    """Each network's NetworkOptim: the defaults, overridden by its entry of `networks` (a mapping
    of some settings, or a whole NetworkOptim)."""
    networks = dict(networks or {})
    unknown = sorted(set(networks) - set(names))
    if unknown:
        raise ValueError(f"networks names {unknown[0]!r}, which is not a network of this run ({', '.join(names)})")
    allowed = [f.name for f in fields(NetworkOptim)]
    settings = {}
    for name in names:
        given = networks.get(name) or {}
        if not isinstance(given, NetworkOptim):
            bad = sorted(set(given) - set(allowed))
            if bad:
                raise ValueError(f"network {name!r}: unknown setting {bad[0]!r}; use {', '.join(allowed)}")
        try:
            settings[name] = given if isinstance(given, NetworkOptim) else NetworkOptim(**{**defaults, **given})
        except ValueError as err:
            raise ValueError(f"network {name!r}: {err}") from None
    return settings
