"""Sample a model with any sampler; write `samples.npz` and `samples.png` to the run directory.

    python scripts/sample.py                                # DDIM, 10 steps, the embedded digits model
    python scripts/sample.py sampler=heun nfe=9 schedule.kind=logsnr
    python scripts/sample.py model=gmm sampler=dopri5
    python scripts/sample.py model=diffusers model.path=/path/to/ddpm-cifar10-32
"""
import hydra
import torch
from diffusers.utils.torch_utils import randn_tensor
from hydra.utils import instantiate
from tqdm.auto import tqdm

import samplers
from _cli import one_line_errors, resolve_device
from samplers.output import save_samples


def sigmas_for(cfg, denoiser, steps: int, device) -> torch.Tensor:
    sc = cfg.schedule
    return samplers.get_sigmas(
        sc.kind.value, steps,
        sigma_min=denoiser.sigma_min if sc.sigma_min is None else sc.sigma_min,
        sigma_max=denoiser.sigma_max if sc.sigma_max is None else sc.sigma_max,
        rho=sc.rho, alphas_cumprod=getattr(denoiser, "alphas_cumprod", None), spacing=sc.spacing.value,
        steps_offset=sc.steps_offset, eps_s=sc.eps_s, device=device)


@hydra.main(config_path="../conf", config_name="sample", version_base="1.3")
@one_line_errors
def main(cfg):
    device = resolve_device(cfg.device)
    name, options = cfg.sampler.name, dict(cfg.sampler.options)
    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be at least 1, got {cfg.num_samples} and {cfg.batch_size}")
    denoiser = instantiate(cfg.model, _convert_="all").to(device).eval()
    shape = tuple(denoiser.sample_shape)
    if cfg.image_size is not None:
        shape = (shape[0], cfg.image_size, cfg.image_size)
    if hasattr(denoiser, "check_shape"):
        denoiser.check_shape(shape)
    steps = cfg.steps if cfg.nfe is None else samplers.steps_for_nfe(name, cfg.nfe, **options)
    sigmas = sigmas_for(cfg, denoiser, steps, device)
    planned = samplers.nfe(name, sigmas, **options)
    print(f"{name} {options}: {steps} steps, NFE {planned if planned is not None else 'adaptive'}, "
          f"sigma {float(sigmas[0]):.4g} -> {float(sigmas[-2]):.4g} -> 0, {cfg.num_samples} samples of {shape}")

    calls, batches = 0, []

    def count(_):
        nonlocal calls
        calls += 1

    for start in tqdm(range(0, cfg.num_samples, cfg.batch_size), desc="sample"):
        seeds = range(cfg.seed + start, cfg.seed + min(start + cfg.batch_size, cfg.num_samples))
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        noise = randn_tensor((len(seeds), *shape), generator=generators, device=device, dtype=torch.float32)
        batches.append(samplers.sample(name, denoiser, noise, sigmas, generator=generators, callback=count, **options).cpu())
    x = torch.cat(batches)
    per_batch = calls / len(batches)
    npz, png = save_samples(x, cfg.out_dir, title=f"{name}, NFE {per_batch:g}", sampler=name, steps=steps,
                            nfe=per_batch, sigmas=sigmas.cpu().numpy(), seed=cfg.seed)
    print(f"NFE used per sample: {per_batch:g}")
    print(f"wrote {png} and {npz}")


if __name__ == "__main__":
    main()
