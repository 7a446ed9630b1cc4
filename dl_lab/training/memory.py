"""An up-front estimate of the memory a run needs, so an impossible model is refused before anything
is written instead of failing (or swapping the machine to a halt) in the middle of training. Torch-free.

The estimate counts float32 parameters, their gradients and the optimizer's per-parameter state, the
activations of one training batch (kept for backward) and of one evaluation batch, for every model of
a stack. It is an estimate: refusing needs it to exceed what is available, which leaves a margin.
"""

from __future__ import annotations

import os

from dl_lab.config.schema import ExperimentConfig

FLOAT = 4  # bytes
# Evaluation runs in chunks of this many samples (engine.evaluate): small enough that a stack of 10
# models 512 wide keeps each activation under 32 MiB, the largest block glibc's heap serves again
# (device.keep_freed_memory); a whole 10,000-image chunk gave each stacked activation an mmap of its
# own, fresh pages every epoch: 0.23 million page faults in a 1-epoch 2 x 5 grid, 3% of its time.
EVAL_ROWS = 1_000
STATE_PER_PARAMETER = {"adam": 2, "adamw": 2, "rmsprop": 3, "sgd": 1, "adagrad": 1}  # tensors of optimizer state


def planned_parameters(config: ExperimentConfig, features: int, classes: int) -> int:
    widths = [features, *config.model.hidden, classes]
    count = sum(a * b + b for a, b in zip(widths, widths[1:]))
    if config.model.batchnorm:
        count += 2 * sum(config.model.hidden)
    return count


def training_bytes(config: ExperimentConfig, features: int, classes: int, test_rows: int, models: int = 1) -> int:
    """Bytes to train ``models`` copies of ``config``'s model together (a stack) on this data."""
    widths = [features, *config.model.hidden, classes]
    weights = planned_parameters(config, features, classes) * (2 + STATE_PER_PARAMETER.get(config.optimizer.name, 3))
    # Per hidden layer a batch keeps pre-activations, activations, their gradients and batch-norm or
    # dropout intermediates: about 6 tensors of (batch, width); the input gather adds one of (batch, features).
    train_batch = config.data.batch_size * (features + 6 * sum(widths[1:]))
    eval_batch = min(EVAL_ROWS, max(test_rows, 1)) * 3 * max(widths[1:])
    return models * FLOAT * (weights + train_batch + eval_batch)


def available_cpu_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages; None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if size < 1000 or unit == "PB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} PB"
