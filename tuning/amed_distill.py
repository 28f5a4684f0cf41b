"""Distillation of AMED's predictor (Zhou et al., CVPR 2024, §3.3; the authors' `AMED_loss`) as an objective
of the shared training engine (docs/conventions.md §8), next to the sampler it trains (flows/distill.py
distills a network, this a sampler's step parameters): one network, `predictor`, on standard-normal noise
(`NoiseDataset`), the model frozen inside.

From the same noise the teacher gives `x_n^T` at every time `t_n` of the student's grid (Heun on the
grid with `teacher_steps` times inserted in every step, or dopri5 from each `t_n` to the next), and the
student, the sampler with the predictor through the same denoiser, minimises
`E_noise sum_n ||x_n - x_n^T||^2`. `amed` restarts every step from the teacher's `x_n^T` (the authors'
choice for one-step solvers), so each step's term depends on that step's `(r_n, c_n)` alone;
`amed_plugin` runs its own trajectory, its history throughout. `scripts/train_amed.py` runs it.
A conditional model (a guided denoiser, `samplers.guidance`) is distilled with noise `i` conditioned as
sample `i` of a run is (`cond_of`): teacher and student see the same conditioning keywords.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..samplers.fingerprints import fingerprint
from ..samplers.noise import seeded_noise
from ..samplers.schedules import RHO
from ..samplers.solvers import SOLVERS, check_sigmas, nfe as nfe_of, resolve_options, sample, solve
from .amed_predictor import AMEDPredictor, bottleneck_size, frozen_table
from . import store

TEACHERS = ("heun", "dopri5")
STUDENTS = ("amed", "amed_plugin")

log = logging.getLogger(__name__)


class NoiseDataset(Dataset):
    """`size` standard-normal noises of `shape`, item `i` drawn in float32 from
    `samplers.seeded_noise` of seed `seed + i` (the noise `samplers.sample_seeds` draws for that
    seed), so a batch is the same whatever the processes and a resume. indexed: items `(noise, i)`, for an
    objective that conditions noise `i` by its index (a class-conditional model's class of sample `i`)."""

    def __init__(self, shape, size: int = 65536, seed: int = 1_000_000, indexed: bool = False):
        if shape is None:
            raise ValueError("NoiseDataset needs the sample shape (scripts/train_amed.py gives the model's)")
        self.shape, self.size, self.seed = tuple(int(s) for s in shape), int(size), int(seed)
        self.indexed = bool(indexed)

    def settings(self) -> dict:
        """What defines the noises, which a training run records (`training.Trainer`'s run.json)."""
        return {"shape": list(self.shape), "size": self.size, "seed": self.seed}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        if not 0 <= i < self.size:
            raise IndexError(f"noise {i} of {self.size}")
        noise = seeded_noise([self.seed + int(i)], self.shape)[0]
        return (noise, torch.tensor(int(i))) if self.indexed else noise


def inserted(sigmas: torch.Tensor, m: int, rho: float = RHO) -> torch.Tensor:
    """`sigmas` with `m` times inserted evenly in `sigma^(1/rho)` between each two: on a Karras grid of
    that rho, the Karras grid `m + 1` times finer (the authors' teacher grid, `M = m`)."""
    a, b = sigmas[:-1] ** (1 / rho), sigmas[1:] ** (1 / rho)
    w = torch.arange(1, m + 1, dtype=sigmas.dtype, device=sigmas.device) / (m + 1)
    inner = (a[:, None] + w * (b - a)[:, None]) ** rho
    return torch.cat([torch.cat([sigmas[:-1, None], inner], 1).flatten(), sigmas[-1:]])


def squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`||a - b||^2` per sample."""
    return (a - b).flatten(1).square().sum(1)


class AMEDDistillation:
    """`{"predictor": mean over the batch of sum_n ||x_n - x_n^T||^2}` (module docstring).

    denoiser: the model, frozen. sigmas: the student's grid. sampler: amed or amed_plugin; options: its
        keywords (afs, base), r and c at their defaults (the predictor gives them). nfe: what the grid
        must cost the sampler, else one line naming the NFEs it reaches on such a grid.
    teacher: heun, on the grid with `teacher_steps` times inserted in every step (`inserted`), or
        dopri5 (rtol, atol) from each time of the grid to the next.
    hidden_dim, time_channels, c_range: the predictor's (`AMEDPredictor`); model: the model's name.
    held_out, held_out_seed: the noises of `report` and of the exported frozen table.
    cond_of: for a conditional model, `indices -> conditioning keywords` of the noises of those indices (the
        data then gives `(noise, index)` items: `NoiseDataset(indexed=True)`; held-out noise `j` has index `j`);
        conditioning: what that is (e.g. `{"classes": [...]}`), recorded with the guidance scale.
    """

    networks = ("predictor",)

    def __init__(self, denoiser=None, sigmas=None, sampler: str = "amed", options=None, nfe: int | None = None,
                 teacher: str = "heun", teacher_steps: int = 3, rtol: float = 1e-5, atol: float = 1e-5,
                 hidden_dim: int = 128, time_channels: int = 8, c_range: float = 0.01, model: str | None = None,
                 held_out: int = 64, held_out_seed: int = 2_000_000, cond_of=None, conditioning: dict | None = None):
        if denoiser is None or sigmas is None:
            raise ValueError("objective=amed needs the model and the grid: train it with scripts/train_amed.py "
                             "(e.g. python scripts/train_amed.py sampler=amed nfe=5)")
        if sampler not in STUDENTS:
            raise ValueError(f"AMED distillation trains amed or amed_plugin, got sampler={sampler}")
        if teacher not in TEACHERS:
            raise ValueError(f"unknown teacher {teacher!r}: use {' or '.join(TEACHERS)}")
        if int(teacher_steps) != teacher_steps or teacher_steps < 0:
            raise ValueError(f"teacher_steps must be a whole number of at least 0, got {teacher_steps}")
        self.options = resolve_options(sampler, options)
        for key in ("r", "c", "predictor"):
            if self.options[key] != SOLVERS[sampler].options[key]:
                raise ValueError(f"AMED distillation learns {sampler}'s r and c: drop sampler.options.{key}="
                                 f"{self.options[key]}")
        self.denoiser = denoiser.eval().requires_grad_(False)
        self.sigmas = check_sigmas(sigmas).detach().cpu()
        steps, ends_at_zero = len(self.sigmas) - 1, bool(self.sigmas[-1] == 0)
        self.nfe = nfe_of(sampler, self.sigmas, self.options)
        if nfe is not None and nfe != self.nfe:
            reach = sorted({SOLVERS[sampler].nfe(k, ends_at_zero, self.options)
                            for k in range(1, max(steps, 5) + 2)} - {0})
            raise ValueError(f"{sampler} with afs={self.options['afs']} on a grid ending at "
                             f"{'0' if ends_at_zero else 'sigma_min'} costs {self.nfe} NFE for {steps} steps, not "
                             f"nfe={nfe}: it reaches NFE {', '.join(map(str, reach))}, ...")
        self.sampler, self.afs = sampler, bool(self.options["afs"])
        self.base = self.options.get("base")
        self.teacher, self.teacher_steps, self.rtol, self.atol = teacher, int(teacher_steps), rtol, atol
        self.hidden_dim, self.time_channels, self.c_range = hidden_dim, time_channels, c_range
        self.model, self.fingerprint = model or type(denoiser).__name__, fingerprint(denoiser)
        self.held_out, self.held_out_seed = held_out, held_out_seed
        self._held_out = None  # (noise, the teacher's samples, their conditioning)
        self.cond_of, self.conditioning = cond_of, conditioning
        self.guidance_scale = store.guidance_of(denoiser)

    def settings(self) -> dict:
        """What defines the distillation, the grid with every digit (a resume on another grid is refused)."""
        return {"sampler": self.sampler, "afs": self.afs, "base": self.base, "nfe": self.nfe,
                "grid": " ".join(f"{float(s):.17g}" for s in self.sigmas), "teacher": self.teacher,
                "teacher_steps": self.teacher_steps, "rtol": self.rtol, "atol": self.atol,
                "hidden_dim": self.hidden_dim, "time_channels": self.time_channels, "c_range": self.c_range,
                "model": self.model, "fingerprint": self.fingerprint, "held_out": self.held_out,
                "held_out_seed": self.held_out_seed, **store.guidance_record(self.denoiser, self.conditioning)}

    def new_predictor(self) -> AMEDPredictor:
        """An untrained predictor for this model, sampler and grid (feature input: the UNet's bottleneck)."""
        return AMEDPredictor(feature_dim=bottleneck_size(self.denoiser), hidden_dim=self.hidden_dim,
                             time_channels=self.time_channels, c_range=self.c_range, sampler=self.sampler,
                             base=self.base, afs=self.afs, nfe=self.nfe, sigmas=self.sigmas.tolist(), model=self.model,
                             fingerprint=self.fingerprint, guidance_scale=self.guidance_scale,
                             classes=(self.conditioning or {}).get("classes"))

    def _sampler_options(self) -> dict:
        return {"afs": self.afs, **({"base": self.base} if self.base else {})}

    def _cond(self, indices, device) -> dict:
        """The conditioning keywords of the noises of `indices` (none for an unconditional model)."""
        if self.cond_of is None:
            return {}
        return {key: value.to(device) for key, value in self.cond_of([int(i) for i in indices]).items()}

    def teacher_points(self, x: torch.Tensor, progress: bool = False, cond=None) -> list[torch.Tensor]:
        """`x_n^T` at every time of the grid from `x` at `t_0` (conditioned by `cond`, one row per noise); a
        NaN or inf is refused in one line. `progress`: a bar of the student's steps on stderr."""
        sigmas = self.sigmas.to(x.device)
        fine = inserted(sigmas, self.teacher_steps) if self.teacher == "heun" else sigmas
        every = self.teacher_steps + 1 if self.teacher == "heun" else 1
        options = {"rtol": self.rtol, "atol": self.atol} if self.teacher == "dopri5" else {}
        points = [x]
        for n in tqdm(range(len(sigmas) - 1), desc=f"teacher ({self.teacher})", unit="step", leave=False,
                      disable=not progress):
            x = solve(self.teacher, self.denoiser, x, fine[n * every:(n + 1) * every + 1], cond=cond, **options)
            broken = int((~torch.isfinite(x)).flatten(1).any(1).sum())
            if broken:
                raise FloatingPointError(f"the teacher ({self.teacher}) gives NaN or inf at sigma="
                                         f"{float(sigmas[n + 1]):.6g} for {broken} of {len(x)} noises: the model "
                                         f"fails there")
            points.append(x)
        return points

    def student_error(self, predictor: AMEDPredictor, x: torch.Tensor, teacher: list[torch.Tensor],
                      cond=None) -> torch.Tensor:
        """Per sample, `sum_n ||x_n - x_n^T||^2` over the grid's times after `t_0`, the sampler driven here
        (its generator, `predictor` watching this denoiser): at each time of the grid it asks about
        (0-d sigma; with a predictor the intermediate ones are per sample) the distance is taken and
        amed goes on from `x_n^T`."""
        steps = SOLVERS[self.sampler].run(x, self.sigmas.to(x.device), **{**self.options, "predictor": predictor})
        error, n = x.new_zeros(len(x)), int(self.afs)  # afs: no call at t_0
        with predictor.watch(self.denoiser):
            try:
                x, sigma = next(steps)
                while True:
                    if sigma.ndim == 0:
                        error = error + squared_distance(x, teacher[n])
                        x = teacher[n] if self.sampler == "amed" else x
                        n += 1
                    x, sigma = steps.send((x, self.denoiser(x, sigma, **(cond or {}))))
            except StopIteration as done:
                return error + squared_distance(done.value, teacher[-1])

    def losses(self, nets, batch: torch.Tensor, step: int, seeds) -> dict[str, torch.Tensor]:
        """`{"predictor": loss}` at every step; `batch`: standard-normal noise (`NoiseDataset`, seeded by
        its index: `seeds` is not used), with the indices for a conditional model."""
        indexed = isinstance(batch, (tuple, list))
        if indexed != (self.cond_of is not None):
            raise ValueError(f"a {'conditional' if self.cond_of else 'unconditional'} model's distillation needs "
                             f"noise {'with' if self.cond_of else 'without'} indices (NoiseDataset indexed="
                             f"{self.cond_of is not None})")
        noise, indices = batch if indexed else (batch, [])
        self.denoiser.to(noise.device)
        cond = self._cond(indices, noise.device)
        x = noise.to(torch.float64) * float(self.sigmas[0])
        with torch.no_grad():
            teacher = self.teacher_points(x, cond=cond)
        return {"predictor": self.student_error(nets["predictor"], x, teacher, cond).mean()}

    def held_out_noise(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out noises and the teacher's samples from them (made once; their conditioning: `held_out_cond`)."""
        if self._held_out is None:
            data = NoiseDataset(self.denoiser.sample_shape, self.held_out, self.held_out_seed)
            noise = torch.stack([data[i] for i in range(len(data))]).to(device)
            cond = self._cond(range(len(data)), device)
            self.denoiser.to(device)
            log.info(f"the teacher's points ({self.teacher}) for {len(data)} held-out noises")
            with torch.no_grad():
                target = self.teacher_points(noise.double() * float(self.sigmas[0]), progress=True, cond=cond)[-1]
            self._held_out = noise, target, cond
        return self._held_out[:2]

    def held_out_cond(self, device=None) -> dict:
        """The conditioning keywords of the held-out noises (held-out noise `j` conditioned as index `j`)."""
        self.held_out_noise(device)
        return self._held_out[2]

    def error(self, device=None, **options) -> float:
        """`sqrt(mean ||x - x^T||^2)` over the held-out noises, the sampler with `options` (a
        `predictor`, or r and c) against the teacher."""
        (noise, target), cond = self.held_out_noise(device), self.held_out_cond(device)
        x = sample(self.sampler, self.denoiser, noise, self.sigmas, cond=cond, **self._sampler_options(), **options)
        return math.sqrt(squared_distance(x.double(), target).mean().item())

    def report(self, nets, step: int, out_dir) -> dict[str, float]:
        """The held-out errors against the teacher: with the predictor, with its frozen table, and at
        r = 1/2, c = 1 (untrained)."""
        predictor = nets["predictor"]
        (noise, _), cond = self.held_out_noise(predictor.device), self.held_out_cond(predictor.device)
        r, c = frozen_table(predictor, self.denoiser, noise, self.sigmas, cond)
        return {"error": self.error(predictor.device, predictor=predictor),
                "frozen_error": self.error(predictor.device, r=r, c=c), "untrained_error": self.error(predictor.device)}

    def export(self, nets, out_dir) -> None:
        """The predictor (`save_pretrained`: config.json, with what it was made for, and safetensors) and
        `frozen_table.json`: its frozen table on the held-out noises as the sampler's options (r, c
        lists; a FewstepScheduler takes them without afs, one NFE more), the grid, its NFE and the
        command that trained it."""
        predictor, out_dir = nets["predictor"], Path(out_dir)
        predictor.save_pretrained(str(out_dir))
        (noise, _), cond = self.held_out_noise(predictor.device), self.held_out_cond(predictor.device)
        r, c = frozen_table(predictor, self.denoiser, noise, self.sigmas, cond)
        table = {"sampler": self.sampler, "sampler_options": {**self._sampler_options(), "r": r, "c": c},
                 "sigmas": self.sigmas.tolist(), "nfe": self.nfe, "model": self.model, "fingerprint": self.fingerprint,
                 **store.guidance_record(self.denoiser, self.conditioning), "command": store.command()}
        (out_dir / "frozen_table.json").write_text(json.dumps(table, indent=1) + "\n")
