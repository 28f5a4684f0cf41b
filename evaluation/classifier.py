"""The digits classifier whose penultimate layer gives the FD-digits feature space: its training, and the
class accuracy of a class-conditional model's samples (`ClassHits`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .features import DigitsClassifier


def train_digits_classifier(images: torch.Tensor, labels: torch.Tensor, held_out: int = 360, steps: int = 1500,
                            batch_size: int = 128, lr: float = 2e-3, seed: int = 0):
    """Train on all but `held_out` images (a seeded random split), with random shifts of up to
    one pixel; return the classifier (eval mode) and its held-out accuracy."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=g)
    test, train = order[:held_out], order[held_out:]
    torch.manual_seed(seed)
    net = DigitsClassifier()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        idx = train[torch.randint(len(train), (batch_size,), generator=g)]
        shift = torch.randint(-1, 2, (2,), generator=g).tolist()
        x = torch.roll(images[idx], shifts=shift, dims=(2, 3))
        loss = F.cross_entropy(net(x), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(images[test]).argmax(1) == labels[test]).float().mean().item()
    return net, accuracy


class ClassHits:
    """A sample_fn (`evaluation.seeds`) that also counts how many of its samples `classifier` assigns to the
    class asked for them (`labels(seeds)`), as they are drawn: class accuracy at no extra sampling."""

    def __init__(self, sample_fn, classifier, labels, device=None):
        self.sample_fn, self.classifier, self.labels, self.device = sample_fn, classifier, labels, device
        self.hits = self.count = 0

    def __call__(self, seeds) -> torch.Tensor:
        x = self.sample_fn(seeds)
        with torch.no_grad():
            predicted = self.classifier(x.clamp(-1, 1).to(self.device)).argmax(1).cpu()
        self.hits += int((predicted == self.labels(list(seeds)).cpu()).sum())
        self.count += len(x)
        return x

    @property
    def nfe(self):
        return self.sample_fn.nfe

    def accuracy(self, accelerator=None) -> float:
        """The fraction of hits over every process's samples."""
        counts = torch.tensor([self.hits, self.count], dtype=torch.float64)
        if accelerator is not None and accelerator.num_processes > 1:
            counts = accelerator.reduce(counts.to(accelerator.device), "sum").cpu()
        return float(counts[0] / counts[1].clamp(min=1))
