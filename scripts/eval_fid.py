"""Fréchet distance between a sampler's output and reference statistics; prints it, writes JSON.

    python scripts/eval_fid.py sampler=dpmpp_2m steps=10                 # FD-digits, 2000 samples
    python scripts/eval_fid.py model=gmm extractor=raw reference=analytic sampler=heun nfe=9
    accelerate launch --multi_gpu --num_processes 2 scripts/eval_fid.py  # the same samples, split
"""
import hashlib
import json
import time
from pathlib import Path

import hydra
import torch
from accelerate import Accelerator
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fewstep import samplers
from fewstep.scripts._cli import CONFIG_PATH, one_line_errors, resolve_device, sampling_setup, skip_tuning_for
from fewstep.evaluation import get_extractor, load_stats
from fewstep.evaluation.fid import accumulate, data_stats, fd_to, gmm_stats


def reference_stats(cfg, denoiser, extractor, acc):
    if cfg.reference == "analytic":
        if not isinstance(denoiser, samplers.GMMDenoiser) or cfg.extractor != "raw":
            raise ValueError("reference=analytic needs model=gmm and extractor=raw")
        return gmm_stats(denoiser)
    if cfg.reference != "data":
        return load_stats(cfg.reference)
    if cfg.data is None:
        raise ValueError("reference=data needs a data set (data=...)")
    weights = Path(cfg.extractor_weights).expanduser() if cfg.extractor_weights else None
    weights_id = f"{weights.resolve()}:{weights.stat().st_size}:{weights.stat().st_mtime_ns}" if weights else ""
    key = hashlib.sha1((OmegaConf.to_yaml(cfg.data) + weights_id).encode()).hexdigest()[:10]
    cache = Path(cfg.cache_dir) / f"{cfg.data._target_.rsplit('.', 1)[-1]}-{key}-{cfg.extractor}.npz"
    if acc.is_main_process:  # one process fills the cache; the others then read it
        data_stats(instantiate(cfg.data), extractor, cache, device=acc.device)
    acc.wait_for_everyone()
    return load_stats(cache)


@hydra.main(config_path=CONFIG_PATH, config_name="eval", version_base="1.3")
@one_line_errors
def main(cfg):
    acc = Accelerator(cpu=resolve_device(cfg.device).type == "cpu")
    denoiser, shape, steps, sigmas = sampling_setup(cfg, acc.device)
    extractor = get_extractor(cfg.extractor, cfg.extractor_weights).to(acc.device)
    reference = reference_stats(cfg, denoiser, extractor, acc)
    name, options = cfg.sampler.name, dict(cfg.sampler.options)
    calls = 0

    def count(_):
        nonlocal calls
        calls += 1

    if cfg.num_samples < 2 * acc.num_processes:
        raise ValueError(f"num_samples={cfg.num_samples} is too few for {acc.num_processes} processes (need 2 each)")
    seeds = list(range(cfg.seed, cfg.seed + cfg.num_samples))[acc.process_index::acc.num_processes]
    start = time.perf_counter()
    with skip_tuning_for(cfg, denoiser, samplers.nfe(name, sigmas, **options) or 0):
        batches = samplers.sample_seeds(name, denoiser, seeds, sigmas, shape, cfg.batch_size, acc.device,
                                        callback=count, **options)
        stats = accumulate(batches, extractor, acc.device).reduce(acc)
    fd = fd_to(reference, stats)
    batches_here = -(-len(seeds) // cfg.batch_size)
    result = {"fd": fd, "extractor": cfg.extractor, "reference": cfg.reference, "num_samples": int(stats.n),
              "model": str(cfg.model.get("path", cfg.model._target_)), "sampler": name, "options": options,
              "steps": steps, "nfe": calls / max(batches_here, 1), "schedule": cfg.schedule.kind.value,
              "num_processes": acc.num_processes, "seconds": round(time.perf_counter() - start, 2)}
    if acc.is_main_process:
        out = Path(cfg.out_dir) / f"fd-{cfg.extractor}-{name}-steps{steps}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"FD-{cfg.extractor} {fd:.4f} ({name}, {steps} steps, NFE {result['nfe']:g}, {int(stats.n)} samples)")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
