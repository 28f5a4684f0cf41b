"""The losses of the ReFlow-derived GAN (docs/conventions.md §11) and of its WGAN-GP baseline, as plain functions.

A critic `phi` maps a batch to one value per sample, and must treat samples independently (no batch
norm): the penalties take `grad_x sum_i phi(x_i)` as the per-sample gradients `grad phi(x_i)`.
Interpolation times are drawn per sample as `torch.rand((B, 1, ..., 1), generator=generator)` in
`fake`'s dtype and device, so a test can recompute them from a seeded generator; `generator` may also
be a list, one generator per sample (`samplers.noise.generators`: the GAN objective's rows).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..samplers.noise import uniform


def critic_values(critic, x: torch.Tensor) -> torch.Tensor:
    """`critic(x)` as shape (B,): the critic must return shape (B,) or (B, 1)."""
    out = critic(x)
    if out.shape not in ((len(x),), (len(x), 1)):
        raise ValueError(f"the critic must return one value per sample, shape (B,) or (B, 1); got shape "
                         f"{list(out.shape)} for a batch of {len(x)}")
    return out.reshape(len(x))


def _check_pair(real: torch.Tensor, fake: torch.Tensor) -> None:
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got real {tuple(real.shape)} and fake "
                         f"{tuple(fake.shape)}")


def _check_weight(penalty_weight: float) -> None:
    if penalty_weight < 0:
        raise ValueError(f"penalty_weight must be >= 0, got {penalty_weight}")


def _check_step(step_size: float) -> None:
    if step_size <= 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")


def _times(x: torch.Tensor, generator) -> torch.Tensor:
    """`torch.rand((B, 1, ..., 1))` in `x`'s dtype and device: one time per sample, broadcasting; from
    `generator[i]` for sample `i` when it is a list."""
    ones = (1,) * (x.ndim - 1)
    if isinstance(generator, list):
        if len(generator) != len(x):
            raise ValueError(f"{len(generator)} generators for a batch of {len(x)}: give one per sample")
        return uniform(generator, ones, x.device).to(x.dtype)
    return torch.rand((len(x),) + ones, generator=generator, device=x.device, dtype=x.dtype)


def _critic_grad(critic, x: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """`grad phi(x_i)` per sample, at a detached copy of `x` (no gradient reaches `x`'s graph)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(critic_values(critic, x).sum(), x, create_graph=create_graph)
    return grad


def reflow_critic_loss(critic, real: torch.Tensor, fake: torch.Tensor, penalty_weight: float = 0.5,
                       generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
    """`mean_i [phi(fake_i) - phi(real_i) + w ||grad phi(x_t,i)||^2]`, `x_t = (1 - t) fake + t real`,
    `t ~ U[0, 1]` per sample, the squared norm summed over every non-batch element, `w =
    penalty_weight` (1/2 is the ReFlow loss itself, docs/conventions.md §11). `fake` is detached; the penalty is
    built with `create_graph=True`, so its gradient reaches the critic's parameters."""
    _check_pair(real, fake)
    _check_weight(penalty_weight)
    fake = fake.detach()
    t = _times(fake, generator)
    grad = _critic_grad(critic, (1 - t) * fake + t * real, create_graph=True)
    penalty = grad.pow(2).flatten(1).sum(1)
    return (critic_values(critic, fake) - critic_values(critic, real) + penalty_weight * penalty).mean()


def wgan_gp_critic_loss(critic, real: torch.Tensor, fake: torch.Tensor, penalty_weight: float = 10.0,
                        generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): `mean_i [phi(fake_i) - phi(real_i) + lambda (||grad
    phi(x_hat,i)|| - 1)^2]`, `x_hat = real + u (fake - real)`, `u ~ U[0, 1]` per sample (u = 0 is
    real), the norm over every non-batch element, `lambda = penalty_weight`. `fake` is detached."""
    _check_pair(real, fake)
    _check_weight(penalty_weight)
    fake = fake.detach()
    u = _times(fake, generator)
    grad = _critic_grad(critic, real + u * (fake - real), create_graph=True)
    penalty = (grad.flatten(1).norm(dim=1) - 1).pow(2)
    return (critic_values(critic, fake) - critic_values(critic, real) + penalty_weight * penalty).mean()


def regression_target(critic, fake: torch.Tensor, step_size: float) -> torch.Tensor:
    """`stopgrad(fake + eta grad phi(fake))`, `eta = step_size`: the generator's samples moved one
    step along the critic's velocity field (a fixed target an objective may regress onto K times)."""
    _check_step(step_size)
    return (fake.detach() + step_size * _critic_grad(critic, fake, create_graph=False)).detach()


def regression_loss(fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`mean_i ||fake_i - target_i||^2`: the squared error SUMMED over each sample's elements, then
    averaged over the batch."""
    if fake.shape != target.shape:
        raise ValueError(f"fake and target must have the same shape, got fake {tuple(fake.shape)} and target "
                         f"{tuple(target.shape)}")
    return (fake - target).pow(2).flatten(1).sum(1).mean()


def generator_regression_loss(critic, fake: torch.Tensor, step_size: float) -> torch.Tensor:
    """`regression_loss(fake, regression_target(critic, fake, eta))` (docs/conventions.md §11). Its gradient with
    respect to `fake` is `-(2 eta / B) grad phi(fake_i)`, exactly `2 eta` times that of
    `generator_plain_loss(critic, fake)`: at the current parameters the two give proportional
    generator gradients, constant `2 * step_size`."""
    return regression_loss(fake, regression_target(critic, fake, step_size))


def generator_plain_loss(critic, fake: torch.Tensor,
                         h: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """`-mean_i h(phi(fake_i))`, `h` increasing (MonoFlow), the identity by default. The gradient
    runs through the critic to `fake`; the caller keeps it out of the critic's parameters."""
    values = critic_values(critic, fake)
    return -(values if h is None else h(values)).mean()


def wgan_generator_loss(critic, fake: torch.Tensor) -> torch.Tensor:
    """The WGAN(-GP) generator loss `-mean_i phi(fake_i)`: `generator_plain_loss` with `h` the identity."""
    return generator_plain_loss(critic, fake)
