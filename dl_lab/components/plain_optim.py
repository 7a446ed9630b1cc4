"""torch.optim without torch._dynamo: the same updates, 1.2 s less start-up per process.

torch.optim loads its compiler front end, ``torch._dynamo`` (1.2-1.4 s on a 2-core CPU, the largest
fixed cost of a short `dllab compare` after ``import torch`` itself), the first time an optimizer is
used, only for markers that matter under ``torch.compile``:

- ``Optimizer.add_param_group``, ``zero_grad``, ``state_dict`` and ``load_state_dict`` are wrapped by
  ``torch._disable_dynamo``, which imports torch._dynamo on the first call to build a "do not trace"
  wrapper and caches it on the function as ``__dynamo_disable``. Outside ``torch.compile`` that
  wrapper just calls the function, so where torch._dynamo is not loaded yet, ``skip_dynamo_import``
  caches the function itself.
- ``step`` runs inside ``_use_grad``, which imports torch._dynamo to place two graph breaks, and a
  profiling wrapper that calls step hooks. ``plain_step`` calls the optimizer's own ``step`` under
  ``torch.no_grad()``, as ``_use_grad`` does for a non-differentiable optimizer; it falls back to
  ``optimizer.step`` when hooks are registered or the optimizer is differentiable.

For fused Adam and AdamW (dllab's ``adam`` and ``adamw`` build them fused), ``plain_step`` goes one
step further: it calls the fused kernel itself, as ``torch.optim.adam._fused_adam`` does (add 1 to
each step count, then ``torch._fused_adam_``/``_fused_adamw_`` on the group's lists), without
``Adam.step``'s per-call Python (``_init_group``, grouping tensors by device, the dispatch through
``adam()``): about 0.1 ms of a 1.2-1.5 ms CPU step. Only where the result is the same bit for bit:
one device and dtype, every parameter with a dense gradient and initialized state, a float lr, and
none of amsgrad, capturable, differentiable, grad scaling; any other call takes ``Adam.step``.
``plain_zero_grad`` sets the optimizer's gradients to None as ``zero_grad(set_to_none=True)`` does,
without its profiling and dispatch wrappers.

dl_lab compiles only with train.compile (training/compiled.py), and then only the training step:
TorchDynamo traces the unwrapped ``step`` (or the direct fused call) inside it, and none of the four
methods above is called there. All of this relies on torch internals; where torch's layout differs
they change nothing (the import is paid as before; a torch without the fused kernels takes ``step``).
tests/test_engine.py checks that the updates are identical and that a run loads no torch._dynamo;
tests/test_compiled.py that compiled steps train what eager ones do.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

WRAPPED_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")
CACHE_ATTRIBUTE = "__dynamo_disable"  # where torch._compile._disable_dynamo keeps its wrapper


def skip_dynamo_import() -> None:
    """Let the ``torch._disable_dynamo``-wrapped Optimizer methods run without importing torch._dynamo."""
    import torch
    from torch.optim.optimizer import Optimizer

    if "torch._dynamo" in sys.modules:  # loaded anyway: keep torch's own wrappers
        return
    try:
        wrapper_code = torch._disable_dynamo(lambda: None).__code__  # what each wrapped method runs
    except (AttributeError, TypeError):
        return
    for name in WRAPPED_METHODS:
        method = getattr(Optimizer, name, None)
        original = getattr(method, "__wrapped__", None)
        if getattr(method, "__code__", None) is wrapper_code and original is not None:
            if getattr(original, CACHE_ATTRIBUTE, None) is None:
                setattr(original, CACHE_ATTRIBUTE, original)


def plain_step(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """A function doing ``optimizer.step()`` without torch.optim's per-call wrappers; ``optimizer.step``
    itself where step hooks are registered when it is made (the engine makes one per unit of work)."""
    import torch
    from torch.optim import optimizer as module

    step = inspect.unwrap(type(optimizer).step)
    hooks = (
        getattr(optimizer, "_optimizer_step_pre_hooks", None),
        getattr(optimizer, "_optimizer_step_post_hooks", None),
        getattr(module, "_global_optimizer_pre_hooks", None),
        getattr(module, "_global_optimizer_post_hooks", None),
    )
    if step is type(optimizer).step or optimizer.defaults.get("differentiable") or any(h is None or h for h in hooks):
        return optimizer.step
    fused_step = _fused_adam_step(optimizer, step)

    def call() -> None:
        with torch.no_grad():
            if fused_step is None or not fused_step():
                step(optimizer)

    return call


def _fused_adam_step(optimizer: torch.optim.Optimizer, step: Callable[..., object]) -> Callable[[], bool] | None:
    """For a fused torch.optim.Adam/AdamW: a function making ``step``'s update by calling the fused
    kernel directly and returning True, or returning False (nothing done) when this call needs
    ``step`` itself; None for any other optimizer."""
    import torch

    adam = torch.optim.Adam
    kernels = {False: getattr(torch, "_fused_adam_", None), True: getattr(torch, "_fused_adamw_", None)}
    if not isinstance(optimizer, adam) or step is not inspect.unwrap(adam.step) or None in kernels.values():
        return None
    state = optimizer.state

    def call() -> bool:
        if getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None:
            return False  # set by a grad scaler, and read by Adam.step at each call
        work = []
        for group in optimizer.param_groups:
            params, lr = group["params"], group["lr"]
            if (
                not group.get("fused")
                or group.get("amsgrad")
                or group.get("capturable")
                or group.get("differentiable")
                or not isinstance(lr, float)
            ):
                return False
            grads = [p.grad for p in params]
            held = [state.get(p) for p in params]
            if not params or any(g is None or g.is_sparse for g in grads) or not all(held):
                return False  # a parameter without a gradient is skipped by step; its first call initializes state
            kinds = {(t.device, t.dtype) for t in (*params, *grads)}
            if len(kinds) != 1:
                return False
            work.append((group, params, grads, held, lr))
        for group, params, grads, held, lr in work:
            steps = [s["step"] for s in held]
            beta1, beta2 = group["betas"]
            torch._foreach_add_(steps, 1)
            kernels[bool(group.get("decoupled_weight_decay"))](
                params,
                grads,
                [s["exp_avg"] for s in held],
                [s["exp_avg_sq"] for s in held],
                [],
                steps,
                amsgrad=False,
                lr=lr,
                beta1=float(beta1),
                beta2=float(beta2),
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
            )
        return True

    return call


def plain_zero_grad(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """A function setting every gradient of ``optimizer``'s parameters to None, as
    ``optimizer.zero_grad(set_to_none=True)`` does, without its per-call wrappers."""
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def clear() -> None:
        for param in params:
            param.grad = None

    return clear
