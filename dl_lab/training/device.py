"""Resolve the config's device string once, at the edge, into a torch.device."""

from __future__ import annotations

import platform

import torch

from dl_lab.errors import DeviceError


def resolve_device(spec: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA where there is none is a user error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"{spec!r} was asked for, but this machine has no usable CUDA GPU "
                f"(torch {torch.__version__}); allowed here: auto, cpu",
                key="device",
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(
                f"{spec!r} does not exist; this machine has {count} CUDA device(s): cuda:0..cuda:{count - 1}",
                key="device",
            )
    return device


def device_name(device: torch.device) -> str:
    """Human-readable hardware name, recorded in env.json and summary.json."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a new run on ``device`` (None when it cannot be told)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    from dl_lab.training.memory import available_cpu_bytes

    return available_cpu_bytes()
