"""train.compile: the training step through torch.compile trains what the eager step trains, and a
step the compiler cannot build fails the run with a message that names the key (CPU; inductor
compiles C++ here, 6-20 s per test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import sets, with_section
from test_batched import assert_same_training, config

from dl_lab.cli.app import app
from dl_lab.components import optimizers
from dl_lab.components.datasets import DataRoot, load_dataset
from dl_lab.training import compiled, engine
from dl_lab.training.engine import Observer, train
from dl_lab.training.stack import train_batched

CPU = torch.device("cpu")


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("stacked", [False, True], ids=["one model", "a stack"])
def test_a_compiled_step_trains_what_the_eager_step_trains(stacked):
    """Dropout included (inductor's fallback_random: the masks come from the runs' own streams), batch
    norm and two activations in the stack; numbers equal up to float rounding."""
    if stacked:
        configs = [
            config(seed, step_grad_norms=True, activation=activation, batchnorm=True, dropout=0.2)
            for seed, activation in ((1, "relu"), (2, "sigmoid"), (3, "relu"))
        ]
    else:
        configs = [config(1, step_grad_norms=True, dropout=0.3)]
    data = load_dataset(configs[0].data, DataRoot(Path("/x"), "t"), CPU)

    def run(configs):
        return train_batched(configs, data, CPU, Observer()) if stacked else [train(configs[0], data, CPU, Observer())]

    eager = run(configs)
    before = compiled_graphs()
    fused = run([with_section(c, "train", compile=True) for c in configs])
    assert compiled_graphs() > before  # the step really went through torch.compile
    assert [r.status for r in fused] == ["completed"] * len(configs), fused[0].error
    for one, other in zip(eager, fused, strict=True):
        assert_same_training(one, other)


def test_every_unit_of_a_long_comparison_trains_compiled_past_the_compilers_recompile_limit():
    """TorchDynamo guards on the parameters' identity: without a fresh start per unit, the ninth unit
    of a process would quietly train uncompiled (its recompile limit is 8)."""
    import torch._dynamo

    configs = [
        with_section(config(seed, hidden=[16]), "train", compile=True)
        for seed in range(torch._dynamo.config.recompile_limit + 2)
    ]
    data = load_dataset(configs[0].data, DataRoot(Path("/x"), "t"), CPU)
    for run in configs:
        before = compiled_graphs()
        result = train(run, data, CPU, Observer())
        assert result.status == "completed", result.error
        assert compiled_graphs() > before, f"seed {run.seed} trained uncompiled"


def refuse(graph, example_inputs):
    raise RuntimeError("no C++ compiler found")


def test_a_step_the_compiler_cannot_build_fails_the_run_and_says_how_to_train_without_it(
    runner, fast_config, tmp_path, monkeypatch
):
    monkeypatch.setattr(engine, "compile_step", lambda body: compiled.compile_step(body, backend=refuse))
    result = runner.invoke(
        app, ["train", "-c", str(fast_config), "--runs-dir", str(tmp_path), *sets("train.compile=true")]
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "train.compile: torch.compile could not compile the training step" in result.stderr
    assert "no C++ compiler found" in result.stderr and "set train.compile: false" in result.stderr
    [summary] = [json.loads(path.read_text()) for path in tmp_path.glob("*/summary.json")]
    assert summary["status"] == "failed" and summary["final"] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("stacked", [False, True], ids=["one model", "a stack"])
def test_a_compiled_step_captured_as_a_cuda_graph_trains_what_the_eager_step_trains(stacked):
    """On CUDA, what train.compile is for: compiled in the capture's warm-up, then replayed."""
    device = torch.device("cuda")
    seeds = (1, 2, 3) if stacked else (1,)
    configs = [config(seed, batchnorm=True, dropout=0.2).model_copy(update={"device": "cuda"}) for seed in seeds]
    data = load_dataset(configs[0].data, DataRoot(Path("/x"), "t"), device)
    graphed = [with_section(c, "train", cuda_graphs=True) for c in configs]

    def run(configs):
        if stacked:
            return train_batched(configs, data, device, Observer())
        return [train(configs[0], data, device, Observer())]

    eager, fused = run(graphed), run([with_section(c, "train", compile=True) for c in graphed])
    assert [r.status for r in fused] == ["completed"] * len(configs), fused[0].error
    for one, other in zip(eager, fused, strict=True):
        for a, b in zip(one.history, other.history, strict=True):
            assert (b.train_loss, b.test_loss) == pytest.approx((a.train_loss, a.test_loss), rel=1e-2)
            assert b.test_acc == pytest.approx(a.test_acc, abs=5e-3)


def test_a_torch_without_one_of_the_compiler_error_classes_still_compiles_and_reports_failures(monkeypatch):
    """torch 2.11 has no TritonUnavailableError: every compiled run there failed on an ImportError
    (found on an H200). The classes torch has are caught; the missing one is not needed."""
    import torch._dynamo.exc as exc

    monkeypatch.delattr(exc, "TritonUnavailableError", raising=False)
    assert compiled.compiler_failures(exc) == (exc.BackendCompilerFailed, exc.FailOnRecompileLimitHit)
    weight = torch.ones(3)

    def body(index):
        return engine.StepOut(weight.index_select(0, index).sum(), index.sum(), None)

    index = torch.tensor([0, 2])
    with pytest.raises(compiled.CompileFailed, match="no C.. compiler found.*set train.compile: false"):
        compiled.compile_step(body, backend=refuse)(index)
    assert compiled.compile_step(body, backend="eager")(index).loss.item() == 2.0


@pytest.mark.parametrize("stacked", [False, True], ids=["one model", "a stack"])
def test_where_the_compiler_fuses_the_update_a_compiled_step_takes_foreach_adam_and_trains_what_eager_trains(
    stacked, monkeypatch
):
    """On CUDA a compiled step's Adam is the multi-tensor one, whose update inductor fuses (fused Adam's
    own kernel is 7x slower there for a model this small); eager steps keep the fused kernel. Tried on
    the CPU by listing it where the compiler fuses the update."""
    built: list[torch.optim.Optimizer] = []

    class Recorded(torch.optim.Adam):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(torch.optim, "Adam", Recorded)
    monkeypatch.setattr(optimizers, "COMPILER_FUSES_UPDATE_ON", ("cpu",))
    configs = [config(seed, hidden=[16], dropout=0.2) for seed in ((1, 2) if stacked else (1,))]
    data = load_dataset(configs[0].data, DataRoot(Path("/x"), "t"), CPU)

    def run(configs):
        return train_batched(configs, data, CPU, Observer()) if stacked else [train(configs[0], data, CPU, Observer())]

    eager = run(configs)
    assert [(o.defaults["fused"], o.defaults["foreach"]) for o in built] == [(True, None)]
    before = compiled_graphs()
    fused = run([with_section(c, "train", compile=True) for c in configs])
    assert compiled_graphs() > before
    assert [(o.defaults["fused"], o.defaults["foreach"]) for o in built[1:]] == [(None, True)]
    assert [r.status for r in fused] == ["completed"] * len(configs), fused[0].error
    for one, other in zip(eager, fused, strict=True):
        assert_same_training(one, other)
