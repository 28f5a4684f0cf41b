"""Generators and critics for the GANs: DCGAN-style convolutional nets for images, MLPs for 2-D points.

A generator maps `z` of shape `(B, *latent_shape)` to samples of shape `(B, *sample_shape)`; a critic
maps samples to one value per sample, shape (B,), each sample independently (no batch norm: the
gradient penalties of `gan.losses` are per sample). Each is a diffusers `ModelMixin`, so it saves and
loads with `save_pretrained` / `from_pretrained` (config.json + safetensors)."""
from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


def _doublings(image_size: int) -> int:
    """k with `image_size = 4 * 2^k`, k >= 0."""
    k = max(int(image_size) // 4, 1).bit_length() - 1
    if image_size != 4 * 2 ** k:
        raise ValueError(f"image_size must be 4 * 2^k (4, 8, 16, 32, ...), got {image_size}")
    return k


class DCGANGenerator(ModelMixin, ConfigMixin):
    """`z (B, latent_dim) -> tanh(...)`, images `(B, channels, image_size, image_size)` in [-1, 1]: a
    linear layer to a 4x4 map of `width * 2^k` channels, then k blocks ConvTranspose2d (stride 2,
    halving the channels) + BatchNorm + ReLU up to `image_size = 4 * 2^k`, then a 3x3 conv.

    latent_dim: size of `z`. channels: image channels. image_size: 4 * 2^k (16: k = 2, 32: k = 3).
    width: channels at full resolution.
    """

    @register_to_config
    def __init__(self, latent_dim: int = 64, channels: int = 1, image_size: int = 16, width: int = 64):
        super().__init__()
        k = _doublings(image_size)
        self.latent_shape, self.sample_shape = (latent_dim,), (channels, image_size, image_size)
        c = width * 2 ** k
        self.inp = nn.Sequential(nn.Linear(latent_dim, c * 16), nn.Unflatten(1, (c, 4, 4)), nn.BatchNorm2d(c), nn.ReLU())
        self.ups = nn.Sequential(*[nn.Sequential(nn.ConvTranspose2d(c >> i, c >> (i + 1), 4, 2, 1),
                                                 nn.BatchNorm2d(c >> (i + 1)), nn.ReLU()) for i in range(k)])
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.out(self.ups(self.inp(z))))


class DCGANCritic(ModelMixin, ConfigMixin):
    """Images `(B, channels, image_size, image_size)` -> shape (B,): a 3x3 conv to `width` channels,
    then k strided 4x4 convs (doubling the channels) down to 4x4, LeakyReLU(0.2) after each, no
    normalisation, then a linear layer to one value.

    channels: image channels. image_size: 4 * 2^k. width: channels at full resolution.
    """

    @register_to_config
    def __init__(self, channels: int = 1, image_size: int = 16, width: int = 64):
        super().__init__()
        k = _doublings(image_size)
        layers = [nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2)]
        for i in range(k):
            layers += [nn.Conv2d(width << i, width << (i + 1), 4, 2, 1), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.out = nn.Linear((width << k) * 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x)).squeeze(1)


def _mlp(n_in: int, n_out: int, width: int, depth: int) -> nn.Sequential:
    """`depth` hidden layers Linear + SiLU of `width` units, then a linear read-out."""
    if min(n_in, n_out, width, depth) < 1:
        raise ValueError(f"sizes and depth must be >= 1, got in={n_in}, out={n_out}, width={width}, depth={depth}")
    layers = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), nn.SiLU()]
    return nn.Sequential(*layers, nn.Linear(width, n_out))


class MLPGenerator(ModelMixin, ConfigMixin):
    """`z (B, latent_dim) -> x (B, dim)`, unbounded: an MLP with `depth` SiLU hidden layers.

    latent_dim: size of `z`. dim: size of a sample. width: hidden units. depth: hidden layers.
    """

    @register_to_config
    def __init__(self, latent_dim: int = 2, dim: int = 2, width: int = 128, depth: int = 3):
        super().__init__()
        self.latent_shape, self.sample_shape = (latent_dim,), (dim,)
        self.net = _mlp(latent_dim, dim, width, depth)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class MLPCritic(ModelMixin, ConfigMixin):
    """`x (B, dim) -> (B,)`: an MLP with `depth` SiLU hidden layers (smooth, as a gradient penalty wants).

    dim: size of a sample. width: hidden units. depth: hidden layers.
    """

    @register_to_config
    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3):
        super().__init__()
        self.net = _mlp(dim, 1, width, depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)
