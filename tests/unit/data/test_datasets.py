"""load_dataset: every catalog dataset, on generated files in the real formats."""

from __future__ import annotations

import pickle
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torchvision

from flextrain.api.catalog import DATASETS
from flextrain.data import (
    NORMALISATION,
    DatasetFormatError,
    DatasetNotFound,
    DatasetSplits,
    load_dataset,
    stratified_subset,
)
from tests.unit.data.fakes import make_cifar_dir, make_fashion_mnist_dir, write_idx, write_pickle


def expected_images(raw: np.ndarray, name: str) -> torch.Tensor:
    """Normalise uint8 N x C x H x W by hand, as the loader should."""
    norm = NORMALISATION[name]
    mean = np.array(norm.mean, dtype=np.float32)[None, :, None, None]
    std = np.array(norm.std, dtype=np.float32)[None, :, None, None]
    return torch.from_numpy((raw.astype(np.float32) / 255.0 - mean) / std)


def assert_matches_catalog(splits: DatasetSplits, name: str) -> None:
    info = DATASETS[name]
    assert splits.name == name
    assert (splits.num_classes, splits.channels, splits.image_size) == (
        info.num_classes,
        info.channels,
        info.image_size,
    )
    for part, labels in ((splits.train, splits.train_labels), (splits.test, splits.test_labels)):
        assert part.images.dtype == torch.float32
        assert part.labels.dtype == torch.int64
        assert part.images.shape[1:] == (info.channels, info.image_size, info.image_size)
        assert isinstance(labels, np.ndarray)
        np.testing.assert_array_equal(part.labels.numpy(), labels)
    assert len(splits.class_names) == info.num_classes


# --- Fashion-MNIST ------------------------------------------------------------------


@pytest.mark.parametrize("subdir", ["", "FashionMNIST/raw", "raw"])
@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_reads_raw_files(tmp_path: Path, subdir: str, gz: bool) -> None:
    fake = make_fashion_mnist_dir(tmp_path, subdir=subdir, gz=gz)

    splits = load_dataset("fashion-mnist", tmp_path)

    assert_matches_catalog(splits, "fashion-mnist")
    assert len(splits.train) == 40 and len(splits.test) == 20
    torch.testing.assert_close(
        splits.train.images, expected_images(fake.train_images, "fashion-mnist")
    )
    torch.testing.assert_close(
        splits.test.images, expected_images(fake.test_images, "fashion-mnist")
    )
    np.testing.assert_array_equal(splits.train_labels, fake.train_labels)
    np.testing.assert_array_equal(splits.test_labels, fake.test_labels)
    assert splits.class_names[9] == "Ankle boot"


def test_fashion_mnist_pixel_values_map_to_normalised_values(tmp_path: Path) -> None:
    fake = make_fashion_mnist_dir(tmp_path)
    fake.train_images[0, 0, 0, :3] = [0, 255, 51]
    write_idx(fake.folder / "train-images-idx3-ubyte", fake.train_images[:, 0])

    image = load_dataset("fashion-mnist", tmp_path).train.images[0, 0, 0, :3]

    mean, std = 0.2860, 0.3530
    torch.testing.assert_close(
        image, torch.tensor([-mean / std, (1 - mean) / std, (0.2 - mean) / std])
    )


def test_fashion_mnist_agrees_with_torchvisions_reader(tmp_path: Path) -> None:
    fake = make_fashion_mnist_dir(tmp_path, subdir="FashionMNIST/raw")

    theirs = torchvision.datasets.FashionMNIST(str(tmp_path), train=False, download=False)

    np.testing.assert_array_equal(theirs.data.numpy()[:, None], fake.test_images)
    np.testing.assert_array_equal(
        theirs.targets.numpy(), load_dataset("fashion-mnist", tmp_path).test_labels
    )


def test_fashion_mnist_wrong_image_size_is_a_format_error(tmp_path: Path) -> None:
    make_fashion_mnist_dir(tmp_path, image_size=20)

    with pytest.raises(DatasetFormatError, match="28 x 28"):
        load_dataset("fashion-mnist", tmp_path)


def test_fashion_mnist_label_count_mismatch_is_a_format_error(tmp_path: Path) -> None:
    fake = make_fashion_mnist_dir(tmp_path)
    write_idx(fake.folder / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))

    with pytest.raises(DatasetFormatError, match="expected 20 labels"):
        load_dataset("fashion-mnist", tmp_path)


def test_fashion_mnist_label_out_of_range_is_a_format_error(tmp_path: Path) -> None:
    fake = make_fashion_mnist_dir(tmp_path)
    labels = fake.train_labels.astype(np.uint8)
    labels[5] = 10
    write_idx(fake.folder / "train-labels-idx1-ubyte", labels)

    with pytest.raises(DatasetFormatError, match=r"\[0, 10\)"):
        load_dataset("fashion-mnist", tmp_path)


def test_fashion_mnist_truncated_file_is_a_format_error(tmp_path: Path) -> None:
    fake = make_fashion_mnist_dir(tmp_path)
    path = fake.folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])

    with pytest.raises(DatasetFormatError, match="truncated"):
        load_dataset("fashion-mnist", tmp_path)


# --- missing data -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10", "cifar100"])
def test_missing_directory_names_path_files_and_how_to_obtain(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nowhere"

    with pytest.raises(DatasetNotFound) as info:
        load_dataset(name, missing)

    message = str(info.value)
    assert str(missing) in message
    assert DATASETS[name].how_to_obtain in message
    assert ("t10k-images-idx3-ubyte" if name == "fashion-mnist" else "test") in message
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.path == missing


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10", "cifar100"])
def test_no_root_for_a_file_dataset_is_dataset_not_found(name: str) -> None:
    with pytest.raises(DatasetNotFound, match=r"root=None.*How to obtain it"):
        load_dataset(name)


def test_directory_without_the_files_lists_where_it_looked(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")  # one of four is not enough

    with pytest.raises(DatasetNotFound) as info:
        load_dataset("fashion-mnist", tmp_path)

    assert str(tmp_path / "raw") in str(info.value)
    assert "train-labels-idx1-ubyte" in str(info.value)


def test_missing_cifar_batch_is_dataset_not_found(tmp_path: Path) -> None:
    fake = make_cifar_dir(tmp_path, "cifar10")
    (fake.folder / "data_batch_3").unlink()

    with pytest.raises(DatasetNotFound, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)


def test_dataset_not_found_survives_pickling(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound) as info:
        load_dataset("cifar10", tmp_path / "x")

    copy = pickle.loads(pickle.dumps(info.value))

    assert str(copy) == str(info.value)


# --- CIFAR --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("py2", [True, False])
def test_cifar_reads_torchvision_layout(tmp_path: Path, name: str, py2: bool) -> None:
    fake = make_cifar_dir(tmp_path, name, py2=py2)

    splits = load_dataset(name, tmp_path)

    assert_matches_catalog(splits, name)
    expected_train = 60 if name == "cifar10" else 12
    assert len(splits.train) == expected_train and len(splits.test) == 10
    torch.testing.assert_close(splits.train.images, expected_images(fake.train_images, name))
    torch.testing.assert_close(splits.test.images, expected_images(fake.test_images, name))
    np.testing.assert_array_equal(splits.train_labels, fake.train_labels)
    np.testing.assert_array_equal(splits.test_labels, fake.test_labels)
    assert splits.class_names[1] == ("class1" if name == "cifar10" else "fine1")


def test_cifar_rows_are_red_then_green_then_blue_planes(tmp_path: Path) -> None:
    fake = make_cifar_dir(tmp_path, "cifar10")
    # First test image: R at (0, 0), G at (1, 2), B at (31, 31) are 255.
    raw = fake.test_images.reshape(-1, 3072)
    raw[0, :] = 0
    raw[0, [0, 1024 + 32 + 2, 2048 + 1023]] = 255
    write_pickle(fake.folder / "test_batch", {b"data": raw, b"labels": fake.test_labels.tolist()})

    image = load_dataset("cifar10", tmp_path).test.images[0]

    norm = NORMALISATION["cifar10"]
    top = torch.tensor([(1 - m) / s for m, s in zip(norm.mean, norm.std, strict=True)])
    low = torch.tensor([-m / s for m, s in zip(norm.mean, norm.std, strict=True)])
    torch.testing.assert_close(image[:, 0, 0], torch.stack([top[0], low[1], low[2]]))
    torch.testing.assert_close(image[:, 1, 2], torch.stack([low[0], top[1], low[2]]))
    torch.testing.assert_close(image[:, 31, 31], torch.stack([low[0], low[1], top[2]]))
    assert int((image > 0).sum()) == 3


@pytest.mark.parametrize(("name", "cls"), [("cifar10", "CIFAR10"), ("cifar100", "CIFAR100")])
def test_cifar_agrees_with_torchvisions_reader(tmp_path: Path, name: str, cls: str) -> None:
    fake = make_cifar_dir(tmp_path, name)
    dataset_cls = getattr(torchvision.datasets, cls)
    # torchvision checks the real files' md5 sums; the format is what we compare.
    with (
        mock.patch("torchvision.datasets.cifar.check_integrity", return_value=True),
        mock.patch.object(dataset_cls, "_check_integrity", return_value=True),
    ):
        theirs = dataset_cls(str(tmp_path), train=True, download=False)

    np.testing.assert_array_equal(theirs.data.transpose(0, 3, 1, 2), fake.train_images)
    np.testing.assert_array_equal(theirs.targets, load_dataset(name, tmp_path).train_labels)


def test_cifar_root_may_be_the_batches_folder_itself(tmp_path: Path) -> None:
    fake = make_cifar_dir(tmp_path, "cifar10")

    assert len(load_dataset("cifar10", fake.folder).train) == 60


def test_cifar_without_meta_uses_numbered_class_names(tmp_path: Path) -> None:
    make_cifar_dir(tmp_path, "cifar100", with_meta=False)

    assert load_dataset("cifar100", tmp_path).class_names[:3] == ("0", "1", "2")


def test_corrupt_cifar_batch_is_a_format_error(tmp_path: Path) -> None:
    fake = make_cifar_dir(tmp_path, "cifar10")
    path = fake.folder / "data_batch_2"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])

    with pytest.raises(DatasetFormatError, match="data_batch_2"):
        load_dataset("cifar10", tmp_path)


def test_cifar_batch_with_wrong_shape_is_a_format_error(tmp_path: Path) -> None:
    fake = make_cifar_dir(tmp_path, "cifar100")
    write_pickle(
        fake.folder / "test",
        {b"data": np.zeros((2, 1024), np.uint8), b"fine_labels": [0, 1]},
    )

    with pytest.raises(DatasetFormatError, match="uint8 N x 3072"):
        load_dataset("cifar100", tmp_path)


def test_cifar10_file_in_cifar100_folder_is_a_format_error(tmp_path: Path) -> None:
    fake = make_cifar_dir(tmp_path, "cifar100")
    write_pickle(fake.folder / "test", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})

    with pytest.raises(DatasetFormatError, match="fine_labels"):
        load_dataset("cifar100", tmp_path)


def test_augment_flag_marks_only_the_training_set(tmp_path: Path) -> None:
    make_cifar_dir(tmp_path, "cifar10")

    splits = load_dataset("cifar10", tmp_path, augment=True)

    assert splits.train.augment and not splits.test.augment
    assert not load_dataset("cifar10", tmp_path).train.augment


# --- digits and synthetic -----------------------------------------------------------


def test_digits_holdout_is_stratified_and_complete() -> None:
    splits = load_dataset("digits")

    assert_matches_catalog(splits, "digits")
    assert len(splits.train) + len(splits.test) == 1797
    assert len(splits.test) == round(1797 * 0.2)
    counts = np.bincount(splits.test_labels, minlength=10)
    totals = np.bincount(np.concatenate([splits.train_labels, splits.test_labels]))
    # Each class's share of the holdout is its share of the data, within one example.
    assert np.all(np.abs(counts - totals * len(splits.test) / 1797) < 1)


def test_digits_are_normalised() -> None:
    images = load_dataset("digits").train.images

    assert abs(images.mean().item()) < 0.05
    assert abs(images.std().item() - 1) < 0.05
    torch.testing.assert_close(images.min(), torch.tensor(-0.3053 / 0.3760))


def test_digits_split_is_deterministic_for_a_seed_and_varies_with_it() -> None:
    a, b = load_dataset("digits", seed=3), load_dataset("digits", seed=3)
    c = load_dataset("digits", seed=4)

    assert torch.equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.test.images, c.test.images)


def test_holdout_fraction_sets_the_test_size() -> None:
    assert len(load_dataset("digits", holdout_fraction=0.5).test) == round(1797 * 0.5)


def test_synthetic_is_deterministic_balanced_and_varies_with_seed() -> None:
    a, b, c = (load_dataset("synthetic", seed=s) for s in (7, 7, 8))

    assert_matches_catalog(a, "synthetic")
    assert (len(a.train), len(a.test)) == (4000, 1000)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    np.testing.assert_array_equal(a.train_labels, b.train_labels)
    assert not torch.equal(a.train.images, c.train.images)
    assert np.all(np.bincount(a.train_labels) == 400)
    assert abs(a.train.images.mean().item()) < 0.05
    assert abs(a.train.images.std().item() - 1) < 0.05


def test_synthetic_classes_are_separable_by_their_means() -> None:
    splits = load_dataset("synthetic")
    x = splits.train.images.flatten(1)
    centroids = torch.stack([x[splits.train.labels == c].mean(0) for c in range(10)])

    nearest = torch.cdist(splits.test.images.flatten(1), centroids).argmin(1)

    accuracy = (nearest == splits.test.labels).float().mean().item()
    assert accuracy > 0.6  # chance is 0.1


# --- limit and arguments ------------------------------------------------------------


def test_limit_keeps_class_shares_and_is_a_deterministic_subset() -> None:
    full = load_dataset("synthetic", seed=1)
    small = load_dataset("synthetic", seed=1, limit=250)

    assert len(small.train) == 250 and len(small.test) == len(full.test)
    assert np.all(np.abs(np.bincount(small.train_labels, minlength=10) - 25) <= 1)
    # Every kept example is one of the full training set, in the original order.
    rows = {tuple(r) for r in full.train.images.flatten(1).numpy().round(5).tolist()}
    assert all(tuple(r) in rows for r in small.train.images.flatten(1).numpy().round(5).tolist())
    again = load_dataset("synthetic", seed=1, limit=250)
    assert torch.equal(small.train.images, again.train.images)


def test_limit_above_the_size_keeps_everything() -> None:
    assert len(load_dataset("digits", limit=10**6).train) == len(load_dataset("digits").train)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "imagenet"}, "unknown dataset"),
        ({"name": "digits", "limit": 0}, "limit"),
        ({"name": "digits", "holdout_fraction": 0.0}, "holdout_fraction"),
        ({"name": "digits", "holdout_fraction": 1.0}, "holdout_fraction"),
        ({"name": "digits", "holdout_fraction": 0.0001}, "empty train or test"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_dataset(**kwargs)


def test_stratified_subset_rounds_by_largest_remainder() -> None:
    labels = np.array([0] * 5 + [1] * 3 + [2] * 2)

    picked = stratified_subset(labels, 5, seed=0)

    assert len(picked) == 5 and len(set(picked.tolist())) == 5
    # Exact shares 2.5 / 1.5 / 1.0: the tie on .5 goes to the lower class.
    np.testing.assert_array_equal(np.bincount(labels[picked], minlength=3), [3, 1, 1])
