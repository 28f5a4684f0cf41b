"""The evaluation configs Hydra checks `conf/eval.yaml` and `conf/calibrate.yaml` against: a sample
config (samplers.config.SampleConfig) plus the feature space and the reference statistics, and
for the calibration the Skip-Tuning grid."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore

from ..samplers.config import SampleConfig


@dataclass
class EvalConfig(SampleConfig):
    """eval_fid.py: SampleConfig plus the feature space and the reference statistics."""
    num_samples: int = 2000
    data: Any = None                       # the reference data set (a conf/data entry)
    extractor: str = "digits"              # raw | digits | inception
    extractor_weights: Optional[str] = None
    reference: str = "data"                # data | analytic (the model's exact moments) | PATH.npz
    cache_dir: str = "runs/cache"


@dataclass
class CalibrateConfig(EvalConfig):
    """calibrate_skiptune.py: EvalConfig plus the Skip-Tuning grid and the NFEs to calibrate."""
    rho_grid: List[float] = field(default_factory=lambda: [0.7, 0.8, 0.9, 1.0])
    rho_top_grid: List[float] = field(default_factory=lambda: [1.0])
    nfes: List[int] = field(default_factory=lambda: [5, 10, 20])
    write: bool = False
    table: Optional[str] = None            # where write=true puts it; None: conf/sampler/<sampler>+skiptune.yaml


ConfigStore.instance().store(name="eval_schema", node=EvalConfig)
ConfigStore.instance().store(name="calibrate_schema", node=CalibrateConfig)
