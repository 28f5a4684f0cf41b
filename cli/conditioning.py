"""The conditioning step of every command that samples or tunes a model: from a config's `guidance_scale`
and `classes` to the denoiser the samplers run (a class-conditional model under classifier-free guidance,
`samplers.guidance`) and the conditioning keywords of each sample of a run (docs/conventions.md §10).
An unconditional model takes neither value; a class-conditional one samples at guidance 1 (the plain
conditional model) unless told otherwise, sample `i` of a run for class `classes[i mod len(classes)]`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..samplers import guidance


@dataclass
class Conditioning:
    """denoiser: what the samplers run (guided for a conditional model); labels: the class of each sample of
    a run by its index (None: an unconditional model); line: what it is, said first (None: unconditional);
    record: the conditioning a tuned artifact records beside its guidance scale."""
    denoiser: Any
    labels: Callable[[list], Any] | None = None
    line: str | None = None
    record: dict | None = None

    def cond_of(self, indices) -> dict | None:
        """The conditioning keywords of the samples of a run at `indices` (one row each), or None."""
        return None if self.labels is None else {"class_labels": self.labels([int(i) for i in indices])}

    def of_seeds(self, first_seed: int) -> Callable[[list], dict] | None:
        """`cond_of` by seed, for a run whose sample `i` is drawn from seed `first_seed + i`."""
        if self.labels is None:
            return None
        return lambda seeds: self.cond_of([int(s) - first_seed for s in seeds])


def conditioned(cfg, denoiser) -> Conditioning:
    """The `Conditioning` a config asks of `denoiser`: `guidance_scale` (null: 1, the conditional model alone)
    and `classes` (null: all) of a class-conditional model; either value for an unconditional model, an
    empty `classes` or a class the model does not have is refused in one line naming it."""
    scale, chosen = cfg.get("guidance_scale"), cfg.get("classes")
    chosen = None if chosen is None else [int(c) for c in chosen]
    # A text-conditional model's prompts (prompts=FILE: samplers.prompts.text_guided) plug in here, as
    # another kind of conditioning giving its guided denoiser and the keywords of each sample.
    classes = guidance.num_classes(denoiser)
    what = type(denoiser).__name__
    if classes is None:
        if scale is not None:
            raise ValueError(f"guidance_scale={scale:g} needs a conditional model; {what} has no class embeddings "
                             f"(num_class_embeds): drop guidance_scale")
        if chosen is not None:
            raise ValueError(f"classes={chosen} needs a class-conditional model; {what} has no class embeddings")
        return Conditioning(denoiser)
    if chosen is not None:
        if not chosen:
            raise ValueError("classes=[] chooses no class: give at least one, or null for all")
        try:
            guidance.class_labels(denoiser, chosen)
        except ValueError as err:
            raise ValueError(f"classes={chosen}: {err}") from None
    w = 1.0 if scale is None else float(scale)
    guided = guidance.class_guided(denoiser, w)
    which = (f"all: sample i for class i mod {classes}" if chosen is None
             else f"{chosen}: sample i for classes[i mod {len(chosen)}]")
    line = (f"class-conditional model ({classes} classes): guidance_scale {w:g}"
            + (" (unset: the plain conditional model)" if scale is None else "") + f", classes {which}")
    return Conditioning(guided, lambda indices: guidance.labels_of_run(indices, classes, chosen), line,
                        {"classes": chosen})
