"""Reflow pairs (Liu et al. 2022): the noise a sampler starts from and the sample it ends at, the
coupling that the next rectified flow is trained on.

A pair set is a directory: `pairs.json` (what made the pairs: the model's weight fingerprint, the
sampler and its options, the grid, the sample shape, the seeds) and shards `shard_{k:05d}.safetensors`
of `shard_size` consecutive seeds, each with tensors `noise`, `sample` (float32, shape (n, *shape)) and
`seeds` (int64). Pair `i` comes from seed `seed_start + i` alone (`samplers.sample_seeds`), so the set
depends neither on the batch size nor on the processes.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..samplers import check_sigmas, fingerprint, sample_seeds
from ..samplers.solvers import resolve_options

INDEX = "pairs.json"
TENSORS = ("noise", "sample", "seeds")

log = logging.getLogger(__name__)


def shard_name(k: int) -> str:
    return f"shard_{k:05d}.safetensors"


def _consecutive(seeds: Sequence[int]) -> tuple[int, int]:
    """(first seed, count) of a run of consecutive integers."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    for i, s in enumerate(seeds):
        if s != seeds[0] + i:
            raise ValueError(f"seeds must be consecutive integers, got {s} after {seeds[i - 1]} at position {i}")
    return seeds[0], len(seeds)


def _first_difference(old: Mapping, new: Mapping) -> str | None:
    """The first key (sorted) whose values differ in `old` and `new` (a missing key reads as None), or None."""
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return key
    return None


def _read_index(path: Path) -> dict:
    """The `pairs.json` at `path`; one that is not a JSON object is refused in one line naming it."""
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is no pair index: {err}") from None
    if not isinstance(index, dict):
        raise ValueError(f"{path} is no pair index: it holds a {type(index).__name__}, not an object")
    return index


def _noise_recorder(sigma0: float, noises: list):
    """A sampler callback that keeps the noise of each batch: its first denoiser call is at
    `x = sigma0 * noise` (float64, from which the float32 noise comes back exactly)."""

    def record(call):
        if call["nfe"] == 1:
            noises.append((call["x"] / sigma0).float().cpu())

    return record


def write_pairs(denoiser, sampler: str, sigmas, shape, seeds: Sequence[int], out_dir, shard_size: int,
                accelerator=None, options: Mapping | None = None, metadata: Mapping | None = None,
                batch_size: int = 64, device=None) -> Path:
    """Write the pairs of `seeds` (consecutive integers) to `out_dir`; returns `out_dir`.

    Pair `i`: the standard-normal noise `samplers.sample_seeds` draws for `seeds[i]` and the sample
    `sampler` (with `options`) makes from it down `sigmas` with `denoiser`, in samples of `shape`.
    Shard `k` holds seeds `k * shard_size ...` and is made by process `k % num_processes`
    (`accelerator`: an Accelerate `Accelerator`, or None for one process); it is written under a
    temporary name and renamed, and a shard already there is kept, so a stopped run started again
    makes only the missing shards. `pairs.json` records the fingerprint of `denoiser`'s weights
    (`samplers.fingerprint`), `metadata` (the caller's: the model's name), the sampler, its options,
    the sigmas, the shape, the seeds and the shard size; a directory whose `pairs.json` says
    otherwise (other weights at the same path, too) is refused, naming both values, and nothing is
    written. Shards are written with the mode of any new file (0666 less the umask). The first
    process shows a bar of its pairs on stderr; each shard written is logged (this module's logger).
    """
    if int(shard_size) != shard_size or shard_size < 1:
        raise ValueError(f"shard_size must be a whole number of at least 1, got {shard_size}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number of at least 1, got {batch_size}")
    first, count = _consecutive(seeds)
    options = resolve_options(sampler, options)
    if options.get("afs"):  # the pair's noise is read from the first call, which the analytical first step skips
        raise ValueError(f"reflow pairs record the noise of the sampler's first network call; {sampler} with afs=True "
                         f"makes none there: use afs=False")
    if options.get("predictor") is not None:  # pairs.json records the options as JSON
        raise ValueError(f"reflow pairs record their sampler's options; an AMED predictor is not one they can record: "
                         f"give {sampler} its frozen table (r, c lists) instead")
    sigmas = check_sigmas(sigmas)
    index = {"fingerprint": fingerprint(denoiser), "sampler": sampler, "options": options, "sigmas": sigmas.tolist(),
             "shape": [int(s) for s in shape], "seed_start": first, "num_pairs": count, "shard_size": int(shard_size)}
    clash = sorted(set(metadata or {}) & set(index))
    if clash:
        raise ValueError(f"metadata key {clash[0]!r} is one write_pairs sets itself; use another name")
    index = json.loads(json.dumps({**(metadata or {}), **index}))  # as pairs.json will read back

    out_dir = Path(out_dir)
    rank, world = (0, 1) if accelerator is None else (accelerator.process_index, accelerator.num_processes)
    main = accelerator is None or accelerator.is_main_process
    path = out_dir / INDEX
    if path.is_file():
        written = _read_index(path)
        if written.get("fingerprint") != index["fingerprint"]:
            raise ValueError(f"{path} holds pairs of a model with weights {written.get('fingerprint')}; this model's "
                             f"weights are {index['fingerprint']}: use another out_dir or the same model")
        key = _first_difference(written, index)
        if key is not None:
            raise ValueError(f"{path} has {key}={written.get(key)!r}, this run {key}={index.get(key)!r}: "
                             f"use another out_dir or the same settings")
    elif main:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(INDEX + ".tmp")
        tmp.write_text(json.dumps(index, indent=2) + "\n")
        tmp.rename(path)
    if accelerator is not None:
        accelerator.wait_for_everyone()

    shards = range(-(-count // shard_size))
    mine = [k for k in shards if k % world == rank]
    todo = [k for k in mine if not (out_dir / shard_name(k)).is_file()]
    size = {k: min((k + 1) * shard_size, count) - k * shard_size for k in mine}
    bar = tqdm(total=sum(size.values()), initial=sum(size[k] for k in mine if k not in todo), desc="pairs",
               unit="pair", disable=not main)
    for k in todo:
        shard_seeds = list(range(first + k * shard_size, first + k * shard_size + size[k]))
        noises, samples = [], []
        for batch in sample_seeds(sampler, denoiser, shard_seeds, sigmas, shape, batch_size=batch_size, device=device,
                                  callback=_noise_recorder(float(sigmas[0]), noises), options=options):
            samples.append(batch)
            bar.update(len(batch))
        tensors = {"noise": torch.cat(noises).contiguous(), "sample": torch.cat(samples).float().cpu().contiguous(),
                   "seeds": torch.tensor(shard_seeds)}
        final = out_dir / shard_name(k)
        tmp = final.with_name(final.name + ".tmp")
        tmp.write_bytes(save(tensors))  # not save_file: safetensors 0.8 makes that file 0600 whatever the umask
        tmp.rename(final)
        log.info(f"{final}: the pairs of seeds {shard_seeds[0]}..{shard_seeds[-1]}")
    bar.close()
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if main:
        log.info(f"{count} pairs in {len(shards)} shards in {out_dir}")
    return out_dir


class PairsDataset(Dataset):
    """The pairs under `root` as a map-style data set of `(sample, noise)` tuples (float32), the
    batch a reflow round of `RectifiedFlowObjective` or a `DistillationObjective` takes.

    Every shard `pairs.json` promises is checked when the set is opened (present, readable, the
    tensors and shapes it says, its seeds); `expect`: metadata keys the set must have, e.g.
    `{"sampler": "heun"}`. Items are read from the shards as they are asked for (memory-mapped;
    each process, data-loader workers included, opens the shards itself).
    """

    def __init__(self, root, expect: Mapping | None = None):
        self.root = Path(root).expanduser()
        path = self.root / INDEX
        if not path.is_file():
            raise FileNotFoundError(f"no {INDEX} in {self.root}: not a pair set written by write_pairs")
        self.index = _read_index(path)
        if expect:
            expect = json.loads(json.dumps(dict(expect)))
            key = next((k for k in expect if self.index.get(k) != expect[k]), None)
            if key is not None:
                raise ValueError(f"{path} has {key}={self.index.get(key)!r}, expected {key}={expect[key]!r}")
        self.count, self.shard_size = int(self.index["num_pairs"]), int(self.index["shard_size"])
        self.shape = tuple(self.index["shape"])
        for k in range(-(-self.count // self.shard_size)):
            self._check_shard(k)
        self._open = {}

    def _check_shard(self, k: int) -> None:
        file = self.root / shard_name(k)
        if not file.is_file():
            raise FileNotFoundError(f"shard {file} is missing: run write_pairs again to make it")
        start = k * self.shard_size
        n = min(self.shard_size, self.count - start)
        want = {"noise": [n, *self.shape], "sample": [n, *self.shape], "seeds": [n]}
        try:
            with safe_open(str(file), framework="pt") as f:
                shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}
                seeds = f.get_tensor("seeds") if "seeds" in shapes else None
        except Exception as err:  # what safetensors raises for an empty, truncated or foreign file
            raise ValueError(f"shard {file} cannot be read ({err})") from None
        if sorted(shapes) != sorted(TENSORS):
            raise ValueError(f"shard {file} holds tensors {sorted(shapes)}, not {sorted(TENSORS)}")
        for name, shape in want.items():
            if shapes[name] != shape:
                raise ValueError(f"shard {file} has {name} of shape {tuple(shapes[name])}, {INDEX} says {tuple(shape)}")
        first = self.index["seed_start"] + start
        if not torch.equal(seeds, torch.arange(first, first + n)):
            raise ValueError(f"shard {file} holds seeds {int(seeds[0])}..{int(seeds[-1])}, "
                             f"{INDEX} says {first}..{first + n - 1}")

    def settings(self) -> dict:
        """What made the pairs (`pairs.json`), which a training run records (`training.Trainer`'s run.json)."""
        return self.index

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self.count <= i < self.count:
            raise IndexError(f"pair {i} of a set of {self.count}")
        k, row = divmod(i % self.count, self.shard_size)
        if k not in self._open:
            self._open[k] = safe_open(str(self.root / shard_name(k)), framework="pt")
        shard = self._open[k]
        return shard.get_slice("sample")[row], shard.get_slice("noise")[row]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}  # open files do not travel to worker processes
