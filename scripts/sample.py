"""Sample a model with any sampler; write `samples.npz` and `samples.png` to the run directory.

    python scripts/sample.py                                # DDIM, 10 steps, the embedded digits model
    python scripts/sample.py sampler=heun nfe=9 schedule.kind=logsnr
    python scripts/sample.py model=gmm sampler=dopri5
    python scripts/sample.py model=diffusers model.path=/path/to/ddpm-cifar10-32
    python scripts/sample.py model=diffusers model.path=/path/to/sd-pipeline prompt="a cat" guidance_scale=5
    python scripts/sample.py model=digits_cond guidance_scale=2 nfe=5     # one row per class (classes=[3,7]: those)
    accelerate launch --multi_gpu --num_processes 2 scripts/sample.py   # the same samples, split over processes
"""
import logging

import hydra
import torch
from tqdm.auto import tqdm

from fewstep.cli import schemas
from fewstep.cli.common import CONFIG_PATH, accelerator_for, one_line_errors, record_config
from fewstep.cli.sampling import from_config, skip_tuning_for
from fewstep.evaluation.output import save_samples
from fewstep.evaluation.seeds import gather_by_seed, generate, split

schemas.register()
log = logging.getLogger(__name__)  # bare lines on stdout and in the run's log file (conf/hydra/job_logging)


def class_rows(run, seeds):
    """A class-conditional run's `{"class_labels": ...}` for samples.npz and its picture's rows, one per class
    in the order the run draws them; ({}, None) for another model."""
    if run.cond is None:
        return {}, None
    labels = run.cond(seeds)["class_labels"].tolist()
    order = list(dict.fromkeys(labels))
    return {"class_labels": labels}, [[i for i, c in enumerate(labels) if c == k] for k in order]


@hydra.main(config_path=CONFIG_PATH, config_name="sample", version_base="1.3")
@one_line_errors
def main(cfg):
    acc, device = accelerator_for(cfg.device)
    run = from_config(cfg, device)
    for line in run.lines:
        log.info(line)
    seeds = list(range(cfg.seed, cfg.seed + cfg.num_samples))
    mine = split(seeds, acc)
    with skip_tuning_for(cfg, run.model, run.planned_nfe or 0) as tuning:
        if tuning is not None:
            log.info(tuning)
        batches = list(tqdm(generate(run.sample_fn, mine, cfg.batch_size), total=-(-len(mine) // cfg.batch_size),
                            desc="sample", disable=not acc.is_main_process))
    nfe = run.sample_fn.nfe  # this process's, per sample
    x = gather_by_seed(seeds, batches, acc)
    if not acc.is_main_process:
        return
    record_config(cfg)
    labels, rows = class_rows(run, seeds)
    npz, png = save_samples(x, cfg.out_dir, title=f"{run.name}, NFE {nfe:g}", rows=rows, sampler=run.name,
                            steps=run.steps, nfe=nfe, sigmas=torch.as_tensor(run.sigmas).cpu().numpy(), seed=cfg.seed,
                            **labels, **run.metadata)
    log.info(f"NFE used per sample: {nfe:g}")
    log.info(f"wrote {png} and {npz}")


if __name__ == "__main__":
    main()
