"""One-step generators as the commands load them: a GAN generator (`gan.nets`) saved by
`GANObjective.export`, or a one-step rectified flow (a distilled or GAN-tuned flow pipeline) seen
as `g(z) = z - v(z, 1)`. Either has `latent_shape` and `sample_shape`, and `g(z)` is one network
evaluation (`evaluation.generators.GeneratorFn` samples it by seed)."""
from __future__ import annotations

import json

import torch
from torch import nn

from . import nets
from ..flows.velocity import save_flow
from ..samplers import FlowDenoiser, from_pretrained
from ..samplers.spaces import FLOW_SIGMA_MAX


class FlowGenerator(nn.Module):
    """A rectified flow's one Euler step from t = 1 as a generator: `g(z) = D(z S, S)` with
    `S = 1e8` (t = 1 in float32), i.e. `z - v(z, 1)` (`flows.DistillationObjective.one_step`).
    Differentiable, so a GAN can fine-tune the flow's network; saved as the flow pipeline it came from."""

    def __init__(self, flow: FlowDenoiser):
        super().__init__()
        self.flow = flow
        self.latent_shape = self.sample_shape = tuple(flow.sample_shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.flow(z * FLOW_SIGMA_MAX, FLOW_SIGMA_MAX)  # the denoiser takes one sigma for the batch

    def save_pretrained(self, out_dir) -> None:
        save_flow(self.flow.velocity_model, out_dir, self.flow.time_scale)


def load_generator(path) -> nn.Module:
    """The one-step generator at `path` (a directory, or a shipped model's name): `PATH/` or
    `PATH/generator/` holding a `gan.nets` model (its config.json names the class) or a flow
    pipeline (`unet/` + a FlowMatchEulerDiscreteScheduler), the latter as a `FlowGenerator`."""
    from ..assets import resolve

    root = resolve(path, lambda r: any((c / "unet").is_dir() or (c / "config.json").is_file()
                                       for c in (r, r / "generator")))
    if not root.is_dir():
        raise FileNotFoundError(f"generator path does not exist: {root}")
    for candidate in (root, root / "generator"):
        if (candidate / "unet").is_dir():
            return FlowGenerator(from_pretrained(candidate, sigma_max=FLOW_SIGMA_MAX))
        config = candidate / "config.json"
        if config.is_file():
            class_name = json.loads(config.read_text()).get("_class_name")
            cls = getattr(nets, str(class_name), None)
            if cls is None or "Generator" not in class_name:
                raise ValueError(f"{config} names {class_name!r}, which is not a generator of gan.nets")
            return cls.from_pretrained(str(candidate)).eval()
    raise FileNotFoundError(f"no generator in {root}: neither a gan.nets model (config.json) nor a flow "
                            f"pipeline (unet/), there or in {root / 'generator'}")
