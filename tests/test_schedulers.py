"""FewstepScheduler: the package's samplers inside diffusers pipelines, and text-to-image sampling
from the command line."""
import inspect
import json
import math

import numpy as np
import pytest
import torch
import diffusers
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, DiffusionPipeline, EDMEulerScheduler
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers
from diffusers.utils import DummyObject

from fewstep import samplers
from fewstep.suites.tiny_pipelines import tiny_text_to_image
from helpers import TABLE, assert_same_images, fewstep, reference, run_cli
from fewstep.pipelines import FewstepScheduler

SAMPLERS = ["ddim", "euler", "heun", "dpmpp_2m", "ipndm"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models on one thread


def run(*overrides):
    """sample.py with these overrides, in this process (helpers.run_cli)."""
    return run_cli("sample.py", *overrides)


# the fixture noise_like_unet: conftest; fewstep, reference, assert_same_images: helpers.py


@pytest.mark.parametrize("pipeline_cls", [DDPMPipeline, DDIMPipeline])
@pytest.mark.parametrize("name, options", [*[(n, {}) for n in SAMPLERS], ("ddim", {"eta": 1.0})])
def test_pipeline_with_fewstep_scheduler_equals_sample(noise_like_unet, pipeline_cls, name, options):
    pipe = pipeline_cls(unet=noise_like_unet, scheduler=DDPMScheduler(**TABLE))
    pipe.scheduler = fewstep(name, sampler_options=options)  # after construction: DDIMPipeline converts its own
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=4, generator=torch.Generator().manual_seed(1), num_inference_steps=4,
                  output_type="pt").images
    denoiser = samplers.DiffusersUNetDenoiser.from_config(noise_like_unet, DDPMScheduler(**TABLE).config)
    x0 = reference(denoiser, name, pipe.scheduler.grid, (4, 1, 8, 8), seed=1, **options)
    assert_same_images(images, (x0 / 2 + 0.5).clamp(0, 1))


def test_discrete_ddim_reproduces_diffusers_ddim_scheduler(noise_like_unet):
    runs = []
    for scheduler in (fewstep("ddim", schedule="discrete"), DDIMScheduler(**TABLE, clip_sample=False)):
        pipe = DDPMPipeline(unet=noise_like_unet, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        runs.append(pipe(batch_size=4, generator=torch.Generator().manual_seed(2), num_inference_steps=5,
                         output_type="pt").images)
    assert_same_images(*runs)


@pytest.mark.parametrize("prediction_type, name", [("epsilon", "heun"), ("v_prediction", "dpmpp_2m"),
                                                   ("epsilon", "ddim")])
def test_stable_diffusion_with_guidance_equals_sample_with_a_guided_denoiser(tmp_path, prediction_type, name):
    """CFG on the model output is CFG on D (D is affine in the output), so the pipeline's latents
    equal `samplers.sample` with `D_uncond + w (D_cond - D_uncond)`."""
    pipe = tiny_text_to_image(tmp_path, prediction_type)
    options = {"eta": 1.0} if name == "ddim" else {}
    pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, sampler=name, sampler_options=options)
    w = 3.0
    latents = pipe("a cat", guidance_scale=w, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                   output_type="latent").images
    cond, uncond = pipe.encode_prompt("a cat", torch.device("cpu"), 1, True)
    denoiser = samplers.DiffusersUNetDenoiser(pipe.unet, pipe.scheduler.alphas_cumprod, prediction_type)

    def guided(x, sigma):
        d_uncond, d_cond = denoiser(torch.cat([x, x]), sigma, encoder_hidden_states=torch.cat([uncond, cond])).chunk(2)
        return d_uncond + w * (d_cond - d_uncond)

    expected = reference(guided, name, pipe.scheduler.grid, latents.shape, seed=0, **options)
    assert latents.abs().max() > 0.1 and torch.isfinite(latents).all()
    assert (latents - expected).abs().max() < 1e-5 * max(1.0, float(expected.abs().max()))


# -- the scheduler contract, in the style of diffusers' scheduler tests ---------------------------
def run_loop(scheduler, steps=5, seed=0, return_dict=True, shape=(2, 3, 4, 4)):
    scheduler.set_timesteps(steps)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    for t in scheduler.timesteps:
        model_output = 0.3 * x + 0.01 * t / 1000  # a stand-in network
        out = scheduler.step(model_output, t, scheduler.scale_model_input(x, t), return_dict=return_dict)
        x = out.prev_sample if return_dict else out[0]
        assert x.shape == shape and x.dtype == torch.float32
    return x


@pytest.mark.parametrize("name", SAMPLERS)
def test_step_keeps_shape_and_return_dict_does_not_change_results(name):
    assert torch.equal(run_loop(fewstep(name)), run_loop(fewstep(name), return_dict=False))
    scheduler = fewstep(name)
    scheduler.set_timesteps(2)
    x = torch.zeros(1, 1, 4, 4)
    assert type(scheduler.step(x, scheduler.timesteps[0], x, return_dict=False)) is tuple  # as diffusers' step


@pytest.mark.parametrize("name", SAMPLERS)
def test_set_timesteps_gives_one_timestep_per_network_evaluation(name):
    scheduler = fewstep(name)
    assert scheduler.order == (2 if name == "heun" else 1) and scheduler.init_noise_sigma == 1
    for steps in (1, 2, 5, 25):
        scheduler.set_timesteps(steps)
        assert len(scheduler.timesteps) == samplers.nfe(name, scheduler.grid) == len(scheduler.sigmas) - 1
        assert len(scheduler.grid) == steps + 1 and scheduler.grid[-1] == 0
        assert scheduler.timesteps.dtype == torch.float32 and (scheduler.timesteps.diff() <= 0).all()
        assert 0 <= float(scheduler.timesteps.min()) and float(scheduler.timesteps.max()) <= len(scheduler) - 1
        # planned in numpy, each timestep is the one the denoiser computes in torch for that sigma
        exact = samplers.spaces.fractional_timestep(scheduler.sigmas[:-1], scheduler.log_sigmas)
        assert torch.allclose(scheduler.timesteps.double(), exact, rtol=1e-7, atol=1e-9)
    scheduler.set_timesteps(3)
    assert torch.equal(scheduler.scale_model_input(torch.ones(2), scheduler.timesteps[0]), torch.ones(2))


def test_save_and_load_round_trip_config_and_results(tmp_path):
    scheduler = fewstep("ipndm", sampler_options={"max_order": 3}, schedule="logsnr", prediction_type="v_prediction")
    scheduler.save_pretrained(tmp_path)
    loaded = FewstepScheduler.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(scheduler.config)
    assert torch.equal(run_loop(loaded), run_loop(scheduler))


def test_swap_takes_the_noise_table_and_prediction_type_from_the_pipeline_config():
    config = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                           prediction_type="v_prediction").config
    scheduler = FewstepScheduler.from_config(config, sampler="dpmpp_2m")
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.sampler == "dpmpp_2m"
    assert torch.allclose(scheduler.alphas_cumprod, DDIMScheduler.from_config(config).alphas_cumprod.double())


def test_add_noise_is_ddpm_at_integer_timesteps_and_hits_sigma_at_fractional_ones():
    scheduler = fewstep()
    x0, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 500, 999])
    assert torch.allclose(scheduler.add_noise(x0, noise, t), DDPMScheduler(**TABLE).add_noise(x0, noise, t), atol=1e-6)
    scheduler.set_timesteps(4)
    t, sigma = scheduler.timesteps[1], float(scheduler.sigmas[1])
    assert torch.allclose(scheduler.add_noise(x0, noise, t), (x0 + sigma * noise) / math.sqrt(1 + sigma ** 2), atol=1e-5)


def test_stochastic_ddim_draws_from_the_generator_of_step_or_of_set_timesteps():
    def once(seed, via_set_timesteps):
        scheduler = fewstep("ddim", sampler_options={"eta": 1.0})
        generator = torch.Generator().manual_seed(seed)
        scheduler.set_timesteps(3, generator=generator if via_set_timesteps else None)
        x = torch.zeros(1, 1, 4, 4)
        for t in scheduler.timesteps:
            x = scheduler.step(0 * x, t, x, generator=None if via_set_timesteps else generator).prev_sample
        return x

    assert torch.equal(once(0, True), once(0, False)) and not torch.equal(once(0, True), once(1, True))


# -- bad input: one clear line each ---------------------------------------------------------------
@pytest.mark.parametrize("make, message", [
    (lambda: FewstepScheduler.from_config(EDMEulerScheduler().config),
     "the scheduler config has no noise table (no beta_schedule or trained_betas): a config with keys final_sigmas_type"),
    (lambda: FewstepScheduler(beta_schedule=None), "no noise table: beta_schedule and trained_betas are both None"),
    (lambda: fewstep(prediction_type="flow"), "unsupported prediction_type 'flow'"),
    (lambda: fewstep("dopri5"), "sampler 'dopri5' is adaptive and cannot run one step() at a time"),
    (lambda: fewstep("lms"), "unknown sampler 'lms': use one of ddim, euler, heun, dpmpp_2m, ipndm"),
    (lambda: fewstep(sampler_options={"order": 3}), "unknown option(s) order for sampler 'ddim'"),
    (lambda: fewstep().set_timesteps(0), "num_inference_steps must be a whole number of at least 1 for sampler 'ddim', got 0"),
])
def test_bad_input_is_one_clear_line(make, message):
    with pytest.raises(ValueError) as error:
        make()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_misuse_inside_a_pipeline_loop_is_refused():
    scheduler = fewstep("ddim", sampler_options={"eta": 1.0})
    scheduler.set_timesteps(3)
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="step\\(\\) at timestep 500.5, which starts no step of the plan"):
        scheduler.step(x, 500.5, x)
    with pytest.raises(ValueError, match=r"got \{'s_churn': 0.5\}; set them in sampler_options"):
        scheduler.step(x, scheduler.timesteps[0], x, s_churn=0.5)
    x = scheduler.step(x, scheduler.timesteps[0], x).prev_sample  # no generator: the global random state
    with pytest.raises(ValueError, match="got a generator mid-trajectory, but the trajectory started without one"):
        scheduler.step(x, scheduler.timesteps[1], x, generator=torch.Generator())


# -- eta, as DDIMScheduler.step takes it ------------------------------------------------------------
def eta_loop(scheduler, *eta, steps=4, seed=0, **step_kwargs):
    """A loop with a stand-in model; `eta` (if given) goes to step() as its 4th positional argument."""
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(99))
    for t in scheduler.timesteps:
        x = scheduler.step(0.3 * x, t, x, *eta, generator=generator, **step_kwargs).prev_sample
    return x


def test_step_has_the_signature_of_ddim_scheduler_step():
    ours, theirs = (list(inspect.signature(f).parameters.values())[:9] for f in (FewstepScheduler.step, DDIMScheduler.step))
    assert [(p.name, p.default) for p in ours] == [(p.name, p.default) for p in theirs]


def test_eta_of_step_sets_ddims_eta_for_the_trajectory():
    """A nonzero eta given to step() (positionally, as DDIMScheduler's 4th argument) acts as
    sampler_options["eta"] would and overrides it; eta 0 leaves sampler_options' eta."""
    with_options = eta_loop(fewstep("ddim", sampler_options={"eta": 0.7}))
    assert torch.equal(eta_loop(fewstep("ddim"), 0.7), with_options)
    assert torch.equal(eta_loop(fewstep("ddim", sampler_options={"eta": 0.2}), 0.7), with_options)
    assert torch.equal(eta_loop(fewstep("ddim", sampler_options={"eta": 0.7}), 0.0), with_options)
    deterministic = eta_loop(fewstep("ddim"), 0.0)
    assert (with_options - deterministic).abs().max() > 0.05
    assert torch.equal(eta_loop(fewstep("ddim"), 0.0, seed=1), deterministic)


@pytest.mark.parametrize("make, message", [
    (lambda: eta_loop(fewstep("euler"), 0.5), "sampler 'euler' has no eta, got eta=0.5; only ddim is stochastic"),
    (lambda: eta_loop(fewstep("ddim"), variance_noise=torch.zeros(2, 1, 4, 4)), "step() takes no variance_noise"),
    (lambda: eta_loop(fewstep("ddim"), 1.5), "ddim eta must be in [0, 1], got 1.5"),
])
def test_bad_eta_is_one_clear_line(make, message):
    with pytest.raises(ValueError) as error:
        make()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_different_eta_mid_trajectory_is_refused_and_zero_or_none_is_not():
    for name in ("euler", "dpmpp_2m"):  # eta 0 is what DDIMPipeline and StableDiffusionPipeline pass by default
        for eta in (0.0, None):
            assert torch.equal(eta_loop(fewstep(name), eta), eta_loop(fewstep(name)))
    scheduler = fewstep("ddim")
    scheduler.set_timesteps(3)
    x = torch.zeros(1, 1, 4, 4)
    x = scheduler.step(x, scheduler.timesteps[0], x, 0.7).prev_sample
    x = scheduler.step(x, scheduler.timesteps[1], x, 0.7).prev_sample  # the same eta again
    with pytest.raises(ValueError, match=r"^step\(\) got eta=0.3 mid-trajectory, which runs with eta=0.7; pass"):
        scheduler.step(x, scheduler.timesteps[2], x, 0.3)


def test_stable_diffusion_eta_reaches_fewstep_ddim_and_reproduces_ddim_scheduler(tmp_path):
    """StableDiffusionPipeline passes `eta` to step() only if step's signature names it; with the
    pipeline's own DDIMScheduler (steps_offset 1, set_alpha_to_one False) and the same generator,
    FewstepScheduler(ddim, discrete) gives the same latents at eta 0.5 and 1, and other ones at eta 0."""
    pipe = tiny_text_to_image(tmp_path)
    own = pipe.scheduler

    def latents(scheduler, eta):
        pipe.scheduler = scheduler
        return pipe("a cat", guidance_scale=3.0, num_inference_steps=4, eta=eta, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).images

    ours = FewstepScheduler.from_config(own.config, sampler="ddim", schedule="discrete")
    deterministic = latents(ours, 0.0)
    for eta in (0.5, 1.0):
        theirs, mine = latents(own, eta), latents(ours, eta)
        assert (mine - theirs).abs().max() < 1e-6 * theirs.abs().max()
        assert (mine - deterministic).abs().max() > 0.1 * eta * theirs.abs().max()
    with pytest.raises(ValueError, match="sampler 'euler' has no eta, got eta=0.5"):
        latents(FewstepScheduler.from_config(own.config, sampler="euler"), 0.5)


# -- the schedulers whose configs FewstepScheduler takes -------------------------------------------
@pytest.mark.parametrize("name", sorted(set(FewstepScheduler._compatibles) - {"FlowMatchEulerDiscreteScheduler"}))
def test_each_compatible_vp_scheduler_config_round_trips(name):  # flow matching: test_flow_scheduler.py
    cls = getattr(diffusers, name)
    if isinstance(cls, DummyObject):
        pytest.skip(f"{name} needs an optional package (torchsde) that is not installed")
    made = cls(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction")
    config = json.loads(made.to_json_string())  # as a pipeline directory's scheduler_config.json holds it
    ours = FewstepScheduler.from_config(config, sampler="dpmpp_2m")
    assert ours.config.prediction_type == "v_prediction"
    assert ours.config.timestep_spacing == config.get("timestep_spacing")  # None: the mirrored scheduler's default
    assert torch.allclose(ours.alphas_cumprod, DDPMScheduler.from_config(config).alphas_cumprod.double())
    back = cls.from_config(ours.config)
    assert back.config.prediction_type == "v_prediction" and back.config.beta_schedule == "scaled_linear"


def test_compatibles_are_every_diffusers_scheduler_with_a_vp_table_and_flow_matching():
    listed = set(FewstepScheduler._compatibles)
    assert "FlowMatchEulerDiscreteScheduler" in listed
    assert not listed & {"EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"}
    for member in KarrasDiffusionSchedulers:
        cls = getattr(diffusers, member.name)
        if member.name in listed:
            continue
        with pytest.raises(ValueError, match="no noise table"):
            FewstepScheduler.from_config(cls().config)
    assert {cls.__name__ for cls in fewstep().compatibles} == listed


# -- the command line: any local text-to-image pipeline ------------------------------------------
def test_cli_samples_text_to_image_pipelines_with_their_own_prediction_type(tmp_path):
    """One multirun over an epsilon and a v-prediction pipeline; each result equals the pipeline run
    in this process with FewstepScheduler and one generator per sample (seed + i)."""
    dirs = {}
    for prediction_type in ("epsilon", "v_prediction"):
        tiny_text_to_image(tmp_path / "tok", prediction_type).save_pretrained(tmp_path / prediction_type)
        dirs[prediction_type] = tmp_path / prediction_type
    done = run("-m", "model=diffusers", f"model.path={dirs['epsilon']},{dirs['v_prediction']}",
               "sampler=dpmpp_2m", "steps=3", "num_samples=3", "batch_size=2", "seed=5", "prompt=a red cat",
               "guidance_scale=4.0", f"out_dir={tmp_path}/run" + "${hydra:job.num}", f"hydra.sweep.dir={tmp_path}/sweep")
    assert done.returncode == 0, done.stderr
    for job, (prediction_type, path) in enumerate(dirs.items()):
        assert f"StableDiffusionPipeline ({prediction_type}), prompt 'a red cat', guidance_scale 4.0" in done.stdout
        samples = np.load(tmp_path / f"run{job}" / "samples.npz")["samples"]
        pipe = DiffusionPipeline.from_pretrained(str(path))
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = FewstepScheduler.from_config(pipe.scheduler.config, sampler="dpmpp_2m")
        images = torch.cat([pipe("a red cat", num_images_per_prompt=len(seeds), guidance_scale=4.0, num_inference_steps=3,
                                 generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt").images
                            for seeds in ([5, 6], [7])])
        assert samples.shape == (3, 3, 16, 16)
        assert np.abs(samples - (images.numpy() * 2 - 1)).max() < 1e-5


def test_cli_refuses_a_prompt_for_an_unconditional_model(tmp_path):
    done = run("model=gmm", "prompt=a cat", f"out_dir={tmp_path}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: prompt='a cat' needs a text-to-image pipeline directory "
        "(model=diffusers model.path=DIR)")


@pytest.mark.parametrize("settings, grid", [
    (dict(schedule="karras", rho=3.0), lambda lo, hi: samplers.get_sigmas("karras", 5, lo, hi, rho=3.0)),
    (dict(schedule="time_uniform", eps_s=0.05), lambda lo, hi: samplers.get_sigmas("time_uniform", 5, lo, hi, eps_s=0.05)),
    (dict(sigma_min=0.5, sigma_max=20.0), lambda lo, hi: samplers.get_sigmas("karras", 5, 0.5, 20.0)),
])
def test_the_schedules_settings_reach_the_grid(settings, grid):
    scheduler, default = fewstep("euler", **settings), fewstep("euler")
    for s in (scheduler, default):
        s.set_timesteps(5)
    table = scheduler.log_sigmas.exp()
    assert torch.allclose(scheduler.grid, grid(float(table[0]), float(table[-1])), rtol=1e-12)
    assert not torch.allclose(scheduler.grid, default.grid)


@pytest.mark.parametrize("settings", [dict(), dict(final_sigmas_type="sigma_min"),
                                      dict(sigma_min=0.05, sigma_max=10.0, rho=5.0)])
def test_the_one_pass_karras_plan_is_get_sigmas_and_the_fractional_timesteps_bit_for_bit(settings):
    """`plans.KarrasPlan` (ddim's, euler's, dpmpp_2m's default plan) against the general path."""
    scheduler = fewstep("ddim", **settings)
    assert scheduler._karras is not None
    table = scheduler.log_sigmas
    lo, hi = settings.get("sigma_min", float(table[0].exp())), settings.get("sigma_max", float(table[-1].exp()))
    for n in (1, 2, 7, 12, 50):
        scheduler.set_timesteps(n)
        grid = samplers.get_sigmas("karras", n, lo, hi, rho=settings.get("rho", 7.0),
                                   final_sigmas_type=settings.get("final_sigmas_type", "zero"))
        timesteps = samplers.spaces.fractional_timestep(grid[:-1], table).float()
        assert torch.equal(scheduler.grid, grid) and scheduler.sigmas is scheduler.grid
        assert torch.allclose(scheduler.timesteps, timesteps, rtol=0, atol=1e-4)
        assert torch.equal(scheduler.timesteps, torch.from_numpy(scheduler._space.timestep(grid[:-1].numpy())).float())


def test_a_table_is_matched_on_the_samplers_options(tmp_path):
    """A table searched for ipndm with max_order 3 plans for that sampler, not for plain ipndm."""
    grid = [80.0, 10.0, 1.0, 0.0]
    (tmp_path / "ipndm.json").write_text(json.dumps({"sampler": "ipndm", "options": {"max_order": 3},
                                                     "fingerprint": "0" * 16, "by_nfe": {"3": {"sigmas": grid}}}))
    ours = fewstep("ipndm", sampler_options={"max_order": 3}, schedule_table=str(tmp_path / "ipndm.json"))
    ours.set_timesteps(3)
    assert ours.grid.tolist() == grid
    with pytest.raises(ValueError, match=r"holds grids of sampler ipndm \{'max_order': 3\}, not of ipndm \{\}$"):
        fewstep("ipndm", schedule_table=str(tmp_path / "ipndm.json")).set_timesteps(3)
