"""gan.GANObjective on the shared loop: its update schedule and regression target, the configs
objective=reflow_gan|wgan_gp, an exact resume in the middle of a generator phase, a 2-D run that
learns (one and two processes train the same: tests/test_engine_processes.py), the monitor (sample PNGs, FD-digits in metrics.csv), and one-step generators
from the command line (scripts/sample.py, scripts/eval_fid.py) and from `gan.load_generator`."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import ROOT, ok, run_cli
from fewstep.gan import (DCGANCritic, DCGANGenerator, FlowGenerator, GANObjective, MLPCritic, MLPGenerator,
                         generator_plain_loss, load_generator, regression_loss, regression_target)
from fewstep.samplers.noise import generators
from fewstep.training import Trainer
from fewstep.training.data2d import gaussians8


def run(script, *overrides):
    """scripts/<script> with these overrides, in this process (helpers.run_cli)."""
    return run_cli(script, *overrides)


def compose_train(*overrides):
    from hydra import compose, initialize_config_dir

    from fewstep.cli.common import config_dir
    from fewstep.cli import schemas; schemas.register()

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def tiny_pair(width=16):
    torch.manual_seed(0)
    return {"generator": MLPGenerator(width=width, depth=2), "critic": MLPCritic(width=width, depth=2)}


def same_weights(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def mode_centres(data: torch.Tensor) -> torch.Tensor:
    """The 8 mode centres of (standardised) gaussians8 data: the mean of the points of each angle sector."""
    k = torch.round(torch.atan2(data[:, 1], data[:, 0]) / (math.pi / 4)) % 8
    return torch.stack([data[k == i].mean(0) for i in range(8)])


@torch.no_grad()
def mode_distance(generator, centres, n=2000) -> float:
    """Mean distance of the generator's samples to the nearest mode centre."""
    x = generator(torch.randn(n, 2, generator=torch.Generator().manual_seed(123)))
    return torch.cdist(x, centres).min(1).values.mean().item()


def raw_fd(x: torch.Tensor, data: torch.Tensor) -> float:
    from fewstep.evaluation.frechet import frechet_distance

    def stats(p):
        p = p.double().numpy()
        return p.mean(0), np.cov(p, rowvar=False)
    return frechet_distance(*stats(x), *stats(data))


# -- 1. the update schedule ------------------------------------------------------------------------

@pytest.mark.parametrize("generator_loss", ["regression", "plain"])
def test_cycles_of_critic_then_generator_updates_with_one_target_per_cycle(generator_loss, one_thread):
    nets = tiny_pair()
    critic, generator = nets["critic"], nets["generator"]
    objective = GANObjective(generator_loss=generator_loss, n_critic=3, generator_steps=2, step_size=0.5)
    drawn, original = [], objective.latents

    def spy(gen, gens, device):
        drawn.append(original(gen, gens, device))
        return drawn[-1]

    objective.latents = spy
    real = gaussians8(n=64)
    keys, draws, losses, targets, latents = [], [], [], [], []
    for step in range(10):  # the networks are never updated
        before = len(drawn)
        out = objective.losses(nets, real, step, [(0, step, i) for i in range(len(real))])
        keys.append(tuple(out))
        draws.append(len(drawn) - before)
        losses.append(next(iter(out.values())).detach())
        targets.append(objective._target)
        latents.append(drawn[-1])
    assert keys == [("critic",)] * 3 + [("generator",)] * 2 + [("critic",)] * 3 + [("generator",)] * 2
    if generator_loss == "plain":
        assert draws == [1] * 10  # a fresh z at every generator update as well
        assert not torch.equal(latents[3], latents[4]) and not torch.allclose(losses[3], losses[4])
        with torch.no_grad():
            torch.testing.assert_close(losses[4], generator_plain_loss(critic, generator(latents[4])))
        assert objective.state_dict() == {}
        return
    # z and the target are drawn at the cycle's first generator update (3, 8) and reused at the next (4, 9)
    assert draws == [1, 1, 1, 1, 0, 1, 1, 1, 1, 0]
    assert targets[3] is targets[4] and targets[8] is targets[9] and not torch.allclose(targets[3], targets[8])
    assert torch.equal(losses[3], losses[4]) and not torch.allclose(losses[3], losses[8])
    z = latents[3]
    target = regression_target(critic, generator(z), 0.5)
    torch.testing.assert_close(targets[3], target)
    with torch.no_grad():
        torch.testing.assert_close(losses[3], regression_loss(generator(z), target))
    state = objective.state_dict()
    assert torch.equal(state["z"], latents[8]) and torch.equal(state["target"], targets[8])


# -- 2. the configs ---------------------------------------------------------------------------------

def test_the_objective_configs_set_the_optimiser_and_the_command_line_still_wins(tmp_path, one_thread):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    base = ["net=gan2d", "data=gaussians8", "net.generator.width=16", "net.critic.width=16", f"out_dir={tmp_path}"]
    cfg = compose_train("objective=wgan_gp", *base)
    assert (cfg.train.optimizer, cfg.train.lr, list(cfg.train.betas)) == ("adam", 1e-4, [0.0, 0.9])
    assert cfg.train.grad_clip is None and cfg.train.warmup_steps == 0 and cfg.train.networks.critic.ema_decay is None
    objective = instantiate(cfg.objective)
    assert (objective.critic_loss, objective.generator_loss, objective.penalty_weight, objective.n_critic,
            objective.generator_steps) == ("wgan_gp", "plain", 10.0, 5, 1)
    trainer = Trainer(instantiate(cfg.net, _convert_="all"), objective, instantiate(cfg.data), out_dir=tmp_path,
                      **{**OmegaConf.to_container(cfg.train, resolve=True), "cpu": True})
    for name in ("critic", "generator"):
        optimizer = trainer.optimizers[name].optimizer
        assert type(optimizer) is torch.optim.Adam
        assert (optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["betas"]) == (1e-4, (0.0, 0.9))
    assert trainer.emas["critic"] is None and trainer.emas["generator"] is not None

    overridden = compose_train("objective=wgan_gp", "train.lr=3e-4", *base)
    assert overridden.train.lr == 3e-4 and overridden.train.optimizer == "adam"
    reflow = compose_train("objective=reflow_gan", *base)
    assert (reflow.objective.critic_loss, reflow.objective.generator_loss, reflow.objective.penalty_weight) == (
        "reflow", "regression", 0.5)
    assert (reflow.train.optimizer, reflow.train.lr, list(reflow.train.betas)) == ("adam", 1e-4, [0.0, 0.9])
    default = compose_train()  # the preset does not leak into other objectives
    assert (default.train.optimizer, default.train.lr) == ("adamw", 5e-4)


# -- 3. exact resume in the middle of a generator phase ------------------------------------------

def gan2d_trainer(out_dir, steps):
    # monitor auto: for 2-D points a sample plot at each checkpoint only
    return Trainer(tiny_pair(), GANObjective(generator_steps=3, n_critic=2), gaussians8(n=512),
                   out_dir=out_dir, steps=steps, batch_size=64, lr=1e-3, optimizer="adam", betas=(0.0, 0.9),
                   grad_clip=None, warmup_steps=0, ema_decay=0.9, checkpoint_every=7, log_every=7, cpu=True)


def test_a_run_resumed_mid_generator_phase_ends_where_a_straight_run_does(tmp_path, one_thread):
    straight = gan2d_trainer(tmp_path / "straight", 21).fit()
    gan2d_trainer(tmp_path / "resumed", 14).fit()
    gan2d_trainer(tmp_path / "lost", 14).fit()
    # step 14 is the third generator update of the cycle 10..14: it needs the target drawn at step 12
    state = torch.load(tmp_path / "resumed" / "checkpoints" / "step_00000014" / "objective_0.pt", weights_only=True)
    assert 14 % 5 == 4 and set(state) == {"z", "target"}
    resumed = gan2d_trainer(tmp_path / "resumed", 21).fit()
    for name in ("critic", "generator"):
        assert same_weights(straight.nets[name], resumed.nets[name]), name
        assert same_weights(straight.ema_nets()[name], resumed.ema_nets()[name]), name
    logs = [(tmp_path / d / "loss.csv").read_text() for d in ("straight", "resumed")]
    assert logs[0] == logs[1]
    # the same resume without the objective's state (an empty one, as a stateless objective saves)
    for path in (tmp_path / "lost" / "checkpoints").glob("step_*/objective_0.pt"):
        torch.save({}, path)
    lost = gan2d_trainer(tmp_path / "lost", 21).fit()
    assert not same_weights(straight.nets["generator"], lost.nets["generator"])


# -- 4, 6 and 7: a 2-D reflow_gan run -------------------------------------------------------------

STEPS_2D, EVERY_2D = 1000, 250


@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
    """objective=reflow_gan net=gan2d data=gaussians8 composed from the configs, trained in-process."""
    from accelerate.utils import set_seed
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    out = tmp_path_factory.mktemp("gan2d")
    cfg = compose_train("objective=reflow_gan", "net=gan2d", "data=gaussians8", "train.cpu=true", "train.lr=1e-3",
                        f"train.steps={STEPS_2D}", f"train.checkpoint_every={EVERY_2D}", "train.keep_checkpoints=1",
                        "train.log_every=250", "train.ema_decay=0.9", "train.batch_size=128", "data.n=2048",
                        "net.generator.width=32", "net.critic.width=32", "net.generator.depth=2", "net.critic.depth=2",
                        f"out_dir={out}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        set_seed(cfg.seed)
        nets = instantiate(cfg.net, _convert_="all")
        data = instantiate(cfg.data)
        centres = mode_centres(data)
        with torch.no_grad():
            before = (mode_distance(nets["generator"], centres),
                      raw_fd(nets["generator"](torch.randn(2000, 2, generator=torch.Generator().manual_seed(7))), data))
        trainer = Trainer(nets, instantiate(cfg.objective), data, out_dir=out, seed=cfg.seed,
                          **OmegaConf.to_container(cfg.train, resolve=True)).fit()
    finally:
        torch.set_num_threads(threads)
    return out, data, centres, before, trainer


def test_a_short_2d_run_moves_the_generator_onto_the_modes(run2d, one_thread):
    out, data, centres, (distance0, fd0), trainer = run2d
    assert trainer.updates() == {"critic": 834, "generator": 166}  # n_critic 5, one generator update a cycle
    generator = load_generator(out / "model")
    distance = mode_distance(generator, centres)
    with torch.no_grad():
        fd = raw_fd(generator(torch.randn(2000, 2, generator=torch.Generator().manual_seed(7))), data)
    assert distance < 0.6 * distance0, (distance0, distance)
    assert fd < 0.1 * fd0, (fd0, fd)


def test_each_checkpoint_writes_a_sample_plot_and_2d_data_no_metrics(run2d):
    out = run2d[0]
    pngs = sorted(p.name for p in (out / "samples").iterdir())
    assert pngs == [f"step_{s:08d}.png" for s in range(EVERY_2D, STEPS_2D + 1, EVERY_2D)]
    sizes = {Image.open(out / "samples" / p).size for p in pngs}
    assert all(w > 100 and h > 100 for w, h in sizes)
    assert (out / "samples" / pngs[0]).read_bytes() != (out / "samples" / pngs[-1]).read_bytes()
    assert not (out / "metrics.csv").exists()  # monitor auto: FD-digits for 16x16 digits only


def test_sample_py_draws_the_generator_by_seed_with_one_nfe(run2d, tmp_path):
    model = run2d[0] / "model"
    done = ok(run("sample.py", "model=gan", f"model.path={model}", "num_samples=50", "seed=3", "device=cpu",
                  f"out_dir={tmp_path / 's'}"))
    assert "NFE used per sample: 1\n" in done.stdout
    saved = np.load(tmp_path / "s" / "samples.npz")
    generator = load_generator(model)
    z = torch.stack([torch.randn(generator.latent_shape, generator=torch.Generator().manual_seed(3 + i))
                     for i in range(50)])
    with torch.no_grad():
        expected = generator(z)
    assert saved["samples"].shape == (50, 2) and float(saved["nfe"]) == 1
    torch.testing.assert_close(torch.from_numpy(saved["samples"]), expected)

    refused = run("sample.py", "model=gan", f"model.path={model}", "sampler=euler", "num_samples=5", "device=cpu",
                  f"out_dir={tmp_path / 'r'}")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the model is a one-step generator"), refused.stderr
    assert not (tmp_path / "r" / "samples.npz").exists()
    other = run("sample.py", "model=gan", f"model.path={model}", "image_size=16", "device=cpu", f"out_dir={tmp_path / 'i'}")
    assert other.returncode == 2 and other.stderr.strip().splitlines()[-1] == (
        "error: the generator makes samples of shape (2,); it cannot make image_size=16")


def test_eval_fid_of_a_2d_generator_against_the_data(run2d, tmp_path):
    model = run2d[0] / "model"
    done = ok(run("eval_fid.py", "model=gan", f"model.path={model}", "extractor=raw", "reference=data",
                  "data=gaussians8", "num_samples=500", "device=cpu", f"cache_dir={tmp_path / 'cache'}",
                  f"out_dir={tmp_path / 'e'}"))
    (written,) = (tmp_path / "e").glob("fd-raw-*.json")
    result = json.loads(written.read_text())
    generator = load_generator(model)
    z = torch.stack([torch.randn(2, generator=torch.Generator().manual_seed(i)) for i in range(500)])
    with torch.no_grad():
        expected = raw_fd(generator(z), gaussians8())  # conf/data/gaussians8.yaml: n 10000, seed 0
    assert result["nfe"] == 1 and result["num_samples"] == 500 and result["sampler"] == "generator"
    assert result["fd"] == pytest.approx(expected, rel=1e-3, abs=1e-5), (result, expected)
    assert f"FD-raw {result['fd']:.4f}" in done.stdout


# -- 6. FD-digits in metrics.csv ---------------------------------------------------------------------

def dcgan_trainer(out_dir, steps, monitor="auto"):
    from fewstep.training.data import digits

    torch.manual_seed(0)
    nets = {"generator": DCGANGenerator(latent_dim=8, width=8), "critic": DCGANCritic(width=8)}
    return Trainer(nets, GANObjective(n_critic=2, generator_steps=2, monitor=monitor, monitor_samples=200), digits(), out_dir=out_dir,
                   steps=steps, batch_size=32, lr=1e-3, optimizer="adam", betas=(0.0, 0.9), grad_clip=None,
                   warmup_steps=0, ema_decay=0.9, checkpoint_every=2, keep_checkpoints=5, log_every=1, cpu=True)


def test_fd_digits_is_logged_at_each_checkpoint_and_a_resume_redoes_the_rows_after_it(tmp_path, one_thread):
    from fewstep.evaluation import get_extractor
    from fewstep.evaluation.fid import data_stats, frechet_of
    from fewstep.evaluation.generators import GeneratorFn
    from fewstep.training.data import digits

    dcgan_trainer(tmp_path, 6).fit()
    first = list(csv.reader(open(tmp_path / "metrics.csv", newline="")))
    assert first[0] == ["step", "fd_digits"] and [r[0] for r in first[1:]] == ["2", "4", "6"]
    extractor = get_extractor("digits")
    fd = frechet_of(GeneratorFn(load_generator(tmp_path / "model")), range(200), extractor,
                    data_stats(digits(), extractor), batch_size=250)
    assert float(first[-1][1]) == pytest.approx(fd, rel=1e-5)  # the exported (EMA) generator's FD-digits
    assert len({r[1] for r in first[1:]}) == 3
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [f"step_{s:08d}.png" for s in (2, 4, 6)]

    latest = tmp_path / "checkpoints" / "step_00000006" / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])  # unloadable: the resume starts from step 4
    with pytest.warns(RuntimeWarning, match="step_00000006 cannot be loaded"):
        dcgan_trainer(tmp_path, 8).fit()
    rows = list(csv.reader(open(tmp_path / "metrics.csv", newline="")))
    assert [r[0] for r in rows[1:]] == ["2", "4", "6", "8"]  # step 6 redone once, not logged twice
    assert rows[1:3] == first[1:3]
    assert [r[0] for r in list(csv.reader(open(tmp_path / "loss.csv")))[1:]] == [str(s) for s in range(1, 9)]


def test_fd_digits_monitoring_keeps_a_resume_exact(tmp_path, one_thread):
    """The report builds a classifier and a data loader, which draw random numbers: it runs on a fork of the RNG."""
    straight = dcgan_trainer(tmp_path / "straight", 8).fit()
    dcgan_trainer(tmp_path / "resumed", 4).fit()
    resumed = dcgan_trainer(tmp_path / "resumed", 8).fit()
    for name in ("critic", "generator"):
        a, b = straight.nets[name].state_dict(), resumed.nets[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_without_fd_digits_the_same_dcgan_resume_is_exact(tmp_path, one_thread):
    """The control of the test above: monitor=None (the sample grid is still written)."""
    straight = dcgan_trainer(tmp_path / "straight", 8, monitor=None).fit()
    dcgan_trainer(tmp_path / "resumed", 4, monitor=None).fit()
    resumed = dcgan_trainer(tmp_path / "resumed", 8, monitor=None).fit()
    assert (tmp_path / "resumed" / "samples" / "step_00000008.png").is_file()
    for name in ("critic", "generator"):
        a, b = straight.nets[name].state_dict(), resumed.nets[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


# -- 8. load_generator ------------------------------------------------------------------------------

def test_load_generator_refusals_are_one_line_naming_the_path_or_class(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        load_generator(missing)
    assert str(err.value) == f"generator path does not exist: {missing}"
    MLPCritic(width=16, depth=1).save_pretrained(str(tmp_path / "critic"))
    with pytest.raises(ValueError) as err:
        load_generator(tmp_path / "critic")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "critic" / "config.json") in message and "'MLPCritic'" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        load_generator(tmp_path / "empty")
    assert "\n" not in str(err.value) and str(tmp_path / "empty") in str(err.value)


def test_a_flow_pipeline_loads_as_the_one_step_generator_z_minus_v_at_t1(tmp_path, one_thread):
    from fewstep.flows import DistillationObjective, MLPVelocity, RectifiedFlowObjective

    torch.manual_seed(0)
    net = MLPVelocity(dim=2, hidden=16, depth=2).eval()
    RectifiedFlowObjective().export({"net": net}, tmp_path)
    generator = load_generator(tmp_path)
    assert isinstance(generator, FlowGenerator) and generator.latent_shape == generator.sample_shape == (2,)
    seen = []
    generator.flow.velocity_model.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = generator(z)
        expected = z - net(z, torch.full((16,), 1000.0))
        one_step = DistillationObjective().one_step(net, z)
    assert len(seen) == 1 and torch.equal(seen[0], torch.full((16,), 1000.0))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out, one_step)
    assert not torch.allclose(out, z, atol=1e-3)  # the velocity is not zero: the comparison means something


# -- 6. the objective's settings, devices and monitor ------------------------------------------------

def test_the_defaults_are_the_reflow_gan_config():
    from omegaconf import OmegaConf

    conf = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "objective" / "reflow_gan.yaml").objective)
    del conf["_target_"]
    objective = GANObjective()
    assert {key: getattr(objective, key) for key in conf} == conf
    assert objective.state_dict() == {}  # no regression target before the first generator update


@pytest.mark.parametrize("kwargs, message", [
    (dict(critic_loss="hinge"), "unknown critic_loss 'hinge': use reflow or wgan_gp"),
    (dict(generator_loss="nonsat"), "unknown generator_loss 'nonsat': use regression or plain"),
    (dict(n_critic=0), "n_critic must be a whole number of at least 1, got 0"),
    (dict(n_critic=2.5), "n_critic must be a whole number of at least 1, got 2.5"),
    (dict(generator_steps=0), "generator_steps must be a whole number of at least 1, got 0"),
    (dict(generator_steps=1.5), "generator_steps must be a whole number of at least 1, got 1.5"),
    (dict(step_size=0.0), "step_size must be > 0, got 0.0"),
    (dict(step_size=-1), "step_size must be > 0, got -1"),
    (dict(monitor="fid"), "unknown monitor 'fid': use auto, fd_digits or null"),
])
def test_bad_settings_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError) as err:
        GANObjective(**kwargs)
    assert str(err.value) == message


def test_every_monitor_and_whole_float_counts_are_accepted():
    for monitor in (None, "auto", "fd_digits"):
        assert GANObjective(monitor=monitor).monitor == monitor
    objective = GANObjective(n_critic=3.0, generator_steps=2.0)  # as a YAML float arrives
    assert (objective.n_critic, objective.generator_steps) == (3, 2)
    assert type(objective.n_critic) is int and type(objective.generator_steps) is int


def test_the_critic_loss_uses_the_objectives_penalty_weight(one_thread):
    from fewstep.gan import reflow_critic_loss, wgan_gp_critic_loss

    nets, real = tiny_pair(), gaussians8(n=32)
    seeds = [(5, 0, i) for i in range(32)]
    for name, loss in (("reflow", reflow_critic_loss), ("wgan_gp", wgan_gp_critic_loss)):
        got = GANObjective(critic_loss=name, penalty_weight=3.0).losses(nets, real, 0, seeds)["critic"]
        expected = []
        for weight in (3.0, 0.5):  # the same fake batch and interpolation times, two weights
            rows = generators(seeds)  # each row's latent, then its time
            with torch.no_grad():
                fake = nets["generator"](torch.stack([torch.randn(2, generator=g) for g in rows]))
            expected.append(loss(nets["critic"], real, fake, weight, rows))
        torch.testing.assert_close(got, expected[0])
        assert not torch.allclose(got, expected[1])


@pytest.mark.parametrize("generator_loss", ["regression", "plain"])
def test_latents_and_a_loaded_target_follow_the_batch_to_its_device(generator_loss):
    """On the meta device a latent drawn elsewhere, or a target left on the CPU, fails in the network."""
    nets = {"generator": MLPGenerator(width=8, depth=2).to("meta"), "critic": MLPCritic(width=8, depth=2).to("meta")}
    real = torch.empty(4, 2, device="meta")
    objective = GANObjective(generator_loss=generator_loss, n_critic=1, generator_steps=2)
    seeds = [(0, 0, i) for i in range(4)]
    for step in range(3):  # critic, the cycle's first generator update, the next one
        assert next(iter(objective.losses(nets, real, step, seeds).values())).device.type == "meta"
    assert GANObjective.latents(nets["generator"], generators(seeds[:3]), real.device).device.type == "meta"
    if generator_loss == "regression":  # as a resumed run loads it: z and the target on the CPU
        objective.load_state_dict({"z": torch.randn(4, 2), "target": torch.randn(4, 2)})
        assert objective.losses(nets, real, 2, seeds)["generator"].device.type == "meta"


def test_report_draws_64_fixed_samples_into_a_grid_in_a_new_folder(tmp_path, one_thread):
    from fewstep.evaluation.generators import GeneratorFn
    from fewstep.evaluation.output import save_grid

    torch.manual_seed(0)
    generator = DCGANGenerator(channels=1, image_size=16, width=8)
    out = tmp_path / "new" / "run"
    assert GANObjective(monitor=None).report({"generator": generator}, 12, out) == {}
    expected = save_grid(GeneratorFn(generator)(range(64)), tmp_path / "expected.png")
    assert (out / "samples" / "step_00000012.png").read_bytes() == expected.read_bytes()


def test_report_of_points_is_a_scatter_titled_with_the_step(tmp_path, monkeypatch):
    from fewstep.evaluation import output
    from fewstep.evaluation.generators import GeneratorFn

    drawn = []
    monkeypatch.setattr(output, "save_scatter", lambda points, path, title="": drawn.append((points, path, title)))
    generator = tiny_pair()["generator"]
    assert GANObjective().report({"generator": generator}, 7, tmp_path) == {}  # auto: no FD for points
    (points, path, title), = drawn
    assert torch.equal(points, GeneratorFn(generator)(range(64)))
    assert (path, title) == (tmp_path / "samples" / "step_00000007.png", "step 7")


# -- 7. one-step generators from files ---------------------------------------------------------------

def test_a_flow_generator_is_saved_as_the_flow_it_came_from_and_is_its_one_euler_step(tmp_path, one_thread):
    from fewstep import samplers
    from fewstep.flows import MLPVelocity, RectifiedFlowObjective

    torch.manual_seed(0)
    RectifiedFlowObjective(time_scale=500.0).export({"net": MLPVelocity(dim=2, hidden=16, depth=2).eval()},
                                                    tmp_path / "flow")
    generator = load_generator(tmp_path / "flow")
    generator.save_pretrained(tmp_path / "again")
    again = load_generator(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "scheduler" / "scheduler_config.json").read_text())[
        "num_train_timesteps"] == 500
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = generator(z)
        torch.testing.assert_close(again(z), out, rtol=0, atol=0)
        generator.double()
        one_euler_step = samplers.sample("euler", generator.flow, z.double(),
                                         torch.tensor([generator.flow.sigma_max, 0.0], dtype=torch.float64))
        torch.testing.assert_close(one_euler_step, generator(z.double()), rtol=1e-12, atol=1e-12)
    assert generator.to("meta")(z.double().to("meta")).device.type == "meta"


def test_a_gan_nets_generator_loads_from_its_folder_or_its_generator_subfolder(tmp_path):
    torch.manual_seed(0)
    saved = MLPGenerator(width=8, depth=1)
    saved.save_pretrained(str(tmp_path / "run" / "generator"))
    z = torch.randn(4, 2)
    for path in (tmp_path / "run", tmp_path / "run" / "generator"):
        loaded = load_generator(path)
        assert type(loaded) is MLPGenerator and not loaded.training
        assert torch.equal(loaded(z), saved(z))


def test_a_shipped_generators_name_is_taken_unless_a_local_folder_of_that_name_holds_one(tmp_path, monkeypatch):
    from fewstep.flows import MLPVelocity, RectifiedFlowObjective

    monkeypatch.chdir(tmp_path)
    assert type(load_generator("digits_gan")) is DCGANGenerator  # the shipped one
    Path("digits_gan").mkdir()
    assert type(load_generator("digits_gan")) is DCGANGenerator  # an empty run folder does not hide it
    MLPGenerator(width=8, depth=1).save_pretrained("digits_gan/generator")
    assert type(load_generator("digits_gan")) is MLPGenerator
    RectifiedFlowObjective().export({"net": MLPVelocity(dim=2, hidden=8, depth=1)}, "digits_rf_gan")
    assert load_generator("digits_rf_gan").sample_shape == (2,)  # the local flow, not the shipped 16x16 one


@pytest.mark.parametrize("class_name", ["DCGANCritic", "BigGenerator", "ModelMixin"])
def test_a_config_naming_no_generator_of_gan_nets_is_refused(tmp_path, class_name):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": class_name}))
    with pytest.raises(ValueError) as err:
        load_generator(tmp_path)
    assert str(err.value) == f"{tmp_path / 'config.json'} names {class_name!r}, which is not a generator of gan.nets"


def test_a_folder_without_a_generator_is_named_with_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_generator(tmp_path)
    assert str(err.value) == (f"no generator in {tmp_path}: neither a gan.nets model (config.json) nor a flow pipeline "
                              f"(unet/), there or in {tmp_path / 'generator'}")
