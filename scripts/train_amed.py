"""Distil AMED's predictor for one model, sampler, NFE and grid through the shared Accelerate loop
(samplers.amed_distill; conf/train_amed.yaml).

    python scripts/train_amed.py sampler=amed nfe=5                    # the digits DDPM, Karras from 80, afs
    python scripts/train_amed.py sampler=amed nfe=5 write=true         # and store it in assets/digits_ddpm/amed/
    python scripts/train_amed.py sampler=amed_plugin sampler.options.base=dpmpp_2m nfe=7
    python scripts/train_amed.py model=gmm train.steps=200 objective.teacher=dopri5
    accelerate launch --multi_gpu --num_processes 2 scripts/train_amed.py   # 2 processes (gloo on CPU)
"""
import shutil
from pathlib import Path

import hydra
from accelerate.utils import set_seed
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fewstep.samplers import amed_distill as _schema  # noqa: F401  (registers train_amed_schema)
from fewstep.samplers import amed_predictor
from fewstep.samplers.config import planned_grid
from fewstep.scripts._cli import CONFIG_PATH, one_line_errors
from fewstep.training import Trainer


@hydra.main(config_path=CONFIG_PATH, config_name="train_amed", version_base="1.3")
@one_line_errors
def main(cfg):
    denoiser = instantiate(cfg.model, _convert_="all").eval()
    _, sigmas, how = planned_grid(cfg, denoiser)
    model = cfg.model.get("path") or HydraConfig.get().runtime.choices.model
    objective = instantiate(cfg.objective, _partial_=True)(
        denoiser=denoiser, sigmas=sigmas, sampler=cfg.sampler.name, options=dict(cfg.sampler.options), nfe=cfg.nfe,
        model=str(model))
    target = amed_predictor.destination(denoiser, cfg.sampler.name, objective.base, objective.nfe) if cfg.write else None
    set_seed(cfg.seed)  # the initial weights
    shape = denoiser.sample_shape if cfg.data.get("shape") is None else cfg.data.shape
    trainer = Trainer({"predictor": objective.new_predictor()}, objective, instantiate(cfg.data, shape=list(shape)),
                      out_dir=cfg.out_dir, seed=cfg.seed, **OmegaConf.to_container(cfg.train, resolve=True))
    trainer.accelerator.print(f"AMED {cfg.sampler.name} at NFE {objective.nfe}: {how}; sigmas "
                              f"{', '.join(f'{s:.4g}' for s in sigmas.tolist())}")
    trainer.fit()
    if target is not None and trainer.accelerator.is_main_process:
        shutil.copytree(Path(cfg.out_dir) / "model", target)
        print(f"stored the predictor in {target}")


if __name__ == "__main__":
    main()
