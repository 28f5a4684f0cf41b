"""Train the networks of one objective through the shared Accelerate loop.

    python scripts/train.py                                   # the digits DDPM (conf/train.yaml)
    python scripts/train.py train.steps=200 out_dir=runs/try
    python scripts/train.py train.networks.net.lr=1e-4        # a setting of one network
    python scripts/train.py objective=rectified_flow net=mlp2d data=moons train.steps=2000
    python scripts/train.py objective=rectified_flow net=mlp2d data=pairs data.root=PAIRS init_from=MODEL
    accelerate launch --multi_gpu --num_processes 2 scripts/train.py   # 2 processes (gloo on CPU)
"""
import logging

import hydra
from accelerate.utils import set_seed
from hydra.core.hydra_config import HydraConfig

from fewstep.cli import schemas
from fewstep.cli.common import CONFIG_PATH, one_line_errors, record_config
from fewstep.cli.setup import trainer_keywords, training_parts
from fewstep.training import Trainer
from fewstep.training.init import init_from

schemas.register()
log = logging.getLogger(__name__)  # bare lines on stdout and in the run's log file (conf/hydra/job_logging)


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
@one_line_errors
def main(cfg):
    chosen = HydraConfig.get().runtime.choices
    log.info(f"train objective={chosen.objective} net={chosen.net} data={chosen.data}"
             + (f" from {cfg.init_from}" if cfg.init_from else "") + f" in {cfg.out_dir}")
    set_seed(cfg.seed)  # the initial weights
    nets, objective, data = training_parts(cfg)  # nets: one module, or {name: module}
    init_from(nets, cfg.init_from, cfg.out_dir)  # a fresh start only: a resume loads its checkpoint
    trainer = Trainer(nets, objective, data, out_dir=cfg.out_dir, seed=cfg.seed, **trainer_keywords(cfg))
    trainer.fit(started=lambda: record_config(cfg))


if __name__ == "__main__":
    main()
