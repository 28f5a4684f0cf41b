"""The denoising diffusion objective (Ho et al. 2020) for diffusers UNets."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler

from ..samplers.noise import generators, normal, uniform


class DiffusionObjective:
    """`E_{t, x0, eps} || target - net(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) ||^2` with
    `t ~ U{0..T-1}` and target `eps` (epsilon), `sqrt(abar) eps - sqrt(1 - abar) x0` (v_prediction)
    or `x0` (sample). The noise table is a diffusers `DDPMScheduler`, so the exported model is a
    standard `DDPMPipeline` directory.

    It trains one network, `net`, at every step (the `training.Trainer` protocol, docs/conventions.md §8).

    num_train_timesteps, beta_start, beta_end, beta_schedule: the DDPM noise table.
    prediction_type: "epsilon", "v_prediction" or "sample".
    """

    networks = ("net",)

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: str = "linear", prediction_type: str = "epsilon"):
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unknown prediction_type {prediction_type!r}: use epsilon, v_prediction or sample")
        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start,
                                       beta_end=beta_end, beta_schedule=beta_schedule,
                                       prediction_type=prediction_type, clip_sample=False)

    def settings(self) -> dict:
        """The noise table and the prediction type."""
        c = self.scheduler.config
        return {key: c[key] for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                        "prediction_type")}

    def losses(self, nets, x0: torch.Tensor, step: int, seeds) -> dict[str, torch.Tensor]:
        """`{"net": loss}` at every step: row `i`'s noise, then its timestep, from `seeds[i]`."""
        gens = generators(seeds)
        noise = normal(gens, x0.shape[1:], x0.device).to(x0.dtype)
        t = (uniform(gens, ()).double() * self.scheduler.config.num_train_timesteps).long().to(x0.device)
        return {"net": self.loss(nets["net"], x0, noise, t)}

    def loss(self, model, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The loss above on the batch `x0` with its noise and integer timesteps `t`, shape (B,)."""
        noisy = self.scheduler.add_noise(x0, noise, t)
        kind = self.scheduler.config.prediction_type
        target = {"epsilon": noise, "sample": x0}.get(kind)
        if target is None:
            target = self.scheduler.get_velocity(x0, noise, t)
        prediction = model(noisy, t).sample
        return F.mse_loss(prediction.float(), target.float())

    def export(self, nets, out_dir: str | Path) -> None:
        """Write `nets["net"]` as a `DDPMPipeline` directory (unet/ + scheduler/), loadable by
        diffusers and by `samplers.DiffusersUNetDenoiser.from_pretrained`."""
        DDPMPipeline(unet=nets["net"], scheduler=self.scheduler).save_pretrained(str(out_dir))
