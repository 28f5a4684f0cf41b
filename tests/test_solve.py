"""`solve` (differentiable, from a given sigma-space point), the sampler registry and options as one mapping."""
import inspect
from types import MappingProxyType

import pytest
import torch

from fewstep import samplers
from fewstep.samplers.solvers import SOLVERS, Solver

CASES = [("ddim", {}), ("ddim", {"eta": 0.5}), ("ddim", {"eta": 1.0}), ("euler", {}), ("heun", {}), ("dpmpp_2m", {}),
         ("ipndm", {"max_order": 3}), ("dopri5", {})]


def grid(gmm, steps):
    return samplers.get_sigmas("karras", steps, gmm.sigma_min, gmm.sigma_max)


def start(n=8, seed=0):
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 80.0


# -- gradients ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, options", CASES)
def test_gradients_reach_the_denoiser_x_and_the_sigmas(gmm, name, options):
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)   # a learnable scalar inside D
    x = start().requires_grad_()
    sigmas = grid(gmm, 4).requires_grad_()
    out = samplers.solve(name, lambda x, sigma: scale * gmm(x, sigma), x, sigmas,
                         generator=torch.Generator().manual_seed(1), **options)
    assert out.requires_grad and out.dtype == x.dtype
    out.square().sum().backward()
    assert scale.grad != 0 and x.grad.abs().max() > 0
    assert torch.isfinite(sigmas.grad).all()   # no NaN from sqrt(0) at the last step of ddim eta = 1
    reached = [0, 3] if name == "dopri5" else range(4)   # dopri5 uses the ends only (3: the last positive)
    assert all(sigmas.grad[i] != 0 for i in reached), sigmas.grad


@pytest.mark.parametrize("name", ["heun", "dpmpp_2m"])
def test_sigma_gradients_agree_with_finite_differences(gmm, name):
    x = start(16)
    weights = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    base = grid(gmm, 6)

    def loss(sigmas):
        return (samplers.solve(name, gmm, x, sigmas) * weights).sum()

    sigmas = base.clone().requires_grad_()
    loss(sigmas).backward()
    for i in range(len(base) - 1):
        step = torch.zeros_like(base)
        step[i] = 1e-5 * base[i]
        numeric = (loss(base + step) - loss(base - step)) / (2 * step[i])
        assert abs(numeric - sigmas.grad[i]) <= 1e-5 * abs(numeric) + 1e-9, (i, float(numeric), float(sigmas.grad[i]))


def test_solve_keeps_a_float32_start_in_float32(gmm):
    out = samplers.solve("dpmpp_2m", gmm, start().float(), grid(gmm, 4))
    assert out.dtype == torch.float32


def test_sample_is_solve_from_the_scaled_noise_without_gradients(gmm):
    noise = start() / 80
    sigmas = grid(gmm, 5)
    for name, options in CASES:
        expected = samplers.solve(name, gmm, noise * sigmas[0], sigmas, generator=torch.Generator().manual_seed(3),
                                  **options)
        x = samplers.sample(name, gmm, noise, sigmas, generator=torch.Generator().manual_seed(3), **options)
        assert torch.equal(x, expected) and not x.requires_grad, name


# -- starting part-way --------------------------------------------------------------------------------
@pytest.mark.parametrize("name, options", [("euler", {}), ("ddim", {}), ("ddim", {"eta": 0.7})])
def test_a_one_step_method_split_at_any_sigma_continues_the_same_trajectory(gmm, name, options):
    """[s0..sk] then [sk..0] is [s0..0] exactly: a one-step method's step depends on (x, sigma,
    sigma_next) alone (and ddim's noise on the generator's stream, which the second part continues)."""
    sigmas, x = grid(gmm, 8), start()
    whole = samplers.solve(name, gmm, x, sigmas, generator=torch.Generator().manual_seed(4), **options)
    for k in (1, 3, 7):
        generator = torch.Generator().manual_seed(4)
        middle = samplers.solve(name, gmm, x, sigmas[:k + 1], generator=generator, **options)
        assert torch.equal(samplers.solve(name, gmm, middle, sigmas[k:], generator=generator, **options), whole)


def test_solve_from_the_exact_ode_point_follows_the_exact_solution(gmm):
    """dopri5 at a tight tolerance: the flow to sigma_k, then from there to 0, is the flow to 0."""
    sigmas, x = grid(gmm, 6), start()
    tight = {"rtol": 1e-10, "atol": 1e-10}
    whole = samplers.solve("dopri5", gmm, x, sigmas, **tight)
    middle = samplers.solve("dopri5", gmm, x, sigmas[:4], **tight)
    assert (samplers.solve("dopri5", gmm, middle, sigmas[3:], **tight) - whole).abs().max() < 1e-7


# -- euler is ddim at eta 0 --------------------------------------------------------------------------
def test_euler_is_ddim_at_eta_zero_and_the_textbook_euler_step(gmm):
    sigmas, x = grid(gmm, 16), start()
    euler = samplers.solve("euler", gmm, x, sigmas)
    assert torch.equal(euler, samplers.solve("ddim", gmm, x, sigmas))
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):   # x + h d, as a float loop
        x = x + (sigma_next - sigma) * (x - gmm(x, sigma)) / sigma
    assert (euler - x).abs().max() < 1e-12


# -- options as one mapping ---------------------------------------------------------------------------
def test_options_travel_as_one_mapping_where_other_arguments_could_collide(gmm):
    sigmas = grid(gmm, 5)
    assert samplers.nfe("ddim", sigmas, options={"eta": 0.5}) == 5
    assert samplers.nfe("ipndm", sigmas, MappingProxyType({"max_order": 2})) == 5
    assert samplers.steps_for_nfe("heun", 9, options={}) == 5
    assert samplers.steps_for_nfe("ipndm", 4, {"max_order": 2}) == 4
    batches = list(samplers.sample_seeds("ddim", gmm, range(5), sigmas, (2,), batch_size=2, options={"eta": 1.0}))
    alone = list(samplers.sample_seeds("ddim", gmm, [3], sigmas, (2,), options={"eta": 1.0}))
    assert [len(b) for b in batches] == [2, 2, 1] and torch.equal(batches[1][1], alone[0][0])
    assert not torch.equal(torch.cat(batches), torch.cat(list(samplers.sample_seeds("ddim", gmm, range(5), sigmas, (2,)))))


@pytest.mark.parametrize("call, message", [
    (lambda g: samplers.sample("ddim", g, torch.zeros(2, 2), [1.0, 0.0], sigmas=[2.0, 0.0]),
     "unknown option(s) sigmas for sampler 'ddim'; it takes: eta, afs"),
    (lambda g: samplers.sample("euler", g, torch.zeros(2, 2), [1.0, 0.0], name="heun", noise=None),
     "unknown option(s) name, noise for sampler 'euler'; it takes: afs"),
    (lambda g: samplers.solve("ipndm", g, torch.zeros(2, 2), [1.0, 0.0], denoiser=g),
     "unknown option(s) denoiser for sampler 'ipndm'; it takes: max_order, afs"),
    (lambda g: samplers.nfe("euler", [1.0, 0.0], {"eta": 0.5}), "unknown option(s) eta for sampler 'euler'; it takes: afs"),
    (lambda g: samplers.steps_for_nfe("dopri5", 10, {"order": 2}),
     "unknown option(s) order for sampler 'dopri5'; it takes: rtol, atol"),
    (lambda g: next(samplers.sample_seeds("heun", g, [0], [1.0, 0.0], (2,), options={"s_churn": 1})),
     "unknown option(s) s_churn for sampler 'heun'; it takes: afs"),
    (lambda g: samplers.steps_for_nfe("lms", 10),
     "unknown sampler 'lms': use one of ddim, euler, heun, dpmpp_2m, ipndm, dpm_2, amed, amed_plugin, learned, dopri5"),
])
def test_an_unknown_option_is_one_line_naming_it_and_the_valid_ones(gmm, call, message):
    with pytest.raises(ValueError) as error:
        call(gmm)
    assert str(error.value) == message


def test_a_registered_sampler_without_options_says_it_takes_none(monkeypatch):
    monkeypatch.setitem(SOLVERS, "plain", Solver(SOLVERS["euler"].run, {}))
    with pytest.raises(ValueError) as error:
        samplers.nfe("plain", [1.0, 0.0], {"afs": True})
    assert str(error.value) == "unknown option(s) afs for sampler 'plain'; it takes: none"


# -- the registry -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", samplers.SAMPLER_NAMES)
def test_each_entry_declares_the_options_its_function_takes(name):
    solver = SOLVERS[name]
    fixed = getattr(solver.run, "keywords", {})   # euler: ddim with eta fixed at 0
    params = inspect.signature(solver.run).parameters
    takes = {p: params[p].default for p in params if p not in ("denoise", "x", "sigmas", "generator", "time", *fixed)}
    assert takes == dict(solver.options)
    assert solver.stochastic == ("generator" in params and not fixed)
    assert solver.timed == ("time" in params)
    assert not {"generator", "callback", "time"} & set(solver.options)
    assert solver.adaptive == (solver.nfe(3, True, solver.options) is None) == (name not in samplers.FIXED_GRID_NAMES)


@pytest.mark.parametrize("name", samplers.FIXED_GRID_NAMES)
@pytest.mark.parametrize("ends_at_zero", [True, False])
def test_each_nfe_rule_counts_the_calls(gmm, name, ends_at_zero):
    for steps in (1, 2, 5):
        sigmas = grid(gmm, steps) if ends_at_zero else grid(gmm, steps + 1)[:-1]
        calls = []
        samplers.solve(name, gmm, start(), sigmas, callback=calls.append)
        assert len(calls) == samplers.nfe(name, sigmas) == SOLVERS[name].nfe(steps, ends_at_zero, SOLVERS[name].options)


@pytest.mark.parametrize("target", [2, 3, 4, 9, 10])
def test_an_nfe_budget_is_exact_on_grids_that_end_at_sigma_min_too(gmm, target):
    for final, ends_at_zero in (("zero", True), ("sigma_min", False)):
        steps = samplers.steps_for_nfe("heun", target, ends_at_zero=ends_at_zero)
        sigmas = samplers.get_sigmas("karras", steps, gmm.sigma_min, gmm.sigma_max, final_sigmas_type=final)
        used = samplers.nfe("heun", sigmas)
        assert used <= target and used + 2 > target  # the most steps that fit: one more would not


def test_noise_with_nan_or_inf_is_refused_counting_them(gmm):
    noise = torch.zeros(3, 2)
    noise[0, 1], noise[2, 0] = float("nan"), float("inf")
    with pytest.raises(ValueError) as error:
        samplers.sample("euler", gmm, noise, [1.0, 0.0])
    assert str(error.value) == "the noise has 2 NaN or inf values"


# -- the API refuses what the command line refuses, in one line naming the value ------------------
@pytest.mark.parametrize("noise, error, message", [
    (torch.ones(3, 2, dtype=torch.int64), TypeError, "the noise must be a floating-point tensor, got torch.int64"),
    ([[0.0, 1.0]], TypeError, "the noise must be a floating-point tensor, got list"),
    (torch.zeros(3, 5), ValueError, "the noise has shape (3, 5); the model's samples have shape (2,): give (batch, 2)"),
    (torch.zeros(2), ValueError, "the noise has shape (2,); the model's samples have shape (2,): give (batch, 2)"),
])
@pytest.mark.parametrize("entry", ["sample", "solve"])
def test_noise_of_another_dtype_or_shape_is_one_line(gmm, entry, noise, error, message):
    with pytest.raises(error) as refused:
        getattr(samplers, entry)("euler", gmm, noise, [1.0, 0.0])
    assert str(refused.value) == message


def test_a_unet_takes_noise_of_other_sizes_it_can_run_and_names_the_ones_it_cannot(unet):
    model = samplers.DiffusersUNetDenoiser(unet, torch.linspace(0.999, 0.01, 1000))
    assert samplers.sample("euler", model, torch.randn(1, 1, 16, 16), [2.0, 0.0]).shape == (1, 1, 16, 16)
    for shape, why in [((1, 3, 8, 8), "the model takes 1 channels, got 3"),
                       ((1, 1, 7, 7), "the model takes image sizes divisible by 2, got (7, 7)"),
                       ((1, 64), "the model's samples have shape (1, 8, 8): give (batch, 1, 8, 8)")]:
        with pytest.raises(ValueError) as refused:
            samplers.sample("euler", model, torch.randn(shape), [2.0, 0.0])
        assert str(refused.value).startswith(f"the noise has shape {shape}") and str(refused.value).endswith(why)


@pytest.mark.parametrize("options, message", [
    ({"rtol": -1}, "dopri5 rtol must be a positive number, got -1"),
    ({"rtol": 0, "atol": 0}, "dopri5 rtol must be a positive number, got 0"),
    ({"atol": float("nan")}, "dopri5 atol must be a positive number, got nan"),
    ({"atol": True}, "dopri5 atol must be a positive number, got True"),
    ({"rtol": "1e-5"}, "dopri5 rtol must be a positive number, got '1e-5'"),
])
def test_dopri5_tolerances_must_be_positive(gmm, options, message):
    with pytest.raises(ValueError) as refused:
        samplers.sample("dopri5", gmm, torch.zeros(2, 2), [80.0, 0.0], **options)
    assert str(refused.value) == message


def test_tolerances_too_small_for_the_arithmetic_name_the_collapsed_step_not_the_model(gmm):
    calls = []
    with pytest.raises(FloatingPointError) as refused:
        samplers.sample("dopri5", gmm, torch.ones(2, 2), [80.0, 0.5, 0.0], rtol=1e-320, atol=1e-320, callback=calls.append)
    assert str(refused.value) == ("dopri5's step size collapsed (log sigma nan): rtol=1e-320, atol=1e-320 are too "
                                  "small for torch.float64 arithmetic")
    assert all(torch.isfinite(call["denoised"]).all() for call in calls)  # the model never saw the NaN time
