"""Readers for the torchvision datasets' on-disk formats: CIFAR pickles, MNIST idx files, SVHN .mat.

We read the files ourselves (torchvision checks md5 sums of whole archives, so it refuses any file but
the official one); torchvision is used only to download, and only when ``download=True``.
"""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch

from studies.data.core import DATASETS, DatasetFormatError, DatasetNotFoundError, TensorSplit, tensor_splits

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def find_dir(name: str, data_dir: str | None, sub: str, probe: str, download: bool, fetch) -> Path:
    """The folder holding ``probe`` (``data_dir/sub`` or ``data_dir``), downloading it first if asked."""
    if data_dir is None:
        raise DatasetNotFoundError(f"{name}: no data_dir given; pass data_dir (--data-dir) and download=True (--download) to fetch it")
    candidates = [Path(data_dir) / sub, Path(data_dir)]
    for folder in candidates:
        if _has(folder, probe):
            return folder
    if download:
        fetch(str(data_dir))
        if _has(candidates[0], probe):
            return candidates[0]
    raise DatasetNotFoundError(
        f"{name}: {probe} not found in {candidates[0]} (nor in {candidates[1]}); "
        f"pass download=True (--download) to fetch it into {data_dir}"
    )


def _has(folder: Path, probe: str) -> bool:
    return (folder / probe).is_file() or (folder / f"{probe}.gz").is_file()


def _fetch(cls_name: str, splits: tuple[dict, ...] = ({"train": True}, {"train": False})):
    """A function that downloads torchvision dataset ``cls_name`` (each of ``splits``) into a root folder."""
    def fetch(root: str) -> None:
        import torchvision.datasets as tvd

        for split in splits:
            getattr(tvd, cls_name)(root, download=True, **split)

    return fetch


# CIFAR -------------------------------------------------------------------------------------------

def read_cifar_batch(path: Path, label_key: str) -> TensorSplit:
    """One pickled CIFAR batch (``data`` N x 3072 uint8, labels) as a TensorSplit."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise DatasetFormatError(f"{path}: not a readable CIFAR batch ({type(e).__name__}: {e})") from e
    if len(data) != len(labels):
        raise DatasetFormatError(f"{path}: {len(data)} images but {len(labels)} labels")
    return TensorSplit(torch.from_numpy(data.copy()), torch.from_numpy(labels))


def _concat(parts: list[TensorSplit]) -> TensorSplit:
    return TensorSplit(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


def _cifar(name, sub, train_files, test_file, label_key, classes, cls_name, *, data_dir, download, val_fraction, seed, limit):
    folder = find_dir(name, data_dir, sub, test_file, download, _fetch(cls_name))
    missing = [f for f in train_files if not (folder / f).is_file()]
    if missing:
        raise DatasetNotFoundError(f"{name}: {', '.join(missing)} missing in {folder}; pass download=True (--download) to fetch it")
    pool = _concat([read_cifar_batch(folder / f, label_key) for f in train_files])
    test = read_cifar_batch(folder / test_file, label_key)
    return tensor_splits(name, pool, test, num_classes=classes, val_fraction=val_fraction, seed=seed, limit=limit, hflip=True)


@DATASETS.register("cifar10", help="CIFAR-10 from data_dir/cifar-10-batches-py (50k train, 10k test, 32x32 RGB)")
def load_cifar10(*, data_dir=None, download=False, val_fraction=0.1, seed=0, limit=None):
    """CIFAR-10 read from its pickled batches."""
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    return _cifar("cifar10", "cifar-10-batches-py", batches, "test_batch", "labels", 10, "CIFAR10",
                  data_dir=data_dir, download=download, val_fraction=val_fraction, seed=seed, limit=limit)


@DATASETS.register("cifar100", help="CIFAR-100 (fine labels) from data_dir/cifar-100-python")
def load_cifar100(*, data_dir=None, download=False, val_fraction=0.1, seed=0, limit=None):
    """CIFAR-100 read from its pickled train/test files, fine labels."""
    return _cifar("cifar100", "cifar-100-python", ["train"], "test", "fine_labels", 100, "CIFAR100",
                  data_dir=data_dir, download=download, val_fraction=val_fraction, seed=seed, limit=limit)


# MNIST family ------------------------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """An idx file (plain or .gz) of unsigned bytes, checked against its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetFormatError(f"{path}: cannot read ({type(e).__name__}: {e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetFormatError(f"{path}: not an unsigned-byte idx file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise DatasetFormatError(f"{path}: truncated or padded: header says shape {shape}, file has {len(raw) - header} data bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _idx_path(folder: Path, stem: str) -> Path:
    return folder / stem if (folder / stem).is_file() else folder / f"{stem}.gz"


def read_mnist_split(folder: Path, split: str) -> TensorSplit:
    """The MNIST-format ``train`` or ``test`` split in ``folder``."""
    images, labels = (read_idx(_idx_path(folder, f)) for f in _MNIST_FILES[split])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetFormatError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match")
    return TensorSplit(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def _mnist(name, sub, cls_name, *, data_dir, download, val_fraction, seed, limit):
    folder = find_dir(name, data_dir, f"{sub}/raw", _MNIST_FILES["train"][0], download, _fetch(cls_name))
    pool, test = read_mnist_split(folder, "train"), read_mnist_split(folder, "test")
    return tensor_splits(name, pool, test, num_classes=10, val_fraction=val_fraction, seed=seed, limit=limit, hflip=False)


@DATASETS.register("mnist", help="MNIST from data_dir/MNIST/raw idx files (gz or not)")
def load_mnist(*, data_dir=None, download=False, val_fraction=0.1, seed=0, limit=None):
    """MNIST read from torchvision's raw idx files."""
    return _mnist("mnist", "MNIST", "MNIST", data_dir=data_dir, download=download, val_fraction=val_fraction, seed=seed, limit=limit)


@DATASETS.register("fashion_mnist", help="Fashion-MNIST from data_dir/FashionMNIST/raw idx files (gz or not)")
def load_fashion_mnist(*, data_dir=None, download=False, val_fraction=0.1, seed=0, limit=None):
    """Fashion-MNIST read from torchvision's raw idx files (horizontal flips are kept off, as for MNIST)."""
    return _mnist("fashion_mnist", "FashionMNIST", "FashionMNIST", data_dir=data_dir, download=download,
                  val_fraction=val_fraction, seed=seed, limit=limit)


# SVHN --------------------------------------------------------------------------------------------

def read_svhn_mat(path: Path) -> TensorSplit:
    """An SVHN ``*_32x32.mat`` file: X (32, 32, 3, N) uint8, y (N, 1) with label 10 meaning digit 0."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
        x = np.asarray(mat["X"], dtype=np.uint8).transpose(3, 2, 0, 1)
        y = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetFormatError(f"{path}: not a readable SVHN .mat file ({type(e).__name__}: {e})") from e
    if len(x) != len(y):
        raise DatasetFormatError(f"{path}: {len(x)} images but {len(y)} labels")
    return TensorSplit(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))


@DATASETS.register("svhn", help="SVHN cropped digits from data_dir/{train,test}_32x32.mat")
def load_svhn(*, data_dir=None, download=False, val_fraction=0.1, seed=0, limit=None):
    """SVHN (train and test .mat files; the 'extra' split is not used)."""
    fetch = _fetch("SVHN", splits=({"split": "train"}, {"split": "test"}))
    folder = find_dir("svhn", data_dir, ".", "train_32x32.mat", download, fetch)
    pool = read_svhn_mat(folder / "train_32x32.mat")
    test_path = folder / "test_32x32.mat"
    test = read_svhn_mat(test_path) if test_path.is_file() else None
    return tensor_splits("svhn", pool, test, num_classes=10, val_fraction=val_fraction, seed=seed, limit=limit, hflip=False)
