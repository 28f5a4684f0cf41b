"""Samplers against the exact ODE solution of an analytic Gaussian mixture."""

import numpy as np
import pytest
import torch

from fewstep import samplers
from helpers import STEPS  # the fixture `problem` (the exact solution): conftest


def observed_order(problem, name):
    gmm, noise, exact = problem
    nfes, errors = [], []
    for n in STEPS:
        sigmas = samplers.get_sigmas("karras", n, gmm.sigma_min, gmm.sigma_max)
        x = samplers.sample(name, gmm, noise, sigmas)
        nfes.append(samplers.nfe(name, sigmas))
        errors.append((x - exact).norm(dim=1).mean().item())
    slope = np.polyfit(np.log(nfes), np.log(errors), 1)[0]
    return -slope, errors


@pytest.mark.parametrize("name, low, high", [("euler", 0.8, 1.3), ("ddim", 0.8, 1.3), ("heun", 1.7, 2.8),
                                             ("dpmpp_2m", 1.7, 2.8), ("ipndm", 1.7, 4.5)])
def test_error_falls_with_nfe_at_the_expected_order(problem, name, low, high):
    order, errors = observed_order(problem, name)
    assert low <= order <= high, f"{name}: observed order {order:.2f}, errors {errors}"


def quartic_slope(x, sigma):
    """`D = x - sigma p(sigma)`, so `dx/dsigma = p(sigma) = (1 - sigma)^4` whatever `x`: from `x(1) = 0`,
    `x(0) = -1/5`. p and its first three derivatives vanish at sigma = 1, so the first steps (taken
    with a short history, at lower order) cost only O(h^5) each and the full-history steps decide the
    order."""
    return x - sigma * (1 - torch.as_tensor(sigma, dtype=x.dtype)) ** 4


@pytest.mark.parametrize("max_order", [1, 2, 3, 4])
def test_ipndm_reaches_its_order_where_the_history_is_full(max_order):
    errors = []
    for n in (8, 16, 32):
        sigmas = torch.linspace(1, 0, n + 1, dtype=torch.float64)   # uniform: Adams-Bashforth's own grid
        x = samplers.sample("ipndm", quartic_slope, torch.zeros(1, 1, dtype=torch.float64), sigmas, max_order=max_order)
        errors.append(abs(x.item() + 0.2))
    order = -np.polyfit(np.log([8, 16, 32]), np.log(errors), 1)[0]
    assert max_order - 0.3 <= order <= max_order + 0.5, f"order {order:.2f}, errors {errors}"


def test_ipndm_history_beats_a_shorter_one_on_the_mixture(problem):
    gmm, noise, exact = problem
    sigmas = samplers.get_sigmas("karras", 64, gmm.sigma_min, gmm.sigma_max)
    error = {k: (samplers.sample("ipndm", gmm, noise, sigmas, max_order=k) - exact).norm(dim=1).mean().item()
             for k in (2, 4)}
    assert error[4] < 0.5 * error[2], error


def test_dopri5_is_the_exact_solution(problem):
    gmm, noise, exact = problem
    loose = samplers.sample("dopri5", gmm, noise, samplers.get_sigmas("karras", 4, gmm.sigma_min, gmm.sigma_max),
                            rtol=1e-6, atol=1e-6)
    assert (loose - exact).abs().max() < 1e-3


def test_samples_follow_the_mixture(gmm):
    """The ODE maps the prior onto the data: the sample moments match the mixture's."""
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(1))
    x = samplers.sample("heun", gmm, noise, samplers.get_sigmas("karras", 32, gmm.sigma_min, gmm.sigma_max))
    truth = gmm.sample(200_000, generator=torch.Generator().manual_seed(2)).float()
    assert torch.allclose(x.mean(0), truth.mean(0), atol=0.1)
    assert torch.allclose(x.std(0), truth.std(0), rtol=0.05)


def test_ddim_eta_one_is_ancestral_sampling_of_the_mixture(gmm):
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(3))
    sigmas = samplers.get_sigmas("karras", 64, gmm.sigma_min, gmm.sigma_max)
    x = samplers.sample("ddim", gmm, noise, sigmas, generator=torch.Generator().manual_seed(4), eta=1.0)
    deterministic = samplers.sample("ddim", gmm, noise, sigmas)
    truth = gmm.sample(200_000, generator=torch.Generator().manual_seed(2)).float()
    assert (x - deterministic).abs().mean() > 0.1
    assert torch.allclose(x.mean(0), truth.mean(0), atol=0.1)
    assert torch.allclose(x.std(0), truth.std(0), rtol=0.05)


@pytest.mark.parametrize("name, options", [("ddim", {}), ("euler", {}), ("heun", {}), ("dpmpp_2m", {}),
                                           ("ipndm", {"max_order": 3}), ("dopri5", {"rtol": 1e-4, "atol": 1e-4})])
@pytest.mark.parametrize("n", [1, 2, 5])
def test_nfe_is_exact(gmm, name, options, n):
    sigmas = samplers.get_sigmas("karras", n, gmm.sigma_min, gmm.sigma_max)
    calls = []
    samplers.sample(name, gmm, torch.randn(8, 2), sigmas, callback=calls.append, **options)
    expected = samplers.nfe(name, sigmas, options)
    if name == "dopri5":  # adaptive: no count in advance; one dopri5 step alone takes 6 calls
        assert expected is None and (len(calls) == 1 if n == 1 else len(calls) > 6)
    else:
        assert len(calls) == expected
    assert [c["nfe"] for c in calls] == list(range(1, len(calls) + 1))


def test_heun_nfe_without_a_final_zero(gmm):
    sigmas = samplers.get_sigmas("karras", 4, gmm.sigma_min, gmm.sigma_max)[:-1]
    assert samplers.nfe("heun", sigmas) == 6


@pytest.mark.parametrize("name, target, steps", [("euler", 5, 5), ("heun", 9, 5), ("heun", 10, 5), ("dpmpp_2m", 3, 3)])
def test_steps_for_nfe(name, target, steps):
    assert samplers.steps_for_nfe(name, target) == steps


def test_same_seed_gives_bit_identical_samples(gmm):
    sigmas = samplers.get_sigmas("karras", 6, gmm.sigma_min, gmm.sigma_max)

    def draw():
        noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(7))
        return samplers.sample("ddim", gmm, noise, sigmas, generator=torch.Generator().manual_seed(8), eta=0.5)

    assert torch.equal(draw(), draw())


def test_per_sample_generators_make_samples_independent_of_the_batch(gmm):
    from diffusers.utils.torch_utils import randn_tensor

    sigmas = samplers.get_sigmas("karras", 6, gmm.sigma_min, gmm.sigma_max)

    def draw(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        noise = randn_tensor((len(seeds), 2), generator=gens)
        return samplers.sample("ddim", gmm, noise, sigmas, generator=gens, eta=1.0)

    whole = draw(range(6))
    halves = torch.cat([draw(range(3)), draw(range(3, 6))])
    assert torch.equal(whole, halves)


# -- bad input ---------------------------------------------------------------------------------
def nan_model(x, sigma):
    return torch.where(torch.as_tensor(sigma) < 1, torch.full_like(x, float("nan")), x * 0)


@pytest.mark.parametrize("call, error, message", [
    (lambda g: samplers.sample("euler", g, torch.tensor([[float("nan"), 0.0]]), [1.0, 0.0]), ValueError, "noise has 1 NaN or inf"),
    (lambda g: samplers.sample("heun", nan_model, torch.zeros(2, 2), [2.0, 0.5, 0.0]), FloatingPointError, "NaN or inf at sigma=0.5"),
    (lambda g: samplers.sample("euler", g, torch.zeros(2, 2), [1.0, 2.0, 0.0]), ValueError, "strictly decreasing"),
    (lambda g: samplers.sample("euler", g, torch.zeros(2, 2), [1.0]), ValueError, "at least one step"),
    (lambda g: samplers.sample("euler", g, torch.zeros(2, 2), [1.0, -1.0]), ValueError, "positive"),
    (lambda g: samplers.sample("lms", g, torch.zeros(2, 2), [1.0, 0.0]), ValueError, "unknown sampler 'lms'"),
    (lambda g: samplers.sample("euler", g, torch.zeros(2, 2), [1.0, 0.0], eta=1.0), ValueError, "unknown option.*eta.*'euler'"),
    (lambda g: samplers.sample("ipndm", g, torch.zeros(2, 2), [1.0, 0.0], max_order=5), ValueError, "max_order must be 1, 2, 3 or 4, got 5"),
    (lambda g: samplers.nfe("dopri5", [1.0, 0.0], {"order": 2}), ValueError, "unknown option"),
    (lambda g: samplers.steps_for_nfe("dopri5", 10), ValueError, "no fixed grid"),
    (lambda g: samplers.sample("ddim", g, torch.zeros(2, 2), [1.0, 0.0], eta=1.5), ValueError, r"eta must be in \[0, 1\], got 1.5"),
    (lambda g: samplers.steps_for_nfe("euler", 0), ValueError, "more than 0 NFE"),
])
def test_bad_input_stops_with_a_clear_message(gmm, call, error, message):
    with pytest.raises(error, match=message):
        call(gmm)


# -- the step generators' own keywords -------------------------------------------------------------
@pytest.mark.parametrize("name", samplers.SAMPLER_NAMES)
def test_each_samplers_defaults_are_the_ones_the_registry_declares(problem, name):
    """Called without options, a sampler's function does what the registry's declared defaults do."""
    from fewstep.samplers.solvers import SOLVERS, run_steps

    gmm, noise, _ = problem
    solver, sigmas, x = SOLVERS[name], samplers.get_sigmas("karras", 4, gmm.sigma_min, gmm.sigma_max), noise[:8] * 80
    if solver.adaptive:
        bare, declared = solver.run(gmm, x, sigmas), solver.run(gmm, x, sigmas, **solver.options)
    else:
        bare, declared = (run_steps(solver.run(x, sigmas, **options), gmm) for options in ({}, solver.options))
    assert torch.equal(bare, declared)


def test_multistep_passes_each_steps_scale_to_the_update():
    from fewstep.samplers.solvers import run_steps
    from fewstep.samplers.steps import multistep

    def recorded(scales):
        seen = []
        run_steps(multistep(torch.ones(1), torch.tensor([3.0, 2.0, 1.0, 0.0]),
                            lambda x, sigma, sigma_next, denoised, scale: seen.append(scale) or x, False, scales),
                  lambda x, sigma: x)
        return seen

    assert recorded([0.5, 2.0, 1.5]) == [0.5, 2.0, 1.5] and recorded(None) == [1.0, 1.0, 1.0]


def test_dopri5s_tolerances_reach_the_solver_and_a_grid_ending_at_0_ends_with_d_at_its_last_positive_sigma(problem):
    gmm, noise, _ = problem
    x, sigmas = noise[:8] * 80, torch.tensor([80.0, 1.0, 0.0], dtype=torch.float64)
    loose = samplers.solve("dopri5", gmm, x, sigmas, rtol=1e-9, atol=1e-2)
    assert not torch.equal(loose, samplers.solve("dopri5", gmm, x, sigmas, rtol=1e-9, atol=1e-9))
    assert not torch.equal(loose, samplers.solve("dopri5", gmm, x, sigmas, rtol=1e-2, atol=1e-2))
    at_one = samplers.solve("dopri5", gmm, x, sigmas[:2])
    assert torch.equal(samplers.solve("dopri5", gmm, x, sigmas), gmm(at_one, sigmas[1]))


def test_deterministic_ddim_draws_no_random_numbers(problem):
    gmm, noise, _ = problem
    sigmas = samplers.get_sigmas("karras", 4, gmm.sigma_min, gmm.sigma_max)
    torch.manual_seed(0)
    samplers.sample("ddim", gmm, noise[:4], sigmas)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))


@pytest.mark.parametrize("name", [name for name, solver in samplers.solvers.SOLVERS.items() if solver.evaluated])
def test_a_samplers_evaluated_rule_lists_the_sigmas_its_step_generator_asks_about(name):
    """The rule FewstepScheduler plans its timesteps by, in place of a dry run, on grids ending at 0 and
    above it, of one and several steps, with and without afs."""
    from fewstep.samplers.solvers import SOLVERS, evaluated_sigmas, run_steps

    for grid in ([80.0, 10.0, 1.0, 0.1, 0.0], [5.0, 2.0, 0.5], [3.0, 0.0], [3.0, 1.0]):
        for afs in (False, True):
            options = samplers.solvers.resolve_options(name, {"afs": afs})
            asked = []
            run_steps(SOLVERS[name].run(torch.ones(1, dtype=torch.float64), torch.tensor(grid, dtype=torch.float64),
                                        **options, **samplers.solvers.extras(SOLVERS[name], torch.Generator(),
                                                                             samplers.spaces.SIGMA_TIME)),
                      lambda x, sigma: asked.append(float(sigma)) or x)
            assert evaluated_sigmas(name, torch.tensor(grid, dtype=torch.float64), options) == asked, (grid, afs)


def test_afs_saves_one_call_when_it_is_on_and_there_is_a_step():
    from fewstep.samplers.solvers import one_per_step, two_per_step

    assert [one_per_step(n, True, {"afs": True}) for n in (0, 1, 3)] == [0, 0, 2]
    assert [two_per_step(3, ends, {"afs": afs}) for ends in (False, True) for afs in (False, True)] == [6, 5, 5, 4]
    assert one_per_step(3, True, {}) == 3  # options without afs (dopri5's): no call saved


@pytest.mark.parametrize("sigmas, message", [
    ([3.0, 1.0, -1.0], "sigmas must be positive (the last may be 0), got [3.0, 1.0, -1.0]"),
    ([3.0, float("inf"), 0.0], "sigmas must be finite, got [3.0, inf, 0.0]"),
])
def test_a_grid_the_samplers_cannot_take_is_named_in_full(sigmas, message):
    from fewstep.samplers.solvers import check_sigmas

    with pytest.raises(ValueError) as error:
        check_sigmas(sigmas)
    assert str(error.value) == message
