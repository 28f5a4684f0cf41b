"""The ReFlow-derived WGAN-GP-style generator and critic (DESIGN §7); objectives land here and
plug into `training.Trainer` like those of `flows`."""
