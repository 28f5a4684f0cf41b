"""The typed configs Hydra checks `conf/*.yaml` against, one dataclass per command, registered by
`register()` (each script calls it before Hydra composes). The libraries never see these: `fewstep.cli`
turns a checked config into the plain arguments they take."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


class ScheduleKind(Enum):
    auto = "auto"
    table = "table"
    karras = "karras"
    logsnr = "logsnr"
    time_uniform = "time_uniform"
    flow_uniform = "flow_uniform"
    discrete = "discrete"


class FinalSigmas(Enum):
    zero = "zero"
    sigma_min = "sigma_min"


class Spacing(Enum):
    leading = "leading"
    trailing = "trailing"
    linspace = "linspace"


@dataclass
class ScheduleConfig:
    """`samplers.get_sigmas` keywords, or a searched table (`tuning.schedule_tables`). kind auto: the
    searched grid of the model, sampler and NFE when the model has one and no other value below is
    set, else karras. A value left None takes `get_sigmas`' default (the model's own range for
    sigma_min/sigma_max)."""
    kind: ScheduleKind = ScheduleKind.auto
    rho: Optional[float] = None
    sigma_min: Optional[float] = None
    sigma_max: Optional[float] = None
    spacing: Optional[Spacing] = None      # discrete only; None: leading (a text-to-image pipeline: its own)
    steps_offset: Optional[int] = None     # discrete only; None: 0 (a text-to-image pipeline: its own)
    eps_s: Optional[float] = None
    final_sigmas_type: Optional[FinalSigmas] = None   # zero: a last step to 0; sigma_min: stop there
    table: Optional[str] = None            # kind table: the table file (kind auto: the model's own)


@dataclass
class SkipConfig:
    """Skip-Tuning (`samplers.skip_tuning`) on top of a sampler: conf/sampler/<name>+skiptune.yaml.
    rho_bottom None: the factors calibrated for the model (`tuning.skiptune_tables`), at the nearest NFE."""
    rho_top: Optional[float] = None         # None: the calibrated one (1.0 when the model has none)
    rho_bottom: Optional[float] = None
    sigma_range: Optional[List[float]] = None


@dataclass
class SamplerConfig:
    name: str = MISSING
    options: Dict[str, Any] = field(default_factory=dict)
    skip: Optional[SkipConfig] = None


@dataclass
class SamplingConfig:
    """What every command that samples a model shares (sample, eval, reflow pairs): the model, the
    sampler, the step count or NFE budget, the grid, the batch and the device."""
    model: Any = MISSING
    sampler: SamplerConfig = MISSING
    steps: int = 10
    nfe: Optional[int] = None
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    batch_size: int = 64
    image_size: Optional[int] = None
    device: str = "auto"
    out_dir: str = MISSING


@dataclass
class SampleConfig(SamplingConfig):
    num_samples: int = 64
    seed: int = 0
    prompt: Optional[str] = None             # text-to-image pipelines only
    guidance_scale: Optional[float] = None   # classifier-free guidance of a conditional model; None: a text-to-image
                                             # pipeline's default, 1 for a class-conditional model (cli.conditioning)
    classes: Optional[List[int]] = None      # a class-conditional model's classes, sample i for classes[i mod len]; None: all


@dataclass
class SearchConfig:
    """search_schedule.py: the model and sampler, the NFEs to search, the noises and the optimiser
    of `tuning.schedule_search`, and where the result goes."""
    model: Any = MISSING
    sampler: SamplerConfig = MISSING
    nfes: List[int] = field(default_factory=lambda: [3, 4, 5, 6, 7, 8, 9, 10])
    num_noises: int = 64                   # in each of the training and the held-out batch
    seed: int = 900000                     # noise i of the training batch from seed + i, then the held-out ones
    iterations: int = 30
    lr: float = 0.05
    rtol: float = 1e-5                     # of the dopri5 reference
    atol: float = 1e-5
    write: bool = False
    table: Optional[str] = None            # where write=true puts it; None: <model dir>/schedules/<sampler>[-cfg<W>].json
    guidance_scale: Optional[float] = None  # a conditional model's (cli.conditioning); None: 1 (a pipeline's default)
    classes: Optional[List[int]] = None     # noise i of each batch for classes[i mod len]; None: all
    prompts: Optional[str] = None           # a text-to-image pipeline's prompt file, one a line: noise i for prompt i mod P
    device: str = "auto"
    out_dir: str = MISSING


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
    table: Optional[str] = None            # where write=true puts it; None: <model dir>/skiptune/<sampler>.json
    prompts: Optional[str] = None          # not supported yet: refused (search_schedule.py takes it)


@dataclass
class ReflowPairsConfig(SamplingConfig):
    """num_pairs pairs from seeds seed, seed + 1, ... (`flows.write_pairs`), shard_size a shard."""
    num_pairs: int = MISSING
    seed: int = 0
    shard_size: int = 1000


@dataclass
class TrainerConfig:
    """`training.Trainer` keywords (documented there and in `training.NetworkOptim`). `networks` holds
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
    (`training.init.init_from`); kept out of `train`, whose keys are exactly the Trainer's keywords."""
    net: Any = MISSING
    data: Any = MISSING
    objective: Any = MISSING
    seed: int = 0
    out_dir: str = MISSING
    init_from: Optional[str] = None
    train: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class AMEDTrainConfig:
    """train_amed.py: the model, the sampler (amed or amed_plugin) and its options, the NFE and the
    grid (`schedule`, planned as the sampling commands plan it: `cli.sampling.planned_grid`), the
    objective (conf/objective/amed.yaml), the noise (conf/data/noise.yaml) and the engine's keywords."""
    model: Any = MISSING
    sampler: SamplerConfig = MISSING
    nfe: int = 5
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    objective: Any = MISSING
    data: Any = MISSING
    seed: int = 0
    out_dir: str = MISSING
    write: bool = False      # also store the predictor beside the model: <model dir>/amed/<sampler>[-cfg<W>]-nfe<N>/
    guidance_scale: Optional[float] = None  # a conditional model's (cli.conditioning); None: 1
    classes: Optional[List[int]] = None     # noise i for classes[i mod len]; None: all
    prompts: Optional[str] = None           # a text-to-image pipeline's prompt file, one a line: noise i for prompt i mod P
    train: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class FitSolverConfig:
    """fit_solver.py: the model, the NFEs, the solver's order and the fit (`tuning.learned_solver.run_fits`)."""
    model: Any = MISSING
    nfes: List[int] = field(default_factory=lambda: [3, 4, 5, 6, 7, 8, 9, 10])
    order: int = 3                         # weights per step: the current and the order - 1 past denoiser outputs
    num_noises: int = 256                  # in each of the training and the held-out batch
    seed: int = 910000                     # noise i of the training batch from seed + i, then the held-out ones
    iterations: int = 300
    lr: float = 0.01
    rtol: float = 1e-5                     # of the dopri5 teacher
    atol: float = 1e-5
    write: bool = False
    table: Optional[str] = None            # where write=true puts it; None: <model dir>/solvers/learned.json
    device: str = "auto"
    out_dir: str = MISSING


def _train_schema():
    """TrainConfig with `train.networks` open (Hydra locks a composed config against new keys), so
    that `train.networks.critic.lr=1e-4` needs no `+`."""
    schema = OmegaConf.structured(TrainConfig)
    OmegaConf.set_struct(schema.train.networks, False)
    return schema


SCHEMAS = {"sample_schema": SampleConfig, "search_schema": SearchConfig, "eval_schema": EvalConfig,
           "calibrate_schema": CalibrateConfig, "reflow_pairs_schema": ReflowPairsConfig,
           "train_amed_schema": AMEDTrainConfig, "fit_solver_schema": FitSolverConfig}


def run_label(target: str, sampler: str) -> str:
    """What a run directory is named after: `generator` for a one-step generator (`gan.load_generator`:
    it takes no sampler), else the sampler (`${run_label:${model._target_},${hydra:runtime.choices.sampler}}`)."""
    return "generator" if target == "fewstep.gan.load_generator" else sampler


def register() -> None:
    """Store every schema under the name its conf/*.yaml names in `defaults`, and the `run_label` resolver."""
    OmegaConf.register_new_resolver("run_label", run_label, replace=True)
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=name, node=node)
    store.store(name="train_schema", node=_train_schema())
