"""One Accelerate training loop for named networks: data, optimisers, EMAs, checkpoint/resume,
logging, export.

The objective protocol (`training.objective.Objective`; docs/conventions.md §8):

* `losses(nets, batch, step, seeds) -> dict[str, Tensor]`: `nets` maps each network's name to the
  module, `batch` is this process's share of the batch, `step` the number of training steps already
  taken (0 on the first), `seeds` one seed per row of `batch`: `(seed, step, i)`, `i` the row's place
  in the global batch. Every random number of a row (its noise, its time, a penalty's interpolation
  weight) is drawn from `samplers.noise.generators(seeds)`, so a run is the same on any number of
  processes. Each key names the network its scalar loss updates, and only the losses due at
  this step are returned: that is how an objective says how often each network is updated (a GAN
  returns the critic loss on `n_critic` steps of each cycle and the generator loss on the others).
  Every process must return the same keys.
* `export(nets, out_dir)`: write the trained networks; it receives copies carrying the EMA weights
  (the raw weights for a network trained without an EMA).
* `networks`: the names of the networks it trains, checked against the trainer's.
* `settings() -> dict`: the plain values that define it, recorded in `run.json`; a resume must share them.
* `state_dict()` / `load_state_dict(state)` (optional): state the objective carries from step to
  step (a GAN's regression target), saved with every checkpoint by each process for itself.
* `report(nets, step, out_dir) -> dict[str, float]` (optional): called by the main process after
  every checkpoint with the EMA networks; it may write files (a sample grid), and the metrics it
  returns (FD-digits) are appended to `out_dir/metrics.csv`.

Each returned loss is backpropagated into its own network's parameters only
(`backward(inputs=...)`; a generator loss may run through the critic without touching the critic's
gradients), then that network's gradient is averaged over processes, clipped, and its optimiser,
learning-rate schedule and EMA are stepped. All losses of a step are backpropagated before any
network is stepped, so several losses may share one graph.

The loop works unchanged on one CPU, one GPU, several GPUs or nodes (`accelerate launch`), and
several CPU processes over gloo (`cpu=True`, see docs/conventions.md §8). The global batch of step `k`
is rows `k B .. (k + 1) B - 1` of the epoch's shuffle whatever the processes (process `p` takes the
`p`-th of its `n` equal slices), and the rows' seeds follow it, so 1 and `n` processes give the same
losses and weights up to the order of floating-point sums.
"""
from __future__ import annotations

import copy
import csv
import json
import logging
import shutil
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Mapping

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedType, broadcast, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import data_record
from .objective import Objective
from .optim import NetworkOptim, network_settings
from .processes import warn_if_alone
from .record import check_record

CHECKPOINT_PREFIX = "step_"

log = logging.getLogger(__name__)  # said by the main process (accelerate's INFO lines: conf/hydra/job_logging)


class RunningLoss:
    """The sum and count of one network's losses since the last `loss.csv` row, saved with every
    checkpoint so that a resumed run logs the same means as one never stopped. At a save the sum
    becomes the mean over processes (the same value on each), which leaves the next logged mean
    unchanged."""

    def __init__(self):
        self.total, self.count = torch.zeros(()), 0

    def add(self, loss: torch.Tensor) -> None:
        self.total, self.count = self.total.to(loss.device) + loss.detach().float(), self.count + 1

    def pop_mean(self, accelerator) -> float | None:
        """The mean over processes of the losses added since the last call; `None` if there were none
        (every process has the same count: the objective's schedule is the same on all)."""
        if self.count == 0:
            return None
        mean = accelerator.reduce(self.total / self.count, reduction="mean").item()
        self.total, self.count = torch.zeros((), device=self.total.device), 0
        return mean

    def state_dict(self) -> dict:
        return {"total": self.total.cpu(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.count = state["total"], int(state["count"])


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (a save in progress has a `.tmp` suffix)."""
    found = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


class Trainer:
    """Trains the networks `nets` on `dataset` with `objective` (the protocol is in this module's
    docstring).

    nets: `{name: nn.Module}`; a single module means `{"net": module}`. The networks are kept, saved
        and logged in the order of their sorted names.
    out_dir: run directory; holds `checkpoints/`, `loss.csv`, `train_summary.json` and, at the
        end, the networks exported by the objective to `out_dir/model`. A run started again with
        the same `out_dir` resumes from its latest checkpoint.
    steps: training steps in total; each takes one batch and one call of `objective.losses`.
    batch_size: global batch, split evenly over processes.
    lr, optimizer, betas, weight_decay, warmup_steps, grad_clip, ema_decay: the settings of every
        network (see `NetworkOptim`).
    networks: per-network overrides, `{name: {setting: value}}` (or `{name: NetworkOptim}`), e.g.
        `{"critic": {"optimizer": "adam", "betas": (0, 0.9), "ema_decay": None}}`.
    checkpoint_every, keep_checkpoints: checkpoint period in steps, and how many to keep.
    log_every: period of the `loss.csv` rows: the mean of each network's losses over the steps that
        updated it and over all processes (an empty cell if none did), and its learning rate.
    seed: seeds the data order and the rows' random numbers (`seeds` above); what a network draws
        itself (dropout) comes from each process's own generator, seeded from `seed + 1` and the
        process (seed the initial weights before building the networks, as scripts/train.py does;
        every process starts from process 0's weights).
    mixed_precision: "no", "fp16" or "bf16". cpu: force CPU (gloo between CPU processes);
        `None` means "when no CUDA device is present". num_workers: data-loader worker processes.

    Between processes the networks are not wrapped in DistributedDataParallel: DDP averages
    gradients from hooks armed by each forward of the wrapped module and does not support
    `torch.autograd.grad` (a gradient penalty), and a generator loss that runs through the critic
    without updating it is outside its contract. The trainer instead averages each network's
    gradient over the processes itself, one all-reduce per update, starts every process from
    process 0's weights and copies process 0's buffers (batch-norm statistics) to the others after
    every step.
    """

    def __init__(self, nets, objective, dataset, *, out_dir, steps: int, batch_size: int, lr: float,
                 optimizer: str = "adamw", betas=(0.9, 0.999), weight_decay: float = 0.0, warmup_steps: int = 0,
                 grad_clip: float | None = 1.0, ema_decay: float | None = 0.999,
                 networks: Mapping[str, Mapping | NetworkOptim] | None = None, checkpoint_every: int = 500,
                 keep_checkpoints: int = 2, log_every: int = 50, seed: int = 0, mixed_precision: str = "no",
                 cpu: bool | None = None, num_workers: int = 0):
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be at least 1, got {keep_checkpoints}")
        if not isinstance(objective, Objective):
            missing = [m for m in ("networks", "losses", "export", "settings") if not hasattr(objective, m)]
            raise ValueError(f"{type(objective).__name__} is no objective: it has no {', '.join(missing)} "
                             f"(training.objective.Objective)")
        nets = {"net": nets} if isinstance(nets, torch.nn.Module) else dict(nets)
        expected = objective.networks
        if sorted(expected) != sorted(nets):
            raise ValueError(f"{type(objective).__name__} trains the networks {', '.join(sorted(expected))}; "
                             f"got {', '.join(sorted(nets))}")
        names = sorted(nets)
        for name in names:
            if not any(p.requires_grad for p in nets[name].parameters()):
                raise ValueError(f"network {name!r} has no trainable parameters")
        defaults = dict(lr=lr, optimizer=optimizer, betas=betas, weight_decay=weight_decay,
                        warmup_steps=warmup_steps, grad_clip=grad_clip, ema_decay=ema_decay)
        self.settings = network_settings(names, defaults, networks)

        cpu = (not torch.cuda.is_available()) if cpu is None else cpu
        self.accelerator = acc = Accelerator(
            cpu=cpu, mixed_precision=mixed_precision,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed))
        if acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
            raise ValueError(f"the trainer is data parallel only; {acc.distributed_type.value} is not supported")
        world = acc.num_processes
        warn_if_alone(world)
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} is not divisible by the number of processes {world}")
        if len(dataset) < batch_size:
            raise ValueError(f"the data set has {len(dataset)} items, fewer than one batch of {batch_size}")
        self.out_dir = Path(out_dir)
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.objective, self.steps, self.seed, self.batch_size = objective, steps, seed, batch_size
        self.checkpoint_every, self.keep_checkpoints, self.log_every = checkpoint_every, keep_checkpoints, log_every

        # Placed on the device and given the autocast of mixed precision, but not wrapped for DDP.
        self.nets = {name: acc.prepare_model(nets[name], evaluation_mode=True) for name in names}
        if world > 1:  # every process starts from process 0's weights
            for net in self.nets.values():
                broadcast([t.detach() for t in (*net.parameters(), *net.buffers())])
        raw = {name: self.settings[name].build(list(self.nets[name].parameters())) for name in names}
        # Its own generator: starting an epoch then never draws from the global RNG. accelerate gives
        # process p the (k n + p)-th of these batches at step k: the p-th slice of the global batch k.
        loader = DataLoader(dataset, batch_size=batch_size // world, shuffle=True, drop_last=True,
                            num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
        *prepared, self.loader = acc.prepare(*raw.values(), loader)
        self.optimizers = dict(zip(names, prepared))
        self.lr_schedulers, self.emas, self.running = {}, {}, {}
        for name in names:
            # Stepped by hand once per update of this network (a prepared scheduler steps once per process).
            self.lr_schedulers[name] = get_scheduler("constant_with_warmup", raw[name],
                                                     num_warmup_steps=self.settings[name].warmup_steps)
            decay = self.settings[name].ema_decay
            self.emas[name] = None if decay is None else EMAModel(self.nets[name].parameters(), decay=decay)
            if self.emas[name] is not None:
                self.emas[name].to(acc.device)
            self.running[name] = RunningLoss()
            acc.register_for_checkpointing(*(obj for obj in (self.lr_schedulers[name], self.emas[name],
                                                             self.running[name]) if obj is not None))
        self.step = 0
        self.run_settings = self._settings(dataset, batch_size, mixed_precision)

    def _settings(self, dataset, batch_size: int, mixed_precision: str) -> dict:
        """What a resumed run must share with the run that wrote the checkpoints (run.json): the
        objective and its settings, each network's size and training settings, the data (its size,
        the shape of an item, what made it: `data.data_record`), the batch, the seed, the processes.
        The step count and the checkpoint and log periods may change."""
        objective = self.objective.settings()
        nets = {name: {"parameters": sum(p.numel() for p in net.parameters()), **asdict(self.settings[name])}
                for name, net in self.nets.items()}
        return json.loads(json.dumps({"objective": type(self.objective).__name__, "objective_settings": objective,
                                      "networks": nets, **data_record(dataset), "batch_size": batch_size,
                                      "seed": self.seed, "num_processes": self.accelerator.num_processes,
                                      "mixed_precision": mixed_precision}))

    def describe(self) -> str:
        """One line: the objective, each network's class and size, the data, batch, processes and steps."""
        run = self.run_settings
        nets = ", ".join(f"{name} ({type(net).__name__}, {run['networks'][name]['parameters']:,} parameters)"
                         for name, net in self.nets.items())
        processes = f"{run['num_processes']} process" + ("es" if run["num_processes"] > 1 else "")
        steps = f"{self.steps} step" + ("s" if self.steps > 1 else "")
        return (f"{run['objective']}: {nets}; {run['data_size']} items, batch {run['batch_size']} over {processes}, "
                f"{steps}, checkpoints every {self.checkpoint_every} in {self.checkpoint_dir}")

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Save everything needed to resume; written under a temporary name, then renamed, so a
        kill during the save never leaves a half-written checkpoint under a final name."""
        acc = self.accelerator
        final = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{self.step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        for running in self.running.values():
            running.total = acc.reduce(running.total.to(acc.device), reduction="mean")
        try:
            acc.save_state(str(tmp), safe_serialization=True)
            if hasattr(self.objective, "state_dict"):  # each process's own (of its rows); save_state made tmp
                torch.save(self.objective.state_dict(), tmp / f"objective_{acc.process_index}.pt")
        except OSError as err:  # a full disk, a lost mount: say so; the previous checkpoint stays
            shutil.rmtree(tmp, ignore_errors=True)
            raise OSError(err.errno, f"could not save checkpoint {final}: {err.strerror or err}; "
                                     f"the previous checkpoint is kept") from err
        acc.wait_for_everyone()
        if acc.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            for old in checkpoints(self.checkpoint_dir)[:-self.keep_checkpoints]:
                shutil.rmtree(old)
        acc.wait_for_everyone()
        return final

    def resume(self) -> bool:
        """Load the latest checkpoint of `out_dir` that loads; a corrupt or truncated one is named
        in a warning and the one before it is tried."""
        found = checkpoints(self.checkpoint_dir)
        for path in reversed(found):
            try:
                self.accelerator.load_state(str(path))
                if hasattr(self.objective, "load_state_dict"):
                    self.objective.load_state_dict(
                        torch.load(path / f"objective_{self.accelerator.process_index}.pt", weights_only=True))
            except Exception as err:  # anything a damaged file raises: safetensors, pickle, torch
                warnings.warn(f"checkpoint {path} cannot be loaded ({type(err).__name__}: {err}); "
                              "trying the previous one", RuntimeWarning, stacklevel=2)
                continue
            self.step = int(path.name[len(CHECKPOINT_PREFIX):])
            if self.accelerator.is_main_process:
                log.info(f"resumed from {path} at step {self.step}")
            self._truncate_log()
            return True
        if found:
            raise ValueError(f"no checkpoint in {self.checkpoint_dir} can be loaded: {', '.join(p.name for p in found)}")
        return False

    def _truncate_log(self) -> None:
        """Drop the loss and metric rows logged after the checkpoint a resume starts from (they are redone)."""
        for path in (self.out_dir / "loss.csv", self.out_dir / "metrics.csv"):
            if self.accelerator.is_main_process and path.exists():
                rows = list(csv.reader(open(path, newline="")))
                kept = rows[:1] + [r for r in rows[1:] if int(r[0]) <= self.step]
                with open(path, "w", newline="") as f:
                    csv.writer(f).writerows(kept)

    def _report(self) -> None:
        """The objective's `report` on the EMA networks (main process), its metrics appended to metrics.csv."""
        if not hasattr(self.objective, "report"):
            return
        if self.accelerator.is_main_process:
            # its own random numbers: a run resumed from this checkpoint continues exactly as this one does
            with torch.no_grad(), torch.random.fork_rng(devices=[self.accelerator.device] if self.accelerator.device.type == "cuda" else []):
                metrics = self.objective.report(self.ema_nets(), self.step, self.out_dir)
            if metrics:
                path = self.out_dir / "metrics.csv"
                new = not path.exists()
                with open(path, "a", newline="") as f:
                    writer = csv.writer(f)
                    if new:
                        writer.writerow(["step", *metrics])
                    writer.writerow([self.step, *(f"{v:.6g}" for v in metrics.values())])
                log.info(f"step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        self.accelerator.wait_for_everyone()

    # -- one step ------------------------------------------------------------------------------
    def _check(self, losses) -> None:
        """The objective's answer is a non-empty dict of scalars, one per network of this run, and
        every loss is finite on every process (all stop together: a lone raise would leave the
        others waiting in an all-reduce)."""
        acc, at = self.accelerator, self.step + 1
        if not isinstance(losses, dict) or not losses:
            got = "an empty dict" if isinstance(losses, dict) else f"a {type(losses).__name__}"
            raise ValueError(f"{type(self.objective).__name__}.losses returned {got} at step {at}: "
                             "expected a dict of losses by network name")
        for name, loss in losses.items():
            if name not in self.nets:
                raise ValueError(f"{type(self.objective).__name__}.losses returned a loss for {name!r}, which is not "
                                 f"one of the networks ({', '.join(self.nets)})")
            if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                got = f"shape {list(loss.shape)}" if isinstance(loss, torch.Tensor) else f"a {type(loss).__name__}"
                raise ValueError(f"the loss of {name!r} at step {at} is not a scalar tensor ({got})")
        if len(losses) > 1 and acc.scaler is not None:
            raise ValueError(f"fp16 scales one loss per step, but the objective returned {len(losses)} at step {at} "
                             f"({', '.join(losses)}): use mixed_precision bf16 or no")
        finite = torch.stack([torch.isfinite(loss.detach()) for loss in losses.values()]).float()
        everywhere = acc.reduce(finite, reduction="sum")
        for (name, loss), count in zip(losses.items(), everywhere.tolist()):
            if count < acc.num_processes:
                which = "" if len(self.nets) == 1 else f"{name} "
                raise FloatingPointError(f"the {which}loss is not finite at step {at} (this process: {loss.item()}); "
                                         f"the last good checkpoint is kept in {self.checkpoint_dir}")

    def _average_gradients(self, params) -> None:
        """Replace each gradient by its mean over processes: one all-reduce of all of them laid end to end."""
        grads = [p.grad for p in params if p.grad is not None]
        mean = self.accelerator.reduce(torch.cat([g.flatten() for g in grads]), reduction="mean")
        for g, m in zip(grads, mean.split([g.numel() for g in grads])):
            g.copy_(m.view_as(g))

    def _update(self, name: str) -> None:
        """One update of network `name` from the gradient its loss left: average, clip, step the
        optimiser, the schedule and the EMA, then free the gradient."""
        acc, net, optimizer = self.accelerator, self.nets[name], self.optimizers[name]
        if acc.num_processes > 1:
            self._average_gradients(net.parameters())
        if self.settings[name].grad_clip is not None:
            acc.clip_grad_norm_(net.parameters(), self.settings[name].grad_clip)
        optimizer.step()
        self.lr_schedulers[name].step()
        if self.emas[name] is not None:
            self.emas[name].step(net.parameters())
        optimizer.zero_grad(set_to_none=True)

    def seeds(self) -> list[tuple[int, int, int]]:
        """`(seed, step, i)` for the rows of this process's share of the step's batch, `i` their places
        in the global batch (this process's slice of it)."""
        share = self.batch_size // self.accelerator.num_processes
        first = self.accelerator.process_index * share
        return [(self.seed, self.step, i) for i in range(first, first + share)]

    def train_step(self, batch) -> dict[str, torch.Tensor]:
        """One training step: the losses due at this step, each backpropagated into its own network,
        then each of those networks updated. Returns the losses."""
        acc = self.accelerator
        for net in self.nets.values():
            net.train()
        with acc.autocast():
            losses = self.objective.losses(self.nets, batch, self.step, self.seeds())
        self._check(losses)
        last = len(losses) - 1
        for i, (name, loss) in enumerate(losses.items()):  # every backward before any update: graphs may be shared
            self.optimizers[name].zero_grad(set_to_none=True)
            trainable = [p for p in self.nets[name].parameters() if p.requires_grad]
            acc.backward(loss, inputs=trainable, retain_graph=i < last)
        for name in losses:
            self._update(name)
        if acc.num_processes > 1:
            for net in self.nets.values():
                buffers = [b.detach() for b in net.buffers()]
                if buffers:
                    broadcast(buffers)
        self.step += 1
        return losses

    # -- the loop ------------------------------------------------------------------------------
    def _batches(self):
        """Endless batches in a data order fixed by (seed, epoch), starting at `self.step`."""
        per_epoch = len(self.loader)
        epoch, skip = divmod(self.step, per_epoch)
        while True:
            self.loader.set_epoch(epoch)
            batches = self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
            yield from batches
            epoch, skip = epoch + 1, 0

    def _log_header(self) -> list[str]:
        """`step,loss,lr` for one network; `step,loss_<name>...,lr_<name>...` for several."""
        if len(self.nets) == 1:
            return ["step", "loss", "lr"]
        return ["step", *(f"loss_{n}" for n in self.nets), *(f"lr_{n}" for n in self.nets)]

    def _log_row(self, bar) -> None:
        """Append the mean losses since the last row and the current learning rates to `loss.csv`."""
        means = {name: running.pop_mean(self.accelerator) for name, running in self.running.items()}
        shown = {name: f"{m:.4f}" for name, m in means.items() if m is not None}
        if len(self.nets) == 1:
            bar.set_postfix(loss=next(iter(shown.values())))  # a lone network has a loss at every step
        else:
            bar.set_postfix(shown)
        if self.accelerator.is_main_process:
            path = self.out_dir / "loss.csv"
            new = not path.exists()
            with open(path, "a", newline="") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(self._log_header())
                writer.writerow([self.step, *("" if m is None else f"{m:.6f}" for m in means.values()),
                                 *(s.get_last_lr()[0] for s in self.lr_schedulers.values())])

    def fit(self, started: Callable[[], object] | None = None):
        """Train to `steps`, checkpointing on the way; export the EMA weights at the end. started: called
        on the main process once the run is accepted (a fresh run, or a checkpoint of the same settings
        loaded), before the first step: a command records its config there."""
        acc = self.accelerator
        if acc.is_main_process:
            log.info(self.describe())
        check_record(self.out_dir, self.run_settings, bool(checkpoints(self.checkpoint_dir)), acc.is_main_process)
        if not self.resume():
            set_seed(self.seed + 1, device_specific=True)  # the networks' own draws; a resume restores RNG states
        if started is not None and acc.is_main_process:
            started()
        bar = tqdm(total=self.steps, initial=self.step, disable=not acc.is_main_process, desc="train")
        batches = self._batches()
        while self.step < self.steps:
            losses = self.train_step(next(batches))
            for name, loss in losses.items():
                self.running[name].add(loss)
            if self.step % self.log_every == 0 or self.step == self.steps:
                self._log_row(bar)
            bar.update(1)
            if self.step % self.checkpoint_every == 0 or self.step == self.steps:
                self.save_checkpoint()
                self._report()
        bar.close()
        if acc.is_main_process:
            self.export()
        acc.wait_for_everyone()
        return self

    def updates(self) -> dict[str, int]:
        """How many times each network has been updated (its schedule counts them)."""
        return {name: scheduler.last_epoch for name, scheduler in self.lr_schedulers.items()}

    def ema_nets(self) -> dict[str, torch.nn.Module]:
        """Copies of the networks carrying the EMA weights (the weights themselves where there is no EMA)."""
        copies = {}
        for name, net in self.nets.items():
            copies[name] = copy.deepcopy(net)
            if self.emas[name] is not None:
                self.emas[name].copy_to(copies[name].parameters())
        return copies

    def export(self) -> Path:
        """Export the EMA networks through the objective and write `train_summary.json`."""
        target = self.out_dir / "model"
        self.objective.export({name: net.eval() for name, net in self.ema_nets().items()}, target)
        summary = {"steps": self.step, "updates": self.updates(), "num_processes": self.accelerator.num_processes,
                   "command": " ".join(sys.argv), "model": str(target)}
        (self.out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        raw = [name for name, ema in self.emas.items() if ema is None]
        log.info(f"exported the EMA model to {target}" if not raw else
                 f"exported the model to {target} (raw weights, no EMA kept: {', '.join(raw)})")
        return target
