"""Datasets by name, loaded once into float tensors on the target device.

No per-sample PIL/ToTensor and no DataLoader: the four idx files are read directly when they are
there (torchvision, whose import alone costs over a second, is used only to download and extract
them), then the whole split is converted in one tensor operation and kept in a memory-mapped cache
(``tensor_cache``) for the next process. Training batches are index slices of these tensors (see
engine).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dl_lab.components import tensor_cache
from dl_lab.components.registry import Registry
from dl_lab.config import choices
from dl_lab.errors import DataError

if TYPE_CHECKING:
    import torch

    from dl_lab.config.schema import DataConfig

ENV_DATA_DIR = "DLLAB_DATA_DIR"


@dataclass(frozen=True)
class RawSplits:
    """What a dataset builder returns: CPU tensors, images in [0, 1] as float or 0..255 as uint8."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # (N, features) float32 on the device
    y: torch.Tensor  # (N,) int64 on the device

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    num_features: int
    num_classes: int
    root: str  # where the files were looked for ("" for in-process datasets)


DatasetBuilder = Callable[["DataRoot", bool], RawSplits]
DATASETS: Registry[DatasetBuilder] = Registry(choices.DATASETS)


@dataclass(frozen=True)
class DataRoot:
    path: Path
    origin: str  # which setting chose it, for error messages


def resolve_data_root(config_root: str | None, environ: Mapping[str, str]) -> DataRoot:
    """data.root from the config, else $DLLAB_DATA_DIR, else a per-user cache folder."""
    if config_root:
        return DataRoot(Path(config_root).expanduser(), "data.root in the config")
    if environ.get(ENV_DATA_DIR):
        return DataRoot(Path(environ[ENV_DATA_DIR]).expanduser(), f"${ENV_DATA_DIR}")
    cache = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return DataRoot(cache / "dl_lab" / "data", "the default cache folder")


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An idx file of unsigned bytes (the MNIST format: magic 0x0000080N, N big-endian sizes, then
    the data) as a uint8 tensor; DataError naming the file when it is anything else."""
    import torch

    data = path.read_bytes()
    header = 4 + 4 * ndim
    fix = "Fix: replace it with the original file (or delete the four files and allow data.download: true)"
    if len(data) < header or data[:4] != bytes([0, 0, 8, ndim]):
        raise DataError(
            f"{path}: not an idx file of {ndim}-dimensional unsigned bytes (it starts {data[:4].hex(' ') or 'empty'}, "
            f"expected 00 00 08 0{ndim} and a {header}-byte header). {fix}",
            key="data.dataset",
        )
    sizes = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(sizes)
    if len(data) != expected:
        raise DataError(
            f"{path}: {len(data)} bytes where its header promises {expected} (sizes {sizes}): truncated or "
            f"damaged. {fix}",
            key="data.dataset",
        )
    if expected == header:  # no samples (torch.frombuffer refuses an empty buffer)
        return torch.empty(sizes, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(*sizes)


def _decode_idx(raw: Path, paths: list[Path]) -> dict[str, torch.Tensor]:
    """Parse and check the four idx files, then convert: what the tensor cache keeps."""
    train_x, train_y, test_x, test_y = (read_idx(path, 3 if "images" in path.name else 1) for path in paths)
    for images, labels, split in ((train_x, train_y, "train"), (test_x, test_y, "t10k")):
        largest = int(labels.max()) if len(labels) else None
        if not len(labels) or images.shape[0] != len(labels) or images.shape[1:] != (28, 28) or largest > 9:
            raise DataError(
                f"{raw}: the {split} images ({tuple(images.shape)}) and labels ({len(labels)}, largest "
                f"{largest}) do not make an MNIST-format split of 28x28 images with labels 0-9",
                key="data.dataset",
            )
    return {
        "train_x": _as_features(train_x),
        "train_y": train_y.long(),
        "test_x": _as_features(test_x),
        "test_y": test_y.long(),
    }


def _read_raw(raw: Path, name: str) -> RawSplits | None:
    """The four uncompressed idx files of an MNIST-format dataset, read directly (no torchvision
    import, which costs more than reading them) or mapped from the decoded-tensor cache; None when
    any is missing."""
    paths = [raw / file for file in IDX_FILES]
    if not all(path.is_file() for path in paths):
        return None
    arrays = tensor_cache.cached(name, paths, lambda: _decode_idx(raw, paths), os.environ)
    return RawSplits(arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"], 10)


def _torchvision_splits(cls_name: str, folder: str) -> DatasetBuilder:
    def build(root: DataRoot, download: bool) -> RawSplits:
        read = _read_raw(root.path / folder / "raw", folder)
        if read is not None:
            return read
        from torchvision import datasets  # finds, downloads and extracts the files

        cls = getattr(datasets, cls_name)
        try:
            # torchvision prints download progress to stdout; keep stdout for results (--json).
            with contextlib.redirect_stdout(sys.stderr):
                train = cls(str(root.path), train=True, download=download)
                test = cls(str(root.path), train=False, download=download)
        except Exception as exc:  # not found, download refused or failed, corrupt files
            raw = root.path / folder / "raw"
            how = "downloading was allowed but failed" if download else "downloading is off (data.download: false)"
            raise DataError(
                f"{folder} not found or unreadable under {raw} (folder chosen by {root.origin}; "
                f"{how}: {' '.join(str(exc).split())}). Fix: point "
                f"{ENV_DATA_DIR} or data.root at the folder that contains {folder}/raw/ with the four "
                f"idx files, or allow data.download: true on a machine with internet access.",
                key="data.dataset",
            ) from exc
        return RawSplits(train.data, train.targets, test.data, test.targets, len(train.classes))

    return build


DATASETS.register("mnist", folder="MNIST")(_torchvision_splits("MNIST", "MNIST"))
DATASETS.register("fashion-mnist", folder="FashionMNIST")(_torchvision_splits("FashionMNIST", "FashionMNIST"))


@DATASETS.register("synthetic")
def synthetic(root: DataRoot, download: bool, n_train: int = 6000, n_test: int = 1000) -> RawSplits:
    """Noisy copies of 10 fixed sparse 'glyphs': learnable, deterministic whatever the experiment seed."""
    import torch

    gen = torch.Generator().manual_seed(20261126)
    glyphs = (torch.rand(10, 784, generator=gen) < 0.15).float()

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (n,), generator=gen)
        noise = 0.45 * torch.randn(n, 784, generator=gen)
        flips = (torch.rand(n, 784, generator=gen) < 0.1).float()
        x = (glyphs[y] - flips).abs() + noise
        return x.clamp_(0.0, 1.0), y

    train_x, train_y = sample(n_train)
    test_x, test_y = sample(n_test)
    return RawSplits(train_x, train_y, test_x, test_y, 10)


def _as_features(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) uint8 0..255 or float 0..1 -> (N, H*W) float32 in [0, 1]."""
    import torch

    x = images.reshape(images.shape[0], -1)
    return x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x.to(torch.float32)


def load_dataset(cfg: DataConfig, root: DataRoot, device: torch.device) -> Dataset:
    """Load (or download) once, convert in bulk, optionally standardize and subset, move to device."""
    raw = DATASETS[cfg.dataset].build(root, cfg.download)
    train_x, test_x = _as_features(raw.train_x), _as_features(raw.test_x)
    train_y, test_y = raw.train_y.long(), raw.test_y.long()
    if cfg.train_subset is not None:
        if cfg.train_subset > len(train_x):
            raise DataError(
                f"{cfg.train_subset} is more than the {len(train_x)} training samples of "
                f"{cfg.dataset}; allowed: 1..{len(train_x)} or null",
                key="data.train_subset",
            )
        train_x, train_y = train_x[: cfg.train_subset], train_y[: cfg.train_subset]
    if cfg.normalize:
        # Statistics of the (possibly subset) training split only: the test split must not leak in.
        mean, std = train_x.mean(), train_x.std()
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    return Dataset(
        name=cfg.dataset,
        train=Split(train_x.contiguous().to(device), train_y.to(device)),
        test=Split(test_x.contiguous().to(device), test_y.to(device)),
        num_features=train_x.shape[1],
        num_classes=raw.num_classes,
        root="" if cfg.dataset == "synthetic" else str(root.path),
    )
