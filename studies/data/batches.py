"""Batches for the trainer: in-memory splits are sliced on the device, folder splits go through a DataLoader.

Either way a batch comes out normalised float32 (N, C, H, W) on the device, with int64 labels, and
both cut an epoch with ``batch_slices``, which also gives the trainer its step count.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from studies.data.core import DataSplits, Split, TensorSplit


def batch_slices(n: int, batch_size: int, *, train: bool) -> list[slice]:
    """The batches of an n-sample epoch as slices of its (shuffled) order. In training a lone last
    sample is dropped: BatchNorm cannot train on a batch of one, and the schedule counts these steps."""
    stop = n - 1 if train and n > 1 and n % batch_size == 1 else n
    return [slice(i, min(i + batch_size, stop)) for i in range(0, stop, batch_size)]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps in one training epoch of n samples: exactly the batches ``DeviceData.batches`` yields."""
    return len(batch_slices(n, batch_size, train=True))


class DeviceData:
    """The splits of ``data`` placed for training on ``device``: tensors moved once, normaliser built once."""

    def __init__(self, data: DataSplits, device: torch.device, *, workers: int = 0):
        self.data, self.device, self.workers = data, device, workers
        c = data.in_channels
        self.mean = _stat(data.mean, c, 0.0).to(device)
        self.std = _stat(data.std, c, 1.0).to(device)
        self.splits = {name: _to_device(s, device) for name, s in
                       (("train", data.train), ("val", data.val), ("test", data.test)) if s is not None}

    def batches(self, split: str, batch_size: int, *, generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalised (x, y) batches of ``split``; shuffled (and a lone last sample dropped) when ``generator`` is given."""
        s = self.splits[split]
        source = _tensor_batches(s, batch_size, generator) if isinstance(s, TensorSplit) else self._loader(s, batch_size, generator)
        for x, y in source:
            x = x.to(self.device, non_blocking=True)
            yield (x.float() - self.mean) / self.std, y.to(self.device, non_blocking=True)

    def _loader(self, s: Split, batch_size: int, generator: torch.Generator | None):
        # The shuffle needs a CPU generator: derive one from the device generator's stream.
        order = list(range(len(s)))
        if generator is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
            order = torch.randperm(len(s), generator=torch.Generator().manual_seed(seed)).tolist()
        batches = [order[b] for b in batch_slices(len(s), batch_size, train=generator is not None)]
        return DataLoader(s, batch_sampler=batches, num_workers=self.workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False)


def _stat(values: tuple[float, ...], channels: int, default: float) -> Tensor:
    """A (1, C, 1, 1) normalisation tensor; empty stats mean no normalisation."""
    vals = list(values) or [default] * channels
    if len(vals) != channels:
        raise ValueError(f"normalisation has {len(vals)} values for {channels} channels")
    return torch.tensor(vals, dtype=torch.float32).view(1, channels, 1, 1)


def _to_device(s: Split, device: torch.device) -> Split:
    return TensorSplit(s.x.to(device), s.y.to(device)) if isinstance(s, TensorSplit) else s


def _tensor_batches(s: TensorSplit, batch_size: int, generator: torch.Generator | None):
    """Index-sliced batches of a seeded permutation (or in order without a generator)."""
    n = len(s)
    order = torch.randperm(n, generator=generator, device=s.y.device) if generator is not None else None
    for b in batch_slices(n, batch_size, train=generator is not None):
        idx = b if order is None else order[b]
        yield s.x[idx], s.y[idx]
