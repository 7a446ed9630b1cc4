"""Diagnostics: the probe's numbers, warnings, divergence, and that measuring does not change training."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import FAST, needs_mnist, sets, with_section

from dl_lab.cli.app import app
from dl_lab.components.datasets import DataRoot, Split, load_dataset
from dl_lab.components.model import build_mlp, linear_layers
from dl_lab.config.schema import ExperimentConfig, ModelConfig
from dl_lab.training.cuda_graphs import StepOut
from dl_lab.training.diagnostics import PROBE_SIZE, probe, summarize
from dl_lab.training.engine import (
    AllDiverged,
    BatchPlan,
    Diverged,
    Member,
    Observer,
    bad_steps,
    train,
    train_epoch,
)
from dl_lab.training.results import warnings_for
from dl_lab.training.stack import train_batched

CPU = torch.device("cpu")


def synthetic(**sections) -> tuple[ExperimentConfig, object]:
    base = {
        "name": "d",
        "device": "cpu",
        "data": {"dataset": "synthetic", "train_subset": 2000},
        "train": {"epochs": 1},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    config = ExperimentConfig.model_validate(base)
    return config, load_dataset(config.data, DataRoot(Path("/x"), "t"), CPU)


def probe_model(model_cfg: ModelConfig):
    torch.manual_seed(0)
    model = build_mlp(model_cfg, 200, 3)
    x, y = torch.rand(64, 200), torch.randint(0, 3, (64,))
    return model, probe(model, torch.nn.CrossEntropyLoss(), x, y, model_cfg.activation)


def test_probe_reports_per_layer_numbers_that_match_a_direct_computation():
    model, diag = probe_model(ModelConfig(hidden=(16, 8), activation="tanh", init="xavier_uniform"))
    assert len(diag.grad_norm) == len(diag.weight_norm) == 3 and len(diag.dead_fraction) == 2
    assert diag.weight_norm[0] == pytest.approx(model[0].weight.norm().item(), rel=1e-6)
    assert all(p.grad is None for p in model.parameters())  # the probe leaves .grad alone
    assert model.training  # restored
    assert all(0 <= f <= 1 for f in diag.saturated_fraction + diag.dead_fraction + diag.symmetric_fraction)
    assert sum(diag.histograms[0]["counts"]) == 64 * 16 and diag.histograms[0]["edges"] == [-1.0, 1.0]


def test_zero_init_is_fully_symmetric_and_warned_about():
    _, diag = probe_model(ModelConfig(hidden=(16, 8), activation="relu", init="zeros"))
    assert diag.symmetric_fraction == (1.0, 1.0)
    assert diag.dead_fraction == (1.0, 1.0)  # ReLU(0) = 0 for every sample
    texts = [text for _, text in warnings_for(diag)]
    assert any("all units of layer 1 are identical" in t for t in texts)
    assert any("of layer-1 units are dead" in t for t in texts)


def test_saturated_sigmoid_units_are_counted():
    _, diag = probe_model(ModelConfig(hidden=(32,), activation="sigmoid", init="normal"))  # N(0,1): big inputs
    assert diag.saturated_fraction[0] > 0.3
    _, relu = probe_model(ModelConfig(hidden=(32,), activation="relu", init="normal"))
    assert relu.saturated_fraction == (0.0,)  # ReLU has no upper limit


def test_diagnostics_do_not_change_what_is_trained_and_land_in_the_metrics():
    config, data = synthetic(model={"dropout": 0.3, "batchnorm": True}, train={"epochs": 2})
    off, on, steps = [
        train(with_section(config, "train", **setting), data, CPU, Observer())
        for setting in ({"diagnostics": False}, {"diagnostics": True}, {"step_grad_norms": True})
    ]
    strip = lambda r: [(m.train_loss, m.test_loss, m.test_acc) for m in r.history]
    assert strip(on) == strip(off) == strip(steps)
    assert off.final.diagnostics is None and on.final.diagnostics.train_grad_norm == ()
    assert {"grad_norm_1", "grad_norm_3", "weight_norm_1", "act_mean_h1", "dead_h2", "symmetric_h1"} <= set(
        on.final.as_dict()
    )
    assert "train_grad_norm_1" not in on.final.as_dict()
    assert {"train_grad_norm_1", "train_grad_norm_3"} <= set(steps.final.as_dict())


def stack_configs(**train) -> tuple[list[ExperimentConfig], object]:
    """Three runs that stack: two activations (one saturating), batch norm, dropout, and a zero init."""
    base, data = synthetic(
        model={"hidden": [32, 16], "batchnorm": {"position": "after"}, "dropout": 0.2}, train={"epochs": 2, **train}
    )
    variants = [("relu", "xavier_uniform"), ("sigmoid", "normal"), ("relu", "zeros")]
    runs = [with_section(base, "model", activation=a, init=i) for a, i in variants]
    return [run.model_copy(update={"seed": seed}) for seed, run in enumerate(runs, start=1)], data


def test_a_stack_is_probed_in_one_pass_with_each_models_own_numbers(monkeypatch):
    """StackNet.diagnose: one forward and backward over the stack and one unique per hidden layer for all
    models, giving each model what probing it alone gives, up to float rounding."""
    configs, data = stack_configs()
    uniques = []
    real_unique = torch.unique
    monkeypatch.setattr(torch, "unique", lambda *a, **k: uniques.append(1) or real_unique(*a, **k))

    class Finished(Observer):
        def __init__(self) -> None:
            self.models: list[torch.nn.Module] = []

        def run_finished(self, run, model, data) -> None:
            self.models.append(copy.deepcopy(model))

    finished = Finished()
    results = train_batched(configs, data, CPU, finished)
    assert len(uniques) == 2 * 2  # two epochs, two hidden layers: not one per model
    x, y = data.train.x[:PROBE_SIZE], data.train.y[:PROBE_SIZE]
    for config, model, result in zip(configs, finished.models, results, strict=True):
        alone, stacked = (
            probe(model, torch.nn.CrossEntropyLoss(), x, y, config.model.activation),
            result.final.diagnostics,
        )
        for name in ("grad_norm", "weight_norm", "activation_mean", "activation_std"):
            assert getattr(stacked, name) == pytest.approx(getattr(alone, name), rel=1e-5, abs=1e-7), name
        for name in ("saturated_fraction", "dead_fraction"):  # a value on a threshold may round across it
            assert getattr(stacked, name) == pytest.approx(getattr(alone, name), abs=1e-3), name
        assert stacked.symmetric_fraction == alone.symmetric_fraction
        for mine, its in zip(stacked.histograms, alone.histograms, strict=True):
            assert mine["edges"] == pytest.approx(its["edges"], rel=1e-6)
            assert sum(mine["counts"]) == sum(its["counts"])
            assert sum(abs(a - b) for a, b in zip(mine["counts"], its["counts"])) <= 4
    relu, sigmoid, zeros = (r.final.diagnostics for r in results)
    assert sigmoid.saturated_fraction[0] > 0.1 and relu.saturated_fraction == (0.0, 0.0)
    assert zeros.symmetric_fraction == (1.0, 1.0) and relu.symmetric_fraction == (0.0, 0.0)


def test_a_diverged_model_of_a_stack_is_left_out_of_the_probe_before_it_is_measured(monkeypatch):
    """summarize(which=...) reports the live models only, as if the others were not there; a diverged
    model's nan weights never reach torch.unique (whose sort has no order for nan)."""
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 16, 8, generator=generator), torch.randn(3, 4, 16, generator=generator)]
    linears = [(torch.randn(3, 16, 8, generator=generator), torch.randn(3, 16, generator=generator))]
    linears.append((torch.randn(3, 4, 16, generator=generator), torch.randn(3, 4, generator=generator)))
    outputs = [torch.rand(3, 32, 16, generator=generator)]
    for tensor in (grads[0], linears[0][0], outputs[0]):
        tensor[1] = float("nan")  # model 1 diverged
    activations = ["relu", "sigmoid", "tanh"]
    sorted_rows = []
    real_unique = torch.unique
    monkeypatch.setattr(torch, "unique", lambda rows, **k: sorted_rows.append(rows) or real_unique(rows, **k))
    reported = summarize(grads, linears, outputs, activations, which=[2, 0])
    assert sorted_rows and not any(rows.isnan().any() for rows in sorted_rows)
    alone = [summarize([g[m : m + 1] for g in grads], [(w[m : m + 1], b[m : m + 1]) for w, b in linears],
                       [o[m : m + 1] for o in outputs], [activations[m]])[0] for m in (2, 0)]  # fmt: skip
    assert reported == alone
    assert reported[0].histograms[0]["edges"] == [-1.0, 1.0]  # model 2's tanh limits, in the order asked


def test_probing_a_stack_changes_nothing_it_trains():
    """The probe runs in eval mode with autograd.grad: no dropout mask drawn from a model's stream, no
    batch-norm statistic or gradient touched, so a stack trains the same with diagnostics on or off."""
    configs, data = stack_configs(diagnostics=False)
    off = train_batched(configs, data, CPU, Observer())
    on = train_batched([with_section(c, "train", diagnostics=True) for c in configs], data, CPU, Observer())
    strip = lambda r: [(m.train_loss, m.test_loss, m.test_acc) for m in r.history]
    assert [strip(r) for r in on] == [strip(r) for r in off]
    assert all(r.final.diagnostics is None for r in off) and all(r.final.diagnostics for r in on)


def test_the_step_gradient_norms_are_those_of_the_model_being_trained():
    # One full-batch step per epoch: epoch 1's step gradient is the initial model's on the whole split.
    config, data = synthetic(
        data={"batch_size": 2000}, model={"hidden": [32, 16]}, train={"epochs": 2, "step_grad_norms": True}
    )
    result = train(config, data, CPU, Observer())
    torch.manual_seed(config.seed)
    model = build_mlp(config.model, data.num_features, data.num_classes)
    torch.nn.CrossEntropyLoss()(model(data.train.x), data.train.y).backward()
    expected = [layer.weight.grad.norm().item() for layer in linear_layers(model)]
    assert result.history[0].diagnostics.train_grad_norm == pytest.approx(expected, rel=1e-5)
    assert result.history[1].diagnostics.train_grad_norm != pytest.approx(expected, rel=1e-3)  # the model moved
    assert result.final.diagnostics.summary()["train_grad_norm"] == list(result.final.diagnostics.train_grad_norm)


def test_a_non_finite_gradient_counts_as_divergence_at_its_own_step():
    losses = torch.tensor([2.3, 2.1, 2.0])
    norms = torch.tensor([[1.0, 0.5], [1.2, 0.4], [float("inf"), 0.3]])
    assert bad_steps(losses, norms).tolist() == [False, False, True]
    assert bad_steps(losses, None).tolist() == [False, False, False]  # without tracked gradients: the loss only
    assert bad_steps(torch.tensor([float("nan"), 1e9, 1.0]), None).tolist() == [True, True, False]
    assert (
        str(Diverged(2, 3, 2.0, [float("inf"), 0.3]))
        == "the gradient norm of layer 1 became inf (loss 2) at epoch 2, step 3"
    )
    assert str(Diverged(1, 4, float("nan"), [float("nan")] * 2)) == "the training loss became nan at epoch 1, step 4"


def test_the_epoch_loop_stops_at_the_step_whose_gradient_went_bad():
    steps = []

    def body(index):  # a finite loss throughout; step 3's gradient of layer 2 overflows
        steps.append(len(steps) + 1)
        grad = torch.tensor([1.0, float("inf") if len(steps) == 3 else 1.0])
        return StepOut(torch.tensor(2.0), torch.tensor(0), grad)

    split = Split(torch.zeros(10, 4), torch.zeros(10, dtype=torch.long))
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    member = Member(ExperimentConfig(name="m"), torch.Generator(), torch.nn.Sequential(), torch.Generator())
    with pytest.raises(AllDiverged):  # the unit's only run diverged: nothing is left to train
        train_epoch(body, optimizer, split, BatchPlan.make(10, 2, True, False), [member], 1, Observer())
    assert steps == [1, 2, 3, 4, 5]  # checked at the epoch's end (every DIVERGENCE_CHECK_STEPS steps in longer epochs)
    assert (member.status, member.diverged_at) == ("diverged", {"epoch": 1, "step": 3})
    assert member.error == "the gradient norm of layer 2 became inf (loss 2) at epoch 1, step 3"


def test_an_exploding_learning_rate_ends_the_run_as_diverged_with_epoch_and_step(runner, write_config, tmp_path):
    config = write_config({**FAST, "optimizer": {"name": "sgd", "lr": 50}, "train": {"epochs": 3}})
    result = runner.invoke(app, ["train", "-c", str(config), "--runs-dir", str(tmp_path), "--json"])
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "diverged"
    assert summary["diverged_at"]["epoch"] == 1 and summary["diverged_at"]["step"] >= 1
    assert "training diverged" in result.stderr
    assert "the training loss became nan" in result.stderr or "the training loss reached" in result.stderr
    assert "Traceback" not in result.output
    assert (Path(summary["run_dir"]) / "metrics.csv").is_file()


def test_train_records_diagnostics_and_warns_for_zero_init(runner, write_config, tmp_path):
    config = write_config({**FAST, "model": {"init": "zeros"}})
    result = runner.invoke(app, ["train", "-c", str(config), "--runs-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    diag = summary["diagnostics"]
    assert len(diag["grad_norm"]) == 3 and diag["symmetric_fraction"] == [1.0, 1.0]
    assert any("identical" in w for w in summary["warnings"])
    assert result.stderr.count("warning: all units of layer 1 are identical") == 1  # once, not every epoch
    rows = list(csv.DictReader((Path(summary["run_dir"]) / "metrics.csv").open()))
    assert float(rows[-1]["symmetric_h1"]) == 1.0 and "grad_norm_3" in rows[0]


def test_diagnostics_can_be_turned_off(runner, fast_config, tmp_path):
    result = runner.invoke(
        app,
        ["train", "-c", str(fast_config), "--set", "train.diagnostics=false", "--runs-dir", str(tmp_path), "--json"],
    )
    summary = json.loads(result.stdout)
    assert "diagnostics" not in summary
    assert "grad_norm_1" not in (Path(summary["run_dir"]) / "metrics.csv").read_text()


DEEP = sets(
    "model.hidden=[256,256,256,256,256,256]", "optimizer.name=sgd", "optimizer.lr=0.01", "train.epochs=1", "device=cpu"
)


@needs_mnist
def test_a_deep_sigmoid_stack_shows_vanishing_gradients_that_relu_with_he_init_does_not(runner, tmp_path):
    # Sigmoid with Xavier init: the classic picture. (With N(0, 1) init the large weights amplify the
    # backward signal enough to offset sigmoid's small slope: see docs/diagnostics.md for the numbers.)
    ratios = {}
    for activation, init in [("sigmoid", "xavier_uniform"), ("relu", "he_normal")]:
        result = runner.invoke(
            app,
            [
                "train",
                "-c",
                "relu",
                *DEEP,
                *sets(f"model.activation={activation}", f"model.init={init}", "data.download=false"),
                "--runs-dir",
                str(tmp_path),
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        ratios[activation] = summary["diagnostics"]["gradient_ratio_first_last"]
        if activation == "sigmoid":
            assert any("vanishing gradients" in w for w in summary["warnings"])
            assert "vanishing gradients" in result.stderr
    assert ratios["sigmoid"] * 10 <= ratios["relu"], ratios
