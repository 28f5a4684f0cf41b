"""Rectified flow (Liu et al. 2022, "Flow Straight and Fast"): a velocity field between data and
noise, `x_t = (1 - t) x0 + t eps`, `v = eps - x0`, t = 0 data and t = 1 noise
(docs/conventions.md §2: `samplers.FlowDenoiser` maps it to sigma space)."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from ..samplers import FlowDenoiser
from ..samplers.noise import generators, normal, uniform
from .straightness import record_straightness
from .velocity import save_flow, velocity

TIME_SAMPLINGS = ("uniform", "logit_normal")

log = logging.getLogger(__name__)


def rectified_flow_loss(model, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                        time_scale: float = 1.0) -> torch.Tensor:
    """`mean (v(x_t, t) - (noise - x0))^2` over every element, `x_t = (1 - t) x0 + t noise`, `t` of
    shape (B,) in [0, 1]."""
    if t.ndim != 1 or t.shape[0] != x0.shape[0]:
        raise ValueError(f"t must have shape ({x0.shape[0]},), got {tuple(t.shape)}")
    if not ((t >= 0) & (t <= 1)).all():
        raise ValueError(f"t must lie in [0, 1], got values from {float(t.min()):.4g} to {float(t.max()):.4g}")
    t_ = t.reshape(-1, *[1] * (x0.ndim - 1)).to(x0.dtype)
    x_t = (1 - t_) * x0 + t_ * noise
    return F.mse_loss(velocity(model, x_t, t, time_scale).float(), (noise - x0).float())


class RectifiedFlowObjective:
    """The rectified-flow loss on the shared loop (`training.Trainer`, docs/conventions.md §8): one
    network, `net`, updated at every step.

    time_sampling: "uniform" (`t ~ U[0, 1]`) or "logit_normal" (`t = sigmoid(n)`, `n ~ N(loc, scale)`,
        Esser et al. 2024). loc, scale: its parameters.
    time_scale: the network sees `t * time_scale` (1000 for a diffusers UNet, whose timestep
        embedding expects DDPM-like timesteps, as diffusers' flow-matching schedulers give it).

    A batch is images `x0` (fresh noise is drawn for them, then `t`) or, for a reflow round, pairs
    `(x0, noise)` of a previous flow's samples and the noise they came from.
    """

    networks = ("net",)

    def __init__(self, time_sampling: str = "uniform", loc: float = 0.0, scale: float = 1.0,
                 time_scale: float = 1000.0):
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time_sampling {time_sampling!r}: use {' or '.join(TIME_SAMPLINGS)}")
        self.time_sampling, self.loc, self.scale, self.time_scale = time_sampling, loc, scale, time_scale

    def settings(self) -> dict:
        return {"time_sampling": self.time_sampling, "loc": self.loc, "scale": self.scale, "time_scale": self.time_scale}

    def sample_t(self, gens, device) -> torch.Tensor:
        """One time per generator (`time_sampling`)."""
        if self.time_sampling == "uniform":
            return uniform(gens, (), device)
        return torch.sigmoid(self.loc + self.scale * normal(gens, (), device))

    def losses(self, nets, batch, step: int, seeds) -> dict[str, torch.Tensor]:
        """`{"net": loss}` at every step: row `i`'s noise (unless paired), then its time, from `seeds[i]`."""
        gens = generators(seeds)
        if isinstance(batch, (tuple, list)):
            x0, noise = batch
        else:
            x0 = batch
            noise = normal(gens, x0.shape[1:], x0.device).to(x0.dtype)
        t = self.sample_t(gens, x0.device)
        return {"net": rectified_flow_loss(nets["net"], x0, noise, t, self.time_scale)}

    def export(self, nets, out_dir: str | Path) -> None:
        """`save_flow(nets["net"])`, with the flow's straightness (`record_straightness`) in
        out_dir/straightness.json, also logged."""
        save_flow(nets["net"], out_dir, self.time_scale)
        shape = FlowDenoiser(nets["net"]).sample_shape
        if shape is not None:  # a network that knows its sample shape (a diffusers UNet, flows.MLPVelocity)
            with torch.no_grad():
                value = record_straightness(nets["net"], shape, out_dir, self.time_scale)
            log.info(f"straightness {value:.6f} (256 noises, 50 Euler steps): {Path(out_dir) / 'straightness.json'}")
