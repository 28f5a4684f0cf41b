"""Generators as `sample_fn(seeds) -> samples` (evaluation.seeds): a denoiser with a sampler, a
one-step generator, a text-to-image pipeline. Each counts the network evaluations (NFE) a sample cost."""
from __future__ import annotations

import inspect

import torch

from ..samplers import sample_seeds
from ..samplers.noise import generators, seeded_noise


class SamplerFn:
    """A denoiser and a sampler as a sample_fn: `samplers.sample_seeds` down `sigmas`, one batch per
    call. `nfe` is the mean number of denoiser calls per batch so far (each sample of a batch costs
    them all), which an adaptive sampler only knows once it has run. cond: `seeds -> conditioning
    keywords`, one row per seed (a conditional model's: the class of the seed's place in the run), so a
    sample's conditioning, like its noise, depends on its seed alone."""

    def __init__(self, name: str, denoiser, sigmas, shape, device=None, options=None, callback=None, cond=None):
        self.name, self.denoiser, self.sigmas, self.shape = name, denoiser, sigmas, tuple(shape)
        self.device, self.options, self.callback, self.cond = device, dict(options or {}), callback, cond
        self.calls = self.batches = 0

    def _count(self, info) -> None:
        self.calls += 1
        if self.callback is not None:
            self.callback(info)

    def __call__(self, seeds) -> torch.Tensor:
        seeds = list(seeds)
        if not seeds:
            return torch.empty(0, *self.shape)
        batches = list(sample_seeds(self.name, self.denoiser, seeds, self.sigmas, self.shape,
                                    batch_size=max(len(seeds), 1), device=self.device, callback=self._count,
                                    options=self.options, cond=self._cond(seeds)))
        self.batches += 1
        return torch.cat(batches)

    def _cond(self, seeds) -> dict | None:
        if self.cond is None:
            return None
        return {key: value.to(self.device) for key, value in self.cond(seeds).items()}

    @property
    def nfe(self) -> float:
        return self.calls / max(self.batches, 1)


class GeneratorFn:
    """A one-step generator `g(z)` (`gan.generators`) as a sample_fn: sample `i` from the latent
    `samplers.seeded_noise` of `seeds[i]`, one network
    evaluation per sample."""

    nfe = 1

    def __init__(self, generator, device=None):
        self.generator, self.device = generator, device

    @torch.no_grad()
    def __call__(self, seeds) -> torch.Tensor:
        seeds = list(seeds)
        if not seeds:
            return torch.empty(0, *self.generator.sample_shape)
        return self.generator(seeded_noise(seeds, self.generator.latent_shape, self.device)).float().cpu()


class PipelineFn:
    """A diffusers text-to-image pipeline as a sample_fn: `prompt` at `size` x `size`, images in
    [-1, 1], image `i` from a `torch.Generator` seeded with `seeds[i]` (as the pipeline draws its
    latents for a list of generators). The pipeline's scheduler is already set for `steps`."""

    def __init__(self, pipe, prompt: str, size: int, steps: int, guidance_scale: float | None = None):
        if guidance_scale is None:
            guidance_scale = inspect.signature(pipe.__call__).parameters["guidance_scale"].default
        self.pipe, self.prompt, self.size, self.steps, self.guidance_scale = pipe, prompt, size, steps, guidance_scale

    def __call__(self, seeds) -> torch.Tensor:
        seeds = [int(s) for s in seeds]
        images = self.pipe(self.prompt, height=self.size, width=self.size, num_inference_steps=self.steps,
                           guidance_scale=self.guidance_scale, num_images_per_prompt=len(seeds),
                           generator=generators(seeds), output_type="pt").images
        return images.cpu() * 2 - 1

    @property
    def nfe(self) -> int:
        return len(self.pipe.scheduler.timesteps)
