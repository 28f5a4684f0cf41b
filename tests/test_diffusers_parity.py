"""Exact parity with diffusers' own schedulers on a tiny random UNet: same noise, same timesteps."""
import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.models.unets.unet_2d import UNet2DOutput
from diffusers.utils.torch_utils import randn_tensor

import samplers
from conftest import tiny_unet

TABLE = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


class NoiseLikeUNet(UNet2DModel):
    """A random UNet plus its input: it predicts roughly the noise of data near 0, so samples stay
    in the picture range and the pipeline's final clamp does not hide differences."""

    def forward(self, sample, timestep, **kwargs):
        return UNet2DOutput(sample=sample + 0.1 * super().forward(sample, timestep).sample)


@pytest.fixture
def unet():
    torch.manual_seed(0)
    return NoiseLikeUNet.from_config(tiny_unet().config).eval()


def run_pipeline(unet, scheduler, steps, seed):
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=4, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                output_type="pt").images


def run_fewstep(unet, name, steps, seed, spacing):
    denoiser = samplers.DiffusersUNetDenoiser.from_config(unet, DDPMScheduler(**TABLE).config)
    sigmas = samplers.get_sigmas("discrete", steps, alphas_cumprod=denoiser.alphas_cumprod, spacing=spacing)
    noise_vp = randn_tensor((4, 1, 8, 8), generator=torch.Generator().manual_seed(seed))
    s0 = float(sigmas[0])
    # diffusers starts from unit-variance x_vp: x = x_vp sqrt(1 + s0^2) in sigma space (DESIGN §2)
    x0 = samplers.sample(name, denoiser, noise_vp * math.sqrt(1 + s0 ** 2) / s0, sigmas)
    return (x0 / 2 + 0.5).clamp(0, 1)


def assert_close_and_informative(ours, theirs):
    inside = ((theirs > 0) & (theirs < 1)).float().mean()
    assert inside > 0.2, "the comparison would be dominated by clamped pixels"
    assert (ours - theirs).abs().max() < 1e-4


@pytest.mark.parametrize("steps", [5, 10])
def test_ddim_matches_ddim_scheduler_in_ddpm_pipeline(unet, steps):
    theirs = run_pipeline(unet, DDIMScheduler(**TABLE, clip_sample=False), steps, seed=1)
    ours = run_fewstep(unet, "ddim", steps, seed=1, spacing="leading")
    assert_close_and_informative(ours, theirs)


@pytest.mark.parametrize("steps", [4, 10])
def test_dpmpp_2m_matches_dpm_solver_multistep(unet, steps):
    scheduler = DPMSolverMultistepScheduler(**TABLE, algorithm_type="dpmsolver++", solver_order=2,
                                            timestep_spacing="trailing")
    theirs = run_pipeline(unet, scheduler, steps, seed=2)
    ours = run_fewstep(unet, "dpmpp_2m", steps, seed=2, spacing="trailing")
    assert_close_and_informative(ours, theirs)


def test_ddim_with_and_without_parity_differ_only_by_the_prior_scale(unet):
    """A guard on the test itself: without the sqrt(1 + s0^2) / s0 correction the samples move."""
    denoiser = samplers.DiffusersUNetDenoiser.from_config(unet, DDPMScheduler(**TABLE).config)
    sigmas = samplers.get_sigmas("discrete", 5, alphas_cumprod=denoiser.alphas_cumprod)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    a = samplers.sample("ddim", denoiser, noise, sigmas)
    s0 = float(sigmas[0])
    b = samplers.sample("ddim", denoiser, noise * math.sqrt(1 + s0 ** 2) / s0, sigmas)
    assert 1e-6 < (a - b).abs().max() < 0.05
