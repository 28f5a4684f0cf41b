"""The ReFlow-derived GAN (docs/conventions.md §11) and its WGAN-GP baseline: the losses as plain functions
(`gan.losses`), the generators and critics they train (`gan.nets`), the objective of the shared
training loop (`gan.GANObjective`) and one-step generators as samplers see them (`gan.generators`)."""
from .losses import (critic_values, generator_plain_loss, generator_regression_loss, reflow_critic_loss,
                     regression_loss, regression_target, wgan_generator_loss, wgan_gp_critic_loss)
from .nets import DCGANCritic, DCGANGenerator, MLPCritic, MLPGenerator
from .generators import FlowGenerator, load_generator
from .objective import GANObjective

__all__ = ["DCGANCritic", "DCGANGenerator", "FlowGenerator", "GANObjective", "MLPCritic", "MLPGenerator", "critic_values",
           "generator_plain_loss", "generator_regression_loss", "reflow_critic_loss", "regression_loss",
           "load_generator", "regression_target", "wgan_generator_loss", "wgan_gp_critic_loss"]
