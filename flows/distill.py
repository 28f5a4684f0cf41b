"""One-step distillation of a flow on its reflow pairs (Liu et al. 2022, §2.3): the student's single
Euler step from t = 1, `x0_hat = noise - v(noise, 1)`, is fitted to the sample the teacher made
from that noise."""
from __future__ import annotations

from pathlib import Path

import torch

from .velocity import save_flow, velocity

LOSSES = ("l2", "pseudo_huber")


def pseudo_huber(d: torch.Tensor) -> torch.Tensor:
    """`sqrt(||d||^2 + c^2) - c` per sample, `c = 0.00054 sqrt(dim)` with `dim` the elements of a
    sample (Song & Dhariwal 2023, "Improved techniques for training consistency models")."""
    flat = d.reshape(len(d), -1).float()
    c = 0.00054 * flat.shape[1] ** 0.5
    return (flat.pow(2).sum(1) + c ** 2).sqrt() - c


class DistillationObjective:
    """`E loss(noise - v(noise, 1), x0)` over pairs `(x0, noise)` (a `PairsDataset`), one network,
    `net`, updated at every step (docs/conventions.md §8).

    loss: "l2" (the mean squared error over every element) or "pseudo_huber" (its mean over the
        batch). time_scale: the network sees `t * time_scale` (1000 for a diffusers UNet).

    The exported model is sampled in one step by `samplers.sample("euler", FlowDenoiser(net,
    time_scale), noise, [S, 0])` with a large S (1e8: `t = S / (1 + S)` is 1 to float32 precision).
    """

    networks = ("net",)

    def __init__(self, loss: str = "l2", time_scale: float = 1000.0):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}: use {' or '.join(LOSSES)}")
        self.loss, self.time_scale = loss, time_scale

    def settings(self) -> dict:
        return {"loss": self.loss, "time_scale": self.time_scale}

    def one_step(self, model, noise: torch.Tensor) -> torch.Tensor:
        """`noise - v(noise, 1)`: one Euler step of the flow ODE from t = 1 to 0."""
        t = torch.ones(len(noise), dtype=noise.dtype, device=noise.device)
        return noise - velocity(model, noise, t, self.time_scale)

    def losses(self, nets, batch, step: int, seeds) -> dict[str, torch.Tensor]:
        """`{"net": loss}` at every step (no random numbers: `seeds` is not used)."""
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"distillation trains on (sample, noise) pairs (data=pairs), got a {type(batch).__name__}")
        x0, noise = batch
        d = self.one_step(nets["net"], noise).float() - x0.float()
        if self.loss == "l2":
            return {"net": d.pow(2).mean()}
        return {"net": pseudo_huber(d).mean()}

    def export(self, nets, out_dir: str | Path) -> None:
        """A pipeline directory with a flow-matching scheduler (`rectified_flow.save_flow`)."""
        save_flow(nets["net"], out_dir, self.time_scale)
