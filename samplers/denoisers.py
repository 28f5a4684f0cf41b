"""Model adapters: every model seen as a denoiser `D(x, sigma) -> x0_hat` in the EDM sigma space
`x = x0 + sigma * eps` (docs/conventions.md §1-2). Samplers talk to nothing else.

A denoiser is a callable `(x, sigma, **cond) -> D` with `sigma` a number, a 0-d tensor or one
value per sample; it carries `sigma_min`, `sigma_max` (its trained range) and `sample_shape`, and may
carry `step_time`, the variable samplers step in (`spaces.StepTime`; a flow's is its t).
"""
from __future__ import annotations

import importlib
import itertools
import json

import torch
from torch import nn

from .flow_shift import FlowShift
from .spaces import (FLOW_TIME, flow_output_to_denoised, flow_t, fractional_timestep, is_flow_matching,
                     sigmas_from_alphas_cumprod, vp_output_to_denoised)


def _per_sample(sigma, x: torch.Tensor) -> torch.Tensor:
    """`sigma` as a tensor of shape (B, 1, ..., 1) that broadcasts against `x`."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.reshape(-1, *([1] * (x.ndim - 1))).expand(x.shape[0], *([1] * (x.ndim - 1)))


class GMMDenoiser(nn.Module):
    """The exact denoiser of an isotropic Gaussian mixture `sum_k w_k N(mu_k, s_k^2 I)`:
    `D(x, sigma) = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k))` with
    responsibilities `r_k ∝ w_k N(x; mu_k, (s_k^2 + sigma^2) I)`.

    means: (K, *shape); stds: (K,) positive; weights: (K,) non-negative, normalised here.
    sigma_min, sigma_max: the range schedules use (EDM's defaults).
    """

    def __init__(self, means, stds, weights=None, sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64).reshape(-1)
        weights = torch.ones(len(means), dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if means.ndim < 2 or not len(means) == len(stds) == len(weights):
            raise ValueError(f"need means (K, d...), stds (K,), weights (K,); got shapes "
                             f"{tuple(means.shape)}, {tuple(stds.shape)}, {tuple(weights.shape)}")
        if (stds <= 0).any() or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"stds must be positive and weights non-negative, got stds={stds.tolist()}, weights={weights.tolist()}")
        self.register_buffer("means", means)
        self.register_buffer("stds", stds)
        self.register_buffer("weights", weights / weights.sum())
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.sample_shape = tuple(means.shape[1:])

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        flat = x.reshape(len(x), -1)
        mu = self.means.reshape(len(self.means), -1).to(x)          # (K, d)
        var = self.stds.to(x) ** 2                                  # (K,)
        s2 = _per_sample(sigma, flat)                               # (B, 1)
        total = var + s2 ** 2                                       # (B, K)
        sq = torch.cdist(flat, mu) ** 2                             # (B, K)
        log_r = self.weights.to(x).log() - 0.5 * flat.shape[1] * total.log() - sq / (2 * total)
        r = log_r.softmax(dim=1)
        shrink = var / total                                        # (B, K)
        # sum_k r_k (mu_k + shrink_k (x - mu_k)) = (sum_k r_k shrink_k) x + sum_k r_k (1 - shrink_k) mu_k
        out = (r * shrink).sum(1, keepdim=True) * flat + (r * (1 - shrink)) @ mu
        return out.reshape(x.shape)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` exact draws from the mixture (float64)."""
        k = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator)
        z = torch.randn(n, *self.sample_shape, dtype=torch.float64, generator=generator)
        return (self.means.cpu()[k] + self.stds.cpu()[k].reshape(-1, *[1] * len(self.sample_shape)) * z).to(self.means.device)


def _dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a network's first parameter or buffer (float32 for a module without any)."""
    return next(itertools.chain(module.parameters(), module.buffers()), torch.empty(0)).dtype


def sample_shape_of(net: nn.Module):
    """The shape of the samples a network (or denoiser) makes: its own `sample_shape`, else (C, H, W) from a
    diffusers UNet's config, else None."""
    if getattr(net, "sample_shape", None) is not None:
        return tuple(net.sample_shape)
    config = getattr(net, "config", None)
    size = getattr(config, "sample_size", None)
    if isinstance(size, int):
        size = (size, size)
    return (config.in_channels, *size) if size is not None else None


def _check_unet_shape(unet: nn.Module, shape) -> None:
    """Raise if a diffusers UNet cannot take images of `shape` (C, H, W)."""
    config = unet.config
    if shape[0] != config.in_channels:
        raise ValueError(f"the model takes {config.in_channels} channels, got {shape[0]}")
    factor = 2 ** (len(config.down_block_types) - 1)
    if any(int(s) % factor for s in shape[1:]):
        raise ValueError(f"the model takes image sizes divisible by {factor}, got {tuple(shape[1:])}")


# Model classes a saved config.json may name besides diffusers' own, as "module:Class" (imported when
# first needed); add an entry to load another ModelMixin through `from_pretrained`.
MODEL_CLASSES: dict[str, str] = {"MLPVelocity": "fewstep.flows.mlp:MLPVelocity"}


def _model_class(class_name: str):
    """The class a saved config names: one of MODEL_CLASSES, else diffusers', else None."""
    import diffusers

    if class_name in MODEL_CLASSES:
        module, name = MODEL_CLASSES[class_name].split(":")
        return getattr(importlib.import_module(module), name)
    return getattr(diffusers, class_name, None)


def _load_unet(path, torch_dtype=None):
    """The UNet of a local pipeline or UNet directory, or of a shipped model named `path`, with its
    scheduler config and the directory it was found in."""
    from ..assets import names, resolve

    root = resolve(path, lambda r: (r / "unet").is_dir() or (r / "config.json").is_file())
    if not root.is_dir() and root.name == str(path):  # a bare name, neither a directory nor a shipped model
        raise FileNotFoundError(f"model path does not exist: {root}, and no shipped model is named so "
                                f"(shipped: {', '.join(names())})")
    if not root.is_dir():
        raise FileNotFoundError(f"model path does not exist: {root}")
    unet_dir = root / "unet" if (root / "unet" / "config.json").is_file() else root
    candidates = [root / "scheduler" / "scheduler_config.json", unet_dir / "scheduler_config.json",
                  root / "scheduler_config.json"]
    scheduler_file = next((p for p in candidates if p.is_file()), None)
    if not (unet_dir / "config.json").is_file():
        raise FileNotFoundError(f"no UNet config.json in {root} or {root / 'unet'}")
    if scheduler_file is None:
        raise FileNotFoundError(f"no scheduler_config.json in {root}, {root / 'scheduler'} or {unet_dir}")
    class_name = json.loads((unet_dir / "config.json").read_text()).get("_class_name", "UNet2DModel")
    unet_cls = _model_class(class_name)
    if unet_cls is None:
        raise ValueError(f"unknown UNet class {class_name!r} in {unet_dir / 'config.json'}")
    unet = unet_cls.from_pretrained(str(unet_dir), torch_dtype=torch_dtype).eval()
    return unet, json.loads(scheduler_file.read_text()), root


def from_pretrained(path, torch_dtype=None, sigma_max: float | None = None):
    """Any local diffusers model as a denoiser, by its scheduler config: a VP noise table gives a
    `DiffusersUNetDenoiser`, diffusers' `FlowMatchEulerDiscreteScheduler` a `FlowDenoiser` (its
    network sees `t * num_train_timesteps`). `path`: a pipeline or model directory, or a shipped
    model's name. The network is a diffusers model or one of MODEL_CLASSES (the 2-D
    `flows.MLPVelocity`). sigma_max: a flow's upper sigma (None: FlowDenoiser's, t = 0.999; a
    one-step model distilled at t = 1 uses 1e8, whose float32 t is 1)."""
    unet, scheduler_config, root = _load_unet(path, torch_dtype)
    if is_flow_matching(scheduler_config):
        extra = {} if sigma_max is None else {"sigma_max": float(sigma_max)}
        denoiser = FlowDenoiser(unet, time_scale=float(scheduler_config.get("num_train_timesteps", 1000)),
                                shift=FlowShift.from_config(scheduler_config, "model"), **extra)
    elif sigma_max is not None:
        raise ValueError(f"sigma_max={sigma_max} is for flow-matching models; {root} has a VP noise table")
    else:
        denoiser = DiffusersUNetDenoiser.from_config(unet, scheduler_config)
    denoiser.pretrained_path = root  # where what is tuned for it lies (tuning.store)
    return denoiser


def _network_output(out) -> torch.Tensor:
    """A diffusers model returns an output object with `.sample`; a plain module, a tensor."""
    return out.sample if hasattr(out, "sample") else out


class DiffusersUNetDenoiser(nn.Module):
    """A discrete VP model (a diffusers UNet trained on `alphas_cumprod`) as a denoiser.

    `sigma_t = sqrt((1 - abar_t) / abar_t)`; the network sees `x_vp = x / sqrt(1 + sigma^2)` at the
    fractional timestep found by interpolating `log sigma` over the table, and its output becomes
    `D` through `vp_output_to_denoised`. Extra keywords of a call (e.g. `encoder_hidden_states`) go to the UNet.
    """

    PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

    def __init__(self, unet: nn.Module, alphas_cumprod, prediction_type: str = "epsilon"):
        super().__init__()
        if prediction_type not in self.PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}: use one of {', '.join(self.PREDICTION_TYPES)}")
        self.unet, self.prediction_type = unet, prediction_type
        table = sigmas_from_alphas_cumprod(alphas_cumprod)
        # plain float64 attributes, not buffers: `.to(torch.bfloat16)` must not round the table
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod).double().cpu()
        self.log_sigmas = table.log()
        self.sigma_min, self.sigma_max = float(table[0]), float(table[-1])
        self.sample_shape = sample_shape_of(unet)

    @classmethod
    def from_config(cls, unet: nn.Module, scheduler_config: dict) -> "DiffusersUNetDenoiser":
        """From a diffusers scheduler config (its beta table and `prediction_type`)."""
        from diffusers import DDPMScheduler

        if "trained_betas" not in scheduler_config and "beta_schedule" not in scheduler_config:
            raise ValueError("the scheduler config has no noise table (no beta_schedule or trained_betas)")
        table = DDPMScheduler.from_config(scheduler_config)
        return cls(unet, table.alphas_cumprod, scheduler_config.get("prediction_type", "epsilon"))

    @classmethod
    def from_pretrained(cls, path, torch_dtype=None) -> "DiffusersUNetDenoiser":
        """Load a local `UNet2DModel` or `UNet2DConditionModel` trained on a VP noise table, with its
        scheduler config: a pipeline directory (`unet/`, `scheduler/`) or a UNet directory whose
        `scheduler_config.json` lies in it or beside it, or a model the project ships, by its name
        (`"digits_ddpm"`), as diffusers resolves a hub name. `samplers.from_pretrained` also loads
        flow-matching models."""
        unet, scheduler_config, root = _load_unet(path, torch_dtype)
        if is_flow_matching(scheduler_config):
            raise ValueError(f"{root} is a flow-matching model ({scheduler_config['_class_name']}): "
                             f"load it with samplers.from_pretrained")
        denoiser = cls.from_config(unet, scheduler_config)
        denoiser.pretrained_path = root  # where what is tuned for it lies (tuning.store)
        return denoiser

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fractional timestep of `sigma` on the model's table (`fractional_timestep`)."""
        return fractional_timestep(sigma, self.log_sigmas)

    def check_shape(self, shape) -> None:
        """Raise if the UNet cannot take images of `shape` (C, H, W)."""
        _check_unet_shape(self.unet, shape)

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        s = _per_sample(sigma, x)
        x_vp = x / (1 + s ** 2).sqrt()
        t = self.timestep(s.reshape(-1))
        dtype = _dtype(self.unet)
        t = t.to(torch.promote_types(dtype, torch.float32))  # fractional timesteps need at least float32
        out = _network_output(self.unet(x_vp.to(dtype), t, **cond))
        return vp_output_to_denoised(out, x, s, self.prediction_type)


class FlowDenoiser(nn.Module):
    """A rectified flow `x_t = (1 - t) x0 + t eps` with velocity `v = eps - x0` (t = 0 data,
    t = 1 noise) as a denoiser: `sigma = t / (1 - t)`, the network sees `x_t = x / (1 + sigma)` at
    `t = sigma / (1 + sigma)`, and `D = x_t - t * v_hat`.

    velocity_model: `(x_t, t) -> v_hat` with `t` of shape (B,); diffusers models (output `.sample`)
        and plain modules both work. time_scale: multiplies `t` before the call (e.g. 999 for a
        UNet trained on integer-like timesteps).
    sigma_min, sigma_max: the range schedules use (t from 0.002/1.002 to 0.999).
    shift: the time shift of the flow's own grid (`flow_shift.FlowShift`; SD3's static, Flux's dynamic
        one), which `shifted` applies. Samplers step in t (`step_time`).
    """

    step_time = FLOW_TIME

    def __init__(self, velocity_model: nn.Module, time_scale: float = 1.0, sigma_min: float = 0.002,
                 sigma_max: float = 999.0, sample_shape=None, shift: FlowShift = FlowShift()):
        super().__init__()
        self.velocity_model, self.time_scale, self.shift = velocity_model, time_scale, shift
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else sample_shape_of(velocity_model)

    def shifted(self, grid: torch.Tensor) -> torch.Tensor:
        """`grid` with its times shifted by `shift`; a dynamic shift's `mu` from the sequence length of
        `sample_shape` (H W / patch^2, the patch size of the network's config, else 1), as pipelines compute it."""
        if self.shift.identity:
            return grid
        mu = None
        if self.shift.dynamic:
            patch = getattr(getattr(self.velocity_model, "config", None), "patch_size", None) or 1
            mu = self.shift.mu_for((self.sample_shape[-2] // patch) * (self.sample_shape[-1] // patch))
        return self.shift.sigmas(grid, mu)

    def check_shape(self, shape) -> None:
        """Raise if a diffusers UNet velocity model cannot take images of `shape` (C, H, W)."""
        if hasattr(getattr(self.velocity_model, "config", None), "down_block_types"):
            _check_unet_shape(self.velocity_model, shape)

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        s = _per_sample(sigma, x)
        dtype = _dtype(self.velocity_model)
        t_in = (flow_t(s).reshape(-1) * self.time_scale).to(torch.promote_types(dtype, torch.float32))
        v = _network_output(self.velocity_model((x / (1 + s)).to(dtype), t_in, **cond))
        return flow_output_to_denoised(v, x, s)

