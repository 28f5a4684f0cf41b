"""The time shift of a flow-matching plan, as diffusers' FlowMatchEulerDiscreteScheduler applies it to the
flow's times t in (0, 1] (Esser et al. 2024, Stable Diffusion 3; Flux): static, `t' = s t / (1 + (s - 1) t)`;
dynamic, with `mu` from the image's sequence length, `t' = e^mu / (e^mu + 1/t - 1)` (exponential) or
`mu / (mu + 1/t - 1)` (linear); then, with `shift_terminal`, stretched so that the last t is that value:
`1 - t'' = (1 - t') (1 - terminal) / (1 - t'_last)`. The config keys that change a plan in another way are
refused in one line (`FlowShift.from_config`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .spaces import flow_sigma, flow_t

# FlowMatchEulerDiscreteScheduler keys that change its plan in a way FewstepScheduler does not follow
REFUSED = ("invert_sigmas", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "stochastic_sampling")
TIME_SHIFT_TYPES = ("exponential", "linear")


@dataclass(frozen=True)
class FlowShift:
    """shift: the static shift s (> 0; 1 is none). dynamic: shift by `mu`, given per plan (Flux's
    `use_dynamic_shifting`). kind: the dynamic shift's `time_shift_type`. terminal: `shift_terminal` or
    None. base_shift, max_shift, base_seq_len, max_seq_len: the line `mu(seq_len)` pipelines compute."""

    shift: float = 1.0
    dynamic: bool = False
    kind: str = "exponential"
    terminal: float | None = None
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_seq_len: int = 256
    max_seq_len: int = 4096

    def __post_init__(self):
        if not (isinstance(self.shift, (int, float)) and self.shift > 0 and math.isfinite(self.shift)):
            raise ValueError(f"a flow-matching shift must be a positive number, got shift={self.shift}")
        if self.kind not in TIME_SHIFT_TYPES:
            raise ValueError(f"time_shift_type must be one of {', '.join(TIME_SHIFT_TYPES)}, got {self.kind!r}")
        if self.terminal is not None and not 0 < self.terminal < 1:
            raise ValueError(f"shift_terminal must be in (0, 1), got {self.terminal}")

    @classmethod
    def from_config(cls, config: dict, what: str = "scheduler") -> "FlowShift":
        """The shift of a FlowMatchEulerDiscreteScheduler config; a key this toolkit cannot honour is one line."""
        refused = [key for key in REFUSED if config.get(key)]
        if refused:
            raise ValueError(f"the flow-matching {what} config sets {refused[0]}={config[refused[0]]}, which "
                             f"FewstepScheduler does not follow: set it to false")
        return cls(shift=config.get("shift", 1.0), dynamic=bool(config.get("use_dynamic_shifting", False)),
                   kind=config.get("time_shift_type", "exponential"), terminal=config.get("shift_terminal"),
                   base_shift=config.get("base_shift", 0.5), max_shift=config.get("max_shift", 1.15),
                   base_seq_len=config.get("base_image_seq_len", 256), max_seq_len=config.get("max_image_seq_len", 4096))

    @property
    def identity(self) -> bool:
        return self.shift == 1.0 and not self.dynamic and self.terminal is None

    def check_mu(self, mu) -> None:
        """`mu` is given exactly when the shift is dynamic (diffusers refuses a dynamic plan without it)."""
        if self.dynamic and mu is None:
            raise ValueError("this flow-matching scheduler shifts dynamically (use_dynamic_shifting): "
                             "set_timesteps needs mu=")
        if not self.dynamic and mu is not None:
            raise ValueError(f"mu={mu} is for dynamic shifting, which this scheduler config does not use "
                             f"(use_dynamic_shifting=false, shift={self.shift})")
        if mu is not None and not math.isfinite(float(mu)):
            raise ValueError(f"mu must be a finite number, got mu={mu}")

    def mu_for(self, seq_len: int) -> float:
        """The pipelines' `calculate_shift`: mu on the line through (base_seq_len, base_shift) and
        (max_seq_len, max_shift)."""
        slope = (self.max_shift - self.base_shift) / (self.max_seq_len - self.base_seq_len)
        return self.base_shift + slope * (seq_len - self.base_seq_len)

    def static(self, t: torch.Tensor) -> torch.Tensor:
        """`s t / (1 + (s - 1) t)`."""
        return self.shift * t / (1 + (self.shift - 1) * t)

    def times(self, t: torch.Tensor, mu=None) -> torch.Tensor:
        """The shifted times of a plan's times `t` (decreasing, in (0, 1])."""
        self.check_mu(mu)
        if self.dynamic:
            e = math.exp(mu) if self.kind == "exponential" else mu
            t = e / (e + (1 / t - 1))
        else:
            t = self.static(t)
        if self.terminal is not None:
            t = 1 - (1 - t) * (1 - self.terminal) / (1 - t[-1])
        return t

    def sigmas(self, grid: torch.Tensor, mu=None) -> torch.Tensor:
        """A sigma grid with each point's time shifted (`times`), a last 0 kept."""
        ends_at_zero = bool(grid[-1] == 0)
        t = self.times(flow_t(grid[:-1] if ends_at_zero else grid), mu)
        shifted = flow_sigma(t)
        return torch.cat([shifted, grid.new_zeros(1)]) if ends_at_zero else shifted
