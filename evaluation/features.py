"""Feature extractors for Fréchet distances. Each maps images (or vectors) in [-1, 1] to features.

* `raw`: the data itself, flattened (2-D points, the analytic mixture).
* `digits`: the 64-d penultimate layer of the project's own digits classifier ("FD-digits").
* `inception`: the 2048-d pool features of the TF-ported FID Inception-v3 (torch-fidelity),
  from a local weights file; nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def check_images(x: torch.Tensor, channels: tuple[int, ...], size: int | None = None) -> None:
    """Images must be (B, C, H, W) in [-1, 1] with C in `channels` (and H = W = `size`)."""
    if x.ndim != 4 or x.shape[1] not in channels:
        raise ValueError(f"expected images of shape (B, C, H, W) with C in {channels}, got {tuple(x.shape)}")
    if size is not None and tuple(x.shape[2:]) != (size, size):
        raise ValueError(f"expected {size}x{size} images, got {tuple(x.shape[2:])}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.001 or hi > 1.001:
        raise ValueError(f"expected images in [-1, 1], got values in [{lo:.4g}, {hi:.4g}]")


class RawFeatures(nn.Module):
    """The data, flattened."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1).float()


class DigitsClassifier(nn.Module):
    """A two-convolution classifier of 16x16 digits; `features` is its 64-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),      # 8x8
            nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),     # 4x4
            nn.Flatten(), nn.Linear(64 * 16, 64), nn.SiLU())
        self.head = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, (1,), 16)
        return self.body(x.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DigitsFeatures(nn.Module):
    """The penultimate layer of the shipped digits classifier (or of `weights`, a safetensors file)."""

    def __init__(self, weights=None):
        super().__init__()
        from safetensors.torch import load_file

        from ..assets import path as asset_path

        weights = Path(weights) if weights is not None else asset_path("digits_classifier") / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"digits classifier weights not found: {weights} "
                                    "(train them with python scripts/train_digits_classifier.py)")
        self.net = DigitsClassifier()
        self.net.load_state_dict(load_file(str(weights)))
        self.net.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


def default_inception_path() -> Path:
    """Where torch-fidelity's download would have put the weights: the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


class InceptionFeatures(nn.Module):
    """FID Inception-v3 pool features (2048-d) via torch-fidelity, from `weights` (default: the
    torch hub cache). Gray images are repeated to three channels."""

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        path = Path(weights).expanduser() if weights else default_inception_path()
        if not path.is_file():
            raise FileNotFoundError(f"FID Inception weights not found: {path}; there is no download here, so copy "
                                    f"{INCEPTION_FILE} there or pass its path (extractor_weights=...)")
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
        self.net.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, (1, 3))
        images = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return self.net(images.expand(-1, 3, -1, -1))[0]


EXTRACTORS = {"raw": RawFeatures, "digits": DigitsFeatures, "inception": InceptionFeatures}


def get_extractor(name: str, weights=None) -> nn.Module:
    """The feature extractor `name` ("raw", "digits", "inception"), with optional weights path."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}: use one of {', '.join(EXTRACTORS)}")
    return EXTRACTORS[name]() if name == "raw" or weights is None else EXTRACTORS[name](weights)
