import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from samplers import get_sigmas
from samplers.schedules import discrete_timesteps


@pytest.mark.parametrize("kind", ["karras", "logsnr", "time_uniform"])
@pytest.mark.parametrize("n", [1, 2, 7])
def test_continuous_schedules_span_the_range_and_end_at_zero(kind, n):
    sigmas = get_sigmas(kind, n, sigma_min=0.002, sigma_max=80.0)
    assert sigmas.dtype == torch.float64 and len(sigmas) == n + 1
    assert sigmas[-1] == 0 and math.isclose(sigmas[0], 80.0, rel_tol=1e-12)
    if n > 1:
        assert math.isclose(sigmas[-2], 0.002, rel_tol=1e-9)
        assert (sigmas[1:] < sigmas[:-1]).all()


def test_karras_is_linear_in_sigma_to_the_one_over_rho():
    s = get_sigmas("karras", 6, 0.01, 50.0, rho=5.0)[:-1] ** (1 / 5.0)
    assert torch.allclose(s.diff(), s.diff()[:1].expand(5), rtol=1e-10)


def test_logsnr_is_uniform_in_log_sigma():
    s = get_sigmas("logsnr", 6, 0.01, 50.0)[:-1].log()
    assert torch.allclose(s.diff(), s.diff()[:1].expand(5), rtol=1e-10)


def test_time_uniform_follows_the_vp_sigma_of_uniform_time():
    smin, smax, eps_s = 0.01, 50.0, 1e-3
    s = get_sigmas("time_uniform", 5, smin, smax, eps_s=eps_s)[:-1]
    # log(1 + sigma^2) is quadratic in t: its second differences on a uniform t grid are equal
    g = torch.log1p(s ** 2)
    assert torch.allclose(g.diff().diff(), g.diff().diff()[:1].expand(3), rtol=1e-8)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 3, 10, 50, 999])
def test_discrete_timesteps_reproduce_diffusers(spacing, n):
    scheduler = DDIMScheduler(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    scheduler.set_timesteps(n)
    ours = discrete_timesteps(n, 1000, spacing, steps_offset=scheduler.config.steps_offset)
    np.testing.assert_array_equal(ours, scheduler.timesteps.numpy())


def test_discrete_sigmas_are_the_table_at_those_timesteps():
    abar = DDIMScheduler().alphas_cumprod
    sigmas = get_sigmas("discrete", 4, alphas_cumprod=abar, spacing="trailing")
    t = torch.tensor([999, 749, 499, 249])
    expected = ((1 - abar[t].double()) / abar[t].double()).sqrt()
    assert torch.equal(sigmas[:-1], expected) and sigmas[-1] == 0


@pytest.mark.parametrize("call, message", [
    (lambda: get_sigmas("cosine", 5, 0.1, 10), "unknown schedule 'cosine'"),
    (lambda: get_sigmas("karras", 0, 0.1, 10), "at least 1, got 0"),
    (lambda: get_sigmas("karras", 5, 10, 0.1), "sigma_min=10"),
    (lambda: get_sigmas("karras", 5), "needs sigma_min and sigma_max"),
    (lambda: get_sigmas("discrete", 5), "needs the model's alphas_cumprod"),
    (lambda: get_sigmas("discrete", 5, alphas_cumprod=DDIMScheduler().alphas_cumprod, spacing="middle"), "unknown spacing 'middle'"),
])
def test_bad_schedule_requests_name_the_value(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()
