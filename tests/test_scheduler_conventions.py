"""FewstepScheduler keeps the conventions of the diffusers scheduler each sampler mirrors: edits made
in place, the defaults a config leaves out, clipping, DDIM's last step, a generator per step, saved
tables, custom sigmas above 0, learned variance and the precision of its state (pipelines/conventions.py)."""
import json
import shutil

import pytest
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       HeunDiscreteScheduler, PNDMScheduler)

from fewstep.pipelines import FewstepScheduler
from fewstep.suites.tiny_pipelines import tiny_text_to_image
from helpers import TABLE, NoiseLikeUNet, range_gap, tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models on one thread


@pytest.fixture(scope="module")
def text_to_image(tmp_path_factory):
    return tiny_text_to_image(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return NoiseLikeUNet.from_config(tiny_unet().config).eval()


# -- edits through callbacks, in place or not --------------------------------------------------------
def edited_latents(pipe, scheduler, how):
    pipe.scheduler = scheduler

    def on_step_end(pipeline, i, t, kwargs):
        latents = kwargs["latents"]
        return {"latents": latents.mul_(0.9).add_(0.05) if how == "in place" else latents * 0.9 + 0.05}

    def legacy(i, t, latents):
        latents.mul_(0.9).add_(0.05)

    extra = {"callback": legacy, "callback_steps": 1} if how == "legacy" else {"callback_on_step_end": on_step_end}
    return pipe("a cat", num_inference_steps=6, guidance_scale=1.0, output_type="latent",
                generator=torch.Generator().manual_seed(0), **extra).images


@pytest.mark.parametrize("how", ["in place", "new tensor", "legacy"])
@pytest.mark.parametrize("name, cls", [("dpmpp_2m", DPMSolverMultistepScheduler), ("ddim", DDIMScheduler)])
def test_callback_edits_are_followed_however_they_are_made(text_to_image, how, name, cls):
    pipe = text_to_image
    config = pipe.scheduler.config
    theirs = edited_latents(pipe, cls.from_config(config), how)
    ours = edited_latents(pipe, FewstepScheduler.from_config(config, sampler=name, schedule="discrete"), how)
    assert range_gap(ours, theirs) < 1e-5
    pipe.scheduler = cls.from_config(config)
    unedited = pipe("a cat", num_inference_steps=6, guidance_scale=1.0, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).images
    assert range_gap(unedited, theirs) > 0.05  # the edit matters


# -- what a config leaves out -------------------------------------------------------------------------
SD_V1 = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
         "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
         "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
         "clip_sample": False}  # Stable Diffusion v1's scheduler_config.json: no timestep_spacing


@pytest.mark.parametrize("name, cls", [("dpmpp_2m", DPMSolverMultistepScheduler), ("euler", EulerDiscreteScheduler),
                                       ("heun", HeunDiscreteScheduler), ("ddim", DDIMScheduler)])
def test_a_config_without_timestep_spacing_gets_the_mirrored_schedulers_default(name, cls):
    config = PNDMScheduler.from_config(SD_V1).config
    theirs, ours = cls.from_config(config), FewstepScheduler.from_config(config, sampler=name, schedule="discrete")
    theirs.set_timesteps(7)
    ours.set_timesteps(7)
    assert ours.config.timestep_spacing is None
    assert torch.equal(ours.timesteps[::ours.order], theirs.timesteps[::theirs.order].float())


# -- clipping of the denoised estimate ----------------------------------------------------------------
@torch.no_grad()
def images(unet, scheduler, steps=6):
    """A sampling loop as DDPMPipeline's (Heun's step takes no generator), in [0, 1]."""
    scheduler.set_timesteps(steps)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("name, cls, option", [
    ("ddim", DDIMScheduler, {"clip_sample": True, "clip_sample_range": 0.5}),
    ("ddim", DDIMScheduler, {"thresholding": True, "sample_max_value": 0.7, "clip_sample": False}),
    ("dpmpp_2m", DPMSolverMultistepScheduler, {"thresholding": True, "sample_max_value": 0.7}),
    ("heun", HeunDiscreteScheduler, {"clip_sample": True, "clip_sample_range": 0.5}),
])
def test_clipping_is_applied_as_the_mirrored_scheduler_applies_it(unet, name, cls, option):
    theirs = cls(**TABLE, **option)
    ours = FewstepScheduler.from_config(theirs.config, sampler=name, schedule="discrete")
    plain = FewstepScheduler.from_config(cls(**TABLE).config, sampler=name, schedule="discrete",
                                         clip_sample=False, thresholding=False)
    expected = images(unet, theirs)
    assert float((images(unet, ours) - expected).abs().max()) < 1e-5
    assert float((images(unet, plain) - expected).abs().max()) > 1e-2


def test_a_clipping_option_the_sampler_does_not_take_is_refused_and_a_configs_is_left_out():
    with pytest.raises(ValueError, match=r"^sampler 'euler' does not take clip_sample=True \(its diffusers "
                                         r"counterpart has no such option\); the ones that do: ddim"):
        FewstepScheduler(sampler="euler", clip_sample=True)
    assert not FewstepScheduler.from_config(DDPMScheduler(**TABLE).config, sampler="euler").config.clip_sample
    assert FewstepScheduler.from_config(DDPMScheduler(**TABLE).config, sampler="ddim").config.clip_sample


# -- DDIM's set_alpha_to_one=False and a generator per step -------------------------------------------
def ddim_loop(scheduler, steps, generators):
    scheduler.set_timesteps(steps)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(9))
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(0.4 * x + 0.1, t, x, eta=1.0, generator=generators(i)).prev_sample
    return x


@pytest.mark.parametrize("spacing, steps_offset", [("leading", 0), ("trailing", 0), ("linspace", 0)])
def test_ddim_without_set_alpha_to_one_is_planned_as_ddim_scheduler_plans_it(spacing, steps_offset):
    theirs = DDIMScheduler(**TABLE, set_alpha_to_one=False, timestep_spacing=spacing, steps_offset=steps_offset,
                           clip_sample=False)
    ours = FewstepScheduler.from_config(theirs.config, sampler="ddim", schedule="discrete")
    shared = torch.Generator().manual_seed(3)
    results = [ddim_loop(s, 5, lambda i: shared.manual_seed(3) if i == 0 else shared) for s in (theirs, ours)]
    assert torch.equal(ours.timesteps, theirs.timesteps.float())
    if spacing != "linspace":  # with linspace DDIMScheduler steps to t - T // n (diffusers issue #12633)
        assert range_gap(results[1], results[0]) < 1e-5


def test_a_new_generator_at_each_step_is_taken_as_ddim_scheduler_takes_it():
    theirs = DDIMScheduler(**TABLE, clip_sample=False)
    ours = FewstepScheduler.from_config(theirs.config, sampler="ddim", schedule="discrete")
    fresh = [ddim_loop(s, 4, lambda i: torch.Generator().manual_seed(10 + i)) for s in (theirs, ours)]
    assert range_gap(fresh[1], fresh[0]) < 1e-5
    assert range_gap(ddim_loop(ours, 4, lambda i: torch.Generator().manual_seed(10)), fresh[0]) > 1e-2


def test_generators_unlike_the_first_steps_are_refused_in_one_line():
    scheduler = FewstepScheduler(**TABLE, sampler="ddim", sampler_options={"eta": 1.0})
    with pytest.raises(ValueError, match=r"^step\(\) got 1 generator\(s\) where the trajectory started with 2; "
                                         r"pass one per sample, or one for all, at every step$"):
        ddim_loop(scheduler, 3, lambda i: [torch.Generator(), torch.Generator()] if i == 0 else torch.Generator())


def test_an_edit_in_place_under_inference_mode_is_followed():
    """Inference-mode tensors keep no version counter: the scheduler compares with a copy instead."""
    results = []
    for scheduler in (DPMSolverMultistepScheduler(**TABLE), FewstepScheduler(**TABLE, sampler="dpmpp_2m",
                                                                             schedule="discrete")):
        scheduler.set_timesteps(5)
        with torch.inference_mode():
            x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
            for t in scheduler.timesteps:
                x = scheduler.step(0.3 * x, t, x).prev_sample
                x.mul_(0.9).add_(0.05)
        results.append(x)
    assert range_gap(results[1], results[0]) < 1e-5


# -- saved tables travel with the folder --------------------------------------------------------------
@pytest.mark.parametrize("key", ["frozen_table", "schedule_table"])
def test_a_saved_scheduler_with_a_table_loads_from_a_copied_folder(tmp_path, key):
    if key == "frozen_table":
        table = {"sampler": "amed", "sampler_options": {"afs": False, "r": [0.4, 0.5, 0.6], "c": [1.0, 0.99, 1.01]},
                 "sigmas": [80.0, 11.6, 0.8, 0.0], "nfe": 5}
    else:
        table = {"sampler": "amed", "options": {}, "fingerprint": "x", "by_nfe": {"5": {"sigmas": [70.0, 9.0, 0.5, 0.0]}}}
    (tmp_path / "table.json").write_text(json.dumps(table))
    scheduler = FewstepScheduler(**TABLE, sampler="amed", **{key: str(tmp_path / "table.json")})
    scheduler.set_timesteps(3)
    scheduler.save_pretrained(tmp_path / "saved")
    shutil.copytree(tmp_path / "saved", tmp_path / "moved")
    shutil.rmtree(tmp_path / "saved")
    (tmp_path / "table.json").unlink()
    assert json.loads((tmp_path / "moved" / "scheduler_config.json").read_text())[key] == f"{key}.json"
    loaded = FewstepScheduler.from_pretrained(tmp_path / "moved")
    loaded.set_timesteps(3)
    assert torch.equal(loaded.grid, scheduler.grid) and torch.equal(loaded.timesteps, scheduler.timesteps)


# -- custom sigmas above 0, learned variance ----------------------------------------------------------
def test_euler_on_sigmas_that_stop_above_0_returns_what_euler_discrete_scheduler_returns():
    sigmas = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]  # Align Your Steps SD1.5
    results, start = [], torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    for scheduler in (EulerDiscreteScheduler(**TABLE), FewstepScheduler(**TABLE, sampler="euler")):
        scheduler.set_timesteps(sigmas=sigmas)
        x = start if scheduler.init_noise_sigma != 1 else start / (1 + sigmas[0] ** 2) ** 0.5  # the same point
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(x, t)
            x = scheduler.step(0.5 * model_input, t, x).prev_sample
        results.append(x)
    assert range_gap(results[1], results[0]) < 1e-5


def test_a_learned_variance_output_is_sampled_from_its_prediction_half():
    theirs = DDIMScheduler(**TABLE, clip_sample=False)
    ours = FewstepScheduler.from_config(theirs.config, sampler="ddim", schedule="discrete")
    results = []
    for scheduler, channels in ((theirs, 1), (ours, 2)):
        scheduler.set_timesteps(4)
        x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        for t in scheduler.timesteps:
            output = torch.cat([0.3 * x, torch.full_like(x, 50.0)], dim=1)[:, :channels]  # eps, then the variance half
            x = scheduler.step(output, t, x).prev_sample
        results.append(x)
    assert range_gap(results[1], results[0]) < 1e-5


# -- the precision of the sampler's state -------------------------------------------------------------
@pytest.mark.parametrize("name", ["ddim", "euler", "heun", "dpmpp_2m", "ipndm"])
def test_a_float32_state_stays_within_1e_5_of_the_float64_one(unet, name):
    """Stable Diffusion's table (sigma_max 14.6: a float32 state), a random UNet, 10 steps; DDPM's
    (sigma_max 157) keeps a float64 state."""
    ddpm = FewstepScheduler(**TABLE)
    ddpm.set_timesteps(10)
    assert ddpm._work_dtype(torch.zeros(1)) == torch.float64
    table = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)

    def run(dtype):
        scheduler = FewstepScheduler(**table, sampler=name)
        scheduler.set_timesteps(10)
        assert scheduler._work_dtype(torch.zeros(1, dtype=dtype)) == dtype
        x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
        with torch.no_grad():
            for t in scheduler.timesteps:
                x = scheduler.step(unet(x.float(), t).sample.to(dtype), t, x).prev_sample
        return x.double()

    single, double = run(torch.float32), run(torch.float64)
    assert range_gap(single, double) < 1e-5
