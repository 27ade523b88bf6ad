"""make_loader: seeded, complete, shard-aware batches; optional augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from flextrain.data import (
    ImageDataset,
    load_dataset,
    make_loader,
    random_crop_flip,
    shard_for,
)


def numbered_dataset(n: int = 50, size: int = 4, augment: bool = False) -> ImageDataset:
    """Image i is filled with the value i and has label i, so batches reveal their indices."""
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, size, size)
    return ImageDataset(images.clone(), torch.arange(n), augment=augment)


def epoch(loader) -> list[torch.Tensor]:
    return [labels for _, labels in loader]


def flat(batches: list[torch.Tensor]) -> list[int]:
    return torch.cat(batches).tolist()


def test_batches_have_the_right_shapes_and_types() -> None:
    loader = make_loader(numbered_dataset(50), batch_size=16)

    batches = list(loader)

    assert len(loader) == 4 and len(batches) == 4
    assert [len(labels) for _, labels in batches] == [16, 16, 16, 2]
    images, labels = batches[0]
    assert images.shape == (16, 2, 4, 4) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    torch.testing.assert_close(images[:, 0, 0, 0], labels.float())  # image and label stay paired


def test_unshuffled_loader_keeps_order() -> None:
    assert flat(epoch(make_loader(numbered_dataset(30), batch_size=7))) == list(range(30))


def test_shuffled_epoch_visits_every_example_once() -> None:
    seen = flat(epoch(make_loader(numbered_dataset(50), batch_size=8, shuffle=True, seed=3)))

    assert sorted(seen) == list(range(50))
    assert seen != list(range(50))


def test_same_seed_same_batches_different_seed_different_batches() -> None:
    data = numbered_dataset(64)

    def two_epochs(seed: int) -> list[int]:
        loader = make_loader(data, batch_size=8, shuffle=True, seed=seed)
        return flat(epoch(loader)) + flat(epoch(loader))

    a, b, c = two_epochs(5), two_epochs(5), two_epochs(6)
    assert a == b
    assert a != c
    assert a[:64] != a[64:]  # the second pass is a new permutation


def test_indices_restrict_the_loader_to_a_shard() -> None:
    data = load_dataset("synthetic", seed=0)
    shard = shard_for(data.train_labels, "dirichlet", 0.5, seed=0, num_shards=4, index=2)

    loader = make_loader(data.train, shard, batch_size=32, shuffle=True, seed=1)
    labels = torch.cat([y for _, y in loader]).numpy()

    assert len(loader.dataset) == len(shard)
    np.testing.assert_array_equal(
        np.bincount(labels, minlength=10), np.bincount(data.train_labels[shard], minlength=10)
    )


def test_indices_select_exactly_those_examples() -> None:
    picked = [40, 3, 17, 3]

    assert flat(epoch(make_loader(numbered_dataset(50), picked, batch_size=3))) == picked


def test_drop_last_drops_the_short_batch() -> None:
    loader = make_loader(numbered_dataset(50), batch_size=16, drop_last=True)

    assert len(loader) == 3 and [len(y) for y in epoch(loader)] == [16, 16, 16]


def test_empty_indices_give_no_batches() -> None:
    assert list(make_loader(numbered_dataset(5), np.array([], dtype=np.int64))) == []


def test_workers_do_not_change_batches_or_augmentation() -> None:
    data = numbered_dataset(40, size=8, augment=True)
    inline = list(make_loader(data, batch_size=8, shuffle=True, seed=9))
    workers = list(make_loader(data, batch_size=8, shuffle=True, seed=9, num_workers=2))

    assert len(inline) == len(workers) == 5
    for (xa, ya), (xb, yb) in zip(inline, workers, strict=True):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_plain_datasets_take_the_stock_path_deterministically() -> None:
    data = TensorDataset(torch.arange(20).float(), torch.arange(20))

    def run(seed: int) -> list[int]:
        return flat(
            [y for _, y in make_loader(data, range(10, 20), batch_size=3, shuffle=True, seed=seed)]
        )

    assert run(1) == run(1) and run(1) != run(2)
    assert sorted(run(1)) == list(range(10, 20))


def test_augmentation_is_seeded_and_only_moves_pixels() -> None:
    images = torch.randn(6, 3, 8, 8)
    data = ImageDataset(images, torch.arange(6), augment=True)

    def batch(seed: int) -> torch.Tensor:
        return next(iter(make_loader(data, batch_size=6, seed=seed)))[0]

    assert torch.equal(batch(0), batch(0))
    assert not torch.equal(batch(0), batch(1))
    assert batch(0).shape == images.shape
    plain = next(iter(make_loader(data, batch_size=6, seed=0, augment=False)))[0]
    assert torch.equal(plain, images)


def test_crop_flip_output_is_a_window_of_the_padded_image_maybe_mirrored() -> None:
    images = torch.randn(16, 3, 6, 6)
    out = random_crop_flip(images, torch.Generator().manual_seed(0), padding=2)

    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    flips = 0
    for i in range(16):
        windows = {
            (top, left, flip)
            for top in range(5)
            for left in range(5)
            for flip in (False, True)
            if torch.equal(
                out[i],
                padded[i, :, top : top + 6, left : left + 6].flip(-1)
                if flip
                else padded[i, :, top : top + 6, left : left + 6],
            )
        }
        assert windows, f"image {i} is not a crop of its padded original"
        flips += any(flip for _, _, flip in windows)
    assert 0 < flips < 16  # both outcomes of the coin occur


def test_crop_flip_without_padding_is_identity_or_mirror() -> None:
    images = torch.randn(32, 1, 5, 5)
    out = random_crop_flip(images, torch.Generator().manual_seed(1), padding=0)

    for i in range(32):
        assert torch.equal(out[i], images[i]) or torch.equal(out[i], images[i].flip(-1))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"batch_size": 0}, ValueError),
        ({"num_workers": -1}, ValueError),
        ({"indices": [0, 50]}, IndexError),
        ({"indices": [-1]}, IndexError),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        make_loader(numbered_dataset(50), **kwargs)


def test_augment_needs_an_image_dataset() -> None:
    with pytest.raises(ValueError, match="ImageDataset"):
        make_loader(TensorDataset(torch.zeros(4, 1, 2, 2), torch.zeros(4)), augment=True)


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, and far faster when other work shares the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_small_model_learns_synthetic_well_above_chance_in_a_few_epochs(one_thread) -> None:
    torch.manual_seed(0)
    data = load_dataset("synthetic", seed=0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = make_loader(data.train, batch_size=64, shuffle=True, seed=0)
    for _ in range(3):
        for images, labels in loader:
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimiser.step()

    with torch.no_grad():
        accuracy = (model(data.test.images).argmax(1) == data.test.labels).float().mean().item()
    assert accuracy > 0.6  # chance is 0.1
