"""Optimizers by name. Each entry lists the optimizer.* keys it reads; config validation refuses
non-default values for keys an optimizer would ignore (momentum on Adam, say)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from dl_lab.components.plain_optim import skip_dynamo_import
from dl_lab.components.registry import Registry
from dl_lab.config import choices

if TYPE_CHECKING:
    import torch

    from dl_lab.config.schema import OptimizerConfig

OptimizerBuilder = Callable[..., "torch.optim.Optimizer"]  # (params, OptimizerConfig, device, capturable, compiled)
OPTIMIZERS: Registry[OptimizerBuilder] = Registry(choices.OPTIMIZERS)

# Config keys that map one-to-one onto torch.optim keyword arguments.
_TORCH_NAMES = {
    "lr": "lr",
    "weight_decay": "weight_decay",
    "momentum": "momentum",
    "nesterov": "nesterov",
    "betas": "betas",
    "eps": "eps",
    "alpha": "alpha",
    "centered": "centered",
    "lr_decay": "lr_decay",
}


# Devices where a step compiled by train.compile takes the multi-tensor (foreach) optimizer instead of
# the fused kernel, so that inductor fuses the update itself. Measured with bench/optimizer_step.py
# (2026-11-27): on an NVIDIA H200, captured, the lab MLP's Adam step took 4.2 us compiled from foreach
# against 28.2 us fused (a stack of 10: 16.7 against 40.2) -- torch's fused kernel gives each block a
# 65,536-element chunk, so a model this small keeps 5 of 132 multiprocessors busy; on a 2-core AMD
# EPYC CPU compiled foreach took 2.0x fused's time, so the CPU keeps the fused kernel.
COMPILER_FUSES_UPDATE_ON = ("cuda",)


def _torch_optimizer(class_name: str, fused: bool = False) -> OptimizerBuilder:
    """Build torch.optim.<class_name> from the keys the registry entry says it reads."""

    def build(
        params: Iterable[torch.nn.Parameter],
        cfg: OptimizerConfig,
        device: torch.device,
        capturable: bool = False,
        compiled: bool = False,
    ):
        """``capturable``: keep all optimizer state on the device so step() can be captured in a CUDA graph;
        ``compiled``: step() will run inside torch.compile (train.compile)."""
        import inspect

        import torch

        used = OPTIMIZERS[cfg.name].params
        kwargs: dict[str, Any] = {}
        for key in used:
            value = getattr(cfg, key)
            if value is not None:  # None: keep torch's own default (eps differs per optimizer)
                kwargs[_TORCH_NAMES[key]] = tuple(value) if isinstance(value, (list, tuple)) else value
        skip_dynamo_import()
        cls = getattr(torch.optim, class_name)
        if capturable and "capturable" in inspect.signature(cls).parameters:
            kwargs["capturable"] = True  # (SGD has no such flag: its state is plain device tensors)
        params = list(params)
        if fused and compiled and device.type in COMPILER_FUSES_UPDATE_ON:
            return cls(params, foreach=True, **kwargs)  # inductor fuses the foreach update into a kernel or two
        if fused:
            # The fused kernel updates all parameters in one pass (CPU and CUDA): same maths, less overhead.
            try:
                return cls(params, fused=True, **kwargs)
            except (RuntimeError, TypeError):  # device or torch build without a fused kernel
                pass
        return cls(params, **kwargs)

    return build


# name (config.choices, which also lists the keys each reads), torch.optim class, fused kernel available
for _name, _class, _fused in [
    ("sgd", "SGD", False),
    ("adam", "Adam", True),
    ("adamw", "AdamW", True),
    ("rmsprop", "RMSprop", False),
    ("adagrad", "Adagrad", False),
]:
    OPTIMIZERS.register(_name)(_torch_optimizer(_class, _fused))
