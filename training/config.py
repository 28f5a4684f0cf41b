"""The training config Hydra checks `conf/train.yaml` (and its `net/`, `data/`, `objective/` groups)
against. Importing this module registers the schema `train_schema` that conf/train.yaml names."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


@dataclass
class TrainerConfig:
    """training.Trainer keywords (documented there and in training.NetworkOptim). `networks` holds
    per-network overrides of the settings above it: `train.networks.critic.lr=1e-4`."""
    steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    optimizer: str = "adamw"
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: Optional[float] = 1.0
    ema_decay: Optional[float] = 0.999
    networks: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 50
    mixed_precision: str = "no"
    cpu: Optional[bool] = None
    num_workers: int = 0


@dataclass
class TrainConfig:
    """net: one network config, or `{name: network config}` for an objective that trains several.
    init_from: a pipeline (`PATH/unet/`) or model directory whose weights a fresh run starts from
    (training.init.init_from); kept out of `train`, whose keys are exactly the Trainer's keywords."""
    net: Any = MISSING
    data: Any = MISSING
    objective: Any = MISSING
    seed: int = 0
    out_dir: str = MISSING
    init_from: Optional[str] = None
    train: TrainerConfig = field(default_factory=TrainerConfig)


# Hydra locks the composed config (struct mode: no new keys) except where a node says otherwise;
# `train.networks` says so, so that `train.networks.critic.lr=1e-4` needs no `+`.
_schema = OmegaConf.structured(TrainConfig)
OmegaConf.set_struct(_schema.train.networks, False)
ConfigStore.instance().store(name="train_schema", node=_schema)

