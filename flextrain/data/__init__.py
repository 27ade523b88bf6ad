"""Datasets, partitioners and loaders: everything a trainer needs to get its batches.

Typical use by a trainer with completion index ``i`` of ``n``::

    splits = load_dataset("cifar10", "/data", seed=job_seed)
    shard = shard_for(splits.train_labels, "dirichlet", 0.5, job_seed, n, i)
    loader = make_loader(splits.train, shard, batch_size=64, shuffle=True, seed=job_seed + i)

Imports only torch, numpy, scikit-learn, the standard library and
``flextrain.api.catalog``.
"""

from flextrain.data.datasets import (
    NORMALISATION,
    DatasetSplits,
    ImageDataset,
    Normalisation,
    load_dataset,
    stratified_subset,
)
from flextrain.data.errors import DatasetFormatError, DatasetNotFound
from flextrain.data.formats import read_cifar_pickle, read_idx
from flextrain.data.loaders import make_loader, random_crop_flip
from flextrain.data.partition import (
    SCHEMES,
    Scheme,
    partition,
    partition_dirichlet,
    partition_iid,
    shard_for,
    shard_label_counts,
)

__all__ = [
    "NORMALISATION",
    "SCHEMES",
    "DatasetFormatError",
    "DatasetNotFound",
    "DatasetSplits",
    "ImageDataset",
    "Normalisation",
    "Scheme",
    "load_dataset",
    "make_loader",
    "partition",
    "partition_dirichlet",
    "partition_iid",
    "random_crop_flip",
    "read_cifar_pickle",
    "read_idx",
    "shard_for",
    "shard_label_counts",
    "stratified_subset",
]
