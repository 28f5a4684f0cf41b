"""The ReFlow-derived WGAN-GP-style generator and critic (not built yet); its objectives will land here and
plug into `training.Trainer` like those of `flows`."""
