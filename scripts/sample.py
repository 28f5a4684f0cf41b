"""Sample a model with any sampler; write `samples.npz` and `samples.png` to the run directory.

    python scripts/sample.py                                # DDIM, 10 steps, the embedded digits model
    python scripts/sample.py sampler=heun nfe=9 schedule.kind=logsnr
    python scripts/sample.py model=gmm sampler=dopri5
    python scripts/sample.py model=diffusers model.path=/path/to/ddpm-cifar10-32
    python scripts/sample.py model=diffusers model.path=/path/to/sd-pipeline prompt="a cat" guidance_scale=5
"""
import inspect
import json
from pathlib import Path

import hydra
from accelerate import Accelerator
from accelerate.utils import gather_object
import torch
from tqdm.auto import tqdm

from fewstep import samplers
from fewstep.scripts._cli import CONFIG_PATH, one_line_errors, resolve_device, sampling_setup, skip_tuning_for
from fewstep.evaluation.output import save_samples


def text_to_image_dir(cfg) -> Path | None:
    """The model directory when it holds a diffusers pipeline with a text encoder (Stable-Diffusion style)."""
    path = cfg.model.get("path")
    index = Path(str(path)).expanduser() / "model_index.json" if path is not None else None
    if index is None or not index.is_file():
        return None
    return index.parent if json.loads(index.read_text()).get("text_encoder", [None])[0] else None


def sample_pipeline(cfg, path: Path, device) -> None:
    """Run the pipeline itself with FewstepScheduler in place of its scheduler: prompt encoding,
    classifier-free guidance and VAE decoding stay diffusers' own, and the noise table and
    prediction_type come from the pipeline's scheduler config. Sample `i` is drawn from seed + i."""
    from diffusers import DiffusionPipeline

    name, options, sc = cfg.sampler.name, dict(cfg.sampler.options), cfg.schedule
    steps = cfg.steps if cfg.nfe is None else samplers.steps_for_nfe(name, cfg.nfe, **options)
    pipe = DiffusionPipeline.from_pretrained(str(path)).to(device)
    pipe.set_progress_bar_config(disable=True)
    own = {k: v for k, v in (("timestep_spacing", sc.spacing and sc.spacing.value), ("steps_offset", sc.steps_offset))
           if v is not None}  # unset: the pipeline's own
    pipe.scheduler = samplers.FewstepScheduler.from_config(
        pipe.scheduler.config, sampler=name, sampler_options=options, schedule=sc.kind.value, rho=sc.rho,
        sigma_min=sc.sigma_min, sigma_max=sc.sigma_max, eps_s=sc.eps_s, **own)
    pipe.scheduler.set_timesteps(steps, device=device)
    grid, nfe = pipe.scheduler.grid, len(pipe.scheduler.timesteps)
    size = cfg.image_size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    prompt = cfg.prompt or ""
    guidance = cfg.guidance_scale
    if guidance is None:
        guidance = inspect.signature(pipe.__call__).parameters["guidance_scale"].default
    print(f"{type(pipe).__name__} ({pipe.scheduler.config.prediction_type}), prompt {prompt!r}, guidance_scale {guidance}")
    print(f"{name} {options}: {steps} steps, NFE {nfe}, sigma {float(grid[0]):.4g} -> {float(grid[-2]):.4g} -> 0, "
          f"{cfg.num_samples} samples of {(pipe.vae.config.out_channels, size, size)}")
    batches = []
    with skip_tuning_for(cfg, pipe, nfe):
        for start in tqdm(range(cfg.seed, cfg.seed + cfg.num_samples, cfg.batch_size), desc="sample"):
            seeds = range(start, min(start + cfg.batch_size, cfg.seed + cfg.num_samples))
            images = pipe(prompt, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
                          num_images_per_prompt=len(seeds), generator=[torch.Generator().manual_seed(s) for s in seeds],
                          output_type="pt").images
            batches.append(images.cpu() * 2 - 1)
    npz, png = save_samples(torch.cat(batches), cfg.out_dir, title=f"{name}, NFE {nfe}", sampler=name, steps=steps,
                            nfe=nfe, sigmas=grid.numpy(), seed=cfg.seed, prompt=prompt, guidance_scale=guidance)
    print(f"NFE used per sample: {nfe}")
    print(f"wrote {png} and {npz}")


@hydra.main(config_path=CONFIG_PATH, config_name="sample", version_base="1.3")
@one_line_errors
def main(cfg):
    device = resolve_device(cfg.device)
    name, options = cfg.sampler.name, dict(cfg.sampler.options)
    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be at least 1, got {cfg.num_samples} and {cfg.batch_size}")
    pipeline_dir = text_to_image_dir(cfg)
    if pipeline_dir is not None:
        return sample_pipeline(cfg, pipeline_dir, device)
    if cfg.prompt is not None or cfg.guidance_scale is not None:
        raise ValueError(f"prompt={cfg.prompt!r} and guidance_scale={cfg.guidance_scale} need a text-to-image "
                         f"pipeline directory (model=diffusers model.path=DIR)")
    acc = Accelerator(cpu=device.type == "cpu")  # under `accelerate launch`, the seeds are split over processes
    if acc.num_processes > 1:
        device = acc.device
    denoiser, shape, steps, sigmas = sampling_setup(cfg, device)
    planned = samplers.nfe(name, sigmas, **options)
    acc.print(f"{name} {options}: {steps} steps, NFE {planned if planned is not None else 'adaptive'}, "
          f"sigma {float(sigmas[0]):.4g} -> {float(sigmas[-2]):.4g} -> 0, {cfg.num_samples} samples of {shape}")

    calls = 0

    def count(_):
        nonlocal calls
        calls += 1

    seeds = list(range(cfg.seed, cfg.seed + cfg.num_samples))[acc.process_index::acc.num_processes]
    with skip_tuning_for(cfg, denoiser, planned or 0):
        batches = [x.cpu() for x in tqdm(samplers.sample_seeds(name, denoiser, seeds, sigmas, shape, cfg.batch_size,
                                                               device, callback=count, **options),
                                         total=-(-len(seeds) // cfg.batch_size), desc="sample",
                                         disable=not acc.is_main_process)]
    per_batch = calls / max(len(batches), 1)
    parts = gather_object([(seeds, torch.cat(batches) if batches else None)])
    if not acc.is_main_process:
        return
    by_seed = {s: x for part_seeds, part in parts if part is not None for s, x in zip(part_seeds, part)}
    x = torch.stack([by_seed[s] for s in sorted(by_seed)])
    npz, png = save_samples(x, cfg.out_dir, title=f"{name}, NFE {per_batch:g}", sampler=name, steps=steps,
                            nfe=per_batch, sigmas=sigmas.cpu().numpy(), seed=cfg.seed)
    print(f"NFE used per sample: {per_batch:g}")
    print(f"wrote {png} and {npz}")


if __name__ == "__main__":
    main()
