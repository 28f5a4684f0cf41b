"""The samplers with k-diffusion's calling convention (`samplers.k_sampler`, `samplers.kdiffusion`) against
k-diffusion's own (the `k-diffusion` package, a test dependency): the same model, grid and start give the
same result and the same callback dicts.

`k_diffusion/__init__` imports its training stack (kornia, clip, wandb...); only `sampling.py` (scipy,
torchsde, torchdiffeq, tqdm) and the `utils.py` it imports are loaded here, without the package's `__init__`.
The model is the mixture's exact denoiser behind the host's convention: one sigma per row, an extra argument.
"""
import importlib
import importlib.util
import inspect
import json
import sys
import types

import pytest
import torch

from fewstep import samplers
from fewstep.samplers import kdiffusion
from helpers import ROOT, mixture

FROZEN = ROOT / "assets" / "digits_ddpm" / "amed" / "amed-nfe5" / "frozen_table.json"
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}  # max |ours - theirs| / max |theirs|; measured 5e-6, 5e-15


@pytest.fixture(scope="module")
def k_sampling():
    """`k_diffusion.sampling`, its package a bare namespace for the duration of this module."""
    spec = importlib.util.find_spec("k_diffusion")
    assert spec is not None, 'k-diffusion is a test dependency: pip install -e ".[dev]"'
    location = spec.submodule_search_locations
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] == "k_diffusion"}
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(location)
    sys.modules["k_diffusion"] = package
    try:
        yield importlib.import_module("k_diffusion.sampling")
    finally:
        for name in [name for name in sys.modules if name.split(".")[0] == "k_diffusion"]:
            del sys.modules[name]
        sys.modules.update(saved)


class HostModel:
    """The mixture as a k-diffusion host calls its model: `model(x, sigma, shift=...)`, one sigma per row in
    `x`'s dtype (checked), the denoised sample shifted by `shift`; counts its calls."""

    def __init__(self):
        self.denoiser, self.calls = mixture(), 0

    def __call__(self, x, sigma, shift):
        assert sigma.shape == (len(x),) and sigma.dtype == x.dtype, (sigma.shape, sigma.dtype)
        self.calls += 1
        return self.denoiser(x, sigma) + shift


def start(dtype, sigma0):
    return torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=dtype) * sigma0


def relative(ours, theirs):
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


# (ours, k-diffusion's): euler is DDIM at eta 0, dpm_2 is AMED at r = 1/2, c = 1, and iPNDM's fixed
# Adams-Bashforth coefficients are k-diffusion's LMS (Lagrange integrals) on an evenly spaced grid.
PAIRS = [("euler", "sample_euler"), ("ddim", "sample_euler"), ("heun", "sample_heun"), ("dpm_2", "sample_dpm_2"),
         ("amed", "sample_dpm_2"), ("dpmpp_2m", "sample_dpmpp_2m"), ("ipndm", "sample_lms")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_each_sampler_gives_k_diffusion_s_result_and_callbacks(k_sampling, ours, theirs, dtype):
    if ours == "ipndm":
        sigmas = torch.linspace(20.0, 0.0, 7, dtype=dtype)
    else:
        sigmas = k_sampling.get_sigmas_karras(6, 0.02, 80.0).to(dtype)  # 6 sigmas, then 0
    x = start(dtype, sigmas[0])
    mine, theirs_calls = [], []
    result = getattr(kdiffusion, f"sample_{ours}")(HostModel(), x, sigmas, {"shift": 0.1}, mine.append, True)
    expected = getattr(k_sampling, theirs)(HostModel(), x, sigmas, {"shift": 0.1}, theirs_calls.append, True)
    assert result.dtype == dtype
    assert relative(result, expected) < TOLERANCE[dtype]
    assert len(mine) == len(theirs_calls) == len(sigmas) - 1
    for got, want in zip(mine, theirs_calls):
        assert got.keys() == want.keys() and got["i"] == want["i"]
        assert float(got["sigma"]) == float(want["sigma"]) and float(got["sigma_hat"]) == float(want["sigma_hat"])
        assert relative(got["x"], want["x"]) < TOLERANCE[dtype]
        assert relative(got["denoised"], want["denoised"]) < TOLERANCE[dtype]


def test_the_functions_have_k_diffusion_s_signature_and_every_fixed_grid_sampler_has_one(k_sampling):
    expected = inspect.signature(k_sampling.sample_dpmpp_2m)
    for name in samplers.FIXED_GRID_NAMES:
        function = getattr(kdiffusion, f"sample_{name}")
        assert function.__name__ == f"sample_{name}"
        assert inspect.signature(function) == expected
    assert inspect.signature(samplers.k_sampler("ipndm", max_order=2)) == expected
    assert not hasattr(kdiffusion, "sample_dopri5")


def test_amed_s_frozen_table_runs_its_grid_then_the_host_s_step_to_zero():
    """The table's grid ends at sigma_min; a host appends 0: the table's steps as trained, then x = D."""
    table = json.loads(FROZEN.read_text())
    options, grid = table["sampler_options"], torch.tensor(table["sigmas"], dtype=torch.float64)
    model, steps = HostModel(), []
    x = start(torch.float64, grid[0])
    result = samplers.k_sampler("amed", **options)(model, x, torch.cat([grid, grid.new_zeros(1)]), {"shift": 0.0},
                                                   lambda call: steps.append(call["i"]))
    trained = samplers.solve("amed", model.denoiser, x, grid, **options)
    assert torch.allclose(result, model.denoiser(trained, grid[-1]), rtol=0, atol=1e-12)
    assert model.calls == table["nfe"] + 1
    assert steps == [1, 2, 3]  # afs: step 0 makes no model call, so it has no callback
    for other, message in [([80.0, 20, 10, 1, 0.1, 0], "r has 3 values for a grid of 5 steps"),
                           ([*table["sigmas"], 0.005], "r has 3 values for a grid of 4 steps")]:  # no 0: no step to 0
        with pytest.raises(ValueError, match=message):
            samplers.k_sampler("amed", **options)(model, x, torch.tensor(other), {"shift": 0.0})


def test_amed_plugin_runs_under_the_host_convention_with_a_per_step_table():
    model, sigmas = HostModel(), torch.tensor([80.0, 10.0, 1.0, 0.1, 0.0])
    x = start(torch.float64, 80.0)
    options = {"base": "dpmpp_2m", "r": [0.4, 0.5, 0.6, 0.5], "c": [1.0, 0.99, 1.01, 1.0]}
    result = samplers.k_sampler("amed_plugin", **options)(model, x, sigmas, {"shift": 0.0})
    assert torch.equal(result, samplers.solve("amed_plugin", model.denoiser, x, sigmas, **options))
    assert model.calls == samplers.nfe("amed_plugin", sigmas, options)


def test_the_progress_bar_counts_the_steps_unless_disabled(capsys):
    sample_heun, sigmas = samplers.k_sampler("heun"), torch.tensor([10.0, 3.0, 1.0, 0.0])
    sample_heun(HostModel(), start(torch.float32, 10.0), sigmas, {"shift": 0.0}, disable=False)
    assert "3/3" in capsys.readouterr().err
    sample_heun(HostModel(), start(torch.float32, 10.0), sigmas, {"shift": 0.0}, disable=True)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name, options, message", [
    ("dopri5", {}, "sampler 'dopri5' is adaptive"),
    ("amed", {"predictor": object()}, "cannot take an AMED predictor"),
    ("heun", {"eta": 1.0}, "unknown option"),
    ("lms", {}, "unknown sampler 'lms'"),
])
def test_what_k_sampler_cannot_run_is_one_line(name, options, message):
    with pytest.raises(ValueError, match=message) as error:
        samplers.k_sampler(name, **options)
    assert "\n" not in str(error.value)
