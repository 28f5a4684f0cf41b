"""Few-step sampling in one sigma space: denoisers (model adapters), schedules and samplers."""
from .denoisers import DiffusersUNetDenoiser, FlowDenoiser, GMMDenoiser
from .schedules import get_sigmas
from .solvers import SAMPLER_NAMES, check_sigmas, nfe, sample, steps_for_nfe

__all__ = ["DiffusersUNetDenoiser", "FlowDenoiser", "GMMDenoiser", "get_sigmas", "sample", "nfe",
           "steps_for_nfe", "check_sigmas", "SAMPLER_NAMES"]
