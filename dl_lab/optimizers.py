"""Optimizers by name. Each entry lists the optimizer.* keys it reads; config validation refuses
non-default values for keys an optimizer would ignore (momentum on Adam, say)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

from dl_lab.registry import Registry

if TYPE_CHECKING:
    import torch

    from dl_lab.config import OptimizerConfig

OptimizerBuilder = Callable[[Iterable["torch.nn.Parameter"], "OptimizerConfig", "torch.device"], "torch.optim.Optimizer"]
OPTIMIZERS: Registry[OptimizerBuilder] = Registry("optimizer")


@OPTIMIZERS.register("sgd", "stochastic gradient descent, optional (Nesterov) momentum",
                     params=("lr", "weight_decay", "momentum", "nesterov"))
def _sgd(params, cfg, device):
    import torch

    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov)


@OPTIMIZERS.register("adam", "Adam (the lab's optimizer)", params=("lr", "weight_decay", "betas", "eps"))
def _adam(params, cfg, device):
    import torch

    return _fused_if_supported(torch.optim.Adam, params, device, lr=cfg.lr, betas=tuple(cfg.betas),
                               eps=cfg.eps, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw", "Adam with decoupled weight decay", params=("lr", "weight_decay", "betas", "eps"))
def _adamw(params, cfg, device):
    import torch

    return _fused_if_supported(torch.optim.AdamW, params, device, lr=cfg.lr, betas=tuple(cfg.betas),
                               eps=cfg.eps, weight_decay=cfg.weight_decay)


def _fused_if_supported(cls, params, device, **kwargs):
    """The fused kernel updates all parameters in one pass (CPU and CUDA); same maths, less overhead."""
    params = list(params)
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # device or torch build without a fused kernel
        return cls(params, **kwargs)
