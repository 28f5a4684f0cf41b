"""The project's euler, heun, dpmpp_2m and ipndm against diffusers' own schedulers (a test
dependency, not a copy), each driven by hand on the exact denoiser of a 2-D Gaussian mixture.

Every diffusers scheduler gets the "network" it expects, built from the same exact `D(x, sigma)`:
epsilon-prediction for Euler/Heun/DPM-Solver, v-prediction in IPNDM's own angle parameterisation.
Our sampler then runs on the sigma grid read off the scheduler (float32 values, widened) from the
same starting noise, and both trajectories are compared at every model evaluation, in EDM space.
The differences left are diffusers' float32 arithmetic (it keeps the sample in float32).
"""
import math

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler, IPNDMScheduler

from fewstep import samplers
from helpers import TOLERANCE, mixture, standard_noise

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # numpy, in diffusers

STEPS = [4, 7, 10]
# TOLERANCE: max |ours - diffusers| / max(1, max |x|) over every evaluated state and the result (see
# helpers.py for what was measured); mixture, standard_noise: helpers.py, shared with test_amed.


class Recorder:
    """The "network" handed to a diffusers scheduler: it maps the scheduler's input to the EDM
    state `x` (float64), answers with the exact `D`, converted to what the scheduler expects
    (float32, as a real network would), and records `(sigma, x)` at every call."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, []

    def denoise(self, x, sigma):
        self.calls.append((sigma, x))
        return self.denoiser(x, sigma)

    def epsilon(self, x, sigma):
        """eps = (x - D) / sigma: what Euler/Heun/DPM-Solver take with prediction_type="epsilon"."""
        return ((x - self.denoise(x, sigma)) / sigma).float()


def ours(name, denoiser, noise, sigmas, **options):
    """Our sampler, recording `(sigma, x)` at every denoiser call."""
    calls = []
    x = samplers.sample(name, denoiser, noise, sigmas, callback=lambda c: calls.append((c["sigma"], c["x"])),
                        **options)
    return x, calls


def assert_same_trajectory(our_calls, our_x, their_calls, their_x, skip=0):
    """Same number of model calls at the same sigmas, the same states there, the same result."""
    assert len(our_calls) == len(their_calls)
    worst = 0.0
    for (s_ours, x_ours), (s_theirs, x_theirs) in list(zip(our_calls, their_calls))[skip:]:
        assert s_ours == pytest.approx(s_theirs, rel=1e-12)
        worst = max(worst, ((x_ours - x_theirs).abs().max() / max(1.0, x_theirs.abs().max())).item())
    final = ((our_x.double() - their_x.double()).abs().max() / max(1.0, their_x.abs().max())).item()
    assert max(worst, final) < TOLERANCE, f"relative differences: states {worst:.2e}, result {final:.2e}"
    return max(worst, final)


# --- Euler and Heun: the sample lives in sigma space (times init_noise_sigma at the start), the
# network sees it divided by sqrt(sigma^2 + 1) and predicts epsilon.

def run_sigma_space_scheduler(scheduler, denoiser, noise):
    net = Recorder(denoiser)
    sample = noise * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(sample, t)
        sigma = float(scheduler.sigmas[i])  # call i is at sigmas[i] (Heun's list repeats the inner sigmas)
        x = model_input.double() * math.sqrt(sigma ** 2 + 1)
        sample = scheduler.step(net.epsilon(x, sigma), t, sample).prev_sample
    return sample, net.calls


def compare_sigma_space(scheduler, name, denoiser, noise):
    theirs, their_calls = run_sigma_space_scheduler(scheduler, denoiser, noise)
    sigmas = torch.unique_consecutive(scheduler.sigmas.double())  # Heun: [s0, s1, s1, ..., 0] -> [s0, s1, ..., 0]
    assert sigmas[-1] == 0
    # `sample` scales the noise by sigmas[0]; diffusers by init_noise_sigma
    x, calls = ours(name, denoiser, noise.double() * float(scheduler.init_noise_sigma) / float(sigmas[0]), sigmas)
    assert len(calls) == samplers.nfe(name, sigmas)
    return assert_same_trajectory(calls, x, their_calls, theirs)


EULER_HEUN_GRIDS = {
    "discrete": {},                                   # the training table at linspace timesteps
    "karras": {"use_karras_sigmas": True},
    "discrete_leading": {"timestep_spacing": "leading"},  # init_noise_sigma = sqrt(sigma_max^2 + 1)
}


@pytest.mark.parametrize("grid", EULER_HEUN_GRIDS)
@pytest.mark.parametrize("steps", STEPS)
def test_euler_matches_euler_discrete_scheduler(gmm, steps, grid):
    scheduler = EulerDiscreteScheduler(**EULER_HEUN_GRIDS[grid])
    scheduler.set_timesteps(steps)
    compare_sigma_space(scheduler, "euler", gmm, standard_noise(steps))


@pytest.mark.parametrize("steps", STEPS)
def test_euler_matches_euler_discrete_scheduler_on_our_karras_grid(gmm, steps):
    """Our own EDM grid (sigma 80 to 0.002, then 0) handed to diffusers as custom sigmas."""
    scheduler = EulerDiscreteScheduler()
    scheduler.set_timesteps(sigmas=samplers.get_sigmas("karras", steps, gmm.sigma_min, gmm.sigma_max).tolist())
    assert len(scheduler.timesteps) == steps and float(scheduler.sigmas[0]) == pytest.approx(80.0)
    compare_sigma_space(scheduler, "euler", gmm, standard_noise(steps))


@pytest.mark.parametrize("grid", EULER_HEUN_GRIDS)
@pytest.mark.parametrize("steps", STEPS)
def test_heun_matches_heun_discrete_scheduler(gmm, steps, grid):
    """2 steps - 1 calls: Heun's last step, to sigma = 0, is an Euler step in both."""
    scheduler = HeunDiscreteScheduler(**EULER_HEUN_GRIDS[grid])
    scheduler.set_timesteps(steps)
    assert len(scheduler.timesteps) == 2 * steps - 1
    compare_sigma_space(scheduler, "heun", gmm, standard_noise(steps))


# --- DPM-Solver++(2M): the sample is VP, x_vp = x / sqrt(sigma^2 + 1), starting from unit noise;
# the network sees x_vp itself and predicts epsilon.

def run_dpm_solver(scheduler, denoiser, noise):
    net = Recorder(denoiser)
    sample = noise * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        sigma = float(scheduler.sigmas[i])
        x = scheduler.scale_model_input(sample, t).double() * math.sqrt(sigma ** 2 + 1)
        sample = scheduler.step(net.epsilon(x, sigma), t, sample).prev_sample
    return sample, net.calls  # the last sigma is 0: x_vp = x


DPM_GRIDS = {
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},  # uniform in log sigma, our "logsnr"
    "discrete": {},
}


@pytest.mark.parametrize("grid", DPM_GRIDS)
@pytest.mark.parametrize("steps", STEPS)
def test_dpmpp_2m_matches_dpm_solver_multistep(gmm, steps, grid):
    """First order on the first step and on the last (final_sigmas_type="zero", so lower_order_final
    makes the step to sigma = 0 first order: x = D), second order (midpoint) between."""
    scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                            final_sigmas_type="zero", **DPM_GRIDS[grid])
    scheduler.set_timesteps(steps)
    noise = standard_noise(steps)
    theirs, their_calls = run_dpm_solver(scheduler, gmm, noise)
    sigmas = scheduler.sigmas.double()
    x, calls = ours("dpmpp_2m", gmm, noise.double() * math.sqrt(1 + sigmas[0] ** 2) / sigmas[0], sigmas)
    assert_same_trajectory(calls, x, their_calls, theirs)


@pytest.mark.parametrize("steps", STEPS)
def test_diffusers_karras_and_exponential_grids_are_ours(steps):
    """The grids read off diffusers above are our own schedules over the table's range."""
    for kind, config in (("karras", DPM_GRIDS["karras"]), ("logsnr", DPM_GRIDS["exponential"])):
        scheduler = DPMSolverMultistepScheduler(**config)
        scheduler.set_timesteps(steps)
        theirs = scheduler.sigmas.double()
        mine = samplers.get_sigmas(kind, steps, float(theirs[-2]), float(theirs[0]))
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=0)


# --- iPNDM. IPNDMScheduler has its own angle parameterisation: on a grid u = 1, (N-1)/N, ..., 1/N,
# 0 it sets b = sin(pi u / 2)^2, a = sqrt(1 - b^2) (so a^2 + b^2 = 1: a VP pair, angle
# atan2(b, a) = its timestep * pi / 2), and its sample is x_vp = a x0 + b eps, i.e. the EDM state is
# x = x_vp / a at sigma = b / a = tan(angle). Each step forms `ets = b x_vp + a out`, which is
# epsilon when the network outputs v = a eps - b x0; Adams-Bashforth (orders 1-4) combines the ets,
# and x_next = (x_vp - b ets) / a * a_next + b_next ets is, divided by a_next, our
# x + (sigma_next - sigma) * d with d = ets = (x - D) / sigma. `trained_betas` sets the b's directly.

def run_ipndm(scheduler, denoiser, noise):
    net = Recorder(denoiser)
    mean = denoiser.weights @ denoiser.means  # D(x, sigma) as sigma -> infinity
    sample = noise * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        a, b = float(scheduler.alphas[i]), float(scheduler.betas[i])
        x_vp = scheduler.scale_model_input(sample, t).double()
        if a > 0:
            x0 = net.denoise(x_vp / a, b / a)
        else:  # sigma = inf: nothing to evaluate, and the scheduler multiplies the output by a = 0
            net.calls.append((math.inf, None))
            x0 = mean.expand_as(x_vp)
        v = a * (x_vp - a * x0) / b - b * x0
        sample = scheduler.step(v.float(), t, sample).prev_sample
    return sample, net.calls  # the last a is 1: x_vp = x


def ipndm_grid(scheduler):
    return scheduler.betas.double() / scheduler.alphas.double()  # sigma = tan(angle); b / 0 = inf


# Our sampler needs finite sigmas; it stands in for sigma = inf with this.
SIGMA_INFINITY = 1e8


@pytest.mark.parametrize("steps", STEPS)
def test_ipndm_matches_ipndm_scheduler_on_its_own_grid(steps):
    """IPNDMScheduler's own grid starts at a = 0, sigma = inf, from x_vp = noise. Its first step
    computes x0 = (x_vp - b ets) / max(a, 1e-8) = 0 exactly (ets = x_vp there, whatever the network
    says), so it moves to x = sigma_1 * noise, with eps = noise as the first Adams-Bashforth history
    entry. That is the exact limit of our first step from sigma_0 -> inf,
    x_1 = sigma_1 noise + D(inf) (1 - sigma_1 / sigma_0), d_0 = noise - D / sigma_0, only if
    D(inf) = the data mean = 0, so this test uses a zero-mean mixture and a huge finite sigma_0
    (O(1 / sigma_0) apart). The states are compared from the second call on; the first call, at
    infinity, has no finite state. The history carried through the first step is tested too: it
    enters the order-2, 3 and 4 formulas of every later step."""
    denoiser = mixture(zero_mean=True)
    assert denoiser.weights @ denoiser.means == pytest.approx(torch.zeros(2, dtype=torch.float64), abs=1e-15)
    scheduler = IPNDMScheduler()
    scheduler.set_timesteps(steps)
    grid = ipndm_grid(scheduler)
    assert math.isinf(grid[0]) and grid[-1] == 0 and torch.isfinite(grid[1:]).all()
    noise = standard_noise(steps)
    theirs, their_calls = run_ipndm(scheduler, denoiser, noise)
    sigmas = torch.cat([grid.new_tensor([SIGMA_INFINITY]), grid[1:]])
    x, calls = ours("ipndm", denoiser, noise, sigmas)
    assert_same_trajectory(calls, x, their_calls, theirs, skip=1)


def test_ipndm_scheduler_first_step_drops_the_data_mean():
    """Why the test above needs a zero-mean mixture: from sigma = inf, IPNDMScheduler's first step
    lands on sigma_1 * noise whatever the network says, while the ODE (and our sampler from a huge
    sigma_0) lands on sigma_1 * noise + D(inf), D(inf) being the data mean. After that first step
    the two differ by exactly the mean."""
    denoiser = mixture()
    mean = denoiser.weights @ denoiser.means
    assert mean.abs().max() > 0.09
    scheduler = IPNDMScheduler()
    scheduler.set_timesteps(7)
    grid = ipndm_grid(scheduler)
    noise = standard_noise(7)
    _, their_calls = run_ipndm(scheduler, denoiser, noise)
    torch.testing.assert_close(their_calls[1][1], noise.double() * grid[1], rtol=1e-6, atol=1e-6)
    _, calls = ours("ipndm", denoiser, noise, torch.cat([grid.new_tensor([SIGMA_INFINITY]), grid[1:]]))
    torch.testing.assert_close(calls[1][1] - their_calls[1][1], mean.expand(len(noise), 2), rtol=0, atol=1e-6)


def ipndm_on_karras_grid(denoiser, steps):
    """IPNDMScheduler on our Karras grid (80 to 0.002, then 0) through trained_betas = b = sigma / sqrt(1 + sigma^2)."""
    target = samplers.get_sigmas("karras", steps, denoiser.sigma_min, denoiser.sigma_max)
    scheduler = IPNDMScheduler(trained_betas=(target / (1 + target ** 2).sqrt()).tolist())
    scheduler.set_timesteps(steps)
    grid = ipndm_grid(scheduler)  # float32 makes a = sqrt(1 - b^2) coarse near b = 1: use the grid it has
    torch.testing.assert_close(grid, target, rtol=1e-3, atol=1e-6)
    noise = standard_noise(steps)
    theirs, their_calls = run_ipndm(scheduler, denoiser, noise)
    return theirs, their_calls, noise.double() / (grid[0] * scheduler.alphas[0].double()), grid  # x = x_vp / a


@pytest.mark.parametrize("steps", STEPS)
def test_ipndm_matches_ipndm_scheduler_on_a_karras_grid(gmm, steps):
    theirs, their_calls, noise, sigmas = ipndm_on_karras_grid(gmm, steps)
    x, calls = ours("ipndm", gmm, noise, sigmas)
    assert_same_trajectory(calls, x, their_calls, theirs)


@pytest.mark.parametrize("max_order", [2, 3])
def test_ipndm_below_order_4_does_not_match(gmm, max_order):
    """A guard on the comparison itself: diffusers' iPNDM is fourth order, and capping ours lower
    moves the result far beyond the tolerance."""
    theirs, _, noise, sigmas = ipndm_on_karras_grid(gmm, 7)
    x, _ = ours("ipndm", gmm, noise, sigmas, max_order=max_order)
    assert (x - theirs.double()).abs().max() > 100 * TOLERANCE * max(1.0, theirs.abs().max())
