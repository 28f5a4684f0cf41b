"""The trainer's arithmetic across processes, its choice of device and its progress bar, checked in
one process: an `Accelerator` made to play process 0 of two, whose partner's tensors the test
chooses; the rows' seeds; and every objective trained by two real processes (`accelerate launch`,
gloo) and by one, to the same losses and weights."""
import csv
import json
import re
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from fewstep.flows import DiffusionObjective
from fewstep.samplers.noise import generators
from fewstep.training import engine
from helpers import (WORKER, accelerate_launch, finish, in_process, make_trainer, norm_gap, start, stop,
                     tiny_unet)
from train_worker import TinyWGAN, gan_data, gan_trainer, objective_runs


class PlaysTwo:
    """A real `Accelerator` as process 0 of two. `reduce` does what accelerate's does with two
    processes (the sum of both, halved for "mean", the larger for "max"), the partner holding
    `partner(tensor)`; everything else is the real accelerator's."""

    num_processes = 2

    def __init__(self, accelerator, partner, main):
        self._accelerator, self.partner, self.is_main_process = accelerator, partner, main
        self.process_index = 0 if main else 1

    def reduce(self, tensor, reduction="sum"):
        other = self.partner(tensor)
        if reduction == "max":
            return torch.maximum(tensor, other)
        return (tensor + other) / 2 if reduction == "mean" else tensor + other

    def __getattr__(self, name):
        return getattr(self._accelerator, name)


def as_two(monkeypatch, build, partner=lambda t: t, main=True):
    """`build()`, a trainer whose accelerator plays process 0 of two (or, `main=False`, process 1)."""
    real = engine.Accelerator
    with monkeypatch.context() as m:
        m.setattr(engine, "Accelerator", lambda **kwargs: PlaysTwo(real(**kwargs), partner, main))
        return build()


def rows(path):
    return list(csv.reader(open(path, newline="")))


def test_two_processes_with_the_same_half_batches_train_as_one_process_on_one_half(tmp_path, monkeypatch):
    """Each of two processes takes batch_size / 2. With the partner's losses and gradients equal to
    this process's, every mean over processes is this process's own, so the run is a one-process run
    on the half batch: the same weights, EMAs, logged means (checkpoints, which average the running
    losses, fall between rows) and update counts."""
    two = as_two(monkeypatch, lambda: gan_trainer(tmp_path / "two", 9, checkpoint_every=2, batch_size=32,
                                                  log_every=3, grad_clip=1.0))
    one = gan_trainer(tmp_path / "one", 9, checkpoint_every=2, batch_size=16, log_every=3, grad_clip=1.0)
    assert next(iter(two.loader)).shape[0] == 16
    two.fit()
    one.fit()
    for a, b in [(two.nets, one.nets), (two.ema_nets(), one.ema_nets())]:
        for name in a:
            assert all(torch.equal(p, q) for p, q in zip(a[name].parameters(), b[name].parameters())), name
    assert rows(tmp_path / "two" / "loss.csv") == rows(tmp_path / "one" / "loss.csv")
    assert two.updates() == one.updates() == {"critic": 6, "generator": 3}


def test_each_update_uses_the_gradient_and_logs_the_loss_averaged_over_the_processes(tmp_path, monkeypatch):
    """The partner's gradients and losses are this process's plus 1: every optimiser step sees the
    gradient + 1/2, and `loss.csv` logs the loss + 1/2."""
    trainer = as_two(monkeypatch, lambda: gan_trainer(tmp_path, 4, checkpoint_every=100, log_every=1, grad_clip=None),
                     partner=lambda t: t + 1)
    own, seen, losses = [], [], []
    backward = trainer.accelerator.backward

    def recording_backward(loss, inputs, **kwargs):
        backward(loss, inputs=inputs, **kwargs)
        own.append([p.grad.clone() for p in inputs])
        losses.append(loss.item())

    trainer.accelerator.backward = recording_backward
    for name, optimizer in trainer.optimizers.items():
        optimizer.optimizer.register_step_pre_hook(
            lambda _, args, kwargs, name=name: seen.append([p.grad.clone() for p in trainer.nets[name].parameters()
                                                           if p.requires_grad]))
    trainer.fit()
    assert len(seen) == len(own) == 4
    for mine, averaged in zip(own, seen):
        assert all(torch.allclose(a, m + 0.5, atol=1e-6) for m, a in zip(mine, averaged))
    logged = [float(row[1] or row[2]) for row in rows(tmp_path / "loss.csv")[1:]]
    assert logged == pytest.approx([loss + 0.5 for loss in losses], abs=2e-6)


def test_a_loss_that_is_not_finite_on_the_other_process_stops_this_one_too(tmp_path, monkeypatch):
    trainer = as_two(monkeypatch, lambda: gan_trainer(tmp_path, 4, checkpoint_every=100),
                     partner=torch.zeros_like)  # the partner's every loss is NaN: 0 finite
    with pytest.raises(FloatingPointError, match=r"^the critic loss is not finite at step 1 \(this process: -?\d"):
        trainer.fit()


def test_a_batch_that_does_not_split_over_the_processes_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="^batch_size 15 is not divisible by the number of processes 2$"):
        as_two(monkeypatch, lambda: gan_trainer(tmp_path, 4, checkpoint_every=100, batch_size=15))


@pytest.mark.parametrize("cpu, cuda, expected", [(None, False, True), (None, True, False), (True, True, True),
                                                 (False, False, False)])
def test_cpu_none_means_the_cpu_only_when_no_cuda_device_is_present(tmp_path, monkeypatch, cpu, cuda, expected):
    asked = []

    def accelerator(**kwargs):
        asked.append(kwargs["cpu"])
        raise KeyboardInterrupt  # the trainer gets no further: no device is touched

    monkeypatch.setattr(engine, "Accelerator", accelerator)
    monkeypatch.setattr(engine.torch.cuda, "is_available", lambda: cuda)
    with pytest.raises(KeyboardInterrupt):
        gan_trainer(tmp_path, 4, checkpoint_every=100, cpu=cpu)
    assert asked == [expected]


def bar_lines(err: str) -> list[str]:
    return [line.strip() for line in re.split(r"[\r\n]", err) if line.strip().startswith("train:")]


def test_the_progress_bar_counts_the_steps_from_a_resume_to_the_end_and_shows_the_logged_means(tmp_path, capsys):
    gan_trainer(tmp_path / "gan", 4, checkpoint_every=2, log_every=2).fit()
    shown = bar_lines(capsys.readouterr().err)
    assert shown[0].startswith("train:   0%") and " 0/4 " in shown[0] and shown[-1].startswith("train: 100%")
    logged = rows(tmp_path / "gan" / "loss.csv")[-1]
    assert re.search(f" 4/4 .*, critic={float(logged[1]):.4f}, generator={float(logged[2]):.4f}]$", shown[-1])
    gan_trainer(tmp_path / "gan", 6, checkpoint_every=2, log_every=2).fit()
    resumed = bar_lines(capsys.readouterr().err)
    assert " 4/6 " in resumed[0] and " 6/6 " in resumed[-1]

    make_trainer(tmp_path / "unet", 2, checkpoint_every=2).fit()  # one network: its mean as loss=
    logged = rows(tmp_path / "unet" / "loss.csv")[-1]
    assert bar_lines(capsys.readouterr().err)[-1].endswith(f", loss={float(logged[1]):.4f}]")


def test_only_the_main_process_shows_the_progress_bar(tmp_path, monkeypatch, capsys):
    as_two(monkeypatch, lambda: gan_trainer(tmp_path / "other", 2, checkpoint_every=100), main=False).fit()
    assert bar_lines(capsys.readouterr().err) == []
    as_two(monkeypatch, lambda: gan_trainer(tmp_path / "main", 2, checkpoint_every=100)).fit()
    assert bar_lines(capsys.readouterr().err)


def sevens(tensors, from_process=0):
    """accelerate's `broadcast` as if process 0 held 7 in every element."""
    for t in tensors:
        t.fill_(7.0)
    return tensors


def test_every_process_starts_from_process_0s_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "broadcast", sevens)
    two = as_two(monkeypatch, lambda: gan_trainer(tmp_path / "two", 1, checkpoint_every=100), main=False)
    one = gan_trainer(tmp_path / "one", 1, checkpoint_every=100)
    assert all(bool((p == 7).all()) for net in two.nets.values() for p in net.parameters())
    assert not any(bool((p == 7).all()) for net in one.nets.values() for p in net.parameters())


def test_after_every_step_the_buffers_are_process_0s(tmp_path, monkeypatch):
    """Batch-norm statistics are copied from process 0 to the others after each step: a trainer
    playing two processes ends its step with process 0's running variance (7s); one playing a single
    process, with its own."""
    def nets():
        torch.manual_seed(0)
        return {"critic": torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1)),
                "generator": torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))}

    def trainer(out):
        return engine.Trainer(nets(), TinyWGAN(), gan_data(), out_dir=tmp_path / out, steps=2, batch_size=16, lr=1e-3,
                              cpu=True, checkpoint_every=100)

    monkeypatch.setattr(engine, "broadcast", sevens)
    two, one = as_two(monkeypatch, lambda: trainer("two")), trainer("one")
    before = [t.nets["critic"][1].running_var.clone() for t in (two, one)]
    for t in (two, one):
        t.train_step(next(iter(t.loader)))
    assert torch.equal(before[0], torch.full((8,), 7.0))  # the start's copy
    assert torch.equal(two.nets["critic"][1].running_var, torch.full((8,), 7.0))
    assert not torch.equal(one.nets["critic"][1].running_var, before[1])  # the step did move it


@pytest.mark.parametrize("kind", [DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM])
def test_a_sharded_setup_is_refused_in_one_line(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(engine, "Accelerator", lambda **kwargs: SimpleNamespace(distributed_type=kind))
    with pytest.raises(ValueError) as error:
        gan_trainer(tmp_path, 1, checkpoint_every=100)
    assert str(error.value) == f"the trainer is data parallel only; {kind.value} is not supported"


# -- the rows' seeds, and every objective on one and two processes ----------------------------------

def test_each_row_is_seeded_by_the_run_seed_the_step_and_its_place_in_the_global_batch(tmp_path, monkeypatch):
    one = gan_trainer(tmp_path / "one", 2, checkpoint_every=100, batch_size=32, seed=3)
    second = as_two(monkeypatch, lambda: gan_trainer(tmp_path / "two", 2, checkpoint_every=100, batch_size=32, seed=3),
                    main=False)
    seen = []

    def spy(losses):
        def recording(nets, x, step, seeds):
            seen.append(seeds)
            return losses(nets, x, step, seeds)
        return recording

    for trainer in (one, second):
        trainer.objective.losses = spy(trainer.objective.losses)
        for _ in range(2):
            trainer.train_step(next(iter(trainer.loader)))
    assert seen == [[(3, 0, i) for i in range(32)], [(3, 1, i) for i in range(32)],
                    [(3, 0, i) for i in range(16, 32)], [(3, 1, i) for i in range(16, 32)]]


def test_the_diffusion_objective_draws_each_rows_noise_then_its_timestep_from_the_rows_seed():
    objective, model = DiffusionObjective(num_train_timesteps=50), tiny_unet()
    x0, seeds = torch.randn(3, 1, 8, 8), [(0, 4, i) for i in range(3)]
    rows = [generators([seed])[0] for seed in seeds]  # each row from its own seed alone
    noise = torch.stack([torch.randn(1, 8, 8, generator=g) for g in rows])
    t = torch.stack([(torch.rand((), generator=g).double() * 50).long() for g in rows])
    with torch.no_grad():
        torch.testing.assert_close(objective.losses({"net": model}, x0, 4, seeds)["net"],
                                   objective.loss(model, x0, noise, t), rtol=0, atol=0)


def loss_rows(path):
    return list(csv.reader(open(path, newline="")))


def test_every_objective_trains_the_same_on_one_and_two_processes(tmp_path):
    """Each of train_worker's `objective_runs` (diffusion, rectified flow, distillation, both GANs, AMED)
    for 10 steps on two gloo processes and, meanwhile, in this one: the same loss rows (to 1e-5, beyond
    loss.csv's 6 decimals) and the same weights and EMA weights, each tensor to 1e-5 of its norm; the
    two processes end equal to the bit. The exception: an attention's key bias, whose gradient is zero
    but for rounding (softmax ignores it), which Adam's normalised step turns into moves of its own.
    The GAN's latents, drawn per row from its seed, are one process's split in two."""
    two = start([*accelerate_launch(2), WORKER, str(tmp_path / "two"), "10", "10", "objectives"], tmp_path / "two")
    try:
        in_process(tmp_path / "one", 10, 10, "objectives")
        finish(two, timeout=240)
    finally:
        stop(two)
    for name, (nets, _, _) in objective_runs().items():
        one, pair = tmp_path / "one" / name, tmp_path / "two" / name
        assert [json.loads((d / "train_summary.json").read_text())["num_processes"] for d in (one, pair)] == [1, 2]
        rows, twos = loss_rows(one / "loss.csv"), loss_rows(pair / "loss.csv")
        assert len(rows) == len(twos) == 11 and rows[0] == twos[0], name
        for row, other in zip(rows[1:], twos[1:]):
            for a, b in zip(row, other):
                assert (a == b == "") or abs(float(a) - float(b)) <= 1e-5 * abs(float(a)) + 1e-6, (name, row, other)
        single, rank0, rank1 = (load_file(str(d / f"rank{r}.safetensors")) for d, r in ((one, 0), (pair, 0), (pair, 1)))
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), name  # weights, EMAs, optimiser states
        initial = {f"{n}.{k}": v for n, net in nets().items() for k, v in net.state_dict().items()}
        assert any(not torch.equal(single[k], v) for k, v in initial.items()), f"{name} did not train"
        for key in (k for k in single if not k.startswith("optim.") and not k.endswith("to_k.bias")):
            assert norm_gap(rank0[key], single[key]) <= 1e-5, (name, key, norm_gap(rank0[key], single[key]))
    state = [torch.load(d / "reflow_gan" / "checkpoints" / "step_00000010" / f"objective_{r}.pt", weights_only=True)
             for d, r in ((tmp_path / "one", 0), (tmp_path / "two", 0), (tmp_path / "two", 1))]
    assert state[1]["z"].shape == (8, 2) and torch.equal(torch.cat([state[1]["z"], state[2]["z"]]), state[0]["z"])


# -- a launch that asked for several processes and got one (training.processes) ------------------------
SIMPLE_LAUNCHER = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize("environ, processes, asked", [
    ({"WORLD_SIZE": "2", "RANK": "0"}, 1, "2"),  # --multi_gpu without a CPU accelerator: each process alone
    (SIMPLE_LAUNCHER, 1, "several"),             # --cpu --num_processes N: one process, N not in its environment
])
def test_a_run_with_fewer_processes_than_its_launch_asked_for_warns_in_one_line(environ, processes, asked, caplog):
    from fewstep.training.processes import warn_if_alone

    with caplog.at_level("WARNING", logger="fewstep.training.processes"):
        line = warn_if_alone(processes, environ)
    assert caplog.messages == [line] and line.startswith(
        f"accelerate launch asked for {asked} processes, but this run has {processes}: several CPU processes need "
        f"`accelerate launch --multi_gpu --num_processes ")


@pytest.mark.parametrize("environ, processes", [
    ({}, 1),                                     # python scripts/...: no launch for several
    ({"WORLD_SIZE": "2", "RANK": "0"}, 2),       # as asked
    ({"WORLD_SIZE": "2", "RANK": "1"}, 1),       # the first process says it
    ({"ACCELERATE_USE_CPU": "False"}, 1),        # accelerate launch of one process sets no MASTER_PORT
])
def test_a_run_with_the_processes_it_asked_for_says_nothing(environ, processes, caplog):
    from fewstep.training.processes import warn_if_alone

    assert warn_if_alone(processes, environ) is None and caplog.messages == []


def test_the_simple_launchers_process_count_is_read_from_its_command_line(tmp_path):
    from fewstep.training.processes import _launcher_num_processes

    cmdline = tmp_path / "cmdline"
    for args, count in [(["accelerate", "launch", "--cpu", "--num_processes", "3", "x.py"], 3),
                        (["accelerate", "launch", "--num-processes=4", "x.py"], 4),
                        (["accelerate", "launch", "x.py"], 0), (["accelerate", "launch", "--num_processes"], 0)]:
        cmdline.write_bytes("\0".join(args).encode() + b"\0")
        assert _launcher_num_processes(cmdline) == count
    assert _launcher_num_processes(tmp_path / "gone") == 0


def test_a_trainer_alone_under_a_launch_for_several_warns(tmp_path, monkeypatch, caplog):
    from fewstep.training import processes

    monkeypatch.setattr(processes, "_launcher_num_processes", lambda cmdline: 2)
    for key, value in SIMPLE_LAUNCHER.items():
        monkeypatch.setenv(key, value)
    with caplog.at_level("WARNING", logger="fewstep.training.processes"):
        make_trainer(tmp_path, 1)
    assert [m.split(":")[0] for m in caplog.messages] == ["accelerate launch asked for 2 processes, but this run has 1"]
