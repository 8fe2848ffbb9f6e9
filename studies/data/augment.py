"""Batched augmentation on device tensors: random crop with zero padding and horizontal flip.

Each sample gets its own crop offset and flip, drawn from a caller-given generator so that a run is
reproducible; the whole batch is one gather, with no per-sample Python loop.
"""
from __future__ import annotations

import torch
from torch import Tensor


def default_padding(image_size: int) -> int:
    """Crop padding: 4 pixels at 32x32 (the CIFAR recipe), scaled with the image, at least 1."""
    return max(1, image_size // 8)


def random_crop(x: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Zero-pad ``x`` (N, C, H, W) by ``pad`` and take one random H x W crop per sample."""
    if pad <= 0:
        return x
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=x.device)
    rows = (oy + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    cols = (ox + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, c, h, w)
    # Two gathers: the H rows of each crop (full padded width), then its W columns.
    return padded.gather(2, rows).gather(3, cols)


def random_hflip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each sample of ``x`` left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def augment_batch(x: Tensor, generator: torch.Generator, *, pad: int, hflip: bool) -> Tensor:
    """Random crop (``pad``) then, if ``hflip``, a random horizontal flip."""
    x = random_crop(x, pad, generator)
    return random_hflip(x, generator) if hflip else x
