"""Train a network with one objective through the shared Accelerate loop.

    python scripts/train.py                                   # the digits DDPM (conf/train.yaml)
    python scripts/train.py train.steps=200 out_dir=runs/try
    accelerate launch --multi_gpu --num_processes 2 scripts/train.py   # 2 processes (gloo on CPU)
"""
import hydra
from accelerate.utils import set_seed
from hydra.utils import instantiate

from fewstep.scripts._cli import CONFIG_PATH, one_line_errors
from fewstep.training import Trainer


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
@one_line_errors
def main(cfg):
    set_seed(cfg.seed)  # the initial weights
    trainer = Trainer(instantiate(cfg.net, _convert_="all"), instantiate(cfg.objective), instantiate(cfg.data),
                      out_dir=cfg.out_dir, seed=cfg.seed, **cfg.train)
    trainer.fit()


if __name__ == "__main__":
    main()
