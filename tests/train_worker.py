"""Run as a subprocess by test_training.py and test_engine_processes.py (also under `accelerate
launch`): train for STEPS steps in OUT/run, checkpointing every CHECKPOINT_EVERY steps (resuming from
the latest checkpoint there), then write each process's weights, EMA weights and optimiser states to
OUT/rank<i>.safetensors.

    python tests/train_worker.py OUT STEPS CHECKPOINT_EVERY [unet|gan|objectives] [KILL_AT]

unet (the default): the tiny UNet on 8x8 digits with the diffusion objective. gan: `TinyWGAN`, a 2-D
generator and critic. objectives: each of fewstep's objectives in turn (`every_objective`), in
OUT/<objective>. KILL_AT: the process SIGKILLs itself as step KILL_AT + 1 begins, as a crash or the
OOM killer would end it. test_training.py imports the pieces of the gan run from here.
"""
import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn


class TinyWGAN:
    """WGAN-GP (Gulrajani et al. 2017) on 2-D points. On `n_critic` steps out of `n_critic + 1` the
    critic loss `D(G(z)) - D(x) + gp_weight (|grad D(x_hat)| - 1)^2`, `x_hat = x + u (G(z) - x)`,
    `u ~ U(0, 1)`; on the others the generator loss `-D(G(z))` (batch means)."""

    networks = ("critic", "generator")

    def __init__(self, n_critic: int = 2, gp_weight: float = 10.0):
        self.n_critic, self.gp_weight = n_critic, gp_weight

    def settings(self) -> dict:
        return {"n_critic": self.n_critic, "gp_weight": self.gp_weight}

    def losses(self, nets, x, step, seeds):
        critic, generator = nets["critic"], nets["generator"]
        fake = generator(torch.randn_like(x))  # not detached: the trainer must keep the critic loss out of G
        if step % (self.n_critic + 1) < self.n_critic:
            u = torch.rand(x.shape[0], 1, device=x.device)
            x_hat = (x + u * (fake.detach() - x)).requires_grad_(True)
            (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
            penalty = ((grad.norm(dim=1) - 1) ** 2).mean()
            return {"critic": critic(fake).mean() - critic(x).mean() + self.gp_weight * penalty}
        return {"generator": -critic(fake).mean()}

    def export(self, nets, out_dir):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for name, net in nets.items():
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(Path(out_dir) / f"{name}.safetensors"))


def gan_nets() -> dict:
    torch.manual_seed(0)
    return {"generator": nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)),
            "critic": nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))}


def gan_data() -> torch.Tensor:
    """256 points of N((2, -1), 0.5^2 I)."""
    return torch.randn(256, 2, generator=torch.Generator().manual_seed(1)) * 0.5 + torch.tensor([2.0, -1.0])


# Adam with betas (0, 0.9) for both; the critic at twice the generator's rate and with its own EMA decay.
GAN_SETTINGS = dict(batch_size=16, log_every=2, cpu=True, lr=1e-3, optimizer="adam", betas=(0.0, 0.9), grad_clip=None,
                    ema_decay=0.9, warmup_steps=2, networks={"critic": {"lr": 2e-3, "ema_decay": 0.8}})


def gan_trainer(out_dir, steps, checkpoint_every, objective=None, **overrides):
    from fewstep.training import Trainer

    return Trainer(gan_nets(), objective or TinyWGAN(), gan_data(), out_dir=out_dir, steps=steps,
                   checkpoint_every=checkpoint_every, **{**GAN_SETTINGS, **overrides})


def die_at(objective, at: int):
    """`objective`, its `losses` made to kill the process with SIGKILL when step `at` (0-based)
    begins; still the same objective, so the restarted run (without it) resumes its checkpoints."""
    losses = objective.losses

    def dying(nets, batch, step, seeds):
        if step == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return losses(nets, batch, step, seeds)

    objective.losses = dying
    return objective


def snapshot(trainer) -> dict:
    """Every network's weights, EMA weights and optimiser state, as `<name>.*`, `ema.<name>.*`, `optim.<name>.*`."""
    state = {}
    for (name, net), ema in zip(trainer.nets.items(), trainer.ema_nets().values()):
        state.update({f"{name}.{k}": v for k, v in net.state_dict().items()})
        state.update({f"ema.{name}.{k}": v for k, v in ema.state_dict().items()})
        for i, s in trainer.optimizers[name].state_dict()["state"].items():
            state.update({f"optim.{name}.{i}.{k}": v for k, v in s.items()})
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def objective_runs() -> dict:
    """Each of fewstep's objectives on a tiny network and data: `{name: (make the networks, objective, data)}`."""
    from torch.utils.data import TensorDataset

    from helpers import mixture, tiny_unet
    from fewstep import samplers
    from fewstep.flows import DiffusionObjective, DistillationObjective, MLPVelocity, RectifiedFlowObjective
    from fewstep.gan import GANObjective, MLPCritic, MLPGenerator
    from fewstep.training.data import digits
    from fewstep.training.data2d import moons
    from fewstep.tuning.amed_distill import AMEDDistillation, NoiseDataset

    def seeded(make):
        def made():
            torch.manual_seed(0)
            return make()
        return made

    points, gmm = moons(256), mixture()
    pairs = TensorDataset(points, torch.randn(256, 2, generator=torch.Generator().manual_seed(2)))
    amed = AMEDDistillation(gmm, samplers.get_sigmas("karras", 3, gmm.sigma_min, 80.0, final_sigmas_type="sigma_min"),
                            "amed", {"afs": True}, held_out=8)
    velocity = seeded(lambda: {"net": MLPVelocity(hidden=16, depth=2)})
    gan = seeded(lambda: {"generator": MLPGenerator(width=16, depth=2), "critic": MLPCritic(width=16, depth=2)})
    return {"diffusion": (lambda: {"net": tiny_unet()}, DiffusionObjective(), digits(image_size=8)[:256]),
            "rectified_flow": (velocity, RectifiedFlowObjective(time_sampling="logit_normal"), points),
            "distill": (velocity, DistillationObjective(), pairs),
            "reflow_gan": (gan, GANObjective(n_critic=2, generator_steps=2, monitor=None), points),
            "wgan_gp": (gan, GANObjective("wgan_gp", "plain", penalty_weight=10.0, n_critic=2, monitor=None), points),
            "amed": (seeded(lambda: {"predictor": amed.new_predictor()}), amed, NoiseDataset((2,), size=256))}


def every_objective(out: Path, steps: int) -> None:
    """Each of `objective_runs` for `steps` steps (a global batch of 16, a loss row every step) in
    out/<name>, each process's `snapshot` in out/<name>/rank<i>.safetensors."""
    from fewstep.training import Trainer

    for name, (nets, objective, data) in objective_runs().items():
        trainer = Trainer(nets(), objective, data, out_dir=out / name, steps=steps, batch_size=16, lr=1e-3,
                          warmup_steps=2, ema_decay=0.9, checkpoint_every=steps, log_every=1, cpu=True)
        trainer.fit()
        save_file(snapshot(trainer), str(out / name / f"rank{trainer.accelerator.process_index}.safetensors"))


def main(out: Path, steps: int, every: int, kind: str = "unet", kill_at: int | None = None):
    if kind == "objectives":
        return every_objective(out, steps)
    if kind == "gan":
        objective = TinyWGAN() if kill_at is None else die_at(TinyWGAN(), kill_at)
        trainer = gan_trainer(out / "run", steps, every, objective=objective)
    else:
        from helpers import tiny_unet
        from fewstep.flows import DiffusionObjective
        from fewstep.training import Trainer
        from fewstep.training.data import digits

        objective = DiffusionObjective() if kill_at is None else die_at(DiffusionObjective(), kill_at)
        trainer = Trainer(tiny_unet(), objective, digits(image_size=8)[:256], out_dir=out / "run", steps=steps,
                          batch_size=16, lr=1e-3, checkpoint_every=every, log_every=2)
    trainer.fit()
    save_file(snapshot(trainer), str(out / f"rank{trainer.accelerator.process_index}.safetensors"))


if __name__ == "__main__":
    args = sys.argv[1:]
    main(Path(args[0]), int(args[1]), int(args[2]), *args[3:4], *[int(a) for a in args[4:5]])
