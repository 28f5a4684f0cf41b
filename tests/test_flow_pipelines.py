"""FewstepScheduler in the flow-matching pipelines people use, built small from random configs (no
tokenizers: `prompt_embeds=`): StableDiffusion3Pipeline (a static shift, planned by the scheduler) and
FluxPipeline (dynamic shifting: it passes `sigmas=` and `mu=`). Euler is FlowMatchEulerDiscreteScheduler and
heun FlowMatchHeunDiscreteScheduler; every sampler starts at exactly t = 1. A shifted flow loaded with
`samplers.from_pretrained` keeps its shift."""
import pytest
import torch
from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, FluxPipeline,
                       FluxTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline)

from fewstep import samplers
from fewstep.pipelines import FewstepScheduler
from fewstep.samplers.flow_shift import FlowShift

pytestmark = pytest.mark.usefixtures("one_thread")
SAMPLERS = ["ddim", "euler", "heun", "dpmpp_2m", "ipndm", "dpm_2", "amed"]


def vae(latent_channels: int) -> AutoencoderKL:
    return AutoencoderKL(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(4, 8),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False,
                         use_post_quant_conv=False)


@pytest.fixture(scope="module")
def sd3():
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                                        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
                                        pooled_projection_dim=64, out_channels=4)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae(4), text_encoder=None, tokenizer=None, text_encoder_2=None,
                                    tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    embeds = {"prompt_embeds": torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(1)),
              "pooled_prompt_embeds": torch.randn(2, 64, generator=torch.Generator().manual_seed(2)),
              "guidance_scale": 1.0}
    return pipe, embeds


@pytest.fixture(scope="module")
def flux():
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    pipe = FluxPipeline(transformer=transformer, vae=vae(1), text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    pipe.set_progress_bar_config(disable=True)
    embeds = {"prompt_embeds": torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(1)),
              "pooled_prompt_embeds": torch.randn(2, 32, generator=torch.Generator().manual_seed(2))}
    return pipe, embeds


def latents(pipe_and_embeds, scheduler, steps=4):
    pipe, embeds = pipe_and_embeds
    pipe.scheduler = scheduler
    return pipe(**embeds, num_inference_steps=steps, height=16, width=16, output_type="latent",
                generator=torch.Generator().manual_seed(0)).images


def close(ours, theirs, tolerance=1e-5):
    """`ours` within `tolerance` of `theirs`' range."""
    return float((ours - theirs).abs().max()) <= tolerance * float(theirs.max() - theirs.min())


@pytest.mark.parametrize("config", [{"shift": 3.0}, {"shift": 3.0, "shift_terminal": 0.05}])
def test_sd3_euler_and_heun_are_flow_match_euler_and_heun_under_its_shift(sd3, config):
    own = FlowMatchEulerDiscreteScheduler(**config)
    theirs = latents(sd3, own)
    assert close(latents(sd3, FewstepScheduler.from_config(own.config, sampler="euler")), theirs)
    heun = FlowMatchHeunDiscreteScheduler(shift=3.0)
    assert close(latents(sd3, FewstepScheduler.from_config(heun.config, sampler="heun", final_sigmas_type="zero")),
                 latents(sd3, heun))
    assert not close(theirs, latents(sd3, FlowMatchEulerDiscreteScheduler()), 1e-3)  # the shift changes the image


@pytest.mark.parametrize("kind", ["exponential", "linear"])
def test_flux_euler_is_flow_match_euler_with_dynamic_shifting_and_mu(flux, kind):
    """FluxPipeline passes `sigmas=linspace(1, 1/n, n)` and `mu` from the image's sequence length."""
    own = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type=kind)
    ours = FewstepScheduler.from_config(own.config, sampler="euler")
    assert close(latents(flux, ours), latents(flux, own))
    assert torch.allclose(ours.timesteps, own.timesteps, atol=1e-3) and own.sigmas[0] == 1


@pytest.fixture(scope="module")
def converged(sd3, flux):
    """Each pipeline with its own scheduler's config and its 100-step Euler latents."""
    configs = [FlowMatchEulerDiscreteScheduler(shift=3.0).config,
               FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config]
    return [(pipe, config, latents(pipe, FlowMatchEulerDiscreteScheduler.from_config(config), steps=100))
            for pipe, config in zip((sd3, flux), configs)]


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_starts_both_pipelines_at_t_1(converged, name):
    """From exactly t = 1 every sampler ends near Euler's many-step image (none diverges)."""
    for pipe, config, reference in converged:
        ours = FewstepScheduler.from_config(config, sampler=name)
        got = latents(pipe, ours, steps=6)
        assert ours.grid[0] / (1 + ours.grid[0]) == pytest.approx(1.0)
        assert float((got - reference).norm() / reference.norm()) < 0.1, name


def test_a_non_euler_sampler_plans_as_dpm_solver_plans_a_flow():
    """dpmpp_2m, ipndm, dpm_2, amed: `linspace(1, 1/T, n + 1)[:-1]`, shifted, then 0 (DPMSolverMultistep and
    UniPC with `use_flow_sigmas`); euler, ddim, heun: FlowMatchEuler's plan."""
    config = FlowMatchEulerDiscreteScheduler(shift=3.0).config
    ours = FewstepScheduler.from_config(config, sampler="dpmpp_2m")
    ours.set_timesteps(5)
    expected = FlowShift(3.0).static(torch.linspace(1, 1 / 1000, 6, dtype=torch.float64)[:-1])
    assert torch.allclose(ours.grid[:-1] / (1 + ours.grid[:-1]), expected) and ours.grid[-1] == 0
    own, euler = FlowMatchEulerDiscreteScheduler(shift=3.0), FewstepScheduler.from_config(config, sampler="euler")
    own.set_timesteps(5)
    euler.set_timesteps(5)
    assert torch.allclose((euler.grid / (1 + euler.grid)).float(), own.sigmas, atol=1e-6)


def test_a_shifted_flow_loaded_by_from_pretrained_keeps_its_shift(tmp_path):
    from diffusers import DDPMPipeline
    from helpers import tiny_unet

    DDPMPipeline(unet=tiny_unet(), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, shift_terminal=0.1)
                 ).save_pretrained(tmp_path)
    denoiser = samplers.from_pretrained(tmp_path)
    assert denoiser.shift == FlowShift(3.0, terminal=0.1)
    grid = samplers.get_sigmas("flow_uniform", 4, 1 / 999, 1e8)
    shifted = denoiser.shifted(grid)
    t = shifted / (1 + shifted)
    assert t[-2] == pytest.approx(0.1) and t[-1] == 0 and (shifted[1:] < shifted[:-1]).all()
    torch.testing.assert_close(t[:-1], FlowShift(3.0, terminal=0.1).times(grid[:-1] / (1 + grid[:-1])))


def test_the_time_shifts_are_diffusers_formulas():
    t = torch.tensor([1.0, 0.7, 0.3, 0.05], dtype=torch.float64)
    own = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    for kind, mu in (("exponential", 0.8), ("linear", 1.3)):
        own.register_to_config(time_shift_type=kind)
        torch.testing.assert_close(FlowShift(dynamic=True, kind=kind).times(t, mu), own.time_shift(mu, 1.0, t))
    assert FlowShift(dynamic=True).mu_for(256) == pytest.approx(0.5) and FlowShift().mu_for(4096) == pytest.approx(1.15)
