"""DPM-Solver-2, the AMED-Solver and AMED-Plugin (samplers/amed.py) and the analytical first step (AFS):
against diffusers' KDPM2DiscreteScheduler (its port of k-diffusion's `sample_dpm_2`, a test dependency
as in test_outside_implementations), hand-written references, the mixture's exact ODE solution, exact
NFE counts, and inside FewstepScheduler."""
import json
import math
import warnings

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, KDPM2DiscreteScheduler

from fewstep import samplers
from fewstep.pipelines import FewstepScheduler
from helpers import STEPS, TABLE, TOLERANCE, assert_same_images, fewstep, mixture, reference, standard_noise
# the fixtures noise_like_unet and problem: conftest

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),  # numpy, in diffusers
              pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")]

NOISE = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))


def grid(gmm, steps, final="zero"):
    return samplers.get_sigmas("karras", steps, gmm.sigma_min, gmm.sigma_max, final_sigmas_type=final)


# -- DPM-Solver-2 against diffusers' KDPM2DiscreteScheduler ------------------------------------------
def run_kdpm2(scheduler, denoiser, noise):
    """KDPM2DiscreteScheduler by hand on the exact D: the network sees `x / sqrt(sigma^2 + 1)` and
    predicts epsilon; a call is at `sigmas` in the first-order state, at `sigmas_interpol` in the second."""
    calls, sample = [], noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, t)
        table = scheduler.sigmas if scheduler.state_in_first_order else scheduler.sigmas_interpol
        sigma = float(table[scheduler.step_index])
        x = model_input.double() * math.sqrt(sigma ** 2 + 1)
        calls.append((sigma, x))
        sample = scheduler.step(((x - denoiser(x, sigma)) / sigma).float(), t, sample).prev_sample
    return sample, calls


def ours_on_kdpm2_grid(scheduler, denoiser, noise, name="dpm_2", **options):
    sigmas = torch.unique_consecutive(scheduler.sigmas.double())  # [s0, s1, s1, ..., 0] -> [s0, s1, ..., 0]
    calls = []
    x = samplers.sample(name, denoiser, noise.double() * float(scheduler.init_noise_sigma) / float(sigmas[0]), sigmas,
                        callback=lambda c: calls.append((c["sigma"], c["x"])), **options)
    return x, calls


def relative(a, b) -> float:
    return ((a.double() - b.double()).abs().max() / max(1.0, b.abs().max())).item()


KDPM2_GRIDS = {"linspace": {}, "karras": {"use_karras_sigmas": True}, "leading": {"timestep_spacing": "leading"}}


@pytest.mark.parametrize("config", KDPM2_GRIDS)
@pytest.mark.parametrize("steps", [4, 7, 10])
def test_dpm_2_matches_kdpm2_discrete_scheduler(gmm, steps, config):
    """2 steps - 1 calls in both (the step to sigma = 0 is Euler), at the same sigmas (the midpoint
    sqrt(sigma sigma_next); diffusers forms it in float32), the same states, the same result."""
    scheduler = KDPM2DiscreteScheduler(**KDPM2_GRIDS[config])
    scheduler.set_timesteps(steps)
    noise = standard_noise(steps)
    theirs, their_calls = run_kdpm2(scheduler, gmm, noise)
    x, calls = ours_on_kdpm2_grid(scheduler, gmm, noise)
    assert len(calls) == len(their_calls) == 2 * steps - 1
    for (s_ours, x_ours), (s_theirs, x_theirs) in zip(calls, their_calls):
        assert s_ours == pytest.approx(s_theirs, rel=1e-6)
        assert relative(x_ours, x_theirs) < TOLERANCE
    assert relative(x, theirs) < TOLERANCE


def test_amed_off_the_geometric_midpoint_does_not_match_kdpm2():
    """A guard on the comparison: moving the intermediate time (r = 0.4) moves the result far beyond it."""
    denoiser = mixture()
    scheduler = KDPM2DiscreteScheduler(use_karras_sigmas=True)
    scheduler.set_timesteps(7)
    theirs, _ = run_kdpm2(scheduler, denoiser, standard_noise(7))
    x, _ = ours_on_kdpm2_grid(scheduler, denoiser, standard_noise(7), "amed", r=0.4)
    assert relative(x, theirs) > 100 * TOLERANCE


# -- AMED-Solver ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("afs", [False, True])
def test_amed_at_r_one_half_and_c_one_is_dpm_2_bit_for_bit(gmm, final, afs):
    sigmas = grid(gmm, 6, final)
    x = samplers.sample("dpm_2", gmm, NOISE, sigmas, afs=afs)
    assert torch.equal(x, samplers.sample("amed", gmm, NOISE, sigmas, afs=afs))
    assert torch.equal(x, samplers.sample("amed", gmm, NOISE, sigmas, r=[0.5] * 6, c=[1.0] * 6, afs=afs))


def amed_by_hand(denoiser, x, sigmas, r, c):
    """The AMED-Solver in the paper's form, in numpy floats: `s_n = exp(r log t_{n+1} + (1 - r) log t_n)`,
    `x_{n+1} = x_n + c (t_{n+1} - t_n) eps(x_mid, s_n)`, `eps(x, t) = (x - D(x, t)) / t`; Euler to 0."""
    def eps(x, t):
        return (x - denoiser(torch.from_numpy(x), t).numpy()) / t

    x, sigmas = x.numpy(), sigmas.tolist()
    for n, (t, t_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        slope = eps(x, t)
        if t_next == 0:
            x = x - t * slope
            continue
        s = math.exp(r[n] * math.log(t_next) + (1 - r[n]) * math.log(t))
        x = x + c[n] * (t_next - t) * eps(x + (s - t) * slope, s)
    return torch.from_numpy(x)


@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_amed_with_a_table_per_step_follows_the_paper(gmm, final):
    sigmas = grid(gmm, 6, final)
    r, c = [0.3, 0.45, 0.6, 0.5, 0.7, 0.4], [1.03, 0.98, 1.0, 0.95, 1.01, 1.02]
    x = samplers.sample("amed", gmm, NOISE, sigmas, r=r, c=c)
    expected = amed_by_hand(gmm, NOISE * sigmas[0], sigmas, r, c)
    assert relative(x, expected) < 1e-12
    assert relative(samplers.sample("amed", gmm, NOISE, sigmas, r=r[::-1], c=c), expected) > 1e-3  # per step, in order


def observed_order(problem, name, **options) -> tuple[float, list]:
    """The slope of log error against log NFE, from the exact solution (as test_solvers measures it)."""
    gmm, noise, exact = problem
    nfes, errors = [], []
    for n in STEPS:
        sigmas = samplers.get_sigmas("karras", n, gmm.sigma_min, gmm.sigma_max)
        nfes.append(samplers.nfe(name, sigmas, options))
        errors.append((samplers.sample(name, gmm, noise, sigmas, **options) - exact).norm(dim=1).mean().item())
    return -np.polyfit(np.log(nfes), np.log(errors), 1)[0], errors


def test_dpm_2_is_second_order_and_amed_off_the_midpoint_first(problem):
    """Geometric or arithmetic, the midpoint makes a second-order step; r = 0.3 evaluates the slope
    too early and leaves first order."""
    order, errors = observed_order(problem, "dpm_2")
    assert 1.7 <= order <= 2.8, f"dpm_2: observed order {order:.2f}, errors {errors}"
    order, errors = observed_order(problem, "amed", r=0.3)
    assert 0.8 <= order <= 1.3, f"amed r=0.3: observed order {order:.2f}, errors {errors}"


def test_per_step_tensors_carry_gradients_to_each_steps_r_and_c(gmm):
    """What a table tuned by gradient descent needs: each step's r and c reach the result, and the
    last step's, to sigma = 0 (Euler, no intermediate time), do not."""
    sigmas = grid(gmm, 4)
    for name in ("amed", "amed_plugin"):
        r = torch.full((4,), 0.4, dtype=torch.float64, requires_grad=True)
        c = torch.full((4,), 1.0, dtype=torch.float64, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # checking them reads no value off a tensor that needs its gradient
            samplers.solve(name, gmm, NOISE * sigmas[0], sigmas, r=r, c=c).square().sum().backward()
        assert (r.grad[:3] != 0).all() and (c.grad[:3] != 0).all() and r.grad[3] == c.grad[3] == 0, name
        one = torch.tensor(0.4, dtype=torch.float64)  # a 0-d tensor is one value for every step
        torch.testing.assert_close(samplers.solve(name, gmm, NOISE * sigmas[0], sigmas, r=one),
                                   samplers.solve(name, gmm, NOISE * sigmas[0], sigmas, r=0.4), rtol=0, atol=0)


# -- AMED-Plugin ----------------------------------------------------------------------------------------
def with_intermediate_times(sigmas, r):
    """The grid with `t_{n+1}^r t_n^(1-r)` inserted in every step that does not end at 0."""
    fine = [sigmas[0]]
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        fine += [sigma_next ** r * sigma ** (1 - r), sigma_next] if sigma_next > 0 else [sigma_next]
    return torch.stack(fine)


@pytest.mark.parametrize("base", ["ipndm", "dpmpp_2m"])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("afs", [False, True])
def test_amed_plugin_with_c_one_is_its_base_on_the_grid_with_the_intermediate_times(gmm, base, final, afs):
    """One history through the inserted times (the authors' buffer takes every evaluation)."""
    sigmas = grid(gmm, 5, final)
    for r in (0.3, 0.5, 0.8):
        plugin = samplers.sample("amed_plugin", gmm, NOISE, sigmas, base=base, r=r, afs=afs)
        assert torch.equal(plugin, samplers.sample(base, gmm, NOISE, with_intermediate_times(sigmas, r), afs=afs))


AB = {1: [1], 2: [3, -1], 3: [23, -16, 5], 4: [55, -59, 37, -9]}  # Adams-Bashforth, times 1, 2, 12, 24
AB_DIVISOR = {1: 1, 2: 2, 3: 12, 4: 24}


def plugin_by_hand(denoiser, x, sigmas, base, r, c):
    """AMED-Plugin as the authors' `ipndm_sampler` / `dpm_pp_sampler` write it (grid ending at sigma_min;
    without their DPM-Solver++ lower-order final step and dynamic thresholding): per step, the base's
    update to `t_mid` with the model term as is, then to `t_next` with it times `c`; the history
    buffer (ipndm: the last three slopes; dpmpp_2m: the last D and time) takes both evaluations."""
    buffer, times = [], []
    for n, (t, t_next) in enumerate(zip(sigmas[:-1].tolist(), sigmas[1:].tolist())):
        t_mid = t_next ** r[n] * t ** (1 - r[n])
        for start, end, scale in ((t, t_mid, 1.0), (t_mid, t_next, c[n])):
            denoised = denoiser(x, start)
            if base == "ipndm":
                buffer = [(x - denoised) / start, *buffer][:4]
                slope = sum(b * d for b, d in zip(AB[len(buffer)], buffer)) / AB_DIVISOR[len(buffer)]
                x = x + scale * (end - start) * slope
            else:
                h = math.log(start / end)
                model = denoised  # DPM-Solver++(2M): D + (D - D_prev) / (2 r0), r0 = h_prev / h
                if buffer:
                    model = denoised + 0.5 * (denoised - buffer[0]) * h / math.log(times[0] / start)
                x = (end / start) * x - scale * math.expm1(-h) * model
                buffer, times = [denoised], [start]
    return x


@pytest.mark.parametrize("base", ["ipndm", "dpmpp_2m"])
def test_amed_plugin_scales_the_model_term_after_the_intermediate_time_by_c(gmm, base):
    sigmas = grid(gmm, 5, "sigma_min")
    r, c = [0.3, 0.6, 0.5, 0.45, 0.7], [1.05, 0.97, 1.0, 1.02, 0.9]
    x = samplers.sample("amed_plugin", gmm, NOISE, sigmas, base=base, r=r, c=c)
    assert relative(x, plugin_by_hand(gmm, NOISE * sigmas[0], sigmas, base, r, c)) < 1e-10
    assert relative(samplers.sample("amed_plugin", gmm, NOISE, sigmas, base=base, r=r), x) > 1e-3


# -- the analytical first step ------------------------------------------------------------------------------
DETERMINISTIC = [("euler", {}), ("heun", {}), ("dpmpp_2m", {}), ("ipndm", {}), ("dpm_2", {}), ("amed", {"r": 0.4}),
                 ("amed_plugin", {}), ("amed_plugin", {"base": "dpmpp_2m"})]


@pytest.mark.parametrize("name, options", [*DETERMINISTIC, ("ddim", {"eta": 0.5})])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_afs_saves_exactly_the_first_call_and_the_count_says_so(gmm, name, options, final):
    for steps in (1, 2, 5):
        sigmas = grid(gmm, steps, final)
        plain, skipped = [], []
        for calls, afs in ((plain, False), (skipped, True)):
            samplers.sample(name, gmm, NOISE, sigmas, generator=torch.Generator().manual_seed(1), callback=calls.append,
                            afs=afs, **options)
        assert len(skipped) == len(plain) - 1 == samplers.nfe(name, sigmas, {**options, "afs": True})
        assert plain[0]["sigma"] == float(sigmas[0])
        assert [call["sigma"] for call in skipped] == [call["sigma"] for call in plain[1:]]


@pytest.mark.parametrize("name, options", DETERMINISTIC)
def test_afs_takes_the_first_slope_as_x_over_sqrt_1_plus_sigma_squared(gmm, name, options):
    """Every first step is x + (sigma_1 - sigma_0) d_0 up to the first call (dpmpp_2m's too: D_0 =
    x_0 - sigma_0 d_0 makes its step that), there with d_0 = x_0 / sqrt(1 + sigma_0^2)."""
    sigmas = grid(gmm, 4)
    calls = []
    samplers.sample(name, gmm, NOISE, sigmas, callback=calls.append, afs=True, **options)
    s0, x0 = float(sigmas[0]), NOISE * sigmas[0]
    expected = x0 + (calls[0]["sigma"] - s0) * x0 / math.sqrt(1 + s0 ** 2)
    assert calls[0]["sigma"] < s0 and relative(calls[0]["x"], expected) < 1e-13


@pytest.mark.parametrize("name, options", DETERMINISTIC)
def test_afs_approaches_the_full_sampler_as_sigma_0_grows_on_zero_mean_data(name, options):
    """AFS reads the slope (x_0 - D) / sigma_0 as if D were 0: the data's mean is 0 and sigma_0 large. On
    a zero-mean mixture its samples close in on the sampler's own as sigma_0 grows."""
    denoiser = mixture(zero_mean=True)
    gaps = []
    for sigma_max in (80.0, 5000.0):
        sigmas = samplers.get_sigmas("karras", 6, denoiser.sigma_min, sigma_max)
        full = samplers.sample(name, denoiser, NOISE, sigmas, **options)
        analytic = samplers.sample(name, denoiser, NOISE, sigmas, afs=True, **options)
        gaps.append((analytic - full).norm(dim=1).mean().item())
    assert gaps[1] < 1e-3 and gaps[1] < gaps[0] / 4, gaps


def test_amed_with_afs_runs_at_odd_nfe_on_grids_that_end_at_sigma_min(gmm):
    """The paper's 3, 5, 7, 9 NFE: N steps of 2 calls less the first. Ending at 0, the last step is Euler
    (one call), so N steps cost 2N - 1 - 1, always even."""
    for target in (3, 5, 7, 9):
        steps = samplers.steps_for_nfe("amed", target, {"afs": True}, ends_at_zero=False)
        assert steps == (target + 1) // 2
        assert samplers.nfe("amed", grid(gmm, steps, "sigma_min"), {"afs": True}) == target
    for steps in (2, 3, 4, 5):
        assert samplers.nfe("amed", grid(gmm, steps), {"afs": True}) == 2 * steps - 2
        assert samplers.steps_for_nfe("amed", 2 * steps - 1, {"afs": True}) == steps


# -- inside diffusers pipelines -------------------------------------------------------------------------
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name, options", [("dpm_2", {}), ("amed", {"r": 0.4, "c": 0.97}), ("amed_plugin", {}),
                                           ("amed_plugin", {"base": "dpmpp_2m", "r": 0.6, "c": 1.02})])
def test_a_pipeline_with_fewstep_scheduler_equals_sample(noise_like_unet, name, options):
    """Two evaluations a step, as heun: `order` 2, the intermediate timesteps interleaved."""
    pipe = DDPMPipeline(unet=noise_like_unet, scheduler=DDPMScheduler(**TABLE))
    pipe.scheduler = fewstep(name, sampler_options=options)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=4, generator=torch.Generator().manual_seed(1), num_inference_steps=4,
                  output_type="pt").images
    scheduler = pipe.scheduler
    r = options.get("r", 0.5)
    assert scheduler.order == 2 and len(scheduler.timesteps) == samplers.nfe(name, scheduler.grid, options) == 7
    assert float(scheduler.sigmas[1]) == pytest.approx(float(scheduler.grid[1] ** r * scheduler.grid[0] ** (1 - r)))
    denoiser = samplers.DiffusersUNetDenoiser.from_config(noise_like_unet, DDPMScheduler(**TABLE).config)
    x0 = reference(denoiser, name, scheduler.grid, (4, 1, 8, 8), seed=1, **options)
    assert_same_images(images, (x0 / 2 + 0.5).clamp(0, 1))


@pytest.fixture
def frozen(tmp_path):
    """A frozen table as scripts/train_amed.py exports it (NFE 5 with AFS: 3 steps ending at sigma_min)."""
    import json

    table = {"sampler": "amed_plugin", "sampler_options": {"afs": True, "base": "dpmpp_2m", "r": [0.31, 0.55, 0.62],
                                                            "c": [1.004, 0.993, 1.0]},
             "sigmas": [80.0, 11.6, 0.8, 0.01], "nfe": 5}
    (tmp_path / "frozen_table.json").write_text(json.dumps(table))
    return tmp_path, table


@pytest.mark.usefixtures("one_thread")
def test_a_pipeline_runs_amed_from_its_frozen_table_as_sample_does_without_afs(noise_like_unet, frozen):
    """The table's grid, per-step r and c and base, one NFE more than its own (the pipeline's first call)."""
    folder, table = frozen
    pipe = DDPMPipeline(unet=noise_like_unet, scheduler=DDPMScheduler(**TABLE))
    pipe.scheduler = fewstep("amed_plugin", frozen_table=str(folder))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=4, generator=torch.Generator().manual_seed(1), num_inference_steps=3,
                  output_type="pt").images
    assert pipe.scheduler.grid.tolist() == table["sigmas"] and len(pipe.scheduler.timesteps) == 6
    options = {k: v for k, v in table["sampler_options"].items() if k != "afs"}
    denoiser = samplers.DiffusersUNetDenoiser.from_config(noise_like_unet, DDPMScheduler(**TABLE).config)
    x0 = reference(denoiser, "amed_plugin", torch.tensor(table["sigmas"]), (4, 1, 8, 8), seed=1, **options)
    x0 = x0 / math.sqrt(1 + table["sigmas"][-1] ** 2)  # the pipeline's sample is in VP space at sigma_min
    assert_same_images(images, (x0 / 2 + 0.5).clamp(0, 1))
    untrained = reference(denoiser, "amed_plugin", torch.tensor(table["sigmas"]), (4, 1, 8, 8), seed=1,
                          base="dpmpp_2m")
    assert not torch.allclose(x0, untrained, atol=1e-3)


def test_a_frozen_table_is_read_from_its_file_or_its_folder(frozen):
    from fewstep.tuning.amed_predictor import read_frozen_table

    folder, table = frozen
    assert read_frozen_table(folder, "amed_plugin") == read_frozen_table(folder / "frozen_table.json", "amed_plugin")
    assert read_frozen_table(folder, "amed_plugin")["sigmas"] == table["sigmas"]


@pytest.mark.parametrize("how, message", [
    (dict(sampler="amed"), "the frozen table .*frozen_table.json is for amed_plugin, not sampler=amed$"),
    (dict(sampler="amed_plugin", sampler_options={"r": 0.4}), "gives amed_plugin's r and c: drop sampler_options r$"),
    (dict(sampler="amed_plugin", schedule="logsnr"), "gives the whole grid; it takes no schedule='logsnr'$"),
    (dict(sampler="amed_plugin", steps=4), "is a grid of 3 steps; got num_inference_steps=4$"),
    (dict(sampler="amed_plugin", start=5000.0), "frozen_table=.* starts at sigma 5000, above this scheduler's sigma_max 157.4"),
    (dict(sampler="amed_plugin", folder="none"), "no frozen AMED table at .*none"),
])
def test_a_frozen_table_for_something_else_is_refused_in_one_line(frozen, how, message):
    folder, _ = frozen
    how = dict(how)
    steps, where = how.pop("steps", 3), folder / how.pop("folder", "")
    if "start" in how:
        table = json.loads((folder / "frozen_table.json").read_text())
        (folder / "frozen_table.json").write_text(json.dumps({**table, "sigmas": [how.pop("start")] + table["sigmas"][1:]}))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        fewstep(how.pop("sampler"), frozen_table=str(where), **how).set_timesteps(steps)


def test_fewstep_scheduler_refuses_afs_in_one_line():
    """A pipeline evaluates the model on its starting noise before any step(): no call to skip."""
    with pytest.raises(ValueError) as error:
        FewstepScheduler(sampler="amed", sampler_options={"afs": True})
    assert str(error.value).startswith("FewstepScheduler cannot take afs=True") and "\n" not in str(error.value)


# -- bad options ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, options, message", [
    ("amed", {"r": 1.0}, "amed r must be in (0, 1), got 1.0"),
    ("amed", {"r": 0}, "amed r must be in (0, 1), got 0.0"),
    ("amed", {"c": 0.0}, "amed c must be positive, got 0.0"),
    ("amed", {"c": -1}, "amed c must be positive, got -1.0"),
    ("amed", {"r": [0.5, 0.5, 1.5]}, "amed r must be in (0, 1), got 1.5"),
    ("amed", {"r": [0.5, 0.5]}, "amed r has 2 values for a grid of 3 steps"),
    ("amed_plugin", {"r": float("nan")}, "amed_plugin r must be in (0, 1), got nan"),
    ("amed_plugin", {"c": [1.0, 0.0, 1.0]}, "amed_plugin c must be positive, got 0.0"),
    ("amed_plugin", {"base": "heun"}, "amed_plugin base must be one of ipndm, dpmpp_2m, got 'heun'"),
    ("dpm_2", {"r": 0.3}, "unknown option(s) r for sampler 'dpm_2'; it takes: afs"),
])
def test_bad_options_are_one_line_naming_the_value(gmm, name, options, message):
    with pytest.raises(ValueError) as error:
        samplers.sample(name, gmm, torch.zeros(2, 2), [80.0, 1.0, 0.1, 0.0], **options)
    assert str(error.value) == message
