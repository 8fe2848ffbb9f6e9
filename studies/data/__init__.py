"""Datasets: one registry of loaders (embedded, torchvision's file formats, image folders) and the
trainer's batches. ``load_dataset(name, ...)`` returns seeded train/val/test ``DataSplits``.
"""
from studies.data import files as _files, folder as _folder  # noqa: F401  (they register their loaders)
from studies.data.core import (
    DATASETS, DEFAULT_DATASET, DatasetFormatError, DatasetNotFoundError, DataSplits, Split, TensorSplit, adapt,
    load_dataset, split_indices, tensor_splits,
)

__all__ = ["DATASETS", "DEFAULT_DATASET", "DataSplits", "DatasetFormatError", "DatasetNotFoundError", "Split",
           "TensorSplit", "adapt", "load_dataset", "split_indices", "tensor_splits"]
