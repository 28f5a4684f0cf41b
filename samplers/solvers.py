"""Samplers over a denoiser and a sigma list (docs/conventions.md §4), in the EDM sigma space.

Every fixed-grid sampler is written once, as a generator: it yields `(x, sigma)` whenever it needs
`D(x, sigma)`, receives back `(x, D)` (the point that was evaluated, which a driver may have
changed, e.g. a pipeline that blends a known region back in, and its denoised value) and
continues from that point; it returns the final sample. `solve()` drives
it with a denoiser, differentiably; `sample()` is `solve()` from noise, without gradients; a
diffusers scheduler drives the same generator one `step()` at a time. `SOLVERS` is the one registry
(DPM-Solver-2 and AMED's samplers live in `amed.py`). With `h = sigma_next - sigma` and
`d = (x - D) / sigma`, the ODE is `dx/dsigma = d`. Every fixed-grid sampler takes `afs`: the first D
analytic instead of a network call (`ask`).

The generators do their arithmetic on 0-d tensors (`sigma` in `zip(sigmas[:-1], sigmas[1:])`), so
gradients reach `x`, the sigmas and anything inside the denoiser.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Mapping

import torch
from diffusers.utils.torch_utils import randn_tensor

TINY = torch.finfo(torch.float64).tiny


def ask(x, sigma, afs: bool):
    """Yield `(x, sigma)` for `D(x, sigma)` and return the `(x, D)` sent back; with `afs`, the analytical
    first step of AMED (Zhou et al. 2024), answer without the network: `d = x / sqrt(1 + sigma^2)`,
    i.e. `D = x - sigma x / sqrt(1 + sigma^2)` (the noise read as the unit-variance VP input). Only
    for a start from pure noise at a large sigma, where the data's mean is about 0 next to `x`."""
    if afs:
        return x, x - sigma * x / (1 + sigma ** 2).sqrt()
    return (yield x, sigma)


def ddim(x, sigmas, eta: float = 0.0, afs: bool = False, generator=None):
    """DDIM (Song et al. 2021) from `sigma` to `sigma_next`: `eps = (x - D) / sigma`,
    `c = eta (sigma_next / sigma) sqrt(sigma^2 - sigma_next^2)`,
    `x_next = D + sqrt(sigma_next^2 - c^2) eps + c z`. `eta = 0` is deterministic (one Euler step of
    the ODE), `eta = 1` is DDPM-ancestral; in VP space this is diffusers' `DDIMScheduler`, whose
    `std_dev_t` is `c / sqrt(1 + sigma_next^2)`. With `eta > 0`, `z` is drawn at every step (as
    DDIMScheduler does, even where `c = 0`) in float32 from `generator`, as diffusers draws it
    for a float32 model, then upcast, so a seed gives DDIMScheduler's noise. afs: the first D
    analytic (`ask`), one call fewer."""
    if not 0 <= eta <= 1:
        raise ValueError(f"ddim eta must be in [0, 1], got {eta}")
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        x, denoised = yield from ask(x, sigma, afs and i == 0)
        eps = (x - denoised) / sigma
        c = eta * (sigma_next / sigma) * (sigma ** 2 - sigma_next ** 2).sqrt()
        # sqrt(sigma_next^2 - c^2) is >= 0 but for rounding; kept off 0, where sqrt's slope is infinite
        x = denoised + (sigma_next if eta == 0 else (sigma_next ** 2 - c ** 2).clamp(min=TINY).sqrt()) * eps
        if eta > 0:
            z = randn_tensor(x.shape, generator=generator, device=x.device, dtype=torch.float32)
            x = x + c * z.to(x.dtype)
    return x


def heun(x, sigmas, afs: bool = False):
    """Heun's second-order method (Karras et al. 2022, Algorithm 1, deterministic): an Euler
    predictor, then the trapezoid `x + h (d + d') / 2`; the last step to sigma = 0 is Euler.
    afs: the first `d` analytic (`ask`), one call fewer."""
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        h = sigma_next - sigma
        x, denoised = yield from ask(x, sigma, afs and i == 0)
        d = (x - denoised) / sigma
        x_euler = x + h * d
        if sigma_next == 0:
            x = x_euler
        else:
            x_euler, denoised_next = yield x_euler, sigma_next
            d_next = (x_euler - denoised_next) / sigma_next
            x = x + h * (d + d_next) / 2
    return x


def multistep(x, sigmas, step: Callable, afs: bool, scales=None):
    """Drive a one-call-per-step update down `sigmas`: `x = step(x, sigma, sigma_next, D, scale)`, the
    step keeping its own history; `scale` is 1, or `scales[i]` (AMED-Plugin's `c`). afs: the first D
    analytic (`ask`)."""
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        x, denoised = yield from ask(x, sigma, afs and i == 0)
        x = step(x, sigma, sigma_next, denoised, 1.0 if scales is None else scales[i])
    return x


def dpmpp_2m_step() -> Callable:
    """DPM-Solver++(2M)'s update with its history (`dpmpp_2m`), the data term scaled:
    `x_next = (sigma_next / sigma) x - scale expm1(-h) D'`; `x = D` on a step to sigma = 0."""
    previous = h_previous = None

    def step(x, sigma, sigma_next, denoised, scale):
        nonlocal previous, h_previous
        if (sigma_next == 0).all():  # AMED-Plugin's intermediate sigma_next may be one per sample
            return denoised
        h = (sigma / sigma_next).log()
        corrected = denoised
        if previous is not None:
            r = h_previous / h
            corrected = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        previous, h_previous = denoised, h
        return (sigma_next / sigma) * x - scale * (-h).expm1() * corrected

    return step


def dpmpp_2m(x, sigmas, afs: bool = False):
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, multistep, `lambda = -log sigma`:
    `x_next = (sigma_next / sigma) x - expm1(-h) D'` with `h = lambda_next - lambda` and
    `D' = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}`, `r = h_{i-1} / h`; first order on the first step and
    on the last step to sigma = 0 (where it gives `x = D`). afs: the first D analytic (`ask`)."""
    return (yield from multistep(x, sigmas, dpmpp_2m_step(), afs))


ADAMS_BASHFORTH = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                   4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def ipndm_step(max_order: int = 4) -> Callable:
    """iPNDM's update with its history of slopes (`ipndm`), scaled: `x_next = x + scale h sum_j b_j d_{i-j}`."""
    if max_order not in ADAMS_BASHFORTH:
        raise ValueError(f"ipndm max_order must be 1, 2, 3 or 4, got {max_order}")
    history = []  # newest first

    def step(x, sigma, sigma_next, denoised, scale):
        history[:] = [(x - denoised) / sigma, *history][:max_order]
        slope = sum(b * d_j for b, d_j in zip(ADAMS_BASHFORTH[len(history)], history))
        return x + scale * (sigma_next - sigma) * slope

    return step


def ipndm(x, sigmas, max_order: int = 4, afs: bool = False):
    """Improved PNDM (Zhang & Chen 2023): explicit Adams–Bashforth on `d` with the fixed
    coefficients of orders 1–4, `x_next = x + h sum_j b_j d_{i-j}`, lower orders while the history
    is short. max_order: 1 to 4. afs: the first `d` analytic (`ask`)."""
    return (yield from multistep(x, sigmas, ipndm_step(max_order), afs))


def dopri5(denoise, x, sigmas, rtol: float = 1e-5, atol: float = 1e-5):
    """Adaptive Dormand–Prince 5(4) (torchdiffeq) on `dx/d(log sigma) = x - D(x, sigma)` from
    `sigmas[0]` to the smallest positive sigma, then, if the list ends at 0, `x = D(x, sigma)` (an
    Euler step to 0). Only the two ends of the list matter; the reference solver."""
    from torchdiffeq import odeint

    s_end = sigmas[-2] if sigmas[-1] == 0 else sigmas[-1]
    if s_end < sigmas[0]:
        log_sigmas = torch.stack([sigmas[0], s_end]).log().to(x.device)
        x = odeint(lambda u, y: y - denoise(y, u.exp()), x, log_sigmas, rtol=rtol, atol=atol, method="dopri5")[-1]
    return denoise(x, s_end) if sigmas[-1] == 0 else x


def analytical_first_step(steps: int, options: Mapping) -> int:
    """The call `afs` saves: 1 if it is on and there is a step."""
    return int(steps > 0 and bool(options.get("afs")))


def one_per_step(steps: int, ends_at_zero: bool, options: Mapping) -> int:
    return steps - analytical_first_step(steps, options)


def two_per_step(steps: int, ends_at_zero: bool, options: Mapping) -> int:
    """Heun's, DPM-Solver-2's, AMED's: a step to sigma = 0 is Euler, one call."""
    return 2 * steps - int(ends_at_zero) - analytical_first_step(steps, options)


def counted_as_it_goes(steps: int, ends_at_zero: bool, options: Mapping) -> None:
    return None


@dataclass(frozen=True)
class Solver:
    """A sampler. run: its step generator `(x, sigmas, **options)`, or if `adaptive` a function
    `(denoise, x, sigmas, **options)` that calls the denoiser itself. options: the keywords it
    takes, with their defaults. nfe: `(steps, ends_at_zero, resolved options) -> denoiser calls`
    (None: adaptive).
    stochastic: it takes `generator` (the noise of `ddim` with eta > 0)."""

    run: Callable
    options: Mapping[str, object] = field(default_factory=dict)
    nfe: Callable[[int, bool, Mapping], int | None] = one_per_step
    adaptive: bool = False
    stochastic: bool = False


from .amed import amed, amed_plugin, dpm_2, watching  # noqa: E402 (amed.py builds on the steps above)

SOLVERS: dict[str, Solver] = {
    "ddim": Solver(ddim, {"eta": 0.0, "afs": False}, stochastic=True),
    # Euler's x + h d is DDIM's eta = 0 step, D + sigma_next eps
    "euler": Solver(partial(ddim, eta=0.0), {"afs": False}),
    "heun": Solver(heun, {"afs": False}, nfe=two_per_step),
    "dpmpp_2m": Solver(dpmpp_2m, {"afs": False}),
    "ipndm": Solver(ipndm, {"max_order": 4, "afs": False}),
    "dpm_2": Solver(dpm_2, {"afs": False}, nfe=two_per_step),  # amed with r = 1/2, c = 1
    # predictor: an amed_predictor.AMEDPredictor (a module, not a config value: FewstepScheduler refuses it)
    "amed": Solver(amed, {"r": 0.5, "c": 1.0, "afs": False, "predictor": None}, nfe=two_per_step),
    "amed_plugin": Solver(amed_plugin, {"base": "ipndm", "r": 0.5, "c": 1.0, "afs": False, "predictor": None},
                          nfe=two_per_step),
    "dopri5": Solver(dopri5, {"rtol": 1e-5, "atol": 1e-5}, nfe=counted_as_it_goes, adaptive=True),
}
SAMPLER_NAMES = tuple(SOLVERS)
FIXED_GRID_NAMES = tuple(name for name, solver in SOLVERS.items() if not solver.adaptive)


def get_solver(name: str) -> Solver:
    """The registry entry of sampler `name`."""
    if name not in SOLVERS:
        raise ValueError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLER_NAMES)}")
    return SOLVERS[name]


def resolve_options(name: str, options: Mapping | None) -> dict:
    """`options` over sampler `name`'s declared defaults; an undeclared one is refused in one line
    naming it and the ones the sampler takes."""
    declared = get_solver(name).options
    unknown = sorted(set(options or {}) - set(declared))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for sampler {name!r}; "
                         f"it takes: {', '.join(declared) or 'none'}")
    return {**declared, **(options or {})}


def check_sigmas(sigmas) -> torch.Tensor:
    """Sigmas as a float64 tensor (differentiably, if they require grad): at least two, finite,
    strictly decreasing, positive but the last (which may be 0)."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"need at least one step (two sigmas), got sigmas of shape {tuple(sigmas.shape)}")
    if not torch.isfinite(sigmas).all():
        raise ValueError(f"sigmas must be finite, got {sigmas.tolist()}")
    if not (sigmas[1:] < sigmas[:-1]).all():
        raise ValueError(f"sigmas must be strictly decreasing, got {sigmas.tolist()}")
    if sigmas[-1] < 0:
        raise ValueError(f"sigmas must be positive (the last may be 0), got {sigmas.tolist()}")
    return sigmas


def nfe(name: str, sigmas, options: Mapping | None = None) -> int | None:
    """The exact number of denoiser calls `sample(name, ..., sigmas, **options)` makes; `None` for
    an adaptive sampler (count its calls with a `callback`)."""
    options = resolve_options(name, options)
    sigmas = check_sigmas(sigmas)
    return SOLVERS[name].nfe(len(sigmas) - 1, bool(sigmas[-1] == 0), options)


def steps_for_nfe(name: str, target: int, options: Mapping | None = None, ends_at_zero: bool = True) -> int:
    """The largest number of steps whose NFE is at most `target`, on a grid ending at 0 or not
    (`final_sigmas_type="sigma_min"`: Heun then pays for its last corrector)."""
    options = resolve_options(name, options)
    if SOLVERS[name].adaptive:
        raise ValueError(f"sampler {name!r} has no fixed grid, so no step count for an NFE budget")
    steps = 0
    while SOLVERS[name].nfe(steps + 1, ends_at_zero, options) <= target:
        steps += 1
    if steps == 0:
        raise ValueError(f"sampler {name!r} needs more than {target} NFE for one step")
    return steps


def run_steps(steps, denoise: Callable) -> torch.Tensor:
    """Drive a step generator: answer each `(x, sigma)` it yields with `(x, denoise(x, sigma))` (none:
    afs on one step to 0 needs no call)."""
    try:
        request = next(steps)
        while True:
            request = steps.send((request[0], denoise(*request)))
    except StopIteration as done:
        return done.value


def solve(name: str, denoiser, x: torch.Tensor, sigmas, /, *, generator=None, callback=None,
          **options) -> torch.Tensor:
    """Run sampler `name` from the sigma-space point `x` at `sigmas[0]` down `sigmas`, keeping
    gradients and `x`'s dtype: autograd reaches `x`, tensor `sigmas` that require grad and the
    denoiser's parameters (a distillation teacher, a schedule search). Arguments as `sample`'s. With
    AMED's `predictor`, the denoiser runs watched: its bottleneck is what the predictor reads."""
    solver, options = get_solver(name), resolve_options(name, options)
    sigmas = check_sigmas(sigmas)
    calls = 0

    def denoise(x, sigma):
        nonlocal calls
        denoised = denoiser(x, sigma)
        calls += 1
        if callback is not None:
            callback({"nfe": calls, "x": x, "sigma": float(torch.as_tensor(sigma).double().mean()),
                      "denoised": denoised})
        return denoised

    with watching(name, options.get("predictor"), denoiser):
        if solver.adaptive:
            return solver.run(denoise, x, sigmas, **options)
        extra = {"generator": generator} if solver.stochastic else {}
        return run_steps(solver.run(x, sigmas, **options, **extra), denoise)


def sample(name: str, denoiser, noise: torch.Tensor, sigmas, /, *, generator=None, callback=None,
           **options) -> torch.Tensor:
    """Sample with sampler `name` from standard-normal `noise` (scaled here by `sigmas[0]`) down the
    decreasing `sigmas`, without gradients, and return the final `x` in the dtype of `noise`.

    denoiser: `(x, sigma) -> D`, `sigma` a 0-d tensor (one per sample, shape (B,), at a learned AMED
    step). generator: a `torch.Generator` or a list of
    one per sample, for the stochastic samplers (`ddim` with `eta > 0`). callback: called after
    every denoiser call with a dict `{"nfe", "x", "sigma", "denoised"}`. options: the sampler's
    declared keywords (`SOLVERS[name].options`, e.g. `eta`, `max_order`, `afs`, `r`, `rtol`, AMED's
    `predictor`). A callback's `sigma` is a number: the mean of a per-sample sigma (a learned AMED step). The
    arithmetic runs in float64 (float32 on MPS); a NaN or inf model output stops it.
    """
    sigmas = check_sigmas(sigmas)
    if not torch.isfinite(noise).all():
        raise ValueError(f"the noise has {int((~torch.isfinite(noise)).sum())} NaN or inf values")
    work = torch.float32 if noise.device.type == "mps" else torch.float64

    def check(call):
        if not torch.isfinite(call["denoised"]).all():
            raise FloatingPointError(f"the model output has NaN or inf at sigma={call['sigma']:.6g} "
                                     f"(denoiser call {call['nfe']})")
        if callback is not None:
            callback(call)

    with torch.no_grad():
        x = solve(name, denoiser, noise.to(work) * float(sigmas[0]), sigmas, generator=generator, callback=check,
                  **options)
    return x.to(noise.dtype)


def sample_seeds(name: str, denoiser, seeds, sigmas, shape, batch_size: int = 64, device=None, callback=None,
                 options: Mapping | None = None):
    """Yield batches of samples, sample `i` drawn from its own seed `seeds[i]` (its noise and any
    sampler noise come from `torch.Generator().manual_seed(seeds[i])`), so the samples depend
    neither on the batch size nor on how the seeds are split over processes or devices. options:
    the sampler's keywords, as one mapping."""
    options = resolve_options(name, options)
    seeds = list(seeds)
    for start in range(0, len(seeds), batch_size):
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[start:start + batch_size]]
        noise = randn_tensor((len(generators), *shape), generator=generators, device=device, dtype=torch.float32)
        yield sample(name, denoiser, noise, sigmas, generator=generators, callback=callback, **options)
