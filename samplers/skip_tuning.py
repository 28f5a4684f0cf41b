"""Skip-Tuning (Ma et al., ICML 2024, "The Surprising Effectiveness of Skip-Tuning in Diffusion
Sampling"): scale every encoder→decoder skip feature of a UNet by `rho_i`, linear in depth —
`rho_top` at the outermost (highest-resolution) skip, `rho_bottom` at the innermost (next to the
bottleneck). Training-free; it restores detail that few-step samplers lose.

The skips reach each diffusers up block as `res_hidden_states_tuple` (positional argument 1 in
`UNet2DModel`, a keyword in `UNet2DConditionModel`); a forward pre-hook on every up block
rescales them. Down-block outputs are never touched (the last residual of a down block is the
same tensor that feeds the next block).

The factors calibrated for a model lie beside it (`tuning.skiptune_tables`).
"""
from __future__ import annotations

import math

import torch

from .spaces import sigma_of_timestep, sigmas_from_alphas_cumprod

_ATTRIBUTE = "_fewstep_skip_tuning"


def _unet_and_table(model):
    """The UNet inside `model` (a UNet, a `DiffusersUNetDenoiser` or a diffusers pipeline) and its
    noise table `alphas_cumprod` when `model` carries one."""
    unet = getattr(model, "unet", model)
    table = getattr(model, "alphas_cumprod", None)
    if table is None:
        table = getattr(getattr(model, "scheduler", None), "alphas_cumprod", None)
    if not hasattr(unet, "up_blocks") or not hasattr(unet, "down_blocks"):
        raise ValueError(f"{type(model).__name__} has no UNet skip connections (no down/up blocks) to tune")
    return unet, table


def _check_rho(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


class SkipTuning:
    """The hooks of one Skip-Tuning on one UNet: `.remove()` takes them off; as a context manager
    they come off on exit. Made by `skip_tuning(...)`."""

    def __init__(self, model, rho_top: float, rho_bottom: float, sigma_range):
        self.rho_top, self.rho_bottom = _check_rho("rho_top", rho_top), _check_rho("rho_bottom", rho_bottom)
        self.unet, table = _unet_and_table(model)
        if sigma_range is not None:
            lo, hi = (float(v) for v in sigma_range)
            if not 0 <= lo < hi:
                raise ValueError(f"sigma_range must be (low, high) with 0 <= low < high, got {tuple(sigma_range)}")
            if table is None:
                raise ValueError("sigma_range needs the model's noise table: pass the denoiser or the pipeline, "
                                 "not the bare UNet")
            self.log_sigmas = sigmas_from_alphas_cumprod(table).log()
        self.sigma_range = None if sigma_range is None else (lo, hi)
        existing = getattr(self.unet, _ATTRIBUTE, None)
        if existing is not None:
            raise ValueError(f"Skip-Tuning is already applied to this UNet (rho_top={existing.rho_top}, "
                             f"rho_bottom={existing.rho_bottom}); remove it first")
        self.factors = self._factors()
        self._active = None
        self.handles = [self.unet.register_forward_pre_hook(self._read_timestep, with_kwargs=True)]
        offset = len(self.factors)
        for block in self.unet.up_blocks:  # innermost first; each takes the last len(resnets) skips
            count = len(block.resnets)
            offset -= count
            self.handles.append(block.register_forward_pre_hook(self._scaler(self.factors[offset:offset + count]),
                                                                with_kwargs=True))
        setattr(self.unet, _ATTRIBUTE, self)

    def _factors(self) -> list[float]:
        """One factor per skip feature, in the encoder's order (outermost first)."""
        count = sum(len(block.resnets) for block in self.unet.up_blocks)
        if count < 2:
            return [self.rho_top] * count
        return [self.rho_top + (self.rho_bottom - self.rho_top) * i / (count - 1) for i in range(count)]

    def _read_timestep(self, module, args, kwargs):
        """Note, per sample, whether the current sigma lies in `sigma_range`."""
        if self.sigma_range is None:
            return None
        t = kwargs["timestep"] if "timestep" in kwargs else args[1]
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).cpu()
        sigma = sigma_of_timestep(t, self.log_sigmas)
        self._active = (sigma >= self.sigma_range[0]) & (sigma <= self.sigma_range[1])
        return None

    def _scaler(self, factors):
        def hook(module, args, kwargs):
            in_kwargs = "res_hidden_states_tuple" in kwargs
            skips = kwargs["res_hidden_states_tuple"] if in_kwargs else args[1]
            scaled = tuple(self._scale(h, rho) for h, rho in zip(skips, factors))
            if in_kwargs:
                return args, {**kwargs, "res_hidden_states_tuple": scaled}
            return (args[0], scaled, *args[2:]), kwargs

        return hook

    def _scale(self, h: torch.Tensor, rho: float) -> torch.Tensor:
        if rho == 1.0:
            return h
        if self._active is None:
            return h * rho
        active = self._active.to(h.device)
        if len(active) == 1:
            active = active.expand(len(h))
        factor = torch.where(active, rho, 1.0).to(h.dtype).reshape(-1, *[1] * (h.ndim - 1))
        return h * factor

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        if getattr(self.unet, _ATTRIBUTE, None) is self:
            delattr(self.unet, _ATTRIBUTE)

    def __str__(self) -> str:
        where = f", sigma in [{self.sigma_range[0]}, {self.sigma_range[1]}]" if self.sigma_range else ""
        return f"Skip-Tuning: rho_top {self.rho_top}, rho_bottom {self.rho_bottom}{where}"

    def __enter__(self) -> "SkipTuning":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def skip_tuning(model, rho_top: float = 1.0, rho_bottom: float = 0.8, sigma_range=None) -> SkipTuning:
    """Apply Skip-Tuning to the UNet of `model` (a `UNet2DModel`, a `UNet2DConditionModel`, a
    `DiffusersUNetDenoiser` or a diffusers pipeline) and return its handle; use it as a context
    manager or call `.remove()`.

    rho_top, rho_bottom: the factors of the outermost and innermost skips (positive), linear in
        between. sigma_range: (low, high); scale only while the current sigma lies in it (needs the
        noise table, so pass the denoiser or the pipeline).
    """
    return SkipTuning(model, rho_top, rho_bottom, sigma_range)
