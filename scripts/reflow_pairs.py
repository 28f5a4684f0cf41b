"""Write reflow pairs (noise, sample) of a model with any sampler (flows.write_pairs), the data of
the next rectified-flow round (data=pairs) or of a one-step distillation (objective=distill).

    python scripts/reflow_pairs.py model=diffusers model.path=runs/train/MODEL sampler=euler steps=100
    python scripts/reflow_pairs.py model=mlp2d model.path=RUN/model num_pairs=50000 out_dir=runs/pairs/moons
    accelerate launch --multi_gpu --num_processes 2 scripts/reflow_pairs.py ...   # shards split over processes
"""
import logging

import hydra
from omegaconf import OmegaConf

from fewstep.cli import schemas
from fewstep.cli.common import CONFIG_PATH, accelerator_for, counted, one_line_errors, record_config
from fewstep.cli.sampling import printable, sampling_setup, skip_tuning_for, text_to_image_dir
from fewstep.flows import write_pairs
from fewstep.samplers import nfe

schemas.register()
log = logging.getLogger(__name__)  # bare lines on stdout and in the run's log file (conf/hydra/job_logging)


@hydra.main(config_path=CONFIG_PATH, config_name="reflow_pairs", version_base="1.3")
@one_line_errors
def main(cfg):
    if text_to_image_dir(cfg) is not None:
        raise ValueError(f"{cfg.model.path} is a text-to-image pipeline: reflow pairs take a denoiser model")
    acc, device = accelerator_for(cfg.device)
    denoiser, shape, steps, sigmas, how, options = sampling_setup(cfg, device)
    name = cfg.sampler.name
    planned = nfe(name, sigmas, options)
    log.info(how)
    log.info(f"{name} {printable(options)}: {counted(steps, 'step')}, "
             f"NFE {planned if planned is not None else 'adaptive'}, {cfg.num_pairs} pairs of {shape} from seed {cfg.seed}")
    with skip_tuning_for(cfg, denoiser, planned or 0) as tuning:
        metadata = {"model": OmegaConf.to_container(cfg.model, resolve=True),
                    "skip_tuning": None if tuning is None else str(tuning)}
        out = write_pairs(denoiser, name, sigmas, shape, range(cfg.seed, cfg.seed + cfg.num_pairs), cfg.out_dir,
                          cfg.shard_size, accelerator=acc, options=options, metadata=metadata,
                          batch_size=cfg.batch_size, device=device)
    if acc.is_main_process:
        record_config(cfg)
    log.info(f"wrote {cfg.num_pairs} pairs to {out} (data=pairs data.root={out})")


if __name__ == "__main__":
    main()
