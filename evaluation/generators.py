"""Generators as `sample_fn(seeds) -> samples` (evaluation.seeds): a denoiser with a sampler, a
one-step generator, a text-to-image pipeline, and the one a sample config asks for. Each counts the network evaluations
(NFE) a sample cost."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch


class SamplerFn:
    """A denoiser and a sampler as a sample_fn: `samplers.sample_seeds` down `sigmas`, one batch per
    call. `nfe` is the mean number of denoiser calls per batch so far (each sample of a batch costs
    them all), which an adaptive sampler only knows once it has run."""

    def __init__(self, name: str, denoiser, sigmas, shape, device=None, options=None, callback=None):
        self.name, self.denoiser, self.sigmas, self.shape = name, denoiser, sigmas, tuple(shape)
        self.device, self.options, self.callback = device, dict(options or {}), callback
        self.calls = self.batches = 0

    def _count(self, info) -> None:
        self.calls += 1
        if self.callback is not None:
            self.callback(info)

    def __call__(self, seeds) -> torch.Tensor:
        from ..samplers import sample_seeds

        seeds = list(seeds)
        if not seeds:
            return torch.empty(0, *self.shape)
        batches = list(sample_seeds(self.name, self.denoiser, seeds, self.sigmas, self.shape,
                                    batch_size=max(len(seeds), 1), device=self.device, callback=self._count,
                                    options=self.options))
        self.batches += 1
        return torch.cat(batches)

    @property
    def nfe(self) -> float:
        return self.calls / max(self.batches, 1)


class GeneratorFn:
    """A one-step generator `g(z)` (`gan.generators`) as a sample_fn: sample `i` from the latent
    `randn(latent_shape)` of a `torch.Generator` seeded with `seeds[i]` alone, one network
    evaluation per sample."""

    nfe = 1

    def __init__(self, generator, device=None):
        self.generator, self.device = generator, device

    @torch.no_grad()
    def __call__(self, seeds) -> torch.Tensor:
        shape = tuple(self.generator.latent_shape)
        z = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        if not z:
            return torch.empty(0, *self.generator.sample_shape)
        return self.generator(torch.stack(z).to(self.device)).float().cpu()


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
                           generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt").images
        return images.cpu() * 2 - 1

    @property
    def nfe(self) -> int:
        return len(self.pipe.scheduler.timesteps)


@dataclass
class Sampling:
    """What a sample config sets up. `model` is what Skip-Tuning tunes (the denoiser or the
    pipeline); `options` are the sampler's as text (an AMED predictor by its directory);
    `planned_nfe` is None for an adaptive sampler; `lines` say what will run; `metadata` are
    the extra keys of samples.npz."""
    sample_fn: SamplerFn | GeneratorFn | PipelineFn
    model: Any
    name: str
    options: dict
    steps: int
    sigmas: torch.Tensor
    planned_nfe: int | None
    lines: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)


def sampler_given() -> bool:
    """Whether the command line of the running Hydra app names a sampler (`sampler=...`)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and any(o.lstrip("+~").split("=")[0] == "sampler"
                                             for o in HydraConfig.get().overrides.task)


def _one_step(cfg, generator, device) -> Sampling:
    """A one-step generator's Sampling: no sampler, no grid, 1 NFE."""
    if sampler_given():
        raise ValueError(f"the model is a one-step generator ({type(generator).__name__}) and takes no sampler; "
                         f"got sampler={cfg.sampler.name}")
    size = tuple(generator.sample_shape)[1:]
    if cfg.image_size is not None and size != (cfg.image_size, cfg.image_size):
        raise ValueError(f"the generator makes samples of shape {tuple(generator.sample_shape)}; it cannot make "
                         f"image_size={cfg.image_size}")
    generator = generator.to(device).eval()
    line = (f"one-step generator {type(generator).__name__}: NFE 1, latent {tuple(generator.latent_shape)}, "
            f"{cfg.num_samples} samples of {tuple(generator.sample_shape)}")
    return Sampling(GeneratorFn(generator, device), generator, "generator", {}, 1, torch.zeros(0), 1, [line])


def from_config(cfg, device) -> Sampling:
    """The generator of a sample config (samplers.config.SampleConfig): a text-to-image pipeline
    when `model.path` holds one, a one-step generator (`gan.load_generator`: a model with a
    `latent_shape`) as it is, else the model's denoiser with the sampler on the sigma grid."""
    from hydra.utils import instantiate

    from ..samplers import nfe
    from ..samplers.config import pipeline_setup, printable, sampling_setup, text_to_image_dir

    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be at least 1, got {cfg.num_samples} and {cfg.batch_size}")
    name, options = cfg.sampler.name, dict(cfg.sampler.options)
    path = text_to_image_dir(cfg)
    if path is not None:
        pipe, steps = pipeline_setup(cfg, path, device)
        size = cfg.image_size or pipe.unet.config.sample_size * pipe.vae_scale_factor
        fn = PipelineFn(pipe, cfg.prompt or "", size, steps, cfg.guidance_scale)
        shape, sigmas, planned = (pipe.vae.config.out_channels, size, size), pipe.scheduler.grid, fn.nfe
        first = [f"{type(pipe).__name__} ({pipe.scheduler.config.prediction_type}), prompt {fn.prompt!r}, "
                 f"guidance_scale {fn.guidance_scale}"]
        metadata, model = {"prompt": fn.prompt, "guidance_scale": fn.guidance_scale}, pipe
    else:
        if cfg.prompt is not None or cfg.guidance_scale is not None:
            raise ValueError(f"prompt={cfg.prompt!r} and guidance_scale={cfg.guidance_scale} need a text-to-image "
                             f"pipeline directory (model=diffusers model.path=DIR)")
        model = instantiate(cfg.model, _convert_="all")
        if getattr(model, "latent_shape", None) is not None:
            return _one_step(cfg, model, device)
        model, shape, steps, sigmas, how, options = sampling_setup(cfg, device, model)
        fn = SamplerFn(name, model, sigmas, shape, device, options)
        planned, first, metadata = nfe(name, sigmas, options), [how], {}
    shown = printable(options)
    line = (f"{name} {shown}: {steps} steps, NFE {planned if planned is not None else 'adaptive'}, "
            f"sigma {' -> '.join(f'{float(s):.4g}' for s in (sigmas[0], sigmas[-2], sigmas[-1]))}, "
            f"{cfg.num_samples} samples of {shape}")
    return Sampling(fn, model, name, shown, steps, sigmas, planned, [*first, line], metadata)
