"""A small MLP velocity field for low-dimensional data (2-D toy sets), saved as diffusers saves a UNet
(`config.json` + `diffusion_pytorch_model.safetensors`), so that the objectives' `export` writes it
into the same pipeline directory a UNet goes to."""
from __future__ import annotations

import math

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """`[cos(t f_j), sin(t f_j)]`, `f_j = 10000^(-j / (dim/2))`, j < dim/2: the DDPM embedding,
    which resolves timesteps on the scale 0..1000 (the objectives' `time_scale`)."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, device=t.device, dtype=torch.float32) / (dim // 2))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class MLPVelocity(ModelMixin, ConfigMixin):
    """`v(x, t)` for `x` of shape (B, dim) and `t` of shape (B,) (a timestep on the scale 0..1000):
    `depth` hidden layers of width `hidden`, `h <- SiLU(W h + b + E t_emb)`, each adding its own
    projection of the timestep embedding, then a linear read-out."""

    @register_to_config
    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3):
        super().__init__()
        if dim < 1 or hidden < 2 or hidden % 2 or depth < 1:
            raise ValueError(f"need dim >= 1, an even hidden >= 2 and depth >= 1, got dim={dim}, hidden={hidden}, "
                             f"depth={depth}")
        self.layers = nn.ModuleList([nn.Linear(dim if i == 0 else hidden, hidden) for i in range(depth)])
        self.times = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.out = nn.Linear(hidden, dim)
        self.sample_shape = (dim,)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(len(x))
        emb = timestep_embedding(t, self.config.hidden).to(x.dtype)
        h = x
        for layer, time in zip(self.layers, self.times):
            h = nn.functional.silu(layer(h) + time(emb))
        return self.out(h)
