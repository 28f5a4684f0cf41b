"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser, and the conditioning of class-conditional
models (docs/conventions.md §10).

    D_w(x, sigma | c) = D(x, sigma | null) + w (D(x, sigma | c) - D(x, sigma | null))

with diffusers' `guidance_scale` w: w = 1 is the conditional model alone (one network evaluation of the
batch); any other w evaluates the unconditional and the conditional halves in one network call of twice
the batch, `[null; c]` as diffusers' pipelines order them (w = 0 is the unconditional model). One guided
call counts as one NFE, as diffusers counts a pipeline step; it costs two network evaluations of the batch.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn


def _rows(value: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """`value` with `batch` rows: as it is, or its one row repeated."""
    if len(value) == batch:
        return value
    if len(value) == 1:
        return value.expand(batch, *value.shape[1:])
    raise ValueError(f"the unconditional {name} has {len(value)} rows; the batch has {batch}: give 1 or {batch}")


class GuidedDenoiser(nn.Module):
    """`denoiser` under classifier-free guidance at `guidance_scale` (the formula above).

    denoiser: a denoiser that takes conditioning keywords (`D(x, sigma, **cond)`), e.g. a class-conditional
        `DiffusersUNetDenoiser` (`class_labels`) or a text-conditional one (`encoder_hidden_states`).
    null: the unconditional keywords, one row or one per sample (the null class; the empty or negative
        prompt's embeddings).
    A call takes the conditional keywords, one row per sample: `D_w(x, sigma, class_labels=...)`.
    """

    def __init__(self, denoiser, guidance_scale: float, null: Mapping[str, torch.Tensor]):
        super().__init__()
        guidance_scale = float(guidance_scale)
        if not guidance_scale >= 0:
            raise ValueError(f"guidance_scale must be a number >= 0, got {guidance_scale}")
        if not null:
            raise ValueError("a guided denoiser needs the unconditional keywords (null), got none")
        self.denoiser, self.guidance_scale, self.null = denoiser, guidance_scale, dict(null)

    def __getattr__(self, name):
        """The wrapped denoiser's attributes (`sigma_min`, `sample_shape`, `step_time`, `unet`,
        `pretrained_path`, ...), so samplers, the store and the hooks of AMED and Skip-Tuning see the model."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("denoiser"), name)

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        if not cond:
            raise ValueError("a guided denoiser needs the conditioning keywords of the call (e.g. class_labels), "
                             "got none")
        if self.guidance_scale == 1.0:
            return self.denoiser(x, sigma, **cond)
        batch = len(x)
        both = {key: torch.cat([_rows(self.null[key].to(value.device), batch, key), value])
                for key, value in cond.items()}
        sigma = torch.as_tensor(sigma, device=x.device)
        sigma = sigma.reshape(-1).repeat(2) if sigma.numel() > 1 else sigma
        uncond, conditional = self.denoiser(torch.cat([x, x]), sigma, **both).chunk(2)
        return uncond + self.guidance_scale * (conditional - uncond)

    def combine(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows of a doubled call (`[null; c]`, e.g. a UNet's bottleneck features that AMED reads)
        guided as the output is: `u + w (c - u)`; rows of a plain call as they are."""
        if self.guidance_scale == 1.0:
            return rows
        uncond, conditional = rows.chunk(2)
        return uncond + self.guidance_scale * (conditional - uncond)


def num_classes(denoiser) -> int | None:
    """The classes of a class-conditional diffusers UNet: `num_class_embeds - 1` (the last embedding is
    the null class of guidance, docs/conventions.md §10); None for a model without class embeddings."""
    network = getattr(denoiser, "unet", getattr(denoiser, "velocity_model", None))
    embeds = getattr(getattr(network, "config", None), "num_class_embeds", None)
    return None if embeds is None else int(embeds) - 1


def class_labels(denoiser, labels) -> torch.Tensor:
    """`labels` as the long tensor a class-conditional model takes; a label outside its classes (or a
    model without classes) is refused in one line naming it."""
    classes = num_classes(denoiser)
    if classes is None:
        raise ValueError(f"{type(denoiser).__name__} is not class-conditional (no num_class_embeds): it takes no "
                         f"class labels")
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    bad = labels[(labels < 0) | (labels >= classes)]
    if len(bad):
        raise ValueError(f"class {int(bad[0])} is not one of the model's {classes} classes 0..{classes - 1}")
    return labels


def class_guided(denoiser, guidance_scale: float) -> GuidedDenoiser:
    """A class-conditional denoiser under guidance: its null class is `num_classes`."""
    classes = num_classes(denoiser)
    if classes is None:
        raise ValueError(f"guidance_scale={guidance_scale} needs a conditional model; {type(denoiser).__name__} "
                         f"has no class embeddings")
    return GuidedDenoiser(denoiser, guidance_scale, {"class_labels": torch.tensor([classes])})


def labels_of_run(indices, classes: int, chosen=None) -> torch.Tensor:
    """The class of sample `i` of a run: `chosen[i mod len(chosen)]` (all classes: `i mod classes`), so a
    run is balanced over the chosen classes and does not depend on the batch size."""
    chosen = list(range(classes)) if chosen is None else [int(c) for c in chosen]
    if not chosen:
        raise ValueError("no classes chosen: give at least one")
    return torch.tensor([chosen[int(i) % len(chosen)] for i in indices], dtype=torch.long)
