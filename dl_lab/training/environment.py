"""What a run ran on: recorded as env.json so a result can be traced to software and hardware."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import dl_lab
from dl_lab.training.device import (
    bf16_operands,
    bf16_products,
    cpu_flags,
    denormals_flushed,
    device_name,
    keeps_freed_memory,
    onednn_stacks,
)


def git_commit(folder: Path) -> dict[str, Any] | None:
    """The commit of the git checkout holding ``folder`` (dl_lab's source), if there is one."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def torchvision_version() -> str | None:
    """torchvision's __version__ (with its local label, e.g. '0.29.1+cu130'), read from its version.py
    without importing torchvision (over a second); None when it is not installed."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"].__version__
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        text = (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text(encoding="utf-8")
        return re.search(r"^__version__ = ['\"]([^'\"]+)['\"]", text, re.M).group(1)  # type: ignore[union-attr]
    except (OSError, AttributeError):
        return importlib.metadata.version("torchvision")


def environment(device: torch.device, data_root: str) -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "dl_lab": dl_lab.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision_version(),
        "device": str(device),
        "device_name": device_name(device),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cpu_flags": cpu_flags() if device.type == "cpu" else None,
        # what train.bf16_matmul rounds to bf16 here: the products (AMX), the operands (avx512_bf16 alone), or neither
        "bf16_products": bf16_products() if device.type == "cpu" else None,
        "bf16_operands": bf16_operands() if device.type == "cpu" else None,
        "onednn_stacks": onednn_stacks() if device.type == "cpu" else None,  # $DLLAB_ONEDNN_STACKS
        "flush_denormals": denormals_flushed() if device.type == "cpu" else None,  # $DLLAB_FLUSH_DENORMALS
        "keep_freed_memory": keeps_freed_memory(),  # $DLLAB_KEEP_FREED_MEMORY
        "cpu_threads": torch.get_num_threads(),
        "data_root": data_root or None,
        "git": git_commit(Path(dl_lab.__file__).resolve().parent),
    }
