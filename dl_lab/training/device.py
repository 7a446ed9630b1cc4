"""Resolve the config's device string once, at the edge, into a torch.device."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from collections.abc import Mapping, Sequence

import torch

from dl_lab.errors import ConfigError, DeviceError

ENV_FLUSH_DENORMALS = "DLLAB_FLUSH_DENORMALS"
# CPU vendors where flushing was measured to pay (bench/denormals.py; docs/performance.md): the
# choice per CPU kind, never extended to one that was not measured.
FLUSH_MEASURED_ON = ("GenuineIntel",)
ENV_ONEDNN_STACKS = "DLLAB_ONEDNN_STACKS"
# CPU vendors where a stack's float32 matmuls were measured faster through oneDNN's float32 kernels
# than MKL's (bench/matmul_kernels.py; docs/performance.md), on CPUs where that keeps float32 products.
ONEDNN_STACKS_MEASURED_ON = ("AuthenticAMD",)
# ... for models whose hidden layers are all at least this wide: on the 2-core AMD EPYC narrower ones
# were slower through oneDNN (784-32-32-10: 1.10-1.23x the time), 64-128 wide about even (0.95-0.96x),
# 256-512 wide faster (0.79-0.91x).
ONEDNN_STACKS_MIN_WIDTH = 128
_stacks = {"onednn": False}  # this process's choice (choose_stack_matmuls)
ENV_KEEP_FREED_MEMORY = "DLLAB_KEEP_FREED_MEMORY"
# CPU vendors where keeping freed memory was measured to pay (bench/freed_memory.py; docs/performance.md):
# on the 2-core AMD EPYC the 2 x 5 comparison's stack trained in 0.69x the time (median of 3 pairs;
# bf16 0.48x), with 0.14x the page faults; lone runs about 1x.
KEEP_FREED_MEASURED_ON = ("AuthenticAMD",)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
# Blocks up to 32 MiB (the most glibc's own dynamic threshold reaches on 64-bit) come from the heap and
# are reused; larger ones stay mmapped, since a heap holding those too grew the 784-512x4 presets'
# peak memory by a fifth (docs/performance.md). Up to 1 GiB of free heap is kept, not given back.
MMAP_THRESHOLD_BYTES = 32 * 2**20
TRIM_THRESHOLD_BYTES = 2**30
_malloc = {"keeps_freed": False}  # this process's state (keep_freed_memory): once set, kept
# The environment settings that choose this process's CPU float modes and allocator: checked once per
# command, and handed to Ray's workers so that they choose as the driver would.
PROCESS_SWITCHES = (ENV_FLUSH_DENORMALS, ENV_ONEDNN_STACKS, ENV_KEEP_FREED_MEMORY)


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


NOTABLE_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16")  # fp32 width; bf16 instructions (bf16_products, bf16_operands)


def cpu_flags() -> list[str]:
    """Which of NOTABLE_FLAGS this CPU has (Linux /proc/cpuinfo; [] where it cannot be told)."""
    flags = _cpuinfo_field("flags").split()
    return [flag for flag in NOTABLE_FLAGS if flag in flags]


def cpu_kind() -> str:
    """The CPU's name and notable flags, e.g. 'Intel(R) Xeon(R) Processor (avx512f, avx512_bf16, amx_bf16)'."""
    return f"{cpu_name()} ({', '.join(cpu_flags()) or 'no avx512f, no native bf16'})"


@functools.cache
def bf16_products() -> bool:
    """Whether torch's float32 matmul precision "medium" (``train.bf16_matmul``) rounds a CPU matmul's
    products to bf16 on this machine. The CPU's flags cannot tell: oneDNN does it where it has a bf16
    kernel for the CPU (AMX), while on an AMD EPYC with avx512_bf16 but no AMX it keeps float32 products
    and only picks its own float32 kernel (bench/matmul_kernels.py). So it is probed, once per process,
    at the shapes of the models' matmuls (one model's 784-256 layer and a stack of them): 1 + 2**-10 is
    no bf16 number, so 784 products of it and 1 sum to 784 with bf16 products, 784.765625 without."""
    x, w = torch.full((100, 784), 1 + 2**-10), torch.ones(784, 256)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        stacked = torch.bmm(x.expand(2, -1, -1).contiguous(), w.expand(2, -1, -1).contiguous())
        sums = [torch.mm(x, w)[0, 0], stacked[0, 0, 0]]
    finally:
        torch.set_float32_matmul_precision(previous)
    return any(float(total) != 784 * (1 + 2**-10) for total in sums)


@functools.cache
def bf16_operands() -> bool:
    """Whether ``train.bf16_matmul`` rounds the operands of the hand-written pass's matmuls to bf16 on this
    CPU (fused.Bf16LinearOp): where the CPU multiplies bf16 natively (avx512_bf16) but "medium" precision
    keeps float32 products (bf16_products false: an AMD EPYC, no AMX). There bf16 matmuls of the lab
    MLP's shapes ran 2.0-2.3x as fast as float32 ones (345-430 against 153-187 GFLOP/s), and a
    training step's matmuls, casts included, in 0.6-0.8x the time (docs/performance.md)."""
    return "avx512_bf16" in cpu_flags() and not bf16_products()


def matmul_operands_bf16(bf16_matmul: bool, device: torch.device) -> bool:
    """Whether a unit's hand-written pass multiplies bf16 operands: train.bf16_matmul asked, on a CPU
    where that is how it takes effect (bf16_operands); elsewhere the key acts through torch's
    "medium" precision alone (configure_math), or not at all (CUDA)."""
    return bf16_matmul and device.type == "cpu" and bf16_operands()


def flush_denormals(device: torch.device, environ: Mapping[str, str]) -> bool:
    """Treat float32 values below 1.2e-38 (denormals) as zero in this process's CPU arithmetic
    (FTZ/DAZ) where that pays, and say whether it is on. Denormals appear where probabilities or Adam's
    moments decay (ReLU under N(0, 1) init); each one costs the CPU a slow microcode path. They are far
    below anything a float32 weight update can register: every preset measured trains to the same
    numbers, bit for bit; the relu preset in 0.78x the time on an Intel Xeon (bench/denormals.py).

    $DLLAB_FLUSH_DENORMALS: ``auto`` (default: on for a CPU device of a vendor in FLUSH_MEASURED_ON),
    ``on`` or ``off``. The flag belongs to a thread and threads started later inherit it, so this is
    called before the data are loaded, before torch starts its worker threads."""
    choice = switch(environ, ENV_FLUSH_DENORMALS)
    on = choice == "on" or (choice == "auto" and device.type == "cpu" and cpu_vendor() in FLUSH_MEASURED_ON)
    return torch.set_flush_denormal(on) and on  # False where the CPU cannot flush


def choose_stack_matmuls(device: torch.device, environ: Mapping[str, str]) -> bool:
    """Whether a stack's float32 matmuls (the batched engine on the CPU) go through oneDNN's float32
    kernels instead of MKL's, and set that for this process (stack_precision reads it). torch does so under its
    float32 matmul precision "medium" where oneDNN has no bf16 kernel for the CPU: the products stay
    float32, rounded in another order (bf16_products probes it; where they would be rounded to bf16 it
    stays off). On an AMD EPYC a stack of 5-10 784-256-256-10 models trains in 0.79-0.87x the time,
    784-512x4-10 in 0.91x, but one model in 0.98x and narrow models slower (bench/matmul_kernels.py),
    so lone runs and models with a hidden layer under ONEDNN_STACKS_MIN_WIDTH keep MKL's.

    $DLLAB_ONEDNN_STACKS: ``auto`` (default: on for a CPU of a vendor in ONEDNN_STACKS_MEASURED_ON),
    ``on`` (any CPU where the products stay float32) or ``off``. Called after flush_denormals: the
    probe starts torch's worker threads."""
    choice = switch(environ, ENV_ONEDNN_STACKS)
    wanted = choice == "on" or (choice == "auto" and cpu_vendor() in ONEDNN_STACKS_MEASURED_ON)
    on = device.type == "cpu" and wanted and not bf16_products()
    _stacks["onednn"] = on
    return on


def stack_precision(hidden: Sequence[int]) -> str:
    """torch's float32 matmul precision for a stack of float32 runs on the CPU whose models have these
    hidden layer widths (choose_stack_matmuls, ONEDNN_STACKS_MIN_WIDTH)."""
    wide = min(hidden, default=0) >= ONEDNN_STACKS_MIN_WIDTH
    return "medium" if _stacks["onednn"] and wide else "highest"


def onednn_stacks() -> bool:
    """Whether this process sends wide enough stacks' float32 matmuls through oneDNN (for env.json)."""
    return _stacks["onednn"]


def configure_process(device: torch.device, environ: Mapping[str, str]) -> None:
    """This process's CPU float modes and allocator for training on ``device``, as the environment
    (PROCESS_SWITCHES) asks: called before the data are loaded, before torch starts its worker threads."""
    flush_denormals(device, environ)
    choose_stack_matmuls(device, environ)  # after flush_denormals: its probe starts torch's threads
    keep_freed_memory(device, environ)


def keep_freed_memory(device: torch.device, environ: Mapping[str, str]) -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of giving it back to the kernel, where
    that pays, and say whether this process does. A training step on the CPU allocates and frees
    megabytes of tensors (a stack's weight gradients, its batch, bf16 copies of its operands). glibc
    hands blocks over its mmap threshold straight back (munmap) and trims the free top of its heaps
    beyond its trim threshold; its dynamic thresholds did not prevent either under torch's worker
    threads: a 1-epoch 2 x 5 comparison page-faulted 0.4-4.3 million times (it varies from run to
    run), each fault a fresh zeroed page from the kernel, a microsecond or two in a VM. Fixing the
    thresholds (MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES) keeps those pages in the process: a seventh
    of the faults, and the stack trained in 0.69x the time on the 2-core AMD EPYC
    (bench/freed_memory.py). The process's resident memory no longer drops below its peak, by up to
    1 GiB, until it exits, and its peak grew by 1-3%. Where the C library is not glibc it changes
    nothing (False).

    $DLLAB_KEEP_FREED_MEMORY: ``auto`` (default: on for a CPU device of a vendor in
    KEEP_FREED_MEASURED_ON), ``on`` or ``off``. glibc's dynamic thresholds cannot be restored, so once
    on it stays on for the process: a later ``off`` returns True."""
    choice = switch(environ, ENV_KEEP_FREED_MEMORY)
    wanted = choice == "on" or (choice == "auto" and device.type == "cpu" and cpu_vendor() in KEEP_FREED_MEASURED_ON)
    if wanted and not _malloc["keeps_freed"]:
        _malloc["keeps_freed"] = _raise_malloc_thresholds()
    return _malloc["keeps_freed"]


def keeps_freed_memory() -> bool:
    """Whether this process has glibc keep freed memory (keep_freed_memory; for env.json)."""
    return _malloc["keeps_freed"]


def _raise_malloc_thresholds() -> bool:
    """mallopt both thresholds up; whether glibc took them."""
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):  # no confstr (Windows) or no such name (macOS, musl)
        return False
    if not libc.startswith("glibc"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1


def switch(environ: Mapping[str, str], name: str) -> str:
    """An auto/on/off environment setting, checked: auto where unset."""
    value = environ.get(name, "auto")
    if value.strip().lower() not in ("auto", "on", "off"):
        raise ConfigError(f"${name}={value!r} is not a setting; allowed: auto (default), on, off")
    return value.strip().lower()


def denormals_flushed() -> bool:
    """Whether this thread flushes denormals (a value that would be one reads back as zero)."""
    return torch.tensor(1e-39).item() == 0.0


def cpu_vendor() -> str:
    """/proc/cpuinfo's vendor_id (GenuineIntel, AuthenticAMD), '' where it cannot be told."""
    return _cpuinfo_field("vendor_id")


def cpu_name() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "cpu"


def _cpuinfo_field(name: str) -> str:
    """The first value of ``name`` in /proc/cpuinfo (Linux); '' where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a new run on ``device`` (None when it cannot be told)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    from dl_lab.training.memory import available_cpu_bytes

    return available_cpu_bytes()
