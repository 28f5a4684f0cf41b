import csv
import dataclasses
import errno
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from diffusers import DDPMPipeline
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file

from fewstep import samplers
from helpers import ENV, ROOT, WORKER, in_process, make_trainer, tiny_unet
from fewstep.flows import DiffusionObjective
from fewstep.training import NetworkOptim, Trainer
from fewstep.training.data import ImageFolder, cifar10, digits
from train_worker import GAN_SETTINGS, TinyWGAN, gan_data, gan_nets, gan_trainer


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models on one thread

def test_training_lowers_the_loss_resumes_and_exports(tmp_path):
    make_trainer(tmp_path, steps=40).fit()
    rows = list(csv.DictReader(open(tmp_path / "loss.csv")))
    losses = [float(r["loss"]) for r in rows]
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40]
    assert losses[-1] < 0.6 * losses[0], losses

    resumed = make_trainer(tmp_path, steps=60)
    assert resumed.resume() and resumed.step == 40
    resumed.fit()
    assert json.loads((tmp_path / "train_summary.json").read_text())["steps"] == 60
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000040", "step_00000060"]

    exported = tmp_path / "model"
    denoiser = samplers.DiffusersUNetDenoiser.from_pretrained(exported)
    assert denoiser.sample_shape == (1, 8, 8) and denoiser.prediction_type == "epsilon"
    ema = DDPMPipeline.from_pretrained(str(exported)).unet
    raw = resumed.nets["net"]
    ema_params = dict(ema.named_parameters())
    assert any(not torch.equal(p, ema_params[n]) for n, p in raw.named_parameters())


@pytest.mark.parametrize("change, message", [
    (dict(batch_size=16), "holds a run made with batch_size=32; this run has batch_size=16"),
    (dict(lr=1e-3), "holds a run made with networks.net.lr=0.002; this run has networks.net.lr=0.001"),
    (dict(objective=DiffusionObjective(prediction_type="v_prediction")),
     "holds a run made with objective_settings.prediction_type=epsilon; this run has "
     "objective_settings.prediction_type=v_prediction"),
])
def test_resuming_with_settings_that_mix_runs_is_one_line_and_writes_nothing(tmp_path, change, message):
    make_trainer(tmp_path, steps=20).fit()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    settings = dict(steps=40, batch_size=32, lr=2e-3)
    settings.update({k: v for k, v in change.items() if k != "objective"})
    other = Trainer(tiny_unet(), change.get("objective", DiffusionObjective()), digits(image_size=8), out_dir=tmp_path,
                    warmup_steps=5, checkpoint_every=20, log_every=10, ema_decay=0.9, cpu=True, **settings)
    with pytest.raises(ValueError) as error:
        other.fit()
    assert message in str(error.value) and "use another out_dir or the same settings" in str(error.value)
    assert "\n" not in str(error.value)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_the_exported_model_is_the_moving_average_of_the_weights(tmp_path):
    """EMA by hand: `ema_k = d_k ema_{k-1} + (1 - d_k) theta_k` after optimiser step k, with diffusers'
    warm-up `d_k = min(ema_decay, k / (9 + k))` (so `d_1 = 0`: the first update copies the weights)."""
    trainer = make_trainer(tmp_path, steps=6, checkpoint_every=100)
    raw = trainer.nets["net"]
    history = []
    trainer.optimizers["net"].optimizer.register_step_post_hook(
        lambda *_: history.append([p.detach().clone() for p in raw.parameters()]))
    trainer.fit()
    assert len(history) == 6
    ema = [p.clone() for p in history[0]]
    for k, theta in enumerate(history[1:], start=2):
        d = min(0.9, k / (9 + k))
        ema = [d * e + (1 - d) * t for e, t in zip(ema, theta)]
    exported = DDPMPipeline.from_pretrained(str(tmp_path / "model")).unet
    for expected, got, last in zip(ema, exported.parameters(), history[-1]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(e, t, atol=1e-4) for e, t in zip(ema, history[-1]))  # the average is not the last weights


def test_a_stopped_and_resumed_run_ends_exactly_where_an_uninterrupted_one_does(tmp_path):
    data = digits(image_size=8)[:200]  # 6 batches an epoch: the resume lands mid-epoch
    straight = make_trainer(tmp_path / "a", 20, data=data, checkpoint_every=7).fit()
    make_trainer(tmp_path / "b", 13, data=data, checkpoint_every=7).fit()
    resumed = make_trainer(tmp_path / "b", 20, data=data, checkpoint_every=7).fit()
    for a, b in [(straight.nets["net"], resumed.nets["net"]), (straight.ema_nets()["net"], resumed.ema_nets()["net"])]:
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def nan_objective():
    """The diffusion objective (so the run resumes) whose loss has turned NaN."""
    objective = DiffusionObjective()
    loss = objective.loss
    objective.loss = lambda *args: loss(*args) * float("nan")
    return objective


def test_a_nan_loss_stops_with_the_step_and_keeps_the_checkpoints(tmp_path):
    make_trainer(tmp_path, steps=20).fit()
    with pytest.raises(FloatingPointError, match=r"^the loss is not finite at step 21 \(this process: nan\); the last "
                                                 rf"good checkpoint is kept in {tmp_path / 'checkpoints'}$"):
        make_trainer(tmp_path, steps=40, objective=nan_objective()).fit()
    assert (tmp_path / "checkpoints" / "step_00000020" / "model.safetensors").is_file()


# in_process: helpers.py. Two processes training together: test_engine_processes.py.


def test_two_networks_killed_with_sigkill_resume_to_the_same_weights_emas_and_optimisers(tmp_path):
    """The WGAN pair (n_critic 2, Adam betas (0, 0.9)) killed as step 24 begins: the last checkpoint is
    step 20, in the middle of a critic-critic-generator cycle, with RNG draws and loss rows to redo."""
    def worker(run, *kill_at):
        return [sys.executable, WORKER, str(tmp_path / run), "30", "5", "gan", *kill_at]

    killed = subprocess.Popen(worker("killed", "23"), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    in_process(tmp_path / "straight", "30", "5", "gan")  # meanwhile, in this process
    assert killed.wait() == -signal.SIGKILL, killed.stderr.read().decode()[-2000:]
    checkpoints = tmp_path / "killed" / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000015", "step_00000020"]
    in_process(tmp_path / "killed", "30", "5", "gan")
    straight, resumed = (load_file(str(tmp_path / d / "rank0.safetensors")) for d in ("straight", "killed"))
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in straight} == {
        "critic.0", "critic.2", "generator.0", "generator.2", "ema.critic", "ema.generator",
        "optim.critic", "optim.generator"}
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    logged = [(tmp_path / d / "run" / "loss.csv").read_text().splitlines() for d in ("straight", "killed")]
    assert logged[0] == logged[1]
    summaries = [json.loads((tmp_path / d / "run" / "train_summary.json").read_text()) for d in ("straight", "killed")]
    assert summaries[0]["updates"] == summaries[1]["updates"] == {"critic": 20, "generator": 10}


def test_each_optimiser_changes_only_its_own_network_on_the_objectives_schedule(tmp_path):
    """Every update of a network finds gradients on its parameters only, and changes its parameters
    only; the critic is updated twice per generator update, as TinyWGAN returns its losses."""
    trainer = gan_trainer(tmp_path, 9, checkpoint_every=100, warmup_steps=0, log_every=1)

    def weights():
        return {name: [p.detach().clone() for p in net.parameters()] for name, net in trainer.nets.items()}

    updates = []
    for name, optimizer in trainer.optimizers.items():
        def before(_, args, kwargs, name=name):
            for other, net in trainer.nets.items():
                assert all((p.grad is not None) == (other == name) for p in net.parameters()), (name, other)
            updates.append((name, weights()))

        def after(_, args, kwargs, name=name):
            old, new = updates[-1][1], weights()
            for other in trainer.nets:
                changed = [not torch.equal(a, b) for a, b in zip(old[other], new[other])]
                assert any(changed) == (other == name), (name, other)  # (the critic's last bias has no gradient)

        optimizer.optimizer.register_step_pre_hook(before)
        optimizer.optimizer.register_step_post_hook(after)
    trainer.fit()
    assert [name for name, _ in updates] == ["critic", "critic", "generator"] * 3
    assert trainer.updates() == {"critic": 6, "generator": 3}
    rows = list(csv.reader(open(tmp_path / "loss.csv", newline="")))
    assert rows[0] == ["step", "loss_critic", "loss_generator", "lr_critic", "lr_generator"]
    assert [(r[1] != "", r[2] != "") for r in rows[1:]] == [(True, False), (True, False), (False, True)] * 3
    exported = {name: load_file(str(tmp_path / "model" / f"{name}.safetensors")) for name in ("critic", "generator")}
    for name, ema in trainer.ema_nets().items():
        assert all(torch.equal(exported[name][k], v) for k, v in ema.state_dict().items())


def test_per_network_settings_reach_the_optimisers_the_clipping_and_the_emas(tmp_path, monkeypatch):
    trainer = Trainer(gan_nets(), TinyWGAN(), gan_data(), out_dir=tmp_path, steps=3, batch_size=16, cpu=True,
                      lr=1e-3, weight_decay=0.01, grad_clip=0.5, ema_decay=0.99,
                      networks={"critic": {"optimizer": "adam", "betas": [0, 0.9], "lr": 4e-3, "grad_clip": None,
                                           "ema_decay": None}})
    critic, generator = (trainer.optimizers[name].optimizer for name in ("critic", "generator"))
    assert type(critic) is torch.optim.Adam and type(generator) is torch.optim.AdamW
    assert [(g["lr"], g["betas"], g["weight_decay"]) for g in (critic.param_groups[0], generator.param_groups[0])] == [
        (4e-3, (0.0, 0.9), 0.01), (1e-3, (0.9, 0.999), 0.01)]
    assert trainer.emas["critic"] is None and trainer.emas["generator"].decay == 0.99
    clipped = []
    monkeypatch.setattr(trainer.accelerator, "clip_grad_norm_",
                        lambda params, max_norm: clipped.append(([id(p) for p in params], max_norm)))
    trainer.fit()  # critic, critic, generator
    assert clipped == [([id(p) for p in trainer.nets["generator"].parameters()], 0.5)]


def test_per_network_settings_from_the_command_line_reach_the_optimisers(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fewstep.cli import schemas; schemas.register()

    overrides = ["train.steps=3", "train.batch_size=16", "train.optimizer=adam", "train.betas=[0,0.9]",
                 "train.networks.critic.lr=4e-3", "train.networks.critic.ema_decay=null",
                 "train.networks.generator.optimizer=adamw"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    trainer = Trainer(gan_nets(), TinyWGAN(), gan_data(), out_dir=tmp_path, **OmegaConf.to_container(cfg.train))
    critic, generator = (trainer.optimizers[name].optimizer for name in ("critic", "generator"))
    assert type(critic) is torch.optim.Adam and type(generator) is torch.optim.AdamW
    assert [(g["initial_lr"], g["betas"]) for g in (critic.param_groups[0], generator.param_groups[0])] == [
        (4e-3, (0.0, 0.9)), (cfg.train.lr, (0.0, 0.9))]  # initial_lr: the warm-up starts the rate at 0
    assert trainer.emas["critic"] is None and trainer.emas["generator"].decay == cfg.train.ema_decay


@pytest.mark.parametrize("nets, networks, message", [
    (None, {"critc": {"lr": 1e-3}}, "networks names 'critc', which is not a network of this run (critic, generator)"),
    (None, {"critic": {"lrr": 1e-3}}, "network 'critic': unknown setting 'lrr'; use lr, optimizer, betas, "),
    (None, {"critic": {"optimizer": "sgd"}}, "network 'critic': unknown optimizer 'sgd': use adamw or adam"),
    (None, {"critic": {"betas": [0.9]}}, "network 'critic': betas must be two numbers in [0, 1), got [0.9]"),
    (None, {"critic": {"lr": "fast"}}, "network 'critic': lr must be a number, got 'fast'"),
    (None, {"generator": {"lr": -1.0}}, "network 'generator': lr must be positive, got -1.0"),
    ("unet", None, "TinyWGAN trains the networks critic, generator; got net"),
    ("renamed", None, "TinyWGAN trains the networks critic, generator; got critic, gen"),
])
def test_bad_network_settings_are_named(tmp_path, nets, networks, message):
    if nets == "renamed":
        nets = {"critic": gan_nets()["critic"], "gen": gan_nets()["generator"]}
    else:
        nets = tiny_unet() if nets == "unet" else gan_nets()
    with pytest.raises(ValueError) as err:
        Trainer(nets, TinyWGAN(), gan_data(), out_dir=tmp_path, steps=3, batch_size=16, lr=1e-3, networks=networks)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_corrupt_latest_checkpoint_is_named_and_the_previous_one_used(tmp_path):
    make_trainer(tmp_path, 20, checkpoint_every=10).fit()
    latest = tmp_path / "checkpoints" / "step_00000020" / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])  # truncated
    trainer = make_trainer(tmp_path, 30, checkpoint_every=10)
    with pytest.warns(RuntimeWarning) as warned:  # on stderr outside pytest
        assert trainer.resume() and trainer.step == 10
    assert re.match(rf"^checkpoint {latest.parent} cannot be loaded \(\w+Error: .+\); trying the previous one$",
                    str(warned[0].message))
    if "MUTANT_UNDER_TEST" not in os.environ:  # mutmut's trampoline is one frame more between them
        assert warned[0].filename == __file__  # the warning points at the caller of resume()


@pytest.mark.parametrize("written", [False, True])  # nothing of the checkpoint, or part of it
def test_a_failed_save_is_reported_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, written):
    trainer = make_trainer(tmp_path, 10, checkpoint_every=5)

    def full_disk(path, **kwargs):
        if written:
            Path(path).mkdir(parents=True)
            (Path(path) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    trainer.step = 5
    trainer.save_checkpoint()
    trainer.step = 10
    monkeypatch.setattr(trainer.accelerator, "save_state", full_disk)
    with pytest.raises(OSError, match="could not save checkpoint .*step_00000010: No space left on device") as error:
        trainer.save_checkpoint()
    assert error.value.errno == errno.ENOSPC
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000005"]


def test_digits_are_16x16_in_the_unit_range():
    data = digits()
    assert data.shape == (1797, 1, 16, 16)
    assert data.min() == -1 and data.max() == 1


def test_image_folder_reads_nested_images(tmp_path):
    for i, sub in enumerate(["a", "b/c"]):
        (tmp_path / sub).mkdir(parents=True)
        Image.new("RGB", (40, 30), (255 * i, 0, 0)).save(tmp_path / sub / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    data = ImageFolder(str(tmp_path), image_size=16)
    assert len(data) == 2 and data[0].shape == (3, 16, 16)
    assert data[1][0].min() == 1 and data[0][0].max() == -1


@pytest.mark.parametrize("call, message", [
    (lambda p: ImageFolder(str(p / "nowhere"), 16), "image folder does not exist"),
    (lambda p: ImageFolder(str(p), 16), "no image files"),
    (lambda p: cifar10(str(p)), "CIFAR-10 not found under"),
])
def test_missing_data_is_named(tmp_path, call, message):
    with pytest.raises(FileNotFoundError, match=message):
        call(tmp_path)


# -- what the trainer refuses, in its own words ------------------------------------------------------
class Answers:
    """An objective whose `losses` returns `answer(nets, batch)`."""

    networks = ("critic", "generator")

    def __init__(self, answer):
        self.answer = answer

    def settings(self):
        return {}

    def losses(self, nets, batch, step, seeds):
        return self.answer(nets, batch)

    def export(self, nets, out_dir):
        pass


def critic_loss(nets, batch):
    return nets["critic"](batch).mean()


@pytest.mark.parametrize("answer, message", [
    (lambda nets, batch: {}, "Answers.losses returned an empty dict at step 1: expected a dict of losses by network name"),
    (lambda nets, batch: [critic_loss(nets, batch)], "Answers.losses returned a list at step 1: expected a dict of "
                                                     "losses by network name"),
    (lambda nets, batch: {"gen": critic_loss(nets, batch)},
     "Answers.losses returned a loss for 'gen', which is not one of the networks (critic, generator)"),
    (lambda nets, batch: {"critic": nets["critic"](batch)[:2, 0]},
     "the loss of 'critic' at step 1 is not a scalar tensor (shape [2])"),
    (lambda nets, batch: {"critic": 1.0}, "the loss of 'critic' at step 1 is not a scalar tensor (a float)"),
])
def test_an_objective_answer_that_is_no_dict_of_scalar_losses_is_one_line(tmp_path, answer, message):
    trainer = Trainer(gan_nets(), Answers(answer), gan_data(), out_dir=tmp_path, steps=2, batch_size=16, lr=1e-3,
                      cpu=True)
    with pytest.raises(ValueError) as error:
        trainer.fit()
    assert str(error.value) == message


@pytest.mark.parametrize("change, message", [
    (dict(steps=0), "steps must be at least 1, got 0"),
    (dict(keep_checkpoints=0), "keep_checkpoints must be at least 1, got 0"),
    (dict(objective=object()), "object is no objective: it has no networks, losses, export, settings "
                               "(training.objective.Objective)"),
    (dict(data=gan_data()[:8]), "the data set has 8 items, fewer than one batch of 16"),
    (dict(frozen=True), "network 'critic' has no trainable parameters"),
])
def test_a_run_that_cannot_start_is_one_line(tmp_path, change, message):
    nets = gan_nets()
    if change.pop("frozen", False):
        nets["critic"].requires_grad_(False)
    settings = dict(objective=Answers(critic_loss), data=gan_data(), steps=2, keep_checkpoints=2) | change
    with pytest.raises(ValueError) as error:
        Trainer(nets, settings.pop("objective"), settings.pop("data"), out_dir=tmp_path, batch_size=16, lr=1e-3,
                cpu=True, **settings)
    assert str(error.value) == message


def test_when_no_checkpoint_loads_the_resume_names_them_all(tmp_path):
    gan_trainer(tmp_path, 4, checkpoint_every=2).fit()
    for weights in (tmp_path / "checkpoints").glob("step_*/model*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:100])
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError) as error:
        gan_trainer(tmp_path, 6, checkpoint_every=2).resume()
    assert str(error.value) == f"no checkpoint in {tmp_path / 'checkpoints'} can be loaded: step_00000002, step_00000004"


def test_the_summary_names_the_steps_updates_processes_command_and_model(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py", "train.steps=4"])
    gan_trainer(tmp_path, 4, checkpoint_every=100).fit()
    assert json.loads((tmp_path / "train_summary.json").read_text()) == {
        "steps": 4, "updates": {"critic": 3, "generator": 1}, "num_processes": 1, "command": "train.py train.steps=4",
        "model": str(tmp_path / "model")}


@pytest.mark.parametrize("settings, message", [
    (dict(warmup_steps=1.5), "warmup_steps must be an integer, got 1.5"),
    (dict(grad_clip=True), "grad_clip must be a number, got True"),
    (dict(weight_decay="0"), "weight_decay must be a number, got '0'"),
    (dict(ema_decay=[0.9]), "ema_decay must be a number, got [0.9]"),
    (dict(lr=0.0), "lr must be positive, got 0.0"),
    (dict(grad_clip=0), "grad_clip must be positive or None, got 0"),
    (dict(ema_decay=1.0), "ema_decay must be in [0, 1) or None, got 1.0"),
    (dict(ema_decay=-0.1), "ema_decay must be in [0, 1) or None, got -0.1"),
    (dict(betas=(0.9, 1.0)), "betas must be two numbers in [0, 1), got (0.9, 1.0)"),
    (dict(betas=(-0.1, 0.9)), "betas must be two numbers in [0, 1), got (-0.1, 0.9)"),
    (dict(betas="ab"), "betas must be two numbers in [0, 1), got 'ab'"),
    (dict(betas=(0.9, "x")), "betas must be two numbers in [0, 1), got (0.9, 'x')"),
    (dict(optimizer="sgd"), "unknown optimizer 'sgd': use adamw or adam"),
])
def test_each_bad_optimiser_setting_is_named_with_its_value(settings, message):
    with pytest.raises(ValueError) as error:
        NetworkOptim(**{"lr": 1e-3, **settings})
    assert str(error.value) == message


def test_the_edge_values_of_the_optimiser_settings_are_accepted_and_kept_as_given():
    settings = NetworkOptim(lr=1, optimizer="adam", betas=[0, 0], weight_decay=0, warmup_steps=0, grad_clip=None,
                            ema_decay=0)
    assert settings.betas == (0.0, 0.0) and type(settings.betas[0]) is float
    assert (settings.lr, settings.weight_decay, settings.warmup_steps, settings.grad_clip, settings.ema_decay) == (
        1, 0, 0, None, 0)


def test_a_whole_network_optim_may_be_given_for_one_network(tmp_path):
    critic = NetworkOptim(lr=3e-3, optimizer="adam", betas=(0.5, 0.9), ema_decay=None)
    trainer = Trainer(gan_nets(), TinyWGAN(), gan_data(), out_dir=tmp_path, steps=3, batch_size=16, lr=1e-3, cpu=True,
                      networks={"critic": critic})
    assert trainer.settings["critic"] is critic and trainer.settings["generator"].lr == 1e-3
    assert type(trainer.optimizers["critic"].optimizer) is torch.optim.Adam and trainer.emas["critic"] is None


def test_checkpoints_lists_complete_ones_oldest_first(tmp_path):
    from fewstep.training.engine import checkpoints

    for name in ("step_00000010", "step_00000002", "step_x", "step_00000005.tmp", "other_00000001", "step_100000000",
                 "step_99999999"):
        (tmp_path / name).mkdir()
    (tmp_path / "step_00000007").write_text("a file")
    assert [p.name for p in checkpoints(tmp_path)] == ["step_00000002", "step_00000010", "step_99999999",
                                                        "step_100000000"]  # past 8 digits too


def test_a_save_replaces_a_half_written_one_and_keeps_only_the_newest(tmp_path):
    trainer = gan_trainer(tmp_path, 4, checkpoint_every=100, keep_checkpoints=1)
    stale = tmp_path / "checkpoints" / "step_00000003.tmp"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("from a killed save")
    for step in (2, 3, 3):  # the same step twice: the second save replaces the first
        trainer.step = step
        trainer.save_checkpoint()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000003"]
    assert not (tmp_path / "checkpoints" / "step_00000003" / "junk").exists()


def test_the_logged_learning_rates_follow_each_networks_warm_up(tmp_path):
    """lr_k = lr min(1, k / warmup_steps) after a network's k-th update (critic: 2 of every 3 steps)."""
    gan_trainer(tmp_path, 6, checkpoint_every=100, log_every=1, warmup_steps=4).fit()
    rows = list(csv.DictReader(open(tmp_path / "loss.csv")))
    critic_updates, generator_updates = [1, 2, 2, 3, 4, 4], [0, 0, 1, 1, 1, 2]
    assert [float(r["lr_critic"]) for r in rows] == pytest.approx([2e-3 * min(1, k / 4) for k in critic_updates])
    assert [float(r["lr_generator"]) for r in rows] == pytest.approx([1e-3 * min(1, k / 4) for k in generator_updates])


def test_each_row_of_loss_csv_is_the_mean_of_the_losses_since_the_row_before(tmp_path):
    trainer = make_trainer(tmp_path, 6, checkpoint_every=100)
    trainer.log_every = 3
    losses, step = [], trainer.train_step

    def recording_step(batch):
        out = step(batch)
        losses.append(out["net"].item())
        return out

    trainer.train_step = recording_step
    trainer.fit()
    rows = list(csv.reader(open(tmp_path / "loss.csv", newline="")))
    assert rows[0] == ["step", "loss", "lr"]
    assert [int(r[0]) for r in rows[1:]] == [3, 6]
    assert [float(r[1]) for r in rows[1:]] == pytest.approx([sum(losses[:3]) / 3, sum(losses[3:]) / 3], abs=2e-6)


def test_the_metrics_of_each_report_are_logged_in_one_line(tmp_path, caplog):
    import logging

    class Reporting(TinyWGAN):
        def report(self, nets, step, out_dir):
            return {"fd": 12.345678, "modes": 8.0}

    trainer = gan_trainer(tmp_path, 4, checkpoint_every=2, objective=Reporting())
    with caplog.at_level(logging.INFO, logger="fewstep.training.engine"):
        trainer.fit()
    assert [m for m in caplog.messages if m.startswith("step ")] == ["step 2: fd 12.35, modes 8", "step 4: fd 12.35, modes 8"]
    assert list(csv.reader(open(tmp_path / "metrics.csv", newline=""))) == [
        ["step", "fd", "modes"], ["2", "12.3457", "8"], ["4", "12.3457", "8"]]


def test_a_fresh_run_records_its_settings_in_nested_new_folders(tmp_path):
    trainer = gan_trainer(tmp_path / "a" / "b", 2, checkpoint_every=100)
    trainer.fit()
    assert json.loads((tmp_path / "a" / "b" / "run.json").read_text()) == trainer.run_settings


@pytest.fixture
def bf16():
    """The precision bf16. accelerate fixes a process's precision at its first Accelerator, so its state
    is reset around the test (as accelerate's own tests do)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield "bf16"
    AcceleratorState._reset_state(reset_partial_state=True)


def test_run_json_holds_the_objective_and_its_public_settings_the_networks_the_data_and_the_processes(tmp_path, bf16):
    objective = TinyWGAN(n_critic=3)
    objective._calls = 0  # private: not a setting
    trainer = gan_trainer(tmp_path, 1, checkpoint_every=100, objective=objective, mixed_precision=bf16)
    trainer.fit()
    recorded = json.loads((tmp_path / "run.json").read_text())
    assert recorded == {
        "objective": "TinyWGAN", "objective_settings": {"n_critic": 3, "gp_weight": 10.0},
        "networks": {name: {"parameters": parameters, "lr": lr, "optimizer": "adam", "betas": [0.0, 0.9],
                            "weight_decay": 0.0, "warmup_steps": 2, "grad_clip": None, "ema_decay": decay}
                     for name, parameters, lr, decay in [("critic", 2 * 16 + 16 + 16 + 1, 2e-3, 0.8),
                                                         ("generator", 2 * 16 + 16 + 16 * 2 + 2, 1e-3, 0.9)]},
        "data_size": 256, "data_shape": [2], "data_settings": None, "batch_size": 16, "seed": 0, "num_processes": 1,
        "mixed_precision": "bf16"}
    assert trainer.accelerator.mixed_precision == "bf16"


def test_the_trainers_defaults_are_each_networks_and_the_command_lines(tmp_path):
    """A trainer given only what it needs trains each network with `NetworkOptim`'s defaults, and its
    settings are conf/train.yaml's but the warm-up: 100 steps on the command line, none in Python."""
    trainer = Trainer(gan_nets(), TinyWGAN(), gan_data(), out_dir=tmp_path, steps=1, batch_size=16, lr=1e-3)
    assert trainer.settings == {"critic": NetworkOptim(lr=1e-3), "generator": NetworkOptim(lr=1e-3)}
    train = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "train.yaml").train)
    assert {**dataclasses.asdict(trainer.settings["critic"]), "betas": list(trainer.settings["critic"].betas)} == {
        **{k: train[k] for k in ("lr", "optimizer", "betas", "weight_decay", "grad_clip", "ema_decay")},
        "lr": 1e-3, "warmup_steps": 0}
    assert train["warmup_steps"] == 100
    assert (trainer.checkpoint_every, trainer.keep_checkpoints, trainer.log_every, trainer.loader.num_workers,
            trainer.accelerator.mixed_precision) == tuple(train[k] for k in (
                "checkpoint_every", "keep_checkpoints", "log_every", "num_workers", "mixed_precision"))
    defaults = inspect.signature(Trainer).parameters  # and cpu=None, which picks the device (test_engine_processes)
    assert defaults["cpu"].default is train["cpu"] is None and defaults["networks"].default is None


def test_the_smallest_run_is_one_step_on_a_data_set_of_one_batch(tmp_path):
    trainer = Trainer(gan_nets(), TinyWGAN(), gan_data()[:16], out_dir=tmp_path, steps=1, batch_size=16, lr=1e-3,
                      cpu=True)
    trainer.fit()
    assert trainer.step == 1 and (tmp_path / "checkpoints" / "step_00000001").is_dir()


def test_the_data_order_follows_the_seed_alone(tmp_path):
    def first_batch(seed, global_seed):
        torch.manual_seed(global_seed)
        trainer = gan_trainer(tmp_path / f"{seed}-{global_seed}", 1, checkpoint_every=100, seed=seed)
        return next(iter(trainer.loader))

    assert torch.equal(first_batch(0, 1), first_batch(0, 2))
    assert not torch.equal(first_batch(0, 1), first_batch(1, 1))


def test_each_epoch_is_a_shuffle_in_whole_batches(tmp_path):
    data = torch.arange(20.0).repeat_interleave(2).reshape(20, 2)  # item i is (i, i)
    trainer = Trainer(gan_nets(), TinyWGAN(), data, out_dir=tmp_path, steps=1, batch_size=8, lr=1e-3, cpu=True)
    epoch = [batch[:, 0].long().tolist() for batch in trainer.loader]
    assert [len(batch) for batch in epoch] == [8, 8]  # the 4 items left over are not a batch
    order = sum(epoch, [])
    assert len(set(order)) == 16 and order != sorted(order)


class WhereLoaded(torch.utils.data.Dataset):
    """16 items, each (1, 1) when a data-loader worker process loaded it, (0, 0) when the training process did."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return torch.full((2,), float(torch.utils.data.get_worker_info() is not None))


@pytest.mark.parametrize("workers", [None, 1])
def test_data_is_loaded_in_the_training_process_unless_workers_are_asked_for(tmp_path, workers):
    trainer = Trainer(gan_nets(), TinyWGAN(), WhereLoaded(), out_dir=tmp_path, steps=1, batch_size=8, lr=1e-3,
                      cpu=True, **({} if workers is None else {"num_workers": workers}))
    assert next(iter(trainer.loader))[:, 0].tolist() == [1.0 if workers else 0.0] * 8


def test_settings_are_compared_only_against_a_run_with_checkpoints_and_on_every_key(tmp_path):
    gan_trainer(tmp_path, 2, checkpoint_every=100).fit()
    shutil.rmtree(tmp_path / "checkpoints")  # killed before its first checkpoint: nothing to mix with
    gan_trainer(tmp_path, 2, checkpoint_every=100, batch_size=32).fit()
    assert json.loads((tmp_path / "run.json").read_text())["batch_size"] == 32
    recorded = json.loads((tmp_path / "run.json").read_text())
    del recorded["seed"]  # a key the recorded run lacks is a difference too
    (tmp_path / "run.json").write_text(json.dumps(recorded))
    with pytest.raises(ValueError, match=r"holds a run made with seed=None; this run has seed=0: use another out_dir"):
        gan_trainer(tmp_path, 4, checkpoint_every=100, batch_size=32).fit()


def test_a_run_is_not_resumed_on_data_of_another_shape(tmp_path):
    """The same size and networks, items of another shape (digits at another image size): refused, nothing written."""
    gan_trainer(tmp_path, 2, checkpoint_every=2).fit()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    other = Trainer(gan_nets(), TinyWGAN(), gan_data().repeat(1, 2), out_dir=tmp_path, steps=4, checkpoint_every=2,
                    **GAN_SETTINGS)
    with pytest.raises(ValueError, match=r"^.* holds a run made with data_shape=\[2\]; this run has data_shape=\[4\]: "
                                         r"use another out_dir or the same settings$"):
        other.fit()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("networks, message", [
    ({}, "exported the EMA model to {}"),
    ({"critic": {"ema_decay": None}}, "exported the model to {} (raw weights, no EMA kept: critic)"),
    ({"critic": {"ema_decay": None}, "generator": {"ema_decay": None}},
     "exported the model to {} (raw weights, no EMA kept: critic, generator)"),
])
def test_the_export_says_which_networks_keep_no_ema(tmp_path, caplog, networks, message):
    import logging

    with caplog.at_level(logging.INFO, logger="fewstep.training.engine"):
        gan_trainer(tmp_path, 2, checkpoint_every=100, networks=networks).fit()
    assert message.format(tmp_path / "model") in caplog.messages


def test_a_resume_logs_where_it_resumed_from(tmp_path, caplog):
    import logging

    gan_trainer(tmp_path, 2, checkpoint_every=2).fit()
    with caplog.at_level(logging.INFO, logger="fewstep.training.engine"):
        gan_trainer(tmp_path, 4, checkpoint_every=2).resume()
    assert f"resumed from {tmp_path / 'checkpoints' / 'step_00000002'} at step 2" in caplog.messages


class BothAtOnce(TinyWGAN):
    """The critic and generator losses every step, from one shared graph of G(z)."""

    def losses(self, nets, x, step, seeds):
        fake = nets["generator"](torch.randn_like(x))
        scores = nets["critic"](fake)
        return {"critic": scores.mean() - nets["critic"](x).mean(), "generator": -scores.mean()}


def test_two_losses_from_one_graph_update_both_networks_every_step(tmp_path):
    trainer = gan_trainer(tmp_path, 3, checkpoint_every=100, objective=BothAtOnce())
    trainer.fit()
    assert trainer.updates() == {"critic": 3, "generator": 3}


def test_fp16_takes_one_loss_a_step(tmp_path):
    trainer = gan_trainer(tmp_path, 3, checkpoint_every=100)
    one, two = {"critic": torch.tensor(1.0)}, {"critic": torch.tensor(1.0), "generator": torch.tensor(2.0)}
    trainer._check(two)  # without a gradient scaler (no fp16): two are fine
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", enabled=False)  # as fp16 on a GPU has one
    trainer._check(one)
    with pytest.raises(ValueError) as error:
        trainer._check(two)
    assert str(error.value) == ("fp16 scales one loss per step, but the objective returned 2 at step 1 (critic, "
                                "generator): use mixed_precision bf16 or no")


def test_a_run_first_says_what_it_trains(tmp_path, caplog):
    import logging

    trainer = gan_trainer(tmp_path, 2, checkpoint_every=100)
    with caplog.at_level(logging.INFO, logger="fewstep.training.engine"):
        trainer.fit()
    sizes = {name: sum(p.numel() for p in net.parameters()) for name, net in trainer.nets.items()}
    assert caplog.messages[0] == (
        f"TinyWGAN: critic ({type(trainer.nets['critic']).__name__}, {sizes['critic']:,} parameters), generator "
        f"({type(trainer.nets['generator']).__name__}, {sizes['generator']:,} parameters); {len(gan_data())} items, "
        f"batch {trainer.run_settings['batch_size']} over 1 process, 2 steps, checkpoints every 100 in "
        f"{tmp_path / 'checkpoints'}")
