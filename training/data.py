"""Image data sets for training, all yielding float tensors of shape (C, H, W) in [-1, 1], and what a run
records of any data set (`data_record`)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def shapes(item):
    """The shape of a data item as a list: a tensor's, or one per part of a tuple (pairs: sample and
    noise); the type's name for anything else."""
    if isinstance(item, torch.Tensor):
        return list(item.shape)
    if isinstance(item, (tuple, list)):
        return [shapes(part) for part in item]
    return type(item).__name__


def data_record(dataset) -> dict:
    """What a training run records of its data (run.json) and a resume must share: the size, the
    shapes of an item and, for a data set with `settings()` (reflow pairs: what made them, the
    weights' fingerprint among it; AMED's noise: its shape and seeds), those."""
    settings = getattr(dataset, "settings", None)
    return {"data_size": len(dataset), "data_shape": shapes(dataset[0]),
            "data_settings": None if settings is None else settings()}


class _ImagesOnly(Dataset):
    """Drops the labels of a (image, label) data set."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i][0]


def _to_unit_range(transform_list):
    import torchvision.transforms as T

    return T.Compose([*transform_list, T.ToTensor(), T.Normalize([0.5], [0.5])])


def digits(image_size: int = 16) -> torch.Tensor:
    """scikit-learn's bundled 8x8 digits (1797 images, values 0..16), bilinearly resized to
    `image_size`, one channel, scaled to [-1, 1]. A tensor is itself a map-style data set."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return images.clamp(0, 1) * 2 - 1


def labelled_digits(image_size: int = 16) -> TensorDataset:
    """`digits` with their classes: items `(image, label)`, labels 0..9."""
    from sklearn.datasets import load_digits

    return TensorDataset(digits(image_size), torch.as_tensor(load_digits().target, dtype=torch.long))


class ImageFolder(Dataset):
    """Every image file below `root` (any depth), resized and centre-cropped to `image_size`."""

    def __init__(self, root: str, image_size: int, channels: int = 3):
        import torchvision.transforms as T

        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder does not exist: {self.root}")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {self.root}")
        self.mode = {1: "L", 3: "RGB"}.get(channels)
        if self.mode is None:
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.transform = _to_unit_range([T.Resize(image_size), T.CenterCrop(image_size)])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.transform(im.convert(self.mode))


def cifar10(root: str) -> Dataset:
    """CIFAR-10 training images from a local torchvision-format root (never downloaded)."""
    import torchvision

    try:
        data = torchvision.datasets.CIFAR10(root=root, train=True, download=False, transform=_to_unit_range([]))
    except RuntimeError as err:
        raise FileNotFoundError(
            f"CIFAR-10 not found under {Path(root).expanduser()}: put the extracted 'cifar-10-batches-py' folder there"
        ) from err
    return _ImagesOnly(data)

