"""The batched engine: same numbers as training the runs one by one, grouping, fallback, compare default."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from conftest import sets, with_section

from dl_lab.cli.app import app
from dl_lab.components.datasets import DataRoot, load_dataset
from dl_lab.components.model import build_mlp
from dl_lab.config.schema import ExperimentConfig
from dl_lab.training.engine import Observer, SequentialEngine, train
from dl_lab.training.stack import BatchedEngine, train_batched
from dl_lab.training.stackable import batch_key, plan_batches

CPU = torch.device("cpu")


def config(seed: int, step_grad_norms: bool = False, **model) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "name": "b",
            "seed": seed,
            "device": "cpu",
            "data": {"dataset": "synthetic", "train_subset": 1000},
            "model": {"hidden": [64, 32], "init": "xavier_uniform", **model},
            "train": {"epochs": 2, "step_grad_norms": step_grad_norms},
        }
    )


def numbers(result) -> list[tuple[float, ...]]:
    return [(m.train_loss, m.train_acc, m.test_loss, m.test_acc) for m in result.history]


@pytest.mark.parametrize(
    "model",
    [
        {},
        {"dropout": 0.3, "activation": "tanh"},  # each model continues its own dropout RNG stream
        {"batchnorm": {"position": "after"}, "dropout": 0.2},  # per-model batch statistics
        {"activation": "sigmoid", "batchnorm": True, "init": "he_uniform"},
        {"activation": ["relu", "sigmoid", "relu"], "dropout": 0.2},  # a stack of two activations
    ],
)
def test_batched_training_matches_sequential_training_run_by_run(model):
    model = dict(model)  # the parameter is shared between runs of the test
    activations = model.pop("activation", "relu")
    activations = [activations] * 3 if isinstance(activations, str) else activations
    configs = [config(seed, step_grad_norms=True, activation=a, **model) for seed, a in zip((1, 2, 3), activations)]
    data = load_dataset(configs[0].data, DataRoot(Path("/x"), "t"), CPU)
    sequential = [train(c, data, CPU, Observer()) for c in configs]
    clock = time.perf_counter()
    batched = train_batched(configs, data, CPU, Observer())
    elapsed = time.perf_counter() - clock
    assert [r.status for r in batched] == ["completed"] * 3
    assert all(0 < r.seconds <= elapsed / 3 for r in batched)  # each run's share of the wall time
    for one, together in zip(sequential, batched, strict=True):
        assert_same_training(one, together)
        assert len(together.final.diagnostics.train_grad_norm) == 3  # step_grad_norms: one mean per Linear layer
    assert numbers(batched[0]) != numbers(batched[1])  # the seeds really differ


def assert_same_training(one, together) -> None:
    """Equal up to float rounding (bmm vs addmm sum in another order): losses to 1e-3 relative,
    accuracies to two samples in a thousand (test images on the decision boundary may flip: two did
    between a stack's eager and compiled steps on an AMD EPYC)."""
    for a, b in zip(numbers(one), numbers(together), strict=True):
        assert (b[0], b[2]) == pytest.approx((a[0], a[2]), rel=1e-3)
        assert (b[1], b[3]) == pytest.approx((a[1], a[3]), abs=2.5e-3)
    for a, b in zip(one.history, together.history, strict=True):  # gradients: rounding grows through backward
        assert b.diagnostics.grad_norm == pytest.approx(a.diagnostics.grad_norm, rel=1e-2)
        assert len(b.diagnostics.train_grad_norm) == len(a.diagnostics.train_grad_norm)
        assert b.diagnostics.train_grad_norm == pytest.approx(a.diagnostics.train_grad_norm, rel=1e-2)


def test_runs_differing_in_init_or_dropout_p_batch_together_others_do_not():
    base = config(1)
    same = [base, config(2, init="he_normal"), config(3, init="normal", init_gain="auto")]
    assert len({batch_key(c) for c in same}) == 1
    assert batch_key(config(1, dropout=0.2)) == batch_key(config(2, dropout=0.5))
    assert batch_key(config(1, dropout=0.2)) != batch_key(base)  # no dropout layer at all
    assert batch_key(config(1, activation="tanh")) == batch_key(base)  # activations apply elementwise
    assert batch_key(config(1, activation="leaky_relu", leaky_relu_slope=0.2)) == batch_key(base)
    assert batch_key(config(1, hidden=[64, 64])) != batch_key(base)
    other_lr = with_section(base, "optimizer", lr=0.01)
    assert batch_key(other_lr) != batch_key(base)
    lone = config(1, hidden=[64])
    assert plan_batches([base, lone, config(2)]) == [[0, 2], [1]]
    assert plan_batches([base, lone, config(2)], min_size=1) == [[0, 2], [1]]


def test_a_stack_keeps_each_activations_runs_together_in_first_seen_order():
    tanh, relu = config(1, activation="tanh"), config(1)
    leaky = [config(1, activation="leaky_relu", leaky_relu_slope=slope) for slope in (0.1, 0.2)]
    assert plan_batches([tanh, relu, tanh, relu, leaky[0], leaky[1], leaky[0]]) == [[0, 2, 1, 3, 4, 6, 5]]


def test_engine_falls_back_to_sequential_for_lone_runs_and_keeps_order():
    configs = [config(1), config(1, activation="tanh"), config(2)]
    data = load_dataset(configs[0].data, DataRoot(Path("/x"), "t"), CPU)
    batched = BatchedEngine().run(configs, data, CPU, Observer())
    sequential = SequentialEngine().run(configs, data, CPU, Observer())
    for a, b in zip(sequential, batched, strict=True):
        assert_same_training(a, b)


def test_a_diverging_model_does_not_disturb_the_others():
    configs = [config(1), config(2)]
    data = load_dataset(configs[0].data, DataRoot(Path("/x"), "t"), CPU)
    hot = [with_section(c, "optimizer", name="sgd", lr=50.0) for c in configs]
    results = train_batched(hot, data, CPU, Observer())
    assert all(r.status in ("diverged", "completed") for r in results)
    assert any(r.status == "diverged" for r in results)
    diverged = next(r for r in results if r.status == "diverged")
    assert diverged.diverged_at["epoch"] == 1
    assert f"at epoch 1, step {diverged.diverged_at['step']}" in diverged.error
    assert "the training loss became nan" in diverged.error or "(limit 1e+08)" in diverged.error


@pytest.mark.parametrize("stacked", [False, True], ids=["one model", "a stack"])
def test_a_run_whose_evaluation_turns_nan_is_diverged_not_completed(monkeypatch, stacked):
    """Training losses finite, evaluated ones nan (a batch-norm running variance poisoned in the second
    model built): that run ends as diverged at the epoch's end, never recorded with a nan; a stack's
    other run trains on as it would alone."""
    import dl_lab.training.engine as engine

    built = []

    def build(*args):
        model = build_mlp(*args)
        built.append(model)
        if len(built) == 2:
            for layer in model:
                if isinstance(layer, torch.nn.BatchNorm1d):
                    layer.running_var.fill_(float("nan"))
        return model

    configs = [config(seed, batchnorm=True) for seed in (1, 2)]
    data = load_dataset(configs[0].data, DataRoot(Path("/x"), "t"), CPU)
    clean = train(configs[0], data, CPU, Observer())
    monkeypatch.setattr(engine, "build_mlp", build)
    if stacked:
        results = train_batched(configs, data, CPU, Observer())
    else:
        results = [train(c, data, CPU, Observer()) for c in configs]
    good, poisoned = results
    assert poisoned.status == "diverged" and poisoned.history == ()
    assert poisoned.error == "the test loss became nan at epoch 1 (the training loss stayed finite)"
    assert poisoned.diverged_at == {"epoch": 1, "step": poisoned.plan.steps}
    assert good.status == "completed"
    assert_same_training(clean, good)


def test_compare_uses_the_batched_engine_by_default_and_says_so(runner, tmp_path):
    args = [
        "compare",
        "relu",
        "sigmoid",
        "--seeds",
        "3",
        *sets("device=cpu", "data.dataset=synthetic", "data.train_subset=1000", "train.epochs=1"),
        "--runs-dir",
        str(tmp_path),
        "--json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "engine batched: 1 stacked group(s) (6 runs)" in result.stderr  # relu and sigmoid share the matmuls
    summary = json.loads(result.stdout)
    assert summary["engine"].startswith("batched") and all(len(v["finals"]) == 3 for v in summary["variants"])
    sequential = runner.invoke(
        app, [*args[:-3], "--runs-dir", str(tmp_path / "seq"), "--json", "--engine", "sequential"]
    )
    assert "engine sequential: 6 runs one by one" in sequential.stderr
    same = json.loads(sequential.stdout)
    for a, b in zip(summary["variants"], same["variants"], strict=True):
        for seed in a["finals"]:
            assert a["finals"][seed]["test_acc"] == pytest.approx(b["finals"][seed]["test_acc"], abs=2e-3)


def test_stacks_variant_gives_each_variant_its_stack_and_a_resume_keeps_the_planned_stacks(runner, tmp_path):
    args = ["compare", "relu", "sigmoid", "lab09/he", "--seeds", "2", "--stacks", "variant"]
    args += [*sets("device=cpu", "data.dataset=synthetic", "data.train_subset=500", "train.epochs=1")]
    result = runner.invoke(app, [*args, "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "engine batched: 3 stacked group(s) (2 + 2 + 2 runs)" in result.stderr
    [folder] = tmp_path.glob("compare-*")
    plan = json.loads((folder / "plan.json").read_text())
    runs = [run["folder"] for run in plan["runs"]]
    assert [sorted(runs[i] for i in unit["runs"]) for unit in plan["units"]] == [
        ["relu-seed777", "relu-seed778"],
        ["sigmoid-seed777", "sigmoid-seed778"],
        ["he-seed777", "he-seed778"],
    ]
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    again = runner.invoke(app, ["compare", "--resume", str(folder), "--stacks", "architecture"])
    assert again.exit_code == 2 and "allowed: no --stacks with --resume" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
    alone = runner.invoke(app, [*args, "--engine", "sequential", "--runs-dir", str(tmp_path / "none")])
    assert alone.exit_code == 2 and "--engine sequential trains every run alone" in alone.stderr
    assert not (tmp_path / "none").exists()  # refused before anything is written


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batched_training_on_cuda_matches_sequential_without_dropout():
    device = torch.device("cuda")
    configs = [config(seed, batchnorm=True).model_copy(update={"device": "cuda"}) for seed in (1, 2)]
    data = load_dataset(configs[0].data, DataRoot(Path("/x"), "t"), device)
    sequential = [train(c, data, device, Observer()) for c in configs]
    batched = train_batched(configs, data, device, Observer())
    for one, together in zip(sequential, batched, strict=True):
        assert together.status == "completed"
        for a, b in zip(numbers(one), numbers(together), strict=True):
            assert b == pytest.approx(a, rel=1e-2, abs=5e-3)  # TF32/cuBLAS algorithms differ between bmm and addmm


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batched_training_with_cuda_graphs_matches_eager_batched_training():
    device = torch.device("cuda")
    configs = [
        config(seed, step_grad_norms=True, batchnorm=True).model_copy(update={"device": "cuda"}) for seed in (1, 2, 3)
    ]
    graphed = [with_section(c, "train", cuda_graphs=True) for c in configs]
    data = load_dataset(configs[0].data, DataRoot(Path("/x"), "t"), device)
    eager = train_batched(configs, data, device, Observer())
    captured = train_batched(graphed, data, device, Observer())
    for one, together in zip(eager, captured, strict=True):
        assert together.status == "completed", together.error
        for a, b in zip(numbers(one), numbers(together), strict=True):
            assert b == pytest.approx(a, rel=1e-2, abs=5e-3)
        for a, b in zip(one.history, together.history, strict=True):  # recorded inside the captured steps too
            assert len(a.diagnostics.train_grad_norm) == 3
            assert b.diagnostics.train_grad_norm == pytest.approx(a.diagnostics.train_grad_norm, rel=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("seeds", [(1,), (1, 2, 3)], ids=["one model", "a stack"])
def test_dropout_runs_captured_as_cuda_graphs_draw_the_masks_eager_steps_draw(seeds):
    """A stack's per-model dropout streams are registered with the graph and every stream (the default
    one too) is restored after the warm-up, so captured training takes the eager masks: the same
    numbers up to float rounding, where other masks would move the losses by far more."""
    device = torch.device("cuda")
    configs = [config(seed, dropout=0.5, activation="tanh").model_copy(update={"device": "cuda"}) for seed in seeds]
    graphed = [with_section(c, "train", cuda_graphs=True) for c in configs]
    data = load_dataset(configs[0].data, DataRoot(Path("/x"), "t"), device)
    engine = SequentialEngine() if len(seeds) == 1 else BatchedEngine()
    eager = engine.run(configs, data, device, Observer())
    captured = engine.run(graphed, data, device, Observer())
    for one, together in zip(eager, captured, strict=True):
        assert together.status == "completed", together.error
        for a, b in zip(numbers(one), numbers(together), strict=True):
            assert b == pytest.approx(a, rel=1e-4, abs=1e-4)
    again = engine.run(graphed, data, device, Observer())  # and a graph's replays are reproducible
    assert [numbers(r) for r in again] == [numbers(r) for r in captured]


@pytest.mark.parametrize("fused", [True, False], ids=["hand-written pass", "autograd"])
def test_a_stacked_model_hands_back_the_state_a_lone_model_has(monkeypatch, fused):
    """Each model's state_dict after training has the lone model's entries, batch norm's
    num_batches_tracked included (it stayed 0 in stacked models): what run_finished observers, and
    anything saving models, see. (Values are compared for the running statistics only: a Linear bias
    right before batch norm gets a zero gradient, which Adam turns into steps of rounding noise.)"""
    from dl_lab.training import stack

    if not fused:
        monkeypatch.setattr(stack, "used_on", lambda device: False)
    configs = [config(seed, batchnorm=True, dropout=0.2) for seed in (1, 2)]
    data = load_dataset(configs[0].data, DataRoot(Path("/x"), "t"), CPU)

    class States(Observer):
        def __init__(self) -> None:
            self.states: list[dict] = []

        def run_finished(self, run, model, data) -> None:
            self.states.append({k: v.clone() for k, v in model.state_dict().items()})

    alone, together = States(), States()
    for c in configs:
        train(c, data, CPU, alone)
    train_batched(configs, data, CPU, together)
    steps = configs[0].train.epochs * len(data.train) // configs[0].data.batch_size
    for one, other in zip(alone.states, together.states, strict=True):
        assert one.keys() == other.keys()
        counters = [k for k in one if k.endswith("num_batches_tracked")]
        assert counters and all(int(other[k]) == int(one[k]) == steps for k in counters)
        for key in [k for k in one if k.endswith(("running_mean", "running_var"))]:
            assert torch.allclose(one[key], other[key], rtol=1e-2, atol=1e-2), key
