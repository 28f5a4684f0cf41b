"""The GAN objective of the shared training loop (docs/conventions.md §8 and §11): a critic and a
generator, the ReFlow-derived losses or the WGAN-GP baseline behind one interface."""
from __future__ import annotations

from pathlib import Path

import torch

from ..samplers.noise import generators, normal
from .losses import generator_plain_loss, reflow_critic_loss, regression_loss, regression_target, wgan_gp_critic_loss

CRITIC_LOSSES = {"reflow": reflow_critic_loss, "wgan_gp": wgan_gp_critic_loss}
GENERATOR_LOSSES = ("regression", "plain")


class GANObjective:
    """Networks `critic` (phi) and `generator` (g); a batch is real samples. The steps run in cycles
    of `n_critic` critic updates, then `generator_steps` generator updates.

    critic_loss: "reflow" (`phi(fake) - phi(real) + w ||grad phi(x_t)||^2` on interpolates, w =
        penalty_weight, 1/2 by the derivation) or "wgan_gp" (`(||grad phi|| - 1)^2`, lambda =
        penalty_weight, 10 in the paper).
    generator_loss: "regression": z and the target `stopgrad(g(z) + step_size grad phi(g(z)))` are
        drawn at the cycle's first generator update and g(z) is regressed onto them for all
        `generator_steps` updates (`mean_i ||g(z_i) - target_i||^2`); "plain": `-mean phi(g(z))`, fresh
        z at every update (the WGAN generator; `generator_steps` plain updates).
    The regression target of the running cycle is this objective's state (`state_dict`), saved with
    each checkpoint, so a resumed run continues the cycle exactly.
    monitor: at each checkpoint the EMA generator's samples of 64 fixed latents are written to
        `out_dir/samples/step_<step>.png` (`report`); with "fd_digits" (what "auto" means for 16x16
        one-channel images) the FD-digits of `monitor_samples` samples (seeds 0..) against the
        1797 digits is logged to metrics.csv as well; None: nothing.
    """

    networks = ("critic", "generator")

    def __init__(self, critic_loss: str = "reflow", generator_loss: str = "regression", penalty_weight: float = 0.5,
                 n_critic: int = 5, generator_steps: int = 1, step_size: float = 1.0, monitor: str | None = "auto",
                 monitor_samples: int = 1000):
        if critic_loss not in CRITIC_LOSSES:
            raise ValueError(f"unknown critic_loss {critic_loss!r}: use {' or '.join(CRITIC_LOSSES)}")
        if generator_loss not in GENERATOR_LOSSES:
            raise ValueError(f"unknown generator_loss {generator_loss!r}: use {' or '.join(GENERATOR_LOSSES)}")
        for name, value in (("n_critic", n_critic), ("generator_steps", generator_steps)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {value}")
        if step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {step_size}")
        self.critic_loss, self.generator_loss = critic_loss, generator_loss
        self.penalty_weight, self.step_size = penalty_weight, step_size
        self.n_critic, self.generator_steps = int(n_critic), int(generator_steps)
        if monitor not in (None, "auto", "fd_digits"):
            raise ValueError(f"unknown monitor {monitor!r}: use auto, fd_digits or null")
        self.monitor, self.monitor_samples = monitor, monitor_samples
        self._z = self._target = self._reference = None

    def settings(self) -> dict:
        return {"critic_loss": self.critic_loss, "generator_loss": self.generator_loss,
                "penalty_weight": self.penalty_weight, "step_size": self.step_size, "n_critic": self.n_critic,
                "generator_steps": self.generator_steps, "monitor": self.monitor, "monitor_samples": self.monitor_samples}

    @staticmethod
    def latents(generator, gens, device) -> torch.Tensor:
        """One latent of the generator's `latent_shape` from each of `gens`."""
        return normal(gens, generator.latent_shape, device)

    def losses(self, nets, real, step: int, seeds) -> dict[str, torch.Tensor]:
        """The loss due at `step`; row `i`'s latent, then its interpolation time, from `seeds[i]`."""
        critic, generator = nets["critic"], nets["generator"]
        phase, gens = step % (self.n_critic + self.generator_steps), generators(seeds)
        if phase < self.n_critic:
            with torch.no_grad():
                fake = generator(self.latents(generator, gens, real.device))
            return {"critic": CRITIC_LOSSES[self.critic_loss](critic, real, fake, self.penalty_weight, gens)}
        if self.generator_loss == "plain":
            return {"generator": generator_plain_loss(critic, generator(self.latents(generator, gens, real.device)))}
        if phase == self.n_critic or self._target is None:  # the cycle's first generator update: a new target
            self._z = self.latents(generator, gens, real.device)
            self._target = regression_target(critic, generator(self._z), self.step_size)
        z, target = self._z.to(real.device), self._target.to(real.device)
        return {"generator": regression_loss(generator(z), target)}

    def state_dict(self) -> dict:
        return {} if self._target is None else {"z": self._z.cpu(), "target": self._target.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self._z, self._target = state.get("z"), state.get("target")

    def report(self, nets, step: int, out_dir) -> dict[str, float]:
        """A sample grid (images) or scatter (points) of the generator, and its FD-digits (see `monitor`)."""
        from ..evaluation.generators import GeneratorFn
        from ..evaluation.output import save_grid, save_scatter

        generator = nets["generator"].eval()
        device = next(generator.parameters()).device
        fn = GeneratorFn(generator, device)
        shown, path = fn(range(64)), Path(out_dir) / "samples" / f"step_{step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_grid(shown, path) if shown.ndim == 4 else save_scatter(shown, path, f"step {step}")
        digits_like = tuple(generator.sample_shape) == (1, 16, 16)
        if self.monitor is None or (self.monitor == "auto" and not digits_like):
            return {}
        from ..evaluation import get_extractor
        from ..evaluation.fid import data_stats, frechet_of
        from ..training.data import digits

        extractor = get_extractor("digits").to(device)
        if self._reference is None:
            self._reference = data_stats(digits(), extractor, device=device)
        return {"fd_digits": frechet_of(fn, range(self.monitor_samples), extractor, self._reference, batch_size=250,
                                        device=device)}

    def export(self, nets, out_dir) -> None:
        """`out_dir/generator` and `out_dir/critic`, each a diffusers model directory (`save_pretrained`)."""
        for name in self.networks:
            nets[name].save_pretrained(str(Path(out_dir) / name))
