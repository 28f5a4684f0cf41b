import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler

from fewstep import samplers
from fewstep.samplers import get_sigmas
from fewstep.samplers.schedules import DISCRETE_MIRRORS, discrete_grid, discrete_timesteps


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


MIRRORED = {"ddim": DDIMScheduler, "dpmpp_2m": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler,
            "heun": HeunDiscreteScheduler}


@pytest.mark.parametrize("steps_offset", [0, 1])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("mirror", MIRRORED)
def test_discrete_timesteps_are_the_mirrored_schedulers_for_many_step_counts(mirror, spacing, steps_offset):
    """Every n up to 130 and a stride beyond it, to 1000: the same timesteps (values and dtype;
    Heun's without its repeats), or, where diffusers' own list is broken (n + 1 entries, -1,
    repeats, 1000), a refusal."""
    scheduler = MIRRORED[mirror](timestep_spacing=spacing, steps_offset=steps_offset)
    refused = 0
    for n in [*range(1, 130), *range(130, 999, 29), 999, 1000]:
        scheduler.set_timesteps(n)
        theirs = scheduler.timesteps.numpy()
        theirs = np.concatenate([theirs[:1], theirs[1::2]]) if mirror == "heun" else theirs
        if len(theirs) == n and len(np.unique(theirs)) == n and 0 <= theirs.min() and theirs.max() <= 999:
            ours = discrete_timesteps(n, 1000, spacing, steps_offset, mirror)
            assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), n
        else:
            refused += 1
            with pytest.raises(ValueError, match=f"cannot take {n} steps with {spacing} spacing"):
                discrete_timesteps(n, 1000, spacing, steps_offset, mirror)
    assert refused < 10  # e.g. trailing 61, 103, 121, 122: np.arange(T, 0, -T / n) has n + 1 entries


def test_each_sampler_mirrors_one_diffusers_scheduler():
    assert DISCRETE_MIRRORS == {"ddim": "DDIMScheduler", "ipndm": "DDIMScheduler", "dopri5": "DDIMScheduler",
                                "dpmpp_2m": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler",
                                "heun": "HeunDiscreteScheduler"}
    # DPM-Solver spaces n + 1 points and drops the last; DDIM spaces n
    assert discrete_timesteps(8, 1000, "linspace", mirror="dpmpp_2m")[:3].tolist() == [999, 874, 749]
    assert discrete_timesteps(8, 1000, "linspace", mirror="ddim")[:3].tolist() == [999, 856, 714]


def test_fractional_timesteps_take_sigma_interpolated_linearly_as_euler_does():
    abar = DDIMScheduler().alphas_cumprod
    sigmas, timesteps = discrete_grid(5, abar, "linspace", mirror="euler")
    assert timesteps.tolist() == [999, 749.25, 499.5, 249.75, 0]
    table = ((1 - abar.double()) / abar.double()).sqrt()
    assert sigmas[1] == 0.75 * table[749] + 0.25 * table[750] and sigmas[-1] == 0
    euler = EulerDiscreteScheduler(timestep_spacing="linspace")
    euler.set_timesteps(5)
    assert torch.allclose(sigmas, euler.sigmas.double(), rtol=1e-6, atol=0)


def test_final_sigma_min_ends_at_the_tables_first_sigma():
    abar = DDIMScheduler().alphas_cumprod
    sigmas = get_sigmas("discrete", 4, alphas_cumprod=abar, steps_offset=1, final_sigmas_type="sigma_min")
    assert sigmas[-1] == ((1 - abar[0].double()) / abar[0].double()).sqrt() and sigmas[-2] > sigmas[-1]


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
    (lambda: get_sigmas("discrete", 5, alphas_cumprod=DDIMScheduler().alphas_cumprod, mirror="dpm_2"),
     "'dpm_2' mirrors none: use it with another schedule, or one of ddim, ipndm, dopri5, dpmpp_2m, euler, heun"),
    (lambda: get_sigmas("discrete", 5, alphas_cumprod=DDIMScheduler().alphas_cumprod, final_sigmas_type="one"),
     "unknown final_sigmas_type 'one': use zero or sigma_min"),
    (lambda: get_sigmas("discrete", 5, alphas_cumprod=DDIMScheduler().alphas_cumprod, final_sigmas_type="sigma_min"),
     "final_sigmas_type sigma_min ends at sigma(0) = 0.0100013, which the last timestep 0 already has"),
    (lambda: discrete_timesteps(61, 1000, "trailing"),
     "DDIMScheduler cannot take 61 steps with trailing spacing and steps_offset 0: its 62 timesteps [999, 983, 966, '...', 32, 15, -1]"),
    (lambda: discrete_timesteps(1000, 1000, "leading", 0, "dpmpp_2m"), "DPMSolverMultistepScheduler cannot take 1000 steps"),
])
def test_bad_schedule_requests_name_the_value(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("kind", ["karras", "logsnr", "time_uniform"])
def test_a_grid_may_end_at_sigma_min_instead_of_a_step_to_zero(kind):
    """`final_sigmas_type="sigma_min"`: n steps over n + 1 points from sigma_max down to sigma_min,
    the same kind of spacing as n + 1 points followed by 0; NFE stays exact."""
    to_zero = get_sigmas(kind, 5, 0.01, 80.0)
    at_min = get_sigmas(kind, 5, 0.01, 80.0, final_sigmas_type="sigma_min")
    assert len(to_zero) == len(at_min) == 6 and float(to_zero[-1]) == 0
    assert float(at_min[0]) == pytest.approx(80.0) and float(at_min[-1]) == pytest.approx(0.01)
    assert torch.equal(at_min, get_sigmas(kind, 6, 0.01, 80.0)[:-1])
    assert samplers.nfe("heun", at_min) == 10 and samplers.nfe("heun", to_zero) == 9
    assert samplers.nfe("dpmpp_2m", at_min) == 5
    with pytest.raises(ValueError, match="unknown final_sigmas_type 'min': use zero or sigma_min"):
        get_sigmas(kind, 5, 0.01, 80.0, final_sigmas_type="min")


def test_flow_uniform_is_uniform_in_the_flows_time_and_euler_on_it_is_the_flows_euler():
    """t = sigma / (1 + sigma) equally spaced; and an Euler step in sigma space on a FlowDenoiser is
    x_t + (t_next - t) v in the flow's own variables (docs/conventions.md §9)."""
    sigmas = get_sigmas("flow_uniform", 4, 0.25, 3.0)
    t = sigmas[:-1] / (1 + sigmas[:-1])
    assert t.tolist() == pytest.approx([0.75, 0.75 - 0.55 / 3, 0.75 - 1.1 / 3, 0.2], abs=1e-12) and float(sigmas[-1]) == 0
    class Field(torch.nn.Module):  # any velocity field, in float64 (the dtype FlowDenoiser feeds it)
        def __init__(self):
            super().__init__()
            self.register_buffer("k", torch.tensor(3.0, dtype=torch.float64))

        def forward(self, x_t, t):
            return torch.sin(self.k * x_t) + t.reshape(-1, 1)

    velocity = Field()
    flow = samplers.FlowDenoiser(velocity, sample_shape=(2,))
    z = torch.randn(3, 2, dtype=torch.float64)
    grid = sigmas[:-1]  # stop at sigma_min (t = 0.2)
    ours = samplers.solve("euler", flow, z * (1 + grid[0]), grid) / (1 + grid[-1])
    x_t = z.clone()
    for a, b in zip(t[:-1], t[1:]):
        x_t = x_t + (b - a) * velocity(x_t, a.expand(3))
    assert (ours - x_t).abs().max() < 1e-12


def test_by_default_the_discrete_plan_is_ddim_schedulers_default_one():
    """leading spacing, steps_offset 0, DDIMScheduler's timesteps, a last step to 0 (set_alpha_to_one)."""
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    sigmas, steps = discrete_grid(10, scheduler.alphas_cumprod)
    assert steps.tolist() == scheduler.timesteps.tolist() == discrete_timesteps(10, 1000).tolist()
    assert len(sigmas) == 11 and float(sigmas[-1]) == 0


@pytest.mark.parametrize("n", [0, 1001, 2.5])
def test_a_step_count_outside_1_to_t_or_not_whole_is_one_line(n):
    with pytest.raises(ValueError, match=rf"^the number of steps must be a whole number from 1 to 1000, got {n}$"):
        discrete_timesteps(n, 1000)


@pytest.mark.parametrize("n, shown", [
    (8, r"\[1001, 876, 751, 626, 501, 376, 251, 126\]"),  # up to 8: all of them
    (9, r"\[1014, 903, 792, '...', 348, 237, 126\]"),     # more: the first and last three
])
def test_a_plan_the_scheduler_cannot_take_shows_its_timesteps_and_the_allowed_range(n, shown):
    with pytest.raises(ValueError, match=rf"^DDIMScheduler cannot take {n} steps with leading spacing and steps_offset "
                                         rf"126: its {n} timesteps {shown} are not {n} distinct ones in 0..999$"):
        discrete_timesteps(n, 1000, "leading", 126)


def test_discrete_grid_refuses_an_unknown_final_sigmas_type_in_one_line():
    with pytest.raises(ValueError, match="^unknown final_sigmas_type 'one': use zero or sigma_min$"):
        discrete_grid(5, DDIMScheduler().alphas_cumprod, final_sigmas_type="one")


@pytest.mark.parametrize("call, message", [
    (lambda: get_sigmas("karras", 5, 0.0, 80.0), "need 0 < sigma_min < sigma_max, got sigma_min=0.0, sigma_max=80.0"),
    (lambda: get_sigmas("logsnr", 5, 2.0, 2.0), "need 0 < sigma_min < sigma_max, got sigma_min=2.0, sigma_max=2.0"),
    (lambda: get_sigmas("karras", 5, sigma_min=0.1), "the karras schedule needs sigma_min and sigma_max"),
    (lambda: get_sigmas("discrete", 5), "the discrete schedule needs the model's alphas_cumprod (a VP model's noise table)"),
    (lambda: get_sigmas("cosine", 5, 0.1, 10.0),
     "unknown schedule 'cosine': use one of karras, logsnr, time_uniform, flow_uniform, discrete"),
])
def test_a_schedule_request_that_cannot_be_met_is_named_in_full(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value) == message


@pytest.mark.parametrize("kind, settings", [("karras", {"rho": 3.0}), ("time_uniform", {"eps_s": 0.05})])
def test_a_grid_ending_at_sigma_min_keeps_its_schedules_settings(kind, settings):
    at_min = get_sigmas(kind, 5, 0.01, 80.0, final_sigmas_type="sigma_min", **settings)
    assert torch.equal(at_min, get_sigmas(kind, 6, 0.01, 80.0, **settings)[:-1])
    assert not torch.equal(at_min, get_sigmas(kind, 5, 0.01, 80.0, final_sigmas_type="sigma_min"))


def test_karras_ramp_is_numpys_linspace_bit_for_bit():
    from fewstep.samplers.schedules import ramp

    for n in (1, 2, 3, 7, 10, 11, 50, 999, 1000):
        assert np.array_equal(ramp(n), np.linspace(0.0, 1.0, n)), n
