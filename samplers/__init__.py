"""The sampling core, in one sigma space: denoisers (model adapters) and their spaces, schedules, the
step generators and the one registry that runs them (also with k-diffusion's calling convention:
`k_sampler`, `kdiffusion.sample_<name>`), Skip-Tuning, the weight fingerprint of a model. It imports no
other fewstep package."""
from .contracts import Denoiser, StepGenerator, StepPredictor
from .denoisers import DiffusersUNetDenoiser, FlowDenoiser, GMMDenoiser, from_pretrained
from .fingerprints import fingerprint
from .kdiffusion import k_sampler
from .noise import seeded_noise
from .schedules import get_sigmas
from .skip_tuning import SkipTuning, skip_tuning
from .solvers import (FIXED_GRID_NAMES, SAMPLER_NAMES, SOLVERS, check_sigmas, nfe, sample, sample_seeds, solve,
                      steps_for_nfe)

__all__ = ["Denoiser", "StepGenerator", "StepPredictor", "DiffusersUNetDenoiser", "FlowDenoiser", "GMMDenoiser",
           "from_pretrained", "fingerprint", "seeded_noise", "get_sigmas", "sample", "sample_seeds", "solve", "nfe",
           "steps_for_nfe", "check_sigmas", "SAMPLER_NAMES", "FIXED_GRID_NAMES", "SOLVERS", "skip_tuning", "SkipTuning",
           "k_sampler"]
