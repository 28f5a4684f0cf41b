"""Any generator seen as a `sample_fn(seeds) -> samples`: a list of ints in, a batch out, sample `i`
drawn from `seeds[i]` alone. The seeds of a run are split over processes here, run in batches, and
gathered back in seed order, so the samples depend neither on the batch size nor on the number of
processes (docs/conventions.md §7)."""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

SampleFn = Callable[[list], torch.Tensor]


def split(seeds: Sequence[int], accelerator=None) -> list[int]:
    """This process's share of `seeds`: every n-th of them from the process's index (all of them
    without an accelerator or with one process)."""
    seeds = [int(s) for s in seeds]
    if accelerator is None:
        return seeds
    return seeds[accelerator.process_index::accelerator.num_processes]


def generate(sample_fn: SampleFn, seeds: Sequence[int], batch_size: int) -> Iterator[torch.Tensor]:
    """`sample_fn` over `seeds` in batches of at most `batch_size` seeds; each batch is checked to
    hold one sample per seed."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    seeds = [int(s) for s in seeds]
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start:start + batch_size]
        samples = sample_fn(chunk)
        if len(samples) != len(chunk):
            raise ValueError(f"the sample_fn gave {len(samples)} samples for {len(chunk)} seeds")
        yield samples


def gather_by_seed(seeds: Sequence[int], batches, accelerator=None) -> torch.Tensor:
    """All the samples of `seeds`, in their order, on every process, from each process's `batches`
    of its share `split(seeds, accelerator)` (on the CPU)."""
    mine = [x for batch in batches for x in batch.cpu()]
    if accelerator is None or accelerator.num_processes == 1:
        parts = [mine]
    else:
        from accelerate.utils import gather_object

        parts = gather_object([mine])  # one list per process, in process order
    n = len(parts)
    if sum(map(len, parts)) != len(seeds):
        raise ValueError(f"{sum(map(len, parts))} samples gathered for {len(seeds)} seeds")
    return torch.stack([parts[i % n][i // n] for i in range(len(seeds))])
