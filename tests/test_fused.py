"""The hand-written training pass (training/fused.py): bitwise autograd's gradients, and the engine uses it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from test_batched import config  # the batched engine's small synthetic runs
from torch import nn
from torch.nn import functional as F

from dl_lab.components.datasets import DataRoot, load_dataset
from dl_lab.components.model import build_mlp
from dl_lab.config.schema import ModelConfig
from dl_lab.training import engine, fused, stack
from dl_lab.training.engine import Observer, train
from dl_lab.training.stack import Stack, train_batched

CPU = torch.device("cpu")
ACTIVATIONS = ["relu", "sigmoid", "tanh", "leaky_relu", "elu", "selu", "gelu", "softplus"]


def model_for(seed: int, **fields) -> nn.Sequential:
    torch.manual_seed(seed)
    return build_mlp(ModelConfig.model_validate({"hidden": [32, 16], "init": "xavier_uniform", **fields}), 20, 5)


def batch(seed: int, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (30,) if count is None else (count, 30)
    # inputs spread wide enough that every activation sees both of its regimes (relu's zero, softplus's threshold)
    return torch.randn(*shape, 20, generator=generator) * 8, torch.randint(0, 5, shape, generator=generator)


def grads(tensors) -> list[torch.Tensor]:
    return [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dropout", [0.0, 0.4])
@pytest.mark.parametrize("batchnorm", [False, {"position": "before"}, {"position": "after"}])
def test_single_pass_gives_autograds_loss_logits_gradients_and_statistics_bit_for_bit(activation, dropout, batchnorm):
    model = model_for(1, activation=activation, dropout=dropout, batchnorm=batchnorm)
    inputs, targets = batch(2)
    auto, hand = copy.deepcopy(model), copy.deepcopy(model)
    forward_backward = fused.single_pass(hand, CPU)
    assert forward_backward is not None

    torch.manual_seed(5)  # dropout masks come from the global generator, as nn.Dropout's do
    logits = auto(inputs)
    loss = F.cross_entropy(logits, targets)
    loss.backward()

    torch.manual_seed(5)
    got_loss, got_logits = forward_backward(inputs, targets)
    assert torch.equal(got_loss, loss.detach())
    assert torch.equal(got_logits, logits.detach())
    for want, have in zip(auto.parameters(), hand.parameters(), strict=True):
        assert have.grad.shape == want.grad.shape and have.grad.stride() == want.grad.stride()
        assert torch.equal(have.grad, want.grad)
    for want, have in zip(auto.buffers(), hand.buffers(), strict=True):  # batch norm's running statistics
        assert torch.equal(have, want)
    assert not got_loss.requires_grad and not got_logits.requires_grad
    assert any(p.grad.abs().sum() > 0 for p in auto.parameters())  # the comparison is of real gradients
    if batchnorm:
        assert [int(b) for b in hand.buffers() if b.dtype == torch.long] == [1, 1]  # one batch counted per layer


@pytest.mark.parametrize(
    "activations",
    [
        ("relu",) * 3,
        ("sigmoid",) * 3,
        ("gelu",) * 3,
        ("relu", "relu", "sigmoid"),  # two slices of the stack
        ("tanh", "elu", "tanh"),  # three slices, one activation twice
    ],
)
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("batchnorm", [False, {"position": "before"}, {"position": "after"}])
def test_stacked_pass_gives_the_autograd_stacks_losses_gradients_and_statistics_bit_for_bit(
    activations, dropout, batchnorm
):
    models = [
        model_for(seed, activation=activation, dropout=dropout, batchnorm=batchnorm)
        for seed, activation in zip((1, 2, 3), activations, strict=True)
    ]
    inputs, targets = batch(4, count=3)
    stacks = []

    def run(fused_pass: bool):
        the_stack = Stack(models, [dropout] * 3, CPU)
        stacks.append(the_stack)
        streams = [torch.Generator().manual_seed(10 + i) for i in range(3)]
        if fused_pass:
            ops = stack.fused_ops(the_stack, streams)
            assert ops is not None
            per_model, logits = fused.stacked_pass(ops)(inputs, targets)
        else:
            logits = the_stack.forward(inputs, True, streams)
            per_model = F.cross_entropy(logits.reshape(90, 5), targets.reshape(-1), reduction="none").view(3, 30)
            per_model = per_model.mean(1)
            per_model.sum().backward()
        return per_model.detach(), logits.detach(), grads(the_stack.parameters())

    want, have = run(False), run(True)
    assert torch.equal(have[0], want[0]) and torch.equal(have[1], want[1])
    for expected, got in zip(want[2], have[2], strict=True):
        assert torch.equal(got, expected)
    for expected, got in zip(*(s.buffers() for s in stacks), strict=True):  # batch norm's running statistics
        assert torch.equal(got, expected)
    assert len(stacks[0].buffers()) == (6 if batchnorm else 0)  # mean, var and batches counted, per layer
    counted = [b.tolist() for s in stacks for b in s.buffers() if b.dtype == torch.long]
    assert counted == ([[1, 1, 1]] * 4 if batchnorm else [])  # one batch per model and layer, either pass


def test_a_stacks_batch_norm_is_each_models_own_batch_norm():
    """The (B, M * F) columns trick: each model normalized over its own batch, running statistics its own."""
    models = [model_for(seed, batchnorm={"position": "before"}) for seed in (1, 2)]
    inputs, _ = batch(6, count=2)
    the_stack = Stack(models, [0.0, 0.0], CPU)
    with torch.no_grad():
        stacked = the_stack.forward(inputs, True, [])
        alone = torch.stack([model(x) for model, x in zip(models, inputs)])
    assert torch.allclose(stacked, alone, rtol=1e-5, atol=1e-5)
    for index, model in enumerate(models):
        assert torch.allclose(the_stack.buffers()[0][index], model[1].running_mean, atol=1e-6)
        assert torch.allclose(the_stack.buffers()[1][index], model[1].running_var, atol=1e-6)


def test_a_stack_of_different_activations_gives_each_model_its_own():
    activations = ["relu", "sigmoid", "sigmoid", "leaky_relu", "tanh"]
    models = [model_for(seed, activation=a) for seed, a in enumerate(activations)]
    models[3][1].negative_slope = 0.2  # settings count: another slope is another slice
    inputs, targets = batch(7, count=5)
    the_stack = Stack(models, [0.0] * 5, CPU)
    layer = the_stack.layers[1]
    assert [(start, stop) for start, stop, _ in layer.segments] == [(0, 1), (1, 3), (3, 4), (4, 5)]
    with torch.no_grad():
        alone = torch.stack([model(x) for model, x in zip(models, inputs)])
        for training in (True, False):
            assert torch.allclose(the_stack.forward(inputs, training, []), alone, rtol=1e-5, atol=1e-5)
        _, logits = fused.stacked_pass(stack.fused_ops(the_stack, []))(inputs, targets)
    assert torch.allclose(logits, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(alone[1], models[0](inputs[1]), rtol=1e-3)  # the activations do differ


def test_other_batch_norms_and_other_devices_keep_autograd():
    assert fused.single_pass(model_for(1), torch.device("meta")) is None
    unusual = model_for(1, batchnorm=True)
    unusual[1].momentum = None  # a cumulative average: not what build_mlp makes
    assert fused.single_pass(unusual, CPU) is None


def history(result) -> list[tuple]:
    return [(m.train_loss, m.train_acc, m.test_loss, m.test_acc, m.diagnostics) for m in result.history]


@pytest.mark.parametrize(
    "model",
    [
        {"dropout": 0.25, "activation": "tanh"},
        {"activation": "sigmoid"},
        {"batchnorm": {"position": "after"}, "dropout": 0.2},
    ],
)
def test_training_with_the_hand_written_pass_records_exactly_what_autograd_training_records(model, monkeypatch):
    configs = [config(seed, step_grad_norms=True, **model) for seed in (3, 4)]
    data = load_dataset(configs[0].data, DataRoot(Path("/x"), "t"), CPU)
    calls = []
    single, stacked = fused.single_pass, stack.stacked_pass
    monkeypatch.setattr(engine, "single_pass", lambda *a: calls.append("single") or single(*a))
    monkeypatch.setattr(stack, "stacked_pass", lambda *a: calls.append("stacked") or stacked(*a))
    hand = [train(configs[0], data, CPU, Observer()), *train_batched(configs, data, CPU, Observer())]
    assert calls == ["single", "stacked"]  # both engines took the hand-written pass

    monkeypatch.setattr(engine, "single_pass", lambda *a: None)
    monkeypatch.setattr(stack, "fused_ops", lambda *a: None)
    auto = [train(configs[0], data, CPU, Observer()), *train_batched(configs, data, CPU, Observer())]
    for one, other in zip(hand, auto, strict=True):
        assert history(one) == history(other)
    assert hand[0].final.test_acc > 0.3  # it learned something


def test_softmax_regression_one_linear_layer_takes_the_pass_too():
    model = build_mlp(ModelConfig.model_validate({"hidden": [], "init": "xavier_uniform"}), 20, 5)
    inputs, targets = batch(3)
    auto, hand = copy.deepcopy(model), copy.deepcopy(model)
    F.cross_entropy(auto(inputs), targets).backward()
    forward_backward = fused.single_pass(hand, CPU)
    assert forward_backward is not None
    forward_backward(inputs, targets)
    for want, have in zip(auto.parameters(), hand.parameters(), strict=True):
        assert torch.equal(have.grad, want.grad)


def test_a_lone_models_dropout_mask_is_nn_dropouts():
    torch.manual_seed(5)
    reference = F.dropout(torch.ones(100, 256), 0.3, training=True)
    torch.manual_seed(5)
    mask = fused.dropout_mask(0.3)(torch.ones(100, 256))
    assert torch.equal(mask, reference) and set(mask.unique().tolist()) == {0.0, reference.max().item()}


@pytest.mark.parametrize("stacked", [False, True], ids=["one model", "a stack"])
def test_bf16_operands_give_float32_losses_and_gradients_within_bf16_rounding_of_the_float32_pass(stacked):
    """train.bf16_matmul where the CPU multiplies bf16 natively but "medium" precision would not
    (Bf16LinearOp, Bf16StackedLinearOp): the same pass on rounded operands, everything it returns and
    leaves in .grad float32."""
    # tanh and unit-scale inputs: at relu's kink and in a saturated softmax a rounding can flip a unit
    # on or off, and a gradient entry with it, so the bound would be about what the test can see there
    models = [model_for(seed, dropout=0.0, activation="tanh") for seed in (1, 2, 3)]
    inputs, targets = batch(4, count=3) if stacked else batch(2)
    inputs = inputs / 8

    def run(bf16: bool):
        if stacked:
            the_stack = Stack(models, [0.0] * 3, CPU)
            ops = stack.fused_ops(the_stack, [], bf16)
            assert [type(op).__name__ for op in ops[::2]] == ["Bf16StackedLinearOp" if bf16 else "StackedLinearOp"] * 3
            loss, logits = fused.stacked_pass(ops)(inputs, targets)
            return [loss, logits, *grads(the_stack.parameters())]
        model = copy.deepcopy(models[0])
        loss, logits = fused.single_pass(model, CPU, bf16)(inputs, targets)
        return [loss, logits, *grads(model.parameters())]

    exact, rounded = run(False), run(True)
    assert len(exact) == len(rounded) == 2 + 6
    for want, got in zip(exact, rounded, strict=True):
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert (got - want).abs().max() <= 2e-2 * want.abs().max()  # bf16's 8-bit mantissa, through 3 layers
        assert not torch.equal(got, want)  # the operands were rounded
