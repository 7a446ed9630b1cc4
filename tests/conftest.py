"""Shared fixtures. Tests run on CPU on the in-process `synthetic` dataset unless they need MNIST."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

MNIST_ROOT = Path(os.environ.get("DLLAB_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
HAS_MNIST = (MNIST_ROOT / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
needs_mnist = pytest.mark.skipif(
    not HAS_MNIST, reason=f"real MNIST not found under {MNIST_ROOT}/MNIST/raw (set DLLAB_DATA_DIR to run these)"
)


def child_env() -> dict[str, str]:
    """The environment for a dllab started in another namespace or shell: this checkout first on the path."""
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}


def with_section(config, section: str, **keys):
    """``config`` (an ExperimentConfig) with ``keys`` of one section changed: with_section(c, "train", compile=True)."""
    return config.model_copy(update={section: getattr(config, section).model_copy(update=keys)})


# A small, fast experiment: synthetic data, CPU, two epochs.
FAST = {"device": "cpu", "data": {"dataset": "synthetic"}, "train": {"epochs": 2}}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def write_config(tmp_path: Path):
    """write_config(data, name="exp") -> path of a YAML file in a fresh folder."""

    def write(data: dict | str, name: str = "exp") -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
        return path

    return write


@pytest.fixture
def fast_config(write_config) -> Path:
    return write_config(FAST, "fast")


@pytest.fixture(scope="session")
def session_tensor_cache(tmp_path_factory) -> Path:
    """One decoded-dataset cache for the whole session (MNIST is decoded once, not once per test)."""
    return tmp_path_factory.mktemp("decoded")


@pytest.fixture(autouse=True)
def _cpu_and_data_env(monkeypatch, session_tensor_cache):
    """Point the tool at the real MNIST when present, and its dataset cache at a temporary folder
    rather than the user's ~/.cache."""
    monkeypatch.setenv("DLLAB_DATA_DIR", str(MNIST_ROOT))
    monkeypatch.setenv("DLLAB_CACHE_DIR", str(session_tensor_cache))


@pytest.fixture(autouse=True)
def _cpu_float_modes_reset_after():
    """A command sets CPU float modes process-wide (training/device.py: denormals flushed, stacks'
    matmuls through oneDNN): each test starts with denormals kept and a stack's matmuls left to MKL."""
    yield
    if "dl_lab.training.device" in sys.modules:
        torch = sys.modules["torch"]
        torch.set_flush_denormal(False)
        sys.modules["dl_lab.training.device"].choose_stack_matmuls(torch.device("cpu"), {"DLLAB_ONEDNN_STACKS": "off"})


def eventually(condition: Callable[[], object], seconds: float = 10.0) -> bool:
    """Poll ``condition`` every 50 ms until it holds or ``seconds`` pass; whether it held."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def sets(*assignments: str) -> list[str]:
    """--set arguments: sets("device=cpu", "train.epochs=1") -> ["--set", "device=cpu", "--set", "train.epochs=1"]."""
    return [arg for assignment in assignments for arg in ("--set", assignment)]


def write_idx(path: Path, array) -> None:
    """An idx file of unsigned bytes, as the MNIST files are (``array``: a torch tensor)."""
    import torch

    header = bytes([0, 0, 8, array.dim()]) + b"".join(size.to_bytes(4, "big") for size in array.shape)
    path.write_bytes(header + array.to(torch.uint8).numpy().tobytes())


def small_mnist(root: Path, folder: str = "MNIST", train: int = 50, test: int = 20) -> Path:
    """Four idx files of random images and labels 0..9 in turn, under root/folder/raw."""
    import torch

    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", train), ("t10k", test)):
        write_idx(raw / f"{split}-images-idx3-ubyte", torch.randint(0, 256, (n, 28, 28), generator=gen))
        write_idx(raw / f"{split}-labels-idx1-ubyte", torch.arange(n) % 10)
    return raw
