"""One Accelerate training loop: data, optimiser, EMA, checkpoint/resume, logging, export.

An objective is any object with `loss(model, batch) -> scalar tensor` and
`export(model, out_dir)`. The loop works unchanged on one CPU, one GPU, several GPUs or nodes
(`accelerate launch`), and several CPU processes over gloo (`cpu=True`, see docs/conventions.md §8).
"""
from __future__ import annotations

import copy
import csv
import json
import shutil
import sys
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

CHECKPOINT_PREFIX = "step_"


class RunningLoss:
    """The sum and count of the losses since the last `loss.csv` row, saved with every checkpoint so
    that a resumed run logs the same means as one never stopped. At a save the sum becomes the mean
    over processes (the same value on each), which leaves the next logged mean unchanged."""

    def __init__(self):
        self.total, self.count = torch.zeros(()), 0

    def add(self, loss: torch.Tensor) -> None:
        self.total, self.count = self.total.to(loss.device) + loss.detach().float(), self.count + 1

    def pop_mean(self, accelerator) -> float:
        mean = accelerator.reduce(self.total / max(self.count, 1), reduction="mean").item()
        self.total, self.count = torch.zeros((), device=self.total.device), 0
        return mean

    def state_dict(self) -> dict:
        return {"total": self.total.cpu(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.count = state["total"], int(state["count"])


def _checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (a save in progress has a `.tmp` suffix)."""
    found = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


class Trainer:
    """Trains `model` on `dataset` with `objective`.

    out_dir: run directory; holds `checkpoints/`, `loss.csv`, `train_summary.json` and, at the
        end, the EMA weights exported by the objective to `out_dir/model`. A run started again
        with the same `out_dir` resumes from its latest checkpoint.
    steps: optimiser steps in total. batch_size: global batch, split evenly over processes.
    lr, weight_decay, warmup_steps, grad_clip: AdamW with linear warm-up, then constant;
        gradient-norm clipping (`None` for none).
    ema_decay: decay of the exponential moving average of the weights (diffusers `EMAModel`): after
        optimiser step k, `ema = d_k ema + (1 - d_k) theta` with the warm-up
        `d_k = min(ema_decay, k / (9 + k))` (`d_1 = 0`: the first update copies the weights).
    checkpoint_every, keep_checkpoints: checkpoint period in steps, and how many to keep.
    log_every: period of the `loss.csv` rows (the mean loss over all processes).
    seed: seeds the data order and the per-process noise (seed the initial weights before building
        the model, as scripts/train.py does; DDP copies rank 0's weights to every process anyway).
    mixed_precision: "no", "fp16" or "bf16". cpu: force CPU (gloo between CPU processes);
        `None` means "when no CUDA device is present".
    """

    def __init__(self, model, objective, dataset, *, out_dir, steps: int, batch_size: int, lr: float,
                 weight_decay: float = 0.0, warmup_steps: int = 0, grad_clip: float | None = 1.0,
                 ema_decay: float = 0.999, checkpoint_every: int = 500, keep_checkpoints: int = 2,
                 log_every: int = 50, seed: int = 0, mixed_precision: str = "no", cpu: bool | None = None,
                 num_workers: int = 0):
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        cpu = (not torch.cuda.is_available()) if cpu is None else cpu
        self.accelerator = Accelerator(
            cpu=cpu, mixed_precision=mixed_precision,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed))
        world = self.accelerator.num_processes
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} is not divisible by the number of processes {world}")
        if len(dataset) < batch_size:
            raise ValueError(f"the data set has {len(dataset)} items, fewer than one batch of {batch_size}")
        if keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be at least 1, got {keep_checkpoints}")
        self.out_dir = Path(out_dir)
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.objective, self.steps, self.seed = objective, steps, seed
        self.grad_clip, self.checkpoint_every, self.keep_checkpoints = grad_clip, checkpoint_every, keep_checkpoints
        self.log_every = log_every

        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        # Its own generator: starting an epoch then never draws from the global RNG (the loss noise).
        loader = DataLoader(dataset, batch_size=batch_size // world, shuffle=True, drop_last=True,
                            num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
        self.model, self.optimizer, self.loader = self.accelerator.prepare(model, optimizer, loader)
        # Stepped by hand once per optimiser step (a prepared scheduler steps once per process).
        self.lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=warmup_steps)
        self.ema = EMAModel(self.accelerator.unwrap_model(self.model).parameters(), decay=ema_decay)
        self.ema.to(self.accelerator.device)
        self.running = RunningLoss()
        self.accelerator.register_for_checkpointing(self.lr_scheduler, self.ema, self.running)
        self.step = 0

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Save everything needed to resume; written under a temporary name, then renamed, so a
        kill during the save never leaves a half-written checkpoint under a final name."""
        final = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{self.step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        if self.accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        self.accelerator.wait_for_everyone()
        self.running.total = self.accelerator.reduce(self.running.total.to(self.accelerator.device), reduction="mean")
        try:
            self.accelerator.save_state(str(tmp), safe_serialization=True)
        except OSError as err:  # a full disk, a lost mount: say so; the previous checkpoint stays
            shutil.rmtree(tmp, ignore_errors=True)
            raise OSError(err.errno, f"could not save checkpoint {final}: {err.strerror or err}; "
                                     f"the previous checkpoint is kept") from err
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            for old in _checkpoints(self.checkpoint_dir)[:-self.keep_checkpoints]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return final

    def resume(self) -> bool:
        """Load the latest checkpoint of `out_dir` that loads; a corrupt or truncated one is named
        on stderr and the one before it is tried."""
        found = _checkpoints(self.checkpoint_dir)
        for path in reversed(found):
            try:
                self.accelerator.load_state(str(path))
            except Exception as err:  # anything a damaged file raises: safetensors, pickle, torch
                print(f"error: checkpoint {path} cannot be loaded ({type(err).__name__}: {err}); "
                      "trying the previous one", file=sys.stderr)
                continue
            self.step = int(path.name[len(CHECKPOINT_PREFIX):])
            self.accelerator.print(f"resumed from {path} at step {self.step}")
            self._truncate_log()
            return True
        if found:
            raise ValueError(f"no checkpoint in {self.checkpoint_dir} can be loaded: {', '.join(p.name for p in found)}")
        return False

    def _truncate_log(self) -> None:
        """Drop the loss rows logged after the checkpoint a resume starts from (they are redone)."""
        log = self.out_dir / "loss.csv"
        if self.accelerator.is_main_process and log.exists():
            rows = list(csv.reader(open(log, newline="")))
            kept = rows[:1] + [r for r in rows[1:] if int(r[0]) <= self.step]
            with open(log, "w", newline="") as f:
                csv.writer(f).writerows(kept)

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

    def fit(self):
        """Train to `steps`, checkpointing on the way; export the EMA weights at the end."""
        acc = self.accelerator
        if not self.resume():
            set_seed(self.seed + 1, device_specific=True)  # per-process noise; a resume restores saved RNG states
        if acc.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.out_dir / "loss.csv"
        bar = tqdm(total=self.steps, initial=self.step, disable=not acc.is_main_process, desc="train")
        batches = self._batches()
        while self.step < self.steps:
            batch = next(batches)
            self.model.train()
            with acc.autocast():
                loss = self.objective.loss(self.model, batch)
            # every process stops together (a lone raise would leave the others in an all-reduce)
            if acc.reduce(torch.isfinite(loss.detach()).float(), reduction="sum") < acc.num_processes:
                raise FloatingPointError(f"the loss is not finite at step {self.step + 1} (this process: "
                                         f"{loss.item()}); the last good checkpoint is kept in {self.checkpoint_dir}")
            self.optimizer.zero_grad(set_to_none=True)
            acc.backward(loss)
            if self.grad_clip is not None:
                acc.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.ema.step(acc.unwrap_model(self.model).parameters())
            self.step += 1
            self.running.add(loss)
            if self.step % self.log_every == 0 or self.step == self.steps:
                mean = self.running.pop_mean(acc)
                bar.set_postfix(loss=f"{mean:.4f}")
                if acc.is_main_process:
                    new = not log_path.exists()
                    with open(log_path, "a", newline="") as f:
                        writer = csv.writer(f)
                        if new:
                            writer.writerow(["step", "loss", "lr"])
                        writer.writerow([self.step, f"{mean:.6f}", self.lr_scheduler.get_last_lr()[0]])
            bar.update(1)
            if self.step % self.checkpoint_every == 0 or self.step == self.steps:
                self.save_checkpoint()
        bar.close()
        if acc.is_main_process:
            self.export()
        acc.wait_for_everyone()
        return self

    def ema_model(self):
        """A copy of the network carrying the EMA weights."""
        model = copy.deepcopy(self.accelerator.unwrap_model(self.model))
        self.ema.copy_to(model.parameters())
        return model

    def export(self) -> Path:
        """Export the EMA network through the objective and write `train_summary.json`."""
        target = self.out_dir / "model"
        self.objective.export(self.ema_model().eval(), target)
        summary = {"steps": self.step, "num_processes": self.accelerator.num_processes,
                   "command": " ".join(sys.argv), "model": str(target)}
        (self.out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.accelerator.print(f"exported the EMA model to {target}")
        return target
