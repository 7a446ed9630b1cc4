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


def hardware(device: torch.device) -> str:
    """For benchmark output: the GPU's name, or the CPU's with the features that decide its speed here."""
    return device_name(device) if device.type == "cuda" else cpu_kind()


NOTABLE_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16")  # fp32 width; native bf16 (train.bf16_matmul)


def cpu_flags() -> list[str]:
    """Which of NOTABLE_FLAGS this CPU has (Linux /proc/cpuinfo; [] where it cannot be told)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in NOTABLE_FLAGS if flag in flags]


def cpu_kind() -> str:
    """The CPU's name and notable flags, e.g. 'Intel(R) Xeon(R) Processor (avx512f, avx512_bf16, amx_bf16)'."""
    return f"{cpu_name()} ({', '.join(cpu_flags()) or 'no avx512f, no native bf16'})"


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
