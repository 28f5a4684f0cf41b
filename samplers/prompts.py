"""Text conditioning of a Stable-Diffusion-style pipeline (a `UNet2DConditionModel` reading prompt
embeddings as `encoder_hidden_states`): prompts read from a file, one a line, encoded once with the
pipeline's own `encode_prompt`, and its UNet as a guided denoiser (`guidance.GuidedDenoiser`). Sample `i`
of a run takes prompt `i mod P` (`guidance.labels_of_run`), as a class-conditional run takes its class."""
from __future__ import annotations

from pathlib import Path

import torch

from .denoisers import DiffusersUNetDenoiser
from .guidance import GuidedDenoiser, labels_of_run


def read_prompts(path) -> list[str]:
    """The non-blank lines of the prompt file `path`, stripped; a missing or empty file is refused in
    one line naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompt file does not exist: {path}")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"the prompt file {path} has no prompts: write one prompt a line")
    return prompts


def load_pipeline(path, torch_dtype=None, **components):
    """The diffusers pipeline saved at `path` (a local directory), remembering where it lies; `components`
    (e.g. `unet=`) are taken as given instead of loaded."""
    from diffusers import DiffusionPipeline

    root = Path(path).expanduser()
    if not (root / "model_index.json").is_file():
        raise FileNotFoundError(f"no diffusers pipeline (model_index.json) at {root}")
    pipe = DiffusionPipeline.from_pretrained(str(root), torch_dtype=torch_dtype, **components)
    pipe.set_progress_bar_config(disable=True)
    pipe.pretrained_path = root
    return pipe


def _check_pipeline(pipe) -> None:
    """Refuse a pipeline without a cross-attention UNet, a tokenizer and `encode_prompt`."""
    unet = getattr(pipe, "unet", None)
    if (unet is None or getattr(unet.config, "cross_attention_dim", None) is None
            or getattr(pipe, "tokenizer", None) is None or not hasattr(pipe, "encode_prompt")):
        raise ValueError(f"prompts need a Stable-Diffusion-style pipeline (a UNet with cross-attention, a tokenizer "
                         f"and encode_prompt); {type(pipe).__name__} is not one")


def encode_prompts(pipe, prompts: list[str], negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """`(embeds (P, L, C), null (1, L, C))`: the prompts' and the negative (by default empty) prompt's
    embeddings from the pipeline's `encode_prompt`. A prompt longer than the text encoder takes, or
    embeddings of another width than the UNet's `cross_attention_dim`, are refused in one line."""
    _check_pipeline(pipe)
    limit = pipe.tokenizer.model_max_length
    for i, prompt in enumerate(prompts):
        tokens = len(pipe.tokenizer(prompt).input_ids)
        if tokens > limit:
            raise ValueError(f"prompt {i + 1} ({prompt[:40]!r}) has {tokens} tokens; the pipeline's text encoder "
                             f"takes {limit}")
    with torch.no_grad():
        embeds, null = pipe.encode_prompt(list(prompts), pipe._execution_device, 1, True,
                                          negative_prompt=[negative_prompt] * len(prompts))
    width = pipe.unet.config.cross_attention_dim
    if embeds.shape[-1] != width:
        raise ValueError(f"the text encoder gives prompt embeddings of width {embeds.shape[-1]}; the UNet takes "
                         f"cross_attention_dim {width}")
    return embeds, null[:1]


def text_guided(pipe, prompts: list[str], guidance_scale: float,
                negative_prompt: str = "") -> tuple[GuidedDenoiser, torch.Tensor]:
    """`(D_w, embeds)`: the pipeline's UNet on its noise table as a denoiser (`DiffusersUNetDenoiser`; its
    store is the pipeline's directory), guided at `guidance_scale` against the negative prompt, and the
    prompts' embeddings (`rows_of_run` gives a run's conditioning)."""
    embeds, null = encode_prompts(pipe, prompts, negative_prompt)
    denoiser = DiffusersUNetDenoiser.from_config(pipe.unet, dict(pipe.scheduler.config))
    if getattr(pipe, "pretrained_path", None) is not None:
        denoiser.pretrained_path = pipe.pretrained_path  # where what is tuned for it lies (tuning.store)
    return GuidedDenoiser(denoiser, guidance_scale, {"encoder_hidden_states": null}), embeds


def rows_of_run(embeds: torch.Tensor, indices) -> dict[str, torch.Tensor]:
    """The conditioning keywords of samples `indices` of a run: prompt `i mod P` for sample `i`."""
    return {"encoder_hidden_states": embeds[labels_of_run(indices, len(embeds))]}
