"""Datasets: the synthetic set, preprocessing, root resolution and clear errors for missing MNIST."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import MNIST_ROOT, needs_mnist, small_mnist, write_idx

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


@pytest.mark.parametrize("dataset, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_files_are_read_directly_pixel_for_pixel(tmp_path, dataset, folder):
    raw = small_mnist(tmp_path, folder)
    data = load_dataset(DataConfig(dataset=dataset, download=False), DataRoot(tmp_path, "test"), CPU)
    images = (raw / "train-images-idx3-ubyte").read_bytes()[16:]
    assert data.train.x.shape == (50, 784) and data.test.x.shape == (20, 784)
    assert data.train.x[3, 100].item() == pytest.approx(images[3 * 784 + 100] / 255)
    assert data.train.y.tolist() == [i % 10 for i in range(50)] and data.train.y.dtype == torch.int64


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda b: b[:-5], "bytes where its header promises"),
        (lambda b: b[:3] + b"\x09" + b[4:], "not an idx file .*it starts 00 00 08 09"),
        (lambda b: b + b"\x00", "bytes where its header promises"),
        (lambda b: b"", "not an idx file .*it starts empty"),
    ],
)
def test_a_damaged_idx_file_is_a_data_error_naming_it(tmp_path, damage, words):
    raw = small_mnist(tmp_path)
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=words) as error:
        load_dataset(DataConfig(dataset="mnist", download=False), DataRoot(tmp_path, "test"), CPU)
    assert str(path) in str(error.value) and error.value.key == "data.dataset"


@pytest.mark.parametrize(
    "labels", [torch.arange(49) % 10, torch.arange(50) % 11, torch.zeros(0)], ids=["one short", "label 10", "empty"]
)
def test_images_and_labels_that_do_not_match_are_a_data_error(tmp_path, labels):
    raw = small_mnist(tmp_path)
    write_idx(raw / "train-labels-idx1-ubyte", labels)
    with pytest.raises(DataError, match="do not make an MNIST-format split"):
        load_dataset(DataConfig(dataset="mnist", download=False), DataRoot(tmp_path, "test"), CPU)


@needs_mnist
def test_the_direct_reader_equals_torchvision_and_skips_its_import():
    import subprocess
    import sys

    from torchvision import datasets

    data = load_dataset(DataConfig(dataset="mnist", download=False), DataRoot(MNIST_ROOT, "test"), CPU)
    for split, train in ((data.train, True), (data.test, False)):
        reference = datasets.MNIST(str(MNIST_ROOT), train=train, download=False)
        assert torch.equal(split.x, reference.data.reshape(len(reference.data), -1).float() / 255)
        assert torch.equal(split.y, reference.targets)
    code = (
        "import os, sys; from pathlib import Path; import torch\n"
        "from dl_lab.components.datasets import DataRoot, load_dataset\n"
        "from dl_lab.config.schema import DataConfig\n"
        "from dl_lab.training.environment import environment\n"
        f"load_dataset(DataConfig(download=False), DataRoot(Path({str(MNIST_ROOT)!r}), 't'), torch.device('cpu'))\n"
        "env = environment(torch.device('cpu'), '')\n"
        "print('torchvision' in sys.modules, env['torchvision'])"
    )
    imported, version = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert imported == "False"
    import torchvision

    assert version == torchvision.__version__
