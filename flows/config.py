"""The config Hydra checks `conf/reflow_pairs.yaml` against: a sample config's model, sampler and
schedule (samplers.config) and where the pairs go. Importing this module registers
`reflow_pairs_schema`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from ..samplers.config import SamplerConfig, ScheduleConfig


@dataclass
class ReflowPairsConfig:
    """num_pairs pairs from seeds seed, seed + 1, ... (flows.write_pairs), shard_size a shard."""
    model: Any = MISSING
    sampler: SamplerConfig = MISSING
    steps: int = 10
    nfe: Optional[int] = None
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    num_pairs: int = MISSING
    seed: int = 0
    shard_size: int = 1000
    batch_size: int = 64
    image_size: Optional[int] = None
    device: str = "auto"
    out_dir: str = MISSING


ConfigStore.instance().store(name="reflow_pairs_schema", node=ReflowPairsConfig)
