"""FewstepScheduler as a drop-in diffusers scheduler: it follows a pipeline that edits the latents
between steps, starts part-way (img2img, inpainting: strength < 1), takes a pipeline's own `sigmas`
and `timesteps`, and has the attributes diffusers' VP schedulers have."""
import inspect
import math
import re

import numpy as np
import pytest
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline)

from fewstep import samplers
from fewstep.pipelines import FewstepScheduler
from fewstep.samplers.spaces import sigma_of_timestep
from fewstep.suites.tiny_pipelines import tiny_text_to_image
from helpers import TABLE, LatentRecorder, NoiseLikeUNet, range_gap, tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models on one thread


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return NoiseLikeUNet.from_config(tiny_unet().config).eval()


# -- a pipeline that edits the latents between steps ------------------------------------------------
@torch.no_grad()
def inpainting_loop(scheduler, unet, steps=8, seed=0, blend=True):
    """Inpainting with a plain UNet, as StableDiffusionInpaintPipeline does with a 4-channel one: after
    every step but the last, the known region (the left half) is noised to the next timestep and
    blended back into the latents."""
    g = torch.Generator().manual_seed(seed)
    known, noise = torch.rand(2, 1, 8, 8, generator=g) * 2 - 1, torch.randn(2, 1, 8, 8, generator=g)
    keep = torch.zeros(1, 1, 8, 8)
    keep[..., :4] = 1
    scheduler.set_timesteps(steps)
    x = torch.randn(2, 1, 8, 8, generator=g) * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
        if blend and i + 1 < len(timesteps):
            x = keep * scheduler.add_noise(known, noise, timesteps[i + 1:i + 2]) + (1 - keep) * x
    return x, known, keep


@pytest.mark.parametrize("name, theirs", [
    ("ddim", DDIMScheduler(**TABLE, clip_sample=False)),
    ("dpmpp_2m", DPMSolverMultistepScheduler(**TABLE, algorithm_type="dpmsolver++", timestep_spacing="trailing")),
])
def test_edits_between_steps_are_followed_as_diffusers_schedulers_follow_them(unet, name, theirs):
    ours = FewstepScheduler.from_config(theirs.config, sampler=name, schedule="discrete")
    expected, known, keep = inpainting_loop(theirs, unet)
    result, _, _ = inpainting_loop(ours, unet)
    assert range_gap(result, expected) < 1e-5
    # the edits matter: the known region is drawn towards `known`, and ignoring them would be far off
    unedited, _, _ = inpainting_loop(ours, unet, blend=False)
    assert range_gap(unedited, expected) > 0.1
    assert (keep * (result - known)).abs().max() < (keep * (unedited - known)).abs().max()


def test_an_unedited_trajectory_keeps_the_samplers_own_float64_point(unet):
    """Handing back exactly what step() returned is no edit: the pipeline's float32 copy is not read."""
    scheduler = FewstepScheduler.from_config(DDPMScheduler(**TABLE).config, sampler="dpmpp_2m")
    denoiser = samplers.DiffusersUNetDenoiser(unet, scheduler.alphas_cumprod)
    x, _, _ = inpainting_loop(scheduler, unet, blend=False)
    g = torch.Generator().manual_seed(0)
    torch.rand(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    start = torch.randn(2, 1, 8, 8, generator=g).double() * math.sqrt(1 + float(scheduler.grid[0]) ** 2)
    with torch.no_grad():
        expected = samplers.solve("dpmpp_2m", denoiser, start, scheduler.grid)
    assert (x.double() - expected).abs().max() < 1e-6


# -- partial starts: img2img and inpainting pipelines with strength < 1 ------------------------------
@pytest.fixture(scope="module")
def text_to_image(tmp_path_factory):
    return tiny_text_to_image(tmp_path_factory.mktemp("sd"))


def init_image():
    return torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def img2img_latents(pipe, scheduler, strength=0.6, steps=5, **kwargs):
    img2img = StableDiffusionImg2ImgPipeline(**{**pipe.components, "scheduler": scheduler})
    img2img.set_progress_bar_config(disable=True)
    return img2img("a cat", image=init_image(), strength=strength, num_inference_steps=steps, guidance_scale=1.0,
                   output_type="latent", generator=torch.Generator().manual_seed(0), **kwargs).images


@pytest.mark.parametrize("name, cls, extra", [("ddim", DDIMScheduler, {}),
                                              ("dpmpp_2m", DPMSolverMultistepScheduler, {"solver_order": 2})])
@pytest.mark.parametrize("strength", [0.4, 0.6, 1.0])
def test_img2img_started_part_way_equals_diffusers_schedulers(text_to_image, name, cls, extra, strength):
    theirs = cls.from_config(text_to_image.scheduler.config, **extra)
    # keys the config took as defaults get each class's own default (diffusers' _use_default_values): spell it out
    ours = FewstepScheduler.from_config(theirs.config, sampler=name, schedule="discrete",
                                        timestep_spacing=theirs.config.timestep_spacing)
    expected = img2img_latents(text_to_image, theirs, strength)
    assert range_gap(img2img_latents(text_to_image, ours, strength), expected) < 1e-5




@pytest.mark.parametrize("name", samplers.FIXED_GRID_NAMES)
def test_every_sampler_starts_part_way_in_img2img_as_a_reference_loop_does(text_to_image, name):
    """strength 0.5 of 6 steps: the pipeline cuts the first steps off, noises the image's latents to
    the first timestep it keeps (add_noise at the plan's own sigma) and steps from there; that is
    the sampler run on the rest of the grid from that point."""
    scheduler = FewstepScheduler.from_config(text_to_image.scheduler.config, sampler=name)
    img2img = StableDiffusionImg2ImgPipeline(**{**text_to_image.components, "scheduler": scheduler})
    img2img.set_progress_bar_config(disable=True)
    recorder = LatentRecorder(img2img)
    latents = img2img("a cat", image=init_image(), strength=0.5, num_inference_steps=6, guidance_scale=1.0,
                      output_type="latent", generator=torch.Generator().manual_seed(0)).images
    start = 3  # strength 0.5 of 6 steps: the pipeline keeps the last 3
    assert scheduler.begin_index == samplers.nfe(name, scheduler.grid[:start + 1])  # the evaluations cut off
    grid = scheduler.grid[start:]
    embeds, _ = img2img.encode_prompt("a cat", torch.device("cpu"), 1, False)
    denoiser = samplers.DiffusersUNetDenoiser(img2img.unet, scheduler.alphas_cumprod)
    x = recorder.latents.double() * math.sqrt(1 + float(grid[0]) ** 2)
    with torch.no_grad():
        expected = samplers.solve(name, lambda x, s: denoiser(x, s, encoder_hidden_states=embeds), x, grid)
    assert range_gap(latents.double(), expected) < 1e-5


def test_add_noise_at_a_planned_timestep_uses_the_plans_sigma():
    scheduler = FewstepScheduler(sampler="heun")
    scheduler.set_timesteps(5)
    x0, noise = torch.randn(2, 1, 4, 4).double(), torch.randn(2, 1, 4, 4).double()
    for t, sigma in zip(scheduler.timesteps, scheduler.sigmas):
        expected = (x0 + float(sigma) * noise) / math.sqrt(1 + float(sigma) ** 2)
        assert (scheduler.add_noise(x0, noise, t.reshape(1)) - expected).abs().max() < 1e-12


@pytest.mark.parametrize("strength", [0.5, 0.8])
def test_inpainting_pipeline_with_a_plain_unet_equals_dpm_solver(text_to_image, strength):
    """StableDiffusionInpaintPipeline with a 4-channel UNet starts part-way and blends the known
    region back at every step: both at once."""
    theirs = DPMSolverMultistepScheduler.from_config(text_to_image.scheduler.config)
    ours = FewstepScheduler.from_config(theirs.config, sampler="dpmpp_2m", schedule="discrete",
                                        timestep_spacing=theirs.config.timestep_spacing)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 8:] = 1

    def run(scheduler):
        pipe = StableDiffusionInpaintPipeline(**{**text_to_image.components, "scheduler": scheduler})
        pipe.set_progress_bar_config(disable=True)
        return pipe("a cat", image=init_image(), mask_image=mask, strength=strength, num_inference_steps=6,
                    guidance_scale=1.0, output_type="latent", generator=torch.Generator().manual_seed(1)).images

    assert range_gap(run(ours), run(theirs)) < 1e-5


# -- a pipeline's own sigmas and timesteps ----------------------------------------------------------
def latents(pipe, scheduler, **kwargs):
    pipe.scheduler = scheduler
    return pipe("a cat", guidance_scale=3.0, output_type="latent", generator=torch.Generator().manual_seed(0),
                **kwargs).images


def test_euler_on_a_pipelines_sigmas_equals_euler_discrete_scheduler(text_to_image):
    sigmas = [14.6, 6.0, 2.5, 0.9, 0.3, 0.0]  # Align-Your-Steps-like: the grid with its end
    # leading spacing: Euler then starts from noise scaled by sqrt(1 + sigma_max^2), as the VP pipeline does
    theirs = EulerDiscreteScheduler.from_config(text_to_image.scheduler.config, timestep_spacing="leading")
    ours = FewstepScheduler.from_config(theirs.config, sampler="euler")
    expected = latents(text_to_image, theirs, sigmas=sigmas)
    assert range_gap(latents(text_to_image, ours, sigmas=sigmas), expected) < 1e-5
    assert ours.grid.tolist() == sigmas and ours.num_inference_steps == 5


def test_dpmpp_2m_on_a_pipelines_timesteps_equals_dpm_solver(text_to_image):
    timesteps = [999, 850, 600, 400, 250, 120, 40]
    theirs = DPMSolverMultistepScheduler.from_config(text_to_image.scheduler.config)
    ours = FewstepScheduler.from_config(theirs.config, sampler="dpmpp_2m")
    expected = latents(text_to_image, theirs, timesteps=timesteps)
    assert range_gap(latents(text_to_image, ours, timesteps=timesteps), expected) < 1e-5
    assert ours.timesteps.tolist() == timesteps and float(ours.grid[-1]) == 0


@pytest.mark.parametrize("name", samplers.FIXED_GRID_NAMES)
def test_custom_sigmas_and_timesteps_plan_the_sampler_on_that_grid(name):
    scheduler = FewstepScheduler(sampler=name)
    scheduler.set_timesteps(sigmas=[20.0, 5.0, 1.0, 0.2])
    assert scheduler.grid.tolist() == [20.0, 5.0, 1.0, 0.2]
    assert len(scheduler.timesteps) == samplers.nfe(name, scheduler.grid)
    scheduler.set_timesteps(timesteps=[900, 500, 100])
    expected = sigma_of_timestep(torch.tensor([900.0, 500.0, 100.0], dtype=torch.float64), scheduler.log_sigmas)
    assert scheduler.grid[:-1].tolist() == pytest.approx(expected.tolist(), rel=1e-12)
    assert float(scheduler.grid[-1]) == 0 and scheduler.timesteps[0] == 900


def test_fractional_custom_timesteps_take_diffusers_sigmas():
    """Between two training timesteps sigma is interpolated linearly, as Euler's and Heun's np.interp do."""
    timesteps = [900.5, 500.25, 100.75]
    theirs = EulerDiscreteScheduler(**TABLE)
    theirs.set_timesteps(timesteps=timesteps)
    ours = FewstepScheduler(**TABLE, sampler="euler")
    ours.set_timesteps(timesteps=timesteps)
    assert ours.grid.tolist() == pytest.approx(theirs.sigmas.tolist(), rel=1e-6)
    assert ours.timesteps.tolist() == timesteps


def test_dpm_solvers_final_sigmas_type_is_kept():
    theirs = DPMSolverMultistepScheduler(**TABLE, final_sigmas_type="sigma_min")
    ours = FewstepScheduler.from_config(theirs.config, sampler="dpmpp_2m", schedule="discrete",
                                        timestep_spacing=theirs.config.timestep_spacing)
    for scheduler in (theirs, ours):
        scheduler.set_timesteps(6)
    assert ours.grid.tolist() == pytest.approx(theirs.sigmas.tolist(), rel=1e-6) and float(ours.grid[-1]) > 0


def test_zero_terminal_snr_tables_end_at_sigma_4096_as_euler_does():
    ours = FewstepScheduler(**TABLE, rescale_betas_zero_snr=True, sampler="euler", schedule="discrete",
                            timestep_spacing="trailing")
    theirs = EulerDiscreteScheduler(**TABLE, rescale_betas_zero_snr=True, timestep_spacing="trailing")
    ours.set_timesteps(8)
    theirs.set_timesteps(8)
    assert float(ours.log_sigmas[-1].exp()) == pytest.approx(4096.0, rel=1e-4)
    assert ours.grid.tolist() == pytest.approx(theirs.sigmas.tolist(), rel=1e-5)


# -- the attributes of diffusers' VP schedulers, and bad input --------------------------------------
def test_betas_alphas_and_initial_timesteps_are_diffusers():
    ours, theirs = FewstepScheduler(**TABLE), DDIMScheduler(**TABLE)
    assert torch.equal(ours.betas, theirs.betas) and torch.equal(ours.alphas, theirs.alphas)
    assert torch.equal(ours.alphas_cumprod.float(), theirs.alphas_cumprod)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist() == list(range(999, -1, -1))


@pytest.mark.parametrize("make, message", [
    (lambda: FewstepScheduler(beta_start=0.01, beta_end=0.2),
     "the noise table's alphas_cumprod reaches 0 in float32 at timestep"),
    (lambda: FewstepScheduler(final_sigmas_type="one"), "unknown final_sigmas_type 'one': use zero or sigma_min"),
    (lambda: FewstepScheduler().set_timesteps(5, sigmas=[3.0, 1.0, 0.0]),
     "set_timesteps takes exactly one of num_inference_steps, timesteps, sigmas; got num_inference_steps, sigmas"),
    (lambda: FewstepScheduler().set_timesteps(sigmas=[1.0, 3.0, 0.0]), "sigmas must be strictly decreasing"),
    (lambda: FewstepScheduler().set_timesteps(timesteps=[500, 700]),
     "set_timesteps got timesteps=[500.0, 700.0]: they must decrease strictly within 0..999"),
    (lambda: FewstepScheduler().set_timesteps(timesteps=[1200, 700]), "within 0..999"),
])
def test_bad_plans_are_one_clear_line(make, message):
    with pytest.raises(ValueError) as error:
        make()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_step_off_the_plan_or_of_another_shape_is_refused():
    scheduler = FewstepScheduler(sampler="heun")
    scheduler.set_timesteps(3)
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"step\(\) at timestep 123.25, which starts no step of the plan"):
        scheduler.step(x, 123.25, x)
    scheduler.set_begin_index(1)
    with pytest.raises(ValueError, match=r"begin_index=1 is not the start of a sampler step: use one of \[0, 2, 4\]"):
        scheduler.step(x, scheduler.timesteps[1], x)
    scheduler.set_timesteps(3)
    x = scheduler.step(x, scheduler.timesteps[0], x).prev_sample
    with pytest.raises(ValueError, match=r"but the plan's next timestep is .* \(step index 1\)"):
        scheduler.step(x, scheduler.timesteps[-1], x)
    with pytest.raises(ValueError, match=r"sample of shape \(2, 1, 4, 4\); the trajectory started with shape \(1, 1, 4, 4\)"):
        scheduler.step(torch.zeros(2, 1, 4, 4), scheduler.timesteps[1], torch.zeros(2, 1, 4, 4))


def test_an_option_the_scheduler_does_not_have_is_refused():
    config = DDIMScheduler(**TABLE).config
    with pytest.raises(ValueError) as error:
        FewstepScheduler.from_config(config, sampler="dpmpp_2m", solver_order=3)
    options = [name for name in inspect.signature(FewstepScheduler.__init__).parameters if name != "self"]
    assert str(error.value) == f"FewstepScheduler has no option solver_order; its options: {', '.join(options)}"
    with pytest.raises(ValueError, match="^FewstepScheduler has no option order, solver_order; its options: "):
        FewstepScheduler.from_config(config, sampler="dpmpp_2m", solver_order=3, order=2)
    assert FewstepScheduler.from_config(config, sampler="heun").config.sampler == "heun"  # the config's own keys pass


def test_without_set_timesteps_the_plan_is_every_training_timestep_and_a_used_plan_is_not_rerun():
    scheduler = FewstepScheduler(num_train_timesteps=20, sampler="euler", schedule="discrete",
                                 timestep_spacing="trailing")
    x = torch.ones(1, 1, 2, 2)
    x = scheduler.step(torch.zeros_like(x), 19, x).prev_sample  # diffusers' Euler and Heun step at once too
    assert scheduler.num_inference_steps == 20 and scheduler.timesteps.tolist() == list(range(19, -1, -1))
    scheduler.set_timesteps(2)
    for t in scheduler.timesteps:
        x = scheduler.step(torch.zeros_like(x), t, x).prev_sample
    with pytest.raises(ValueError, match=r"call set_timesteps\(num_inference_steps\) before stepping a new trajectory"):
        scheduler.step(torch.zeros_like(x), scheduler.timesteps[0], x)


def test_every_schedule_may_stop_at_sigma_min_in_the_scheduler_too():
    scheduler = FewstepScheduler(**TABLE, sampler="heun", final_sigmas_type="sigma_min")
    scheduler.set_timesteps(3)
    table_min = float(scheduler.log_sigmas.exp()[0])
    assert float(scheduler.grid[-1]) == pytest.approx(table_min) and len(scheduler.timesteps) == 6
    assert scheduler.grid.tolist() == pytest.approx(
        samplers.get_sigmas("karras", 3, table_min, float(scheduler.log_sigmas.exp()[-1]),
                            final_sigmas_type="sigma_min").tolist())


# -- the edges of a pipeline's own plan and the refusals, word for word -----------------------------
def test_one_custom_timestep_is_one_step_to_0_and_timestep_0_may_end_a_plan():
    scheduler = FewstepScheduler(sampler="euler")
    scheduler.set_timesteps(timesteps=[500])
    assert len(scheduler.grid) == 2 and float(scheduler.grid[-1]) == 0
    scheduler.set_timesteps(timesteps=[500, 0])
    assert scheduler.timesteps.tolist() == [500.0, 0.0]


@pytest.mark.parametrize("plan, message", [
    (dict(sigmas=[3.0]), r"set_timesteps got sigmas=\[3.0\]: too few for one step"),
    (dict(timesteps=[]), r"set_timesteps got timesteps=\[\]: too few for one step"),
    (dict(timesteps=[500, 500]), r"set_timesteps got timesteps=\[500.0, 500.0\]: they must decrease strictly within 0..999"),
    (dict(timesteps=[900, 100, 500]), r"set_timesteps got timesteps=\[900.0, 100.0, 500.0\]: they must decrease strictly within 0..999"),
    (dict(timesteps=[900, -1]), r"set_timesteps got timesteps=\[900.0, -1.0\]: they must decrease strictly within 0..999"),
])
def test_a_custom_plan_the_sampler_cannot_take_is_refused_in_one_line(plan, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        FewstepScheduler(sampler="euler").set_timesteps(**plan)


def test_a_flow_pipelines_sigmas_must_lie_in_0_to_1():
    scheduler = FewstepScheduler(prediction_type="flow_prediction", sampler="euler")
    with pytest.raises(ValueError, match=r"^set_timesteps got sigmas=\[1.5, 0.5\]: a flow's sigmas are its times t, in \(0, 1\]$"):
        scheduler.set_timesteps(sigmas=[1.5, 0.5])
    with pytest.raises(ValueError, match=r"^set_timesteps got sigmas=\[0.5, 0.7\]: they must decrease strictly within 0..1$"):
        scheduler.set_timesteps(sigmas=[0.5, 0.7])


def test_set_begin_index_defaults_to_the_first_timestep_and_a_wrong_first_timestep_is_named():
    scheduler = FewstepScheduler(sampler="heun")
    scheduler.set_timesteps(3)
    scheduler.set_begin_index()
    assert scheduler.begin_index == 0
    scheduler.set_begin_index(2)
    x = torch.zeros(1, 1, 4, 4)
    wrong, expected = float(scheduler.timesteps[0]), float(scheduler.timesteps[2])
    with pytest.raises(ValueError, match=rf"^the first step must be at timestep {expected:.6g} \(begin_index 2\), "
                                         rf"got {wrong:.6g}$"):
        scheduler.step(x, wrong, x)


def test_the_refusals_of_step_are_whole_sentences():
    scheduler = FewstepScheduler(sampler="ddim", sampler_options={"eta": 1.0})
    scheduler.set_timesteps(3)
    x = torch.zeros(1, 1, 4, 4)
    shown = [round(float(t), 3) for t in scheduler.timesteps]  # fractional: karras timesteps, to 3 decimals
    assert any(t != int(t) for t in shown) and any(round(float(t), 4) != r for t, r in zip(scheduler.timesteps, shown))
    with pytest.raises(ValueError, match=rf"^step\(\) at timestep 500.5, which starts no step of the plan "
                                         rf"\(timesteps {re.escape(str(shown))}\)$"):
        scheduler.step(x, 500.5, x)
    with pytest.raises(ValueError, match=r"^step\(\) takes no variance_noise: the sampler draws its own noise from "
                                         r"generator$"):
        scheduler.step(x, scheduler.timesteps[0], x, variance_noise=x)
    x = scheduler.step(x, scheduler.timesteps[0], x).prev_sample
    with pytest.raises(ValueError, match=r"^step\(\) got a generator mid-trajectory, but the trajectory started "
                                         r"without one; pass it to the first step\(\) or to set_timesteps$"):
        scheduler.step(x, scheduler.timesteps[1], x, generator=torch.Generator())
    for t in scheduler.timesteps[1:]:
        x = scheduler.step(x, t, x).prev_sample
    with pytest.raises(ValueError, match=r"^call set_timesteps\(num_inference_steps\) before stepping a new "
                                         r"trajectory$"):
        scheduler.step(x, scheduler.timesteps[0], x)


@pytest.mark.parametrize("plan, got", [(dict(timesteps=[500], sigmas=[1.0, 0.0]), "timesteps, sigmas"), (dict(), "none")])
def test_set_timesteps_names_what_it_got_besides_one_plan(plan, got):
    with pytest.raises(ValueError, match=rf"^set_timesteps takes exactly one of num_inference_steps, timesteps, sigmas; "
                                         rf"got {got}$"):
        FewstepScheduler().set_timesteps(**plan)


def test_planning_a_stochastic_sampler_draws_no_global_random_numbers():
    scheduler = FewstepScheduler(sampler="ddim", sampler_options={"eta": 1.0})
    torch.manual_seed(0)
    scheduler.set_timesteps(5)
    after_planning = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after_planning, torch.rand(3))


def test_a_saved_config_without_a_noise_table_is_named_by_its_class_and_keys():
    with pytest.raises(ValueError) as error:
        FewstepScheduler.from_config({"_class_name": "EDMEulerScheduler", "sigma_min": 0.002, "sigma_max": 80.0})
    assert str(error.value) == ("the scheduler config has no noise table (no beta_schedule or trained_betas): "
                                "EDMEulerScheduler with keys sigma_max, sigma_min")


def test_from_config_returns_the_unused_keys_when_asked():
    config = DDIMScheduler(**TABLE).config
    scheduler, unused = FewstepScheduler.from_config(config, return_unused_kwargs=True, sampler="euler")
    assert isinstance(scheduler, FewstepScheduler) and unused == {}


def test_fractional_custom_timesteps_are_read_in_float64():
    timesteps = [900.3, 500.7, 100.1]  # not float32 numbers
    scheduler = FewstepScheduler(sampler="euler")
    scheduler.set_timesteps(timesteps=timesteps)
    table = scheduler.log_sigmas.exp().numpy()  # linear in sigma between training timesteps, as np.interp
    expected = [float(np.interp(t, np.arange(len(table)), table)) for t in timesteps]
    assert scheduler.grid[:-1].tolist() == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "heun"])
def test_a_float32_pipeline_that_edits_its_sample_stays_within_1e_5_of_a_float64_one(name):
    SD_TABLE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)

    """The edited float32 sample continues in the float32 state (pipelines/state.py), within 1e-5 of
    the float64 pipeline with the same edit."""
    def loop(dtype):
        scheduler = FewstepScheduler(**SD_TABLE, sampler=name)  # sigma_max 14.6: a float32 state
        scheduler.set_timesteps(3)
        x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
        for i, t in enumerate(scheduler.timesteps):
            output = (0.3 * x.float()).to(dtype)  # the same numbers in either dtype
            x = scheduler.step(output, t, x).prev_sample
            if i == 0:
                x = (x.float() + 0.1).to(dtype)  # the pipeline's edit, a float32 number either way
        return x.double()

    single, double = loop(torch.float32), loop(torch.float64)
    assert range_gap(single, double) < 1e-5
