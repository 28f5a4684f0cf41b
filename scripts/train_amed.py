"""Distil AMED's predictor for one model, sampler, NFE and grid through the shared Accelerate loop
(tuning.amed_distill; conf/train_amed.yaml).

    python scripts/train_amed.py sampler=amed nfe=5                    # the digits DDPM, Karras from 80, afs
    python scripts/train_amed.py sampler=amed nfe=5 write=true         # and store it in assets/digits_ddpm/amed/
    python scripts/train_amed.py sampler=amed_plugin sampler.options.base=dpmpp_2m nfe=7
    python scripts/train_amed.py model=gmm train.steps=200 objective.teacher=dopri5
    accelerate launch --multi_gpu --num_processes 2 scripts/train_amed.py   # 2 processes (gloo on CPU)
"""
import logging
import shutil
from pathlib import Path

import hydra
from accelerate.utils import set_seed
from hydra.core.hydra_config import HydraConfig

from fewstep.cli import schemas
from fewstep.cli.common import CONFIG_PATH, one_line_errors, record_config
from fewstep.cli.setup import amed_parts, trainer_keywords
from fewstep.training import Trainer
from fewstep.tuning import amed_predictor

schemas.register()
log = logging.getLogger(__name__)  # bare lines on stdout and in the run's log file (conf/hydra/job_logging)


@hydra.main(config_path=CONFIG_PATH, config_name="train_amed", version_base="1.3")
@one_line_errors
def main(cfg):
    model = cfg.model.get("path") or HydraConfig.get().runtime.choices.model
    denoiser, objective, how, noise = amed_parts(cfg, str(model))
    target = amed_predictor.destination(denoiser, cfg.sampler.name, objective.base, objective.nfe) if cfg.write else None
    set_seed(cfg.seed)  # the initial weights
    trainer = Trainer({"predictor": objective.new_predictor()}, objective, noise, out_dir=cfg.out_dir, seed=cfg.seed,
                      **trainer_keywords(cfg))
    log.info(f"AMED {cfg.sampler.name} at NFE {objective.nfe}: {how}; sigmas "
             f"{', '.join(f'{s:.4g}' for s in objective.sigmas.tolist())}")
    trainer.fit(started=lambda: record_config(cfg))
    if target is not None and trainer.accelerator.is_main_process:
        shutil.copytree(Path(cfg.out_dir) / "model", target)
        log.info(f"stored the predictor in {target}")


if __name__ == "__main__":
    main()
