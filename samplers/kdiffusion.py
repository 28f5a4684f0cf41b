"""fewstep's fixed-grid samplers with k-diffusion's calling convention, for the hosts built on it
(stable-diffusion-webui, Forge, ComfyUI): `sample_<name>(model, x, sigmas, extra_args=None, callback=None,
disable=None)`, where `model(x, sigma, **extra_args)` returns the denoised sample, `sigma` one per row
(docs/conventions.md §4). They drive the registry's step generators through `solvers.solve`; a host finds
them as it finds k-diffusion's own, `getattr(module, "sample_" + name)`, or takes one from `k_sampler`.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .solvers import FIXED_GRID_NAMES, Solver, analytical_first_step, check_sigmas, get_solver, resolve_options, solve


def step_starts(solver: Solver, steps: int, options: dict) -> dict[int, int]:
    """`{denoiser call number (from 1, as solve's callback counts): step}` of each step's first call, from
    the NFE rule: step `i` starts after the calls of `i` full steps. With `afs`, step 0 has no call."""
    return {solver.nfe(i, False, options) + 1: i for i in range(analytical_first_step(steps, options), steps)}


def on_host_grid(options: dict, sigmas: torch.Tensor) -> dict:
    """AMED's per-step `r`, `c` made for a grid ending at sigma_min, on the host's grid with 0 appended
    (k-diffusion's `append_zero`): that step to 0 has no intermediate time and takes r = 1/2, c = 1."""
    steps = len(sigmas) - 1

    def one_short(value):
        per_step = isinstance(value, (list, tuple)) or (torch.is_tensor(value) and value.ndim == 1)
        return per_step and len(value) == steps - 1

    if sigmas[-1] != 0:
        return options
    padded = {key: [*options[key], end] for key, end in (("r", 0.5), ("c", 1.0))
              if key in options and one_short(options[key])}
    return {**options, **padded}


def k_sampler(name: str, **options):
    """Fixed-grid sampler `name` with its `options` (`SOLVERS[name].options`; AMED's frozen table as
    `r`, `c`, `afs`) as a function of k-diffusion's signature `(model, x, sigmas, extra_args=None,
    callback=None, disable=None)`: `x` at `sigmas[0]`, its dtype kept, no gradients; `callback` gets
    `{x, i, sigma, sigma_hat, denoised}` at each step's first model call; `disable` hides the tqdm bar."""
    solver, options = get_solver(name), resolve_options(name, options)
    if solver.adaptive:
        raise ValueError(f"sampler {name!r} is adaptive, and k-diffusion's convention runs the host's grid: "
                         f"use one of {', '.join(FIXED_GRID_NAMES)}")
    if options.get("predictor") is not None:
        raise ValueError(f"k_sampler({name!r}) cannot take an AMED predictor (it reads a UNet that a host's model "
                         f"does not show): give its frozen table, k_sampler({name!r}, **table['sampler_options'])")

    @torch.no_grad()
    def run(model, x, sigmas, extra_args=None, callback=None, disable=None):
        grid = check_sigmas(torch.as_tensor(sigmas).detach().cpu())
        starts = step_starts(solver, len(grid) - 1, options)

        def denoise(x, sigma):
            return model(x, x.new_ones([len(x)]) * torch.as_tensor(sigma).to(x), **(extra_args or {}))

        def report(call):
            i = starts.get(call["nfe"])
            if i is not None:
                bar.update(i + 1 - bar.n)
                if callback is not None:
                    callback({"x": call["x"], "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i],
                              "denoised": call["denoised"]})

        with tqdm(total=len(grid) - 1, disable=disable) as bar:
            return solve(name, denoise, x, grid, callback=report, **on_host_grid(options, grid))

    run.__name__ = run.__qualname__ = f"sample_{name}"
    return run


# sample_ddim, sample_euler, sample_heun, ...: every fixed-grid sampler with its default options, named as
# k-diffusion names its own
globals().update({f"sample_{name}": k_sampler(name) for name in FIXED_GRID_NAMES})
