"""Datasets: the synthetic set, preprocessing, root resolution and clear errors for missing MNIST."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import MNIST_ROOT, needs_mnist

from dl_lab.components.datasets import DataRoot, load_dataset, resolve_data_root
from dl_lab.config.schema import DataConfig
from dl_lab.errors import DataError

CPU = torch.device("cpu")
NOWHERE = DataRoot(Path("/nonexistent"), "test")


def test_synthetic_is_deterministic_mnist_shaped_and_balanced():
    first = load_dataset(DataConfig(dataset="synthetic"), NOWHERE, CPU)
    second = load_dataset(DataConfig(dataset="synthetic"), NOWHERE, CPU)
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)
    assert first.train.x.shape == (6000, 784) and first.train.x.dtype == torch.float32
    assert first.num_classes == 10 and first.num_features == 784
    assert 0.0 <= first.train.x.min() and first.train.x.max() <= 1.0
    counts = torch.bincount(first.train.y, minlength=10)
    assert counts.min() > 450


def test_train_subset_takes_the_first_n_and_normalize_uses_train_statistics():
    full = load_dataset(DataConfig(dataset="synthetic"), NOWHERE, CPU)
    sub = load_dataset(DataConfig(dataset="synthetic", train_subset=500, normalize=True), NOWHERE, CPU)
    assert len(sub.train) == 500 and len(sub.test) == len(full.test)
    assert torch.equal(sub.train.y, full.train.y[:500])
    assert sub.train.x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert sub.train.x.std().item() == pytest.approx(1.0, abs=1e-4)
    assert abs(sub.test.x.mean().item()) < 0.05  # test split uses the train statistics, not its own


def test_train_subset_larger_than_the_dataset_is_a_data_error():
    with pytest.raises(DataError, match="more than the 6000 training samples") as error:
        load_dataset(DataConfig(dataset="synthetic", train_subset=6001), NOWHERE, CPU)
    assert error.value.key == "data.train_subset"


def test_data_root_precedence_config_then_env_then_cache(tmp_path):
    assert resolve_data_root("/cfg", {"DLLAB_DATA_DIR": "/env"}).path == Path("/cfg")
    assert resolve_data_root(None, {"DLLAB_DATA_DIR": "/env"}).path == Path("/env")
    cache = resolve_data_root(None, {"XDG_CACHE_HOME": str(tmp_path)})
    assert cache.path == tmp_path / "dl_lab" / "data" and "cache" in cache.origin


@pytest.mark.parametrize("dataset, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_missing_dataset_without_download_says_where_it_looked_and_how_to_fix(tmp_path, dataset, folder):
    root = DataRoot(tmp_path, "$DLLAB_DATA_DIR")
    with pytest.raises(DataError) as error:
        load_dataset(DataConfig(dataset=dataset, download=False), root, CPU)
    message = str(error.value)
    assert str(tmp_path / folder / "raw") in message
    assert "$DLLAB_DATA_DIR" in message and "DLLAB_DATA_DIR or data.root" in message
    assert error.value.key == "data.dataset"


@needs_mnist
def test_real_mnist_loads_into_tensors_with_the_usual_statistics():
    data = load_dataset(DataConfig(dataset="mnist", download=False), DataRoot(MNIST_ROOT, "test"), CPU)
    assert (len(data.train), len(data.test), data.num_features, data.num_classes) == (60000, 10000, 784, 10)
    assert data.train.x.mean().item() == pytest.approx(0.1307, abs=2e-4)
    assert data.train.x.std().item() == pytest.approx(0.3081, abs=3e-4)
    assert data.train.y[:5].tolist() == [5, 0, 4, 1, 9]
