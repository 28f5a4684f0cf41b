"""FewstepScheduler in flow-matching pipelines: `from_config` of a FlowMatchEulerDiscreteScheduler
config, the same timesteps and Euler images as diffusers' own scheduler, every sampler equal to
`samplers.sample` on a `FlowDenoiser`, noising as `scale_noise`, and the refusals."""
import json

import pytest
import torch
from diffusers import DDPMPipeline, EDMEulerScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from helpers import tiny_unet
from fewstep import samplers
from fewstep.pipelines import FewstepScheduler
from fewstep.pipelines.timesteps import FLOW_SIGMA_MAX

SAMPLERS = ["ddim", "euler", "heun", "dpmpp_2m", "ipndm"]
pytestmark = pytest.mark.usefixtures("one_thread")


def flow(name="euler", **config):
    return FewstepScheduler.from_config(FlowMatchEulerDiscreteScheduler().config, sampler=name, **config)


def images(unet, scheduler, steps=6, seed=0):
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)  # it steps from unit noise: a flow pipeline for t = 1
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=3, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                output_type="pt").images


@pytest.mark.parametrize("saved", [False, True])
def test_a_flow_matching_config_gives_the_flow_mode_with_diffusers_timesteps(saved):
    own = FlowMatchEulerDiscreteScheduler()
    config = json.loads(own.to_json_string()) if saved else own.config  # a pipeline directory's json, or .config
    ours = FewstepScheduler.from_config(config, sampler="euler")  # the multistep samplers plan as DPM-Solver
    assert ours.config.prediction_type == "flow_prediction" and ours.alphas_cumprod is None
    for steps in (1, 4, 10):
        own.set_timesteps(steps)
        ours.set_timesteps(steps)
        assert torch.allclose(ours.timesteps, own.timesteps, rtol=0, atol=1e-4), (steps, ours.timesteps)
        t = ours.grid / (1 + ours.grid)  # the flow times of the sigma grid
        assert torch.allclose(t.float(), own.sigmas, atol=1e-6)
    assert ours.grid[0] == pytest.approx(FLOW_SIGMA_MAX, rel=1e-6)
    back = FlowMatchEulerDiscreteScheduler.from_config(ours.config)
    assert back.config.shift == 1.0 and back.config.num_train_timesteps == 1000


def test_euler_in_a_flow_pipeline_is_flow_match_euler():
    """Euler in sigma space is Euler in the flow's t (docs/conventions.md §5): the same images."""
    unet = tiny_unet()
    theirs = images(unet, FlowMatchEulerDiscreteScheduler())
    for name in ("euler", "ddim"):
        ours = images(unet, flow(name))
        assert ((theirs > 0) & (theirs < 1)).float().mean() > 0.2
        assert (ours - theirs).abs().max() < 1e-5, name


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_in_a_flow_pipeline_equals_sample_on_a_flow_denoiser(name):
    unet = tiny_unet()
    scheduler = flow(name)
    got = images(unet, scheduler, steps=4, seed=3)
    noise = randn_tensor((3, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    denoiser = samplers.FlowDenoiser(unet, time_scale=1000.0)
    grid = scheduler.grid
    x0 = samplers.sample(name, denoiser, noise * (1 + float(grid[0])) / float(grid[0]), grid)
    assert grid[0] == pytest.approx(FLOW_SIGMA_MAX)  # t = 1: an ordinary start for every sampler (they step in t)
    assert (got - (x0 / 2 + 0.5).clamp(0, 1)).abs().max() < 1e-5
    if name not in ("euler", "ddim"):  # another algorithm (ddim with eta 0 is euler): another image
        assert (got - images(unet, flow("euler"), steps=4, seed=3)).abs().max() > 1e-3


def test_custom_sigmas_are_flow_times_as_flow_match_euler_takes_them():
    own, ours = FlowMatchEulerDiscreteScheduler(), flow("euler")
    own.set_timesteps(sigmas=[1.0, 0.6, 0.25])
    ours.set_timesteps(sigmas=[1.0, 0.6, 0.25])
    assert torch.allclose(ours.timesteps, own.timesteps) and torch.allclose((ours.grid / (1 + ours.grid)).float(), own.sigmas)
    ours.set_timesteps(timesteps=[1000, 600, 250])
    assert torch.allclose(ours.grid[1:], torch.tensor([1.5, 1 / 3, 0.0], dtype=torch.float64))


def test_noising_is_scale_noise():
    own, ours = FlowMatchEulerDiscreteScheduler(), flow("euler")
    own.set_timesteps(5)
    ours.set_timesteps(5)
    x0, noise = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    for t in own.timesteps[1:]:  # ours lie within 1e-4 of these; off the plan, sigma(t) is exact too
        expected = own.scale_noise(x0, t[None], noise)
        assert torch.allclose(ours.scale_noise(x0, t[None], noise), expected, atol=1e-6)
        assert torch.allclose(ours.add_noise(x0, noise, t[None]), expected, atol=1e-6)


@pytest.mark.parametrize("make, message", [
    (lambda: FewstepScheduler.from_config(FlowMatchEulerDiscreteScheduler(invert_sigmas=True).config),
     "the flow-matching scheduler config sets invert_sigmas=True, which FewstepScheduler does not follow"),
    (lambda: FewstepScheduler.from_config(FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True).config),
     "sets use_karras_sigmas=True"),
    (lambda: FewstepScheduler.from_config(FlowMatchEulerDiscreteScheduler(stochastic_sampling=True).config),
     "sets stochastic_sampling=True"),
    (lambda: FewstepScheduler.from_config(dict(FlowMatchEulerDiscreteScheduler().config, shift=0.0)),
     "a flow-matching shift must be a positive number, got shift=0.0"),
    (lambda: FewstepScheduler.from_config(dict(FlowMatchEulerDiscreteScheduler().config, time_shift_type="cubic")),
     "time_shift_type must be one of exponential, linear, got 'cubic'"),
    (lambda: FewstepScheduler.from_config(dict(FlowMatchEulerDiscreteScheduler().config, shift_terminal=1.5)),
     "shift_terminal must be in (0, 1), got 1.5"),
    (lambda: flow("euler", schedule="discrete"), "schedule 'discrete' needs a VP noise table; a flow's own grid is flow_uniform"),
    (lambda: flow("euler").set_timesteps(sigmas=[1.2, 0.5]),
     "set_timesteps got sigmas=[1.2, 0.5]: a flow's sigmas are its times t, in (0, 1]"),
    (lambda: flow("euler").set_timesteps(sigmas=[1.0, 0.0]),
     "set_timesteps got sigmas=[1.0, 0.0]: a flow's sigmas are its times t, in (0, 1]"),
    (lambda: flow("euler").set_timesteps(4, mu=0.7),
     "mu=0.7 is for dynamic shifting, which this scheduler config does not use (use_dynamic_shifting=false, shift=1.0)"),
    (lambda: FewstepScheduler.from_config(dict(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config)
                                          ).set_timesteps(4),
     "this flow-matching scheduler shifts dynamically (use_dynamic_shifting): set_timesteps needs mu="),
    (lambda: FewstepScheduler(shift=3.0), "shift=3.0, use_dynamic_shifting=False, shift_terminal=None are for "
                                          "flow-matching models (prediction_type='flow_prediction')"),
    (lambda: FewstepScheduler().set_timesteps(4, mu=0.5), "mu=0.5 is the dynamic shift of a flow-matching model"),
    (lambda: FewstepScheduler.from_config(EDMEulerScheduler().config), "the scheduler config has no noise table"),
])
def test_bad_flow_input_is_one_clear_line(make, message):
    with pytest.raises(ValueError) as error:
        make()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_shipped_flow_swaps_into_its_own_exported_pipeline():
    """digits_rf1 is a DDPMPipeline directory with FlowMatchEulerDiscreteScheduler (the export of
    objective=rectified_flow): Euler swapped in gives its own images, dpmpp_2m at 4 steps lands nearer its
    converged images (100 Euler steps) than its own 4 steps do."""
    from diffusers import DiffusionPipeline
    from fewstep import assets

    pipe = DiffusionPipeline.from_pretrained(str(assets.path("digits_rf1")))
    theirs = images(pipe.unet, pipe.scheduler, steps=4, seed=1)
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert (images(pipe.unet, FewstepScheduler.from_config(pipe.scheduler.config, sampler="euler"), steps=4, seed=1)
            - theirs).abs().max() < 1e-5
    ours = images(pipe.unet, FewstepScheduler.from_config(pipe.scheduler.config, sampler="dpmpp_2m"), steps=4, seed=1)
    converged = images(pipe.unet, pipe.scheduler, steps=100, seed=1)
    assert (ours - converged).norm() < (theirs - converged).norm()


def gaussian_velocity(a: float):
    """Data N(0, a^2): the exact velocity `v = (x_t - D) / t`, `D = (1 - t) a^2 x_t / ((1 - t)^2 a^2 + t^2)`,
    whose flow maps the noise `eps` to `a eps`; as a pipeline's model `(x_t, timestep)`."""
    def model(x_t, timestep):
        t = (timestep / 1000).reshape(-1, 1)
        return (x_t - (1 - t) * a ** 2 * x_t / ((1 - t) ** 2 * a ** 2 + t ** 2)) / t
    return model


def run(scheduler, model, noise, **plan):
    scheduler.set_timesteps(**plan)
    x = noise
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.expand(len(x))), t, x).prev_sample
    return x


def test_heun_starts_a_flow_at_exactly_t_1_and_is_flow_match_heun():
    """Heun steps in t: from t = 1 (sigma 1e8, where a trapezoid in sigma would weight its end slope by
    5e7) it converges with the steps, and on the same grid it is FlowMatchHeunDiscreteScheduler."""
    from diffusers import FlowMatchHeunDiscreteScheduler

    a, noise = 0.5, torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = gaussian_velocity(a)
    errors = [float((run(flow("heun"), model, noise, num_inference_steps=n) - a * noise).abs().max()) for n in (8, 32)]
    assert errors[1] < errors[0] / 8 and errors[1] < 1e-3, errors
    theirs = run(FlowMatchHeunDiscreteScheduler(shift=3.0), model, noise.float(), num_inference_steps=6)
    ours = run(FewstepScheduler.from_config(FlowMatchHeunDiscreteScheduler(shift=3.0).config, sampler="heun",
                                            final_sigmas_type="zero"), model, noise.float(), num_inference_steps=6)
    assert (ours - theirs).abs().max() < 1e-5, (ours - theirs).abs().max()


def test_a_saved_flow_matching_config_without_a_shift_is_shift_1():
    """Configs saved before diffusers added `shift` name only the class: shift 1, the flow mode."""
    scheduler = FewstepScheduler.from_config({"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000})
    assert scheduler.config.prediction_type == "flow_prediction"
