"""A velocity network as the flows use it: called at a flow time, and saved as a diffusers pipeline
directory that `samplers.from_pretrained` loads as a `FlowDenoiser`."""
from __future__ import annotations

from pathlib import Path

import torch


def velocity(model, x_t: torch.Tensor, t: torch.Tensor, time_scale: float) -> torch.Tensor:
    """`model(x_t, t * time_scale)` as a tensor of `x_t`'s shape (diffusers models return `.sample`)."""
    out = model(x_t, t * time_scale)
    out = getattr(out, "sample", out)
    if out.shape != x_t.shape:
        raise ValueError(f"the velocity model returned shape {tuple(out.shape)} for x_t of shape {tuple(x_t.shape)}")
    return out


def save_flow(net, out_dir: str | Path, time_scale: float) -> None:
    """Write a velocity network as a diffusers pipeline directory (unet/ + scheduler/) whose scheduler
    is `FlowMatchEulerDiscreteScheduler` (the same convention, timesteps `t * time_scale`), loadable
    by `samplers.from_pretrained`."""
    from diffusers import DDPMPipeline, FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=int(time_scale), shift=1.0)
    DDPMPipeline(unet=net, scheduler=scheduler).save_pretrained(str(out_dir))
