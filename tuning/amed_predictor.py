"""AMED's learned step parameters (Zhou et al., CVPR 2024, "Fast ODE-based Sampling for Diffusion Models in
Around 5 Steps"): a tiny network `(r_n, c_n) = g(h_n, t_n, t_{n+1})` per sample, `h_n` the channel mean of
the UNet's bottleneck (its mid block's output, flattened) during the step's first call `D(x_n, t_n)`,
read by a forward hook, so it costs no network call; and its frozen table, one `(r_n, c_n)` per step.

A predictor is made for one sampler (amed, or amed_plugin and its base), `afs`, grid and model; its
config holds them (and the NFE, the model's name and weight fingerprint) and it refuses any other use
in one line. `samplers.sample(name, denoiser, noise, sigmas, predictor=p)` runs it. A model's own
predictors lie beside it, `<model dir>/amed/<sampler>[-<base>][-cfg<W>]-nfe<N>/` (`shipped`, `find`; W the
guidance scale of a guided model), each with
its frozen table and the command that trained it (`frozen_table.json`).
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..samplers.amed import PLUGIN_BASES, between
from ..samplers.fingerprints import fingerprint
from ..samplers.solvers import check_sigmas, nfe as nfe_of, sample
from . import store

FEATURE_OUT = 4  # the authors' bottleneck_output_dim


def network(denoiser):
    """The network inside a denoiser adapter: a DiffusersUNetDenoiser's `unet`, a FlowDenoiser's
    `velocity_model`; None for the analytic mixture."""
    return getattr(denoiser, "unet", getattr(denoiser, "velocity_model", None))


def mid_block(denoiser):
    """The mid block of the denoiser's UNet; None for a denoiser without a UNet (the analytic mixture,
    an MLP flow); a UNet without a mid block is refused in one line."""
    net = network(denoiser)
    if not hasattr(net, "mid_block"):
        return None
    if net.mid_block is None:
        raise ValueError(f"AMED's predictor reads the UNet's mid block, and this {type(net).__name__} has none "
                         f"(mid_block_type=None)")
    return net.mid_block


def bottleneck_size(denoiser, shape=None) -> int:
    """The length of `h_n`: the bottleneck's height times width for samples of `shape` (C, H, W; None:
    the denoiser's `sample_shape`), `H W / 4^(levels - 1)`; 0 for a denoiser without a UNet."""
    if mid_block(denoiser) is None:
        return 0
    height, width = tuple(shape or denoiser.sample_shape)[1:]
    factor = 2 ** (len(network(denoiser).config.down_block_types) - 1)
    return (height // factor) * (width // factor)


class Bottleneck:
    """What the hook saw last: `features`, the mid block's output averaged over its channels and
    flattened, (B, H W), detached; None until the UNet runs."""

    features: torch.Tensor | None = None


@contextmanager
def bottleneck(denoiser):
    """A forward hook on the mid block of the denoiser's UNet for the duration: yields the `Bottleneck`
    it fills at every call (under guidance, the two halves' features guided as the output is). A denoiser without a UNet, or a UNet without a mid block, is refused."""
    block = mid_block(denoiser)
    if block is None:
        raise ValueError(f"AMED's predictor reads a UNet's mid block, and {type(denoiser).__name__} has no UNet: "
                         f"use a time-only predictor (feature_dim=0)")
    seen = Bottleneck()
    combine = getattr(denoiser, "combine", lambda rows: rows)  # a guided call's halves, guided (GuidedDenoiser)

    def hook(module, args, output):
        seen.features = combine(output.detach().mean(1).flatten(1))

    handle = block.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def sinusoid(t: torch.Tensor, channels: int) -> torch.Tensor:
    """`[sin(t f_k), cos(t f_k)]`, `f_k = 10000^(-k / (channels/2 - 1))` (the authors' positional embedding
    of sigma, endpoint included, sin first), over a last new axis."""
    k = torch.arange(channels // 2, dtype=t.dtype, device=t.device)
    angles = t[..., None] * 10000.0 ** (-k / (channels // 2 - 1))
    return torch.cat([angles.sin(), angles.cos()], -1)


def _grid(sigmas) -> str:
    return "[" + ", ".join(f"{float(s):.6g}" for s in sigmas) + "]"


class AMEDPredictor(ModelMixin, ConfigMixin):
    """`(r, c) = g(h, t_n, t_{n+1})`, each of shape (B,): `h` (B, feature_dim) through
    Linear-SiLU-Linear to 4, each time through `sinusoid` and one shared Linear + SiLU, all concatenated;
    `r = sigmoid(w_r . z)`, `c = 1 + c_range (2 sigmoid(w_c . z) - 1)`, in `[1 - c_range, 1 + c_range]`
    (the authors' AMED_predictor with `scale_dir`). feature_dim 0: time only (a model without a UNet).

    The rest of the config is what it was made for, checked at every use (None: not pinned): sampler
    (amed or amed_plugin) and base (amed_plugin's), afs, nfe, sigmas (the grid), model (a name),
    fingerprint (`samplers.fingerprint` of its weights), guidance_scale and classes (a guided model's scale
    and the classes it was distilled on; None: unguided, all). `save_pretrained` / `from_pretrained`
    keep it all (config.json and safetensors)."""

    @register_to_config
    def __init__(self, feature_dim: int = 0, hidden_dim: int = 128, time_channels: int = 8, c_range: float = 0.01,
                 sampler: str = "amed", base: str | None = None, afs: bool = False, nfe: int | None = None,
                 sigmas: list | None = None, model: str | None = None, fingerprint: str | None = None,
                 guidance_scale: float | None = None, classes: list | None = None):
        super().__init__()
        if sampler not in ("amed", "amed_plugin") or (base is None) != (sampler == "amed") or (
                base is not None and base not in PLUGIN_BASES):
            raise ValueError(f"an AMED predictor is for amed, or amed_plugin with a base of "
                             f"{', '.join(PLUGIN_BASES)}; got sampler={sampler!r}, base={base!r}")
        if not 0 <= c_range < 1:
            raise ValueError(f"c_range must be in [0, 1), got {c_range}")
        if time_channels < 4 or time_channels % 2:
            raise ValueError(f"time_channels must be even and at least 4, got {time_channels}")
        self.encoder = (nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, FEATURE_OUT))
                        if feature_dim else None)
        self.time = nn.Sequential(nn.Linear(time_channels, time_channels), nn.SiLU())
        width = 2 * time_channels + (FEATURE_OUT if feature_dim else 0)
        self.head_r, self.head_c = nn.Linear(width, 1), nn.Linear(width, 1)
        self.watched = None  # the Bottleneck read while watching a denoiser

    def forward(self, features: torch.Tensor, sigma, sigma_next) -> tuple[torch.Tensor, torch.Tensor]:
        """`(r, c)` per sample from `features` (B, feature_dim) and the step's two times (numbers, 0-d or (B,))."""
        batch, dtype = len(features), self.dtype
        times = torch.stack([torch.as_tensor(t, device=features.device).to(dtype).reshape(-1).expand(batch)
                             for t in (sigma, sigma_next)], 1)                          # (B, 2)
        parts = [self.time(sinusoid(times, self.config.time_channels)).flatten(1)]      # (B, 2 channels)
        if self.encoder is not None:
            parts.insert(0, self.encoder(features.to(dtype)))
        z = torch.cat(parts, 1)
        r = torch.sigmoid(self.head_r(z)).squeeze(1)
        c = 1 + self.config.c_range * (2 * torch.sigmoid(self.head_c(z)) - 1).squeeze(1)
        return r, c

    def check(self, sampler: str, sigmas, afs: bool, base: str | None = None) -> None:
        """Refuse, in one line naming both, another sampler or base, afs, NFE or grid than it was made for."""
        c = self.config
        made, used = (f"{name}{f' base={b}' if b else ''} afs={bool(a)}"
                      for name, b, a in ((c.sampler, c.base, c.afs), (sampler, base, afs)))
        if made != used:
            raise ValueError(f"this AMED predictor was trained for {made}, not {used}")
        sigmas = check_sigmas(sigmas)
        nfe = nfe_of(sampler, sigmas, {"afs": afs})
        if c.nfe is not None and nfe != c.nfe:
            raise ValueError(f"this AMED predictor was trained for {used} at NFE {c.nfe}, not {nfe} "
                             f"(a grid of {len(sigmas) - 1} steps)")
        pinned = None if c.sigmas is None else torch.tensor(c.sigmas, dtype=torch.float64)
        if pinned is not None and (pinned.shape != sigmas.shape or not torch.allclose(
                sigmas.detach().cpu(), pinned, rtol=1e-6, atol=0)):
            raise ValueError(f"this AMED predictor was trained on the grid {_grid(pinned)}, not {_grid(sigmas)}")

    @contextmanager
    def watch(self, denoiser):
        """Read `denoiser`'s bottleneck while inside (`bottleneck`; nothing for a time-only predictor);
        a model with other weights than it was trained on is refused in one line."""
        pinned = self.config.fingerprint
        if pinned is not None and fingerprint(denoiser) != pinned:
            raise ValueError(f"this AMED predictor was trained on model {self.config.model} (weights {pinned}); "
                             f"this model's weights are {fingerprint(denoiser)}")
        if pinned is not None:
            store.check_guidance(self.config.guidance_scale, denoiser, "this AMED predictor")
        if not self.config.feature_dim:
            yield self
            return
        with bottleneck(denoiser) as seen:
            self.watched = seen
            try:
                yield self
            finally:
                self.watched = None

    def step_ratios(self, x: torch.Tensor, sigma, sigma_next, analytic: bool):
        """`(r_n, c_n)` for the step from `sigma` to `sigma_next`, shaped (B, 1, ..., 1) in `x`'s dtype,
        from the bottleneck of the call `D(x_n, sigma)` just made (taken: features are read once, and a
        step whose first call ran no watched UNet is refused); zeros where that call was AFS's (no
        network ran), as the authors do."""
        features = x.new_zeros(len(x), self.config.feature_dim)
        if self.config.feature_dim and not analytic:
            if self.watched is None or self.watched.features is None:
                raise ValueError("this AMED predictor reads the UNet's bottleneck at each step's first call: run the "
                                 "sampler through samplers.solve / sample, which watch the denoiser for it")
            features, self.watched.features = self.watched.features, None
            if features.shape != (len(x), self.config.feature_dim):
                raise ValueError(f"this AMED predictor takes {self.config.feature_dim} bottleneck features per "
                                 f"sample, the model gave {tuple(features.shape)} for a batch of {len(x)}")
        r, c = self(features, sigma, sigma_next)
        shape = (-1, *[1] * (x.ndim - 1))
        return r.to(x.dtype).reshape(shape), c.to(x.dtype).reshape(shape)


@torch.no_grad()
def frozen_table(predictor: AMEDPredictor, denoiser, noise: torch.Tensor, sigmas,
                 cond=None) -> tuple[list[float], list[float]]:
    """The predictor frozen into one `(r_n, c_n)` per step, for `amed` / `amed_plugin`'s per-step `r`, `c`
    (no features needed, so a pipeline can take it): sampling `noise` (standard normal) with it, the batch
    means `s_n` of the intermediate times and `c_n`, then `r_n = log(s_n / t_n) / log(t_{n+1} / t_n)`;
    0.5 and 1 on a step to sigma = 0, which has no intermediate time. cond: the noises' conditioning keywords."""
    sigmas = check_sigmas(sigmas)
    seen = []

    def record(module, args, output):
        _, sigma, sigma_next = args
        r, c = (v.double() for v in output)
        seen.append((float(sigma), float(sigma_next), float(between(sigma, sigma_next, r).mean()), float(c.mean())))

    options = {"afs": predictor.config.afs, **({"base": predictor.config.base} if predictor.config.base else {})}
    handle = predictor.register_forward_hook(record)
    try:
        sample(predictor.config.sampler, denoiser, noise, sigmas, predictor=predictor, cond=cond, **options)
    finally:
        handle.remove()
    r = [math.log(s / t) / math.log(t_next / t) for t, t_next, s, _ in seen]
    c = [c_n for *_, c_n in seen]
    ends = len(sigmas) - 1 - len(seen)  # the step to sigma = 0
    return r + [0.5] * ends, c + [1.0] * ends


FOLDER = "amed"  # <model dir>/amed/<name>/: a model's own predictors (`shipped_name`)


def shipped_name(sampler: str, base: str | None, nfe: int, guidance_scale: float | None = None) -> str:
    """The folder name of a model's predictor: `amed-nfe5`, `amed_plugin-ipndm-nfe5`, `amed-cfg2-nfe5`."""
    stem = f"{sampler}-{base}" if base else sampler
    return f"{store.keyed(stem, guidance_scale)}-nfe{nfe}"


def shipped(denoiser, sampler: str, base: str | None = None) -> dict[int, Path]:
    """The predictors stored beside the denoiser's model for `sampler` (and `base`) at its guidance scale, by NFE."""
    folder = store.beside(denoiser, FOLDER, "")
    if folder is None or not folder.is_dir():
        return {}
    prefix = shipped_name(sampler, base, 0, store.guidance_of(denoiser))[:-1]
    return {int(p.name[len(prefix):]): p for p in folder.iterdir()
            if p.name.startswith(prefix) and p.name[len(prefix):].isdigit() and (p / "config.json").is_file()}


def destination(denoiser, sampler: str, base: str | None, nfe: int) -> Path:
    """Where a predictor is stored beside the denoiser's model (`scripts/train_amed.py write=true`),
    refused in one line if the model has no directory or a predictor is there already."""
    target = store.beside(denoiser, FOLDER, shipped_name(sampler, base, nfe, store.guidance_of(denoiser)))
    if target is None:
        raise ValueError(f"a predictor is stored beside the model, and {type(denoiser).__name__} was not loaded "
                         f"from a directory; use the trained one from its out_dir/model (predictor=DIR)")
    if target.exists():
        raise FileExistsError(f"{target} holds a predictor already: remove it first to store another")
    return target


def load(path, sampler: str, base: str | None = None, nfe: int | None = None) -> AMEDPredictor:
    """The predictor saved at `path` (`save_pretrained`), refused in one line if it is missing or made
    for another sampler, base or NFE (its grid, afs and model are checked where it runs)."""
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no AMED predictor at {path} (a directory with config.json, made by "
                                f"scripts/train_amed.py)")
    predictor = AMEDPredictor.from_pretrained(str(path)).eval()
    c = predictor.config
    if (c.sampler, c.base) != (sampler, base if sampler == "amed_plugin" else None):
        raise ValueError(f"the AMED predictor at {path} was trained for {c.sampler}{f' base={c.base}' if c.base else ''}, "
                         f"not {sampler}{f' base={base}' if base else ''}")
    if nfe is not None and c.nfe != nfe:
        raise ValueError(f"the AMED predictor at {path} was trained for NFE {c.nfe}, not nfe={nfe}")
    return predictor


def find(denoiser, sampler: str, base: str | None = None, nfe: int | None = None, steps: int | None = None) -> Path:
    """The model's own predictor (`shipped`) for `nfe`, or else for a grid of `steps` steps; one line
    naming the NFEs it has when there is none."""
    own = shipped(denoiser, sampler, base)
    if nfe is None:
        nfe = next((n for n, p in own.items() if len(AMEDPredictor.load_config(str(p))["sigmas"]) - 1 == steps), None)
        asked = f"{steps} steps"
    else:
        asked = f"NFE {nfe}"
    if nfe not in own:
        has = f"it has NFE {', '.join(map(str, sorted(own)))} (nfe=N)" if own else "it has none"
        guidance = store.guidance_of(denoiser)
        if guidance is not None:
            stem = shipped_name(sampler, base, 0)[:-5]
            others = store.scales_beside(denoiser, FOLDER, stem, r"-nfe\d+")
            has += f" at guidance {guidance:g} {store.at_scales(others)}"
        raise ValueError(f"this model has no AMED predictor of {shipped_name(sampler, base, 0)[:-5]} for {asked}: "
                         f"{has}; sampler.options.predictor=null runs fixed r and c, predictor=DIR a trained one")
    return own[nfe]


def read_frozen_table(path, sampler: str) -> dict:
    """The frozen table at `path` (a `frozen_table.json`, or the predictor directory holding it):
    `{"sampler_options": {afs, base, r, c}, "sigmas", "nfe", ...}`; one line if there is none or it is
    another sampler's."""
    path = Path(path).expanduser()
    file = path / "frozen_table.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no frozen AMED table at {file} (scripts/train_amed.py writes one beside the predictor)")
    table = json.loads(file.read_text())
    if table.get("sampler") != sampler:
        raise ValueError(f"the frozen table {file} is for {table.get('sampler')}, not sampler={sampler}")
    return table
