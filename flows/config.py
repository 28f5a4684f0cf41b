"""The config Hydra checks `conf/reflow_pairs.yaml` against: a sample config's model, sampler and
schedule (samplers.config) and where the pairs go. Importing this module registers
`reflow_pairs_schema`."""
from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from ..samplers.config import SamplingConfig


@dataclass
class ReflowPairsConfig(SamplingConfig):
    """num_pairs pairs from seeds seed, seed + 1, ... (flows.write_pairs), shard_size a shard."""
    num_pairs: int = MISSING
    seed: int = 0
    shard_size: int = 1000


ConfigStore.instance().store(name="reflow_pairs_schema", node=ReflowPairsConfig)
