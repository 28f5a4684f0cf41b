"""Fréchet distances (FID, FD-digits, exact distances on the analytic mixture) and benchmarks."""
from .features import get_extractor
from .fid import data_stats, frechet_of, statistics_of
from .frechet import FeatureStats, frechet_distance, load_stats, save_stats

__all__ = ["frechet_distance", "FeatureStats", "save_stats", "load_stats", "get_extractor", "frechet_of",
           "statistics_of", "data_stats"]
