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

    With `num_classes`, the batch is `(x0, labels)` and the network is class-conditional (a `UNet2DModel`
    with `num_class_embeds = num_classes + 1`): each row's label is replaced by the null class
    `num_classes` with probability `label_dropout`, so the one network is also the unconditional model
    that classifier-free guidance needs (Ho & Salimans 2022; docs/conventions.md §10).

    It trains one network, `net`, at every step (the `training.Trainer` protocol, docs/conventions.md §8).

    num_train_timesteps, beta_start, beta_end, beta_schedule: the DDPM noise table.
    prediction_type: "epsilon", "v_prediction" or "sample".
    num_classes: the number of classes of a class-conditional model (None: unconditional).
    label_dropout: the probability of training a row on the null class.
    """

    networks = ("net",)

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: str = "linear", prediction_type: str = "epsilon", num_classes: int | None = None,
                 label_dropout: float = 0.0):
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be at least 1 (or null: unconditional), got {num_classes}")
        if not 0.0 <= label_dropout < 1.0 or (label_dropout and num_classes is None):
            raise ValueError(f"label_dropout must be in [0, 1) and needs num_classes, got {label_dropout} with "
                             f"num_classes={num_classes}")
        self.num_classes, self.label_dropout = num_classes, float(label_dropout)
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unknown prediction_type {prediction_type!r}: use epsilon, v_prediction or sample")
        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start,
                                       beta_end=beta_end, beta_schedule=beta_schedule,
                                       prediction_type=prediction_type, clip_sample=False)

    def settings(self) -> dict:
        """The noise table, the prediction type and the classes."""
        c = self.scheduler.config
        return {**{key: c[key] for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                           "prediction_type")},
                "num_classes": self.num_classes, "label_dropout": self.label_dropout}

    def losses(self, nets, batch, step: int, seeds) -> dict[str, torch.Tensor]:
        """`{"net": loss}` at every step: row `i`'s noise, then its timestep, then (class-conditional)
        whether its label is dropped, from `seeds[i]`."""
        x0, labels = self._split(batch)
        gens = generators(seeds)
        noise = normal(gens, x0.shape[1:], x0.device).to(x0.dtype)
        t = (uniform(gens, ()).double() * self.scheduler.config.num_train_timesteps).long().to(x0.device)
        if labels is not None:
            dropped = uniform(gens, ()).to(x0.device) < self.label_dropout
            labels = torch.where(dropped, torch.full_like(labels, self.num_classes), labels)
        return {"net": self.loss(nets["net"], x0, noise, t, labels)}

    def _split(self, batch):
        """`(x0, labels)`: labels None for an unconditional objective; refused when the data and the
        objective disagree on having labels, or a label is not one of the classes."""
        labelled = isinstance(batch, (tuple, list))
        if labelled != (self.num_classes is not None):
            raise ValueError(f"num_classes={self.num_classes} needs data of (image, label) pairs; the data "
                             f"{'has' if labelled else 'has no'} labels")
        if not labelled:
            return batch, None
        x0, labels = batch
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if len(bad):
            raise ValueError(f"label {int(bad[0])} is not one of the {self.num_classes} classes 0..{self.num_classes - 1}")
        return x0, labels.long()

    def loss(self, model, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
             labels: torch.Tensor | None = None) -> torch.Tensor:
        """The loss above on the batch `x0` with its noise, integer timesteps `t`, shape (B,), and class
        labels (None: unconditional)."""
        noisy = self.scheduler.add_noise(x0, noise, t)
        kind = self.scheduler.config.prediction_type
        target = {"epsilon": noise, "sample": x0}.get(kind)
        if target is None:
            target = self.scheduler.get_velocity(x0, noise, t)
        prediction = model(noisy, t, **({} if labels is None else {"class_labels": labels})).sample
        return F.mse_loss(prediction.float(), target.float())

    def export(self, nets, out_dir: str | Path) -> None:
        """Write `nets["net"]` as a `DDPMPipeline` directory (unet/ + scheduler/), loadable by
        diffusers and by `samplers.DiffusersUNetDenoiser.from_pretrained`."""
        DDPMPipeline(unet=nets["net"], scheduler=self.scheduler).save_pretrained(str(out_dir))
