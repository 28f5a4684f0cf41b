"""The conditioning step of every command that samples or tunes a model: from a config's `guidance_scale`,
`classes` and `prompts` to the denoiser the samplers run (a conditional model under classifier-free guidance,
`samplers.guidance`) and the conditioning keywords of each sample of a run (docs/conventions.md §10).
An unconditional model takes none of them; a class-conditional one samples at guidance 1 (the plain
conditional model) unless told otherwise, sample `i` of a run for class `classes[i mod len(classes)]`; a
Stable-Diffusion-style pipeline's UNet (`prompts=FILE`, one prompt a line: `samplers.prompts`) at the
pipeline's default guidance unless told otherwise, sample `i` for prompt `i mod P`."""
from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..samplers import guidance, prompts as text


@dataclass
class Conditioning:
    """denoiser: what the samplers run (guided for a conditional model); keywords: the conditioning keywords
    of samples of a run by their indices (None: an unconditional model); line: what it is, said first (None:
    unconditional); record: the conditioning a tuned artifact records beside its guidance scale."""
    denoiser: Any
    keywords: Callable[[list[int]], dict] | None = None
    line: str | None = None
    record: dict | None = None

    def cond_of(self, indices) -> dict | None:
        """The conditioning keywords of the samples of a run at `indices` (one row each), or None."""
        return None if self.keywords is None else self.keywords([int(i) for i in indices])

    def of_seeds(self, first_seed: int) -> Callable[[list], dict] | None:
        """`cond_of` by seed, for a run whose sample `i` is drawn from seed `first_seed + i`."""
        if self.keywords is None:
            return None
        return lambda seeds: self.cond_of([int(s) - first_seed for s in seeds])


def conditioned(cfg, denoiser) -> Conditioning:
    """The `Conditioning` a config asks of `denoiser`: `guidance_scale` (null: 1, the conditional model alone)
    and `classes` (null: all) of a class-conditional model, `prompts` of a text-conditional one (`prompted`);
    either value for an unconditional model, an empty `classes` or a class the model does not have is
    refused in one line naming it."""
    scale, chosen = cfg.get("guidance_scale"), cfg.get("classes")
    chosen = None if chosen is None else [int(c) for c in chosen]
    if cfg.get("prompts") is not None or text_conditional(denoiser):
        if chosen is not None:
            raise ValueError(f"classes={chosen} needs a class-conditional model; {type(denoiser).__name__} is "
                             f"text-conditional (prompts=FILE)")
        return prompted(cfg.get("prompts"), scale, denoiser)
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
    return Conditioning(guided, lambda indices: {"class_labels": guidance.labels_of_run(indices, classes, chosen)},
                        line, {"classes": chosen})


def refuse_prompts(cfg, command: str) -> None:
    """Refuse `prompts=` in one line naming it: `command` does not tune text-to-image pipelines yet."""
    if cfg.get("prompts") is not None:
        raise ValueError(f"prompts={cfg.prompts} is not supported by {command} yet: search a text-to-image "
                         f"pipeline's grid with search_schedule.py prompts=FILE")


def text_conditional(denoiser) -> bool:
    """Whether `denoiser` is a UNet that reads prompt embeddings (a `cross_attention_dim`)."""
    network = getattr(denoiser, "unet", None)
    return getattr(getattr(network, "config", None), "cross_attention_dim", None) is not None


def prompted(file, scale, denoiser) -> Conditioning:
    """A text-conditional model guided by the prompts of `file` (one a line) at `scale` (None: the default of
    the pipeline's `__call__`, 7.5 for Stable Diffusion): the UNet of the pipeline saved where `denoiser` was
    loaded from, the prompts encoded once by the pipeline; sample `i` of a run for prompt `i mod P`. Its
    record: the prompt file's path, the sha256 of its text and the number of prompts."""
    root = getattr(denoiser, "pretrained_path", None)
    if file is None:
        raise ValueError(f"{type(denoiser).__name__} at {root} is text-conditional (cross_attention_dim): give "
                         f"prompts=FILE, one prompt a line")
    if not text_conditional(denoiser) or root is None or not (Path(root) / "model_index.json").is_file():
        where = "" if root is None else f" at {root}"
        raise ValueError(f"prompts={file} needs a text-to-image pipeline (model=diffusers model.path=DIR, a "
                         f"Stable-Diffusion-style pipeline); {type(denoiser).__name__}{where} is not one")
    path = Path(file).expanduser()
    lines = text.read_prompts(path)
    pipe = text.load_pipeline(root, unet=denoiser.unet)  # the UNet already loaded, not a second copy
    w = inspect.signature(pipe.__call__).parameters["guidance_scale"].default if scale is None else float(scale)
    guided, embeds = text.text_guided(pipe, lines, w)
    line = (f"text-to-image pipeline {type(pipe).__name__}: guidance_scale {w:g}"
            + (" (unset: the pipeline's default)" if scale is None else "")
            + f", {len(lines)} prompts from {path}: sample i for prompt i mod {len(lines)}")
    record = {"prompts": {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                          "count": len(lines)}}
    return Conditioning(guided, lambda indices: text.rows_of_run(embeds, indices), line, record)
