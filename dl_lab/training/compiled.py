"""train.compile: the training step through torch.compile (TorchDynamo + inductor).

The whole step the engine runs per batch — gathering the batch, forward, backward (the hand-written
pass on CPU, autograd on CUDA), optimizer step, loss and correct count — is handed to torch.compile,
which fuses its elementwise work into fewer kernels. It is meant for the GPU, where a step of this
small MLP is a few dozen tiny kernels; on an H200, captured, it took 0.12-0.13 s an epoch against
0.13-0.14 eager, after about 14 s of compiling, with fused Adam's own kernel a third of the step. So
on CUDA a compiled step's optimizer is the foreach one, whose update inductor fuses
(components/optimizers.py). On a 2-core Intel Xeon it gave no speed-up, after 2-23 s of compiling
(docs/performance.md).

- Dropout masks: inductor would draw them with its own generator; ``fallback_random`` makes it call
  ATen's kernels on the run's own streams, so a compiled run draws the masks an eager one draws and
  its numbers equal the eager run's up to float rounding (tests/test_compiled.py).
- With train.cuda_graphs the compiled step is what the graph captures: compilation happens in the
  capture's warm-up steps.
- TorchDynamo costs 1.2-1.4 s to import, so it is imported here, only for runs that ask.
- Each unit's step is compiled afresh: TorchDynamo guards on the identity of the parameters a step
  reads, so no unit could reuse another's code, and after 8 such recompilations of one function it
  would quietly run it eagerly. So the compiler's caches are reset per unit (inductor's on-disk
  cache still serves the same kernels again: about 1 s a unit), and a step that would need more than 8
  compilations within its unit fails the run instead of training on uncompiled.
- A step the compiler cannot build (no C++ compiler for the CPU, no Triton for CUDA) fails the run
  with a message that names train.compile, never silently trains eagerly instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from dl_lab.training.cuda_graphs import StepBody, StepOut


class CompileFailed(RuntimeError):
    """torch.compile could not build the training step."""


# What torch.compile raises when it cannot build a step; torch adds and renames these between releases
# (TritonUnavailableError is not in torch 2.11), so each is taken where the installed torch has it.
COMPILER_FAILURES = ("BackendCompilerFailed", "TritonUnavailableError", "FailOnRecompileLimitHit")


def compiler_failures(exc_module: Any) -> tuple[type[BaseException], ...]:
    """The classes of COMPILER_FAILURES that ``exc_module`` (torch._dynamo.exc) defines."""
    return tuple(getattr(exc_module, name) for name in COMPILER_FAILURES if hasattr(exc_module, name))


def compile_step(body: StepBody, backend: str | Callable[..., Any] = "inductor") -> StepBody:
    """``body`` compiled (on its first call); a compiler failure raises CompileFailed."""
    import torch._dynamo  # 1.2-1.4 s: only for runs with train.compile
    import torch._inductor.config as inductor_config

    failures = compiler_failures(torch._dynamo.exc)
    torch._dynamo.reset()  # the last unit's code guards on its own parameters: it can never serve this one
    torch._dynamo.config.fail_on_recompile_limit_hit = True  # never eager behind the user's back
    inductor_config.fallback_random = True  # the masks eager steps draw, from the run's own streams
    # a CPU-only torch next to a CUDA toolkit logs "No CUDA runtime is found" when inductor looks for compilers
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    compiled = torch.compile(body, backend=backend, dynamic=False)

    def step(index: torch.Tensor) -> StepOut:
        try:
            return compiled(index)
        except failures as error:
            cause = getattr(error, "inner_exception", None) or error  # the backend's own error
            reason = f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0]}"
            raise CompileFailed(
                f"train.compile: torch.compile could not compile the training step ({reason}); "
                "set train.compile: false to train without it"
            ) from error

    return step
