"""What a run ran on: recorded as env.json so a result can be traced to software and hardware."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torchvision

import dl_lab
from dl_lab.training.device import device_name


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


def environment(device: torch.device, data_root: str) -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "dl_lab": dl_lab.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": str(device),
        "device_name": device_name(device),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cpu_threads": torch.get_num_threads(),
        "data_root": data_root or None,
        "git": git_commit(Path(dl_lab.__file__).resolve().parent),
    }
