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

dl_lab compiles only with train.compile (training/compiled.py), and then only the training step:
TorchDynamo traces the unwrapped ``step`` inside it, and none of the four methods above is called
there. Both rely on torch internals; where torch's layout differs they change nothing (the import is
paid as before). tests/test_engine.py checks that the updates are identical and that a run loads no
torch._dynamo; tests/test_compiled.py that compiled steps train what eager ones do.
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

    def call() -> None:
        with torch.no_grad():
            step(optimizer)

    return call
