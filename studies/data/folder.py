"""ImageFolder datasets: a root with ``train/`` (and ``val/`` or ``test/``) class folders, or one class tree.

Images are decoded lazily, resized to a square ``image_size`` and returned as uint8 (3, S, S) tensors, so
the trainer reads them through a DataLoader and normalises on the device like the in-memory datasets.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Subset

from studies.data.core import DATASETS, DataSplits, DatasetFormatError, DatasetNotFoundError, split_indices

# ImageNet statistics in 0..255 units: folders are too big to scan for their own.
_MEAN = (123.675, 116.28, 103.53)
_STD = (58.395, 57.12, 57.375)


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB; an unreadable file raises DatasetFormatError naming it."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise DatasetFormatError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e


def image_folder(root: Path, image_size: int):
    """A torchvision ImageFolder yielding uint8 (3, S, S) tensors and int labels."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.PILToTensor()])
    try:
        return datasets.ImageFolder(str(root), transform=tf, loader=load_rgb)
    except FileNotFoundError as e:  # no class folders or no images in them
        raise DatasetNotFoundError(f"imagefolder: {e}") from e


def _limited(ds, limit: int | None, seed: int):
    """At most ``limit`` seeded-random examples of ``ds``."""
    if limit is None or limit >= len(ds):
        return ds
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:limit]
    return Subset(ds, order.tolist())


def _check_classes(train, other, name: str) -> None:
    if other is not None and other.classes != train.classes:
        raise DatasetFormatError(f"imagefolder: {name}/ classes {other.classes} differ from train/ classes {train.classes}")


@DATASETS.register("imagefolder", help="class-folder images from data_dir (train/ + val/ or test/, or one tree that is split)")
def load_imagefolder(*, data_dir=None, download=False, val_fraction=0.1, seed=0, limit=None, image_size: int = 32) -> DataSplits:
    """Images under ``data_dir`` resized to ``image_size``; a single tree is split into seeded train/val."""
    if data_dir is None:
        raise DatasetNotFoundError("imagefolder: no data_dir given; pass --data-dir DIR, a folder of class subfolders "
                                   "(or train/ and val/ or test/ of them)")
    if not Path(data_dir).is_dir():
        raise DatasetNotFoundError(f"imagefolder: data_dir {data_dir!r} is not a directory (an image folder cannot be downloaded)")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    root = Path(data_dir)
    subs = {s: image_folder(root / s, image_size) for s in ("train", "val", "test") if (root / s).is_dir()}
    if "train" in subs:
        full = subs["train"]
        for s in ("val", "test"):
            _check_classes(full, subs.get(s), s)
    else:
        full = image_folder(root, image_size)
    if "val" in subs:
        train, val = _limited(full, limit, seed), _limited(subs["val"], limit, seed)
    else:
        train_idx, val_idx = split_indices(len(full), val_fraction, seed, limit)
        train, val = Subset(full, train_idx.tolist()), Subset(full, val_idx.tolist())
    test = _limited(subs["test"], limit, seed) if "test" in subs else None
    return DataSplits(train=train, val=val, test=test, num_classes=len(full.classes), in_channels=3,
                      image_size=image_size, name="imagefolder", mean=_MEAN, std=_STD, hflip=True)
