"""The trainer: batching plan, reproducibility, train/eval modes, interruption and failure as data."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest
import torch
from conftest import with_section

from dl_lab.components.datasets import DataRoot, load_dataset
from dl_lab.components.model import build_mlp
from dl_lab.config.schema import ExperimentConfig
from dl_lab.errors import ConfigError
from dl_lab.training.device import bf16_operands, bf16_products
from dl_lab.training.engine import BatchPlan, SequentialEngine, evaluate_model, train
from dl_lab.training.events import Observer, Observers

CPU = torch.device("cpu")


def make_config(**sections) -> ExperimentConfig:
    base = {
        "name": "t",
        "device": "cpu",
        "data": {"dataset": "synthetic"},
        "train": {"epochs": 2},
        "model": {"hidden": [64, 32], "init": "xavier_uniform"},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return ExperimentConfig.model_validate(base)


def dataset(config: ExperimentConfig):
    return load_dataset(config.data, DataRoot(__import__("pathlib").Path("/nonexistent"), "test"), CPU)


Quiet = Observer


@pytest.mark.parametrize(
    "n, batch, drop_last, batchnorm, steps, samples, dropped",
    [
        (1000, 100, True, False, 10, 1000, 0),
        (1005, 100, True, False, 10, 1000, 5),
        (1005, 100, False, False, 11, 1005, 0),
        (1001, 100, False, False, 11, 1001, 0),
        (1001, 100, False, True, 10, 1000, 1),  # a lone sample cannot feed BatchNorm1d
        (1002, 100, False, True, 11, 1002, 0),
        (50, 100, True, False, 0, 0, 50),
    ],
)
def test_batch_plan_honours_drop_last(n, batch, drop_last, batchnorm, steps, samples, dropped):
    plan = BatchPlan.make(n, batch, drop_last, batchnorm)
    assert (plan.steps, plan.samples, plan.dropped) == (steps, samples, dropped)


def test_training_learns_the_synthetic_task():
    config = make_config()
    result = train(config, dataset(config), CPU, Quiet())
    assert result.status == "completed" and len(result.history) == 2
    assert result.final.test_acc > 0.8
    assert result.history[1].train_loss < result.history[0].train_loss


def test_same_config_and_seed_give_identical_metrics_and_another_seed_differs():
    config = make_config(model={"dropout": 0.2})
    data = dataset(config)
    strip = lambda result: [(m.train_loss, m.train_acc, m.test_loss, m.test_acc) for m in result.history]
    first, second = train(config, data, CPU, Quiet()), train(config, data, CPU, Quiet())
    assert strip(first) == strip(second)
    other = train(config.model_copy(update={"seed": 778}), data, CPU, Quiet())
    assert strip(other) != strip(first)


def test_partial_last_batch_and_lone_sample_with_batchnorm_train_without_crashing():
    config = make_config(
        data={"train_subset": 1001, "batch_size": 100, "drop_last": False},
        model={"batchnorm": True},
        train={"epochs": 1},
    )
    result = train(config, dataset(config), CPU, Quiet())
    assert result.status == "completed"
    assert (result.plan.steps, result.plan.dropped) == (10, 1)
    config = make_config(data={"train_subset": 1007, "batch_size": 100, "drop_last": False}, train={"epochs": 1})
    result = train(config, dataset(config), CPU, Quiet())
    assert (result.plan.steps, result.plan.samples, result.status) == (11, 1007, "completed")


def test_evaluation_uses_eval_mode_is_deterministic_and_restores_train_mode():
    config = make_config(model={"dropout": 0.5})
    data = dataset(config)
    model = build_mlp(config.model, 784, 10)
    model.train()
    loss_fn = torch.nn.CrossEntropyLoss()
    first = [t.item() for t in evaluate_model(model, data.test)]
    second = [t.item() for t in evaluate_model(model, data.test)]
    assert first == second and model.training
    noisy = [loss_fn(model(data.test.x[:200]), data.test.y[:200]).item() for _ in range(2)]
    assert noisy[0] != noisy[1]  # dropout is active in train mode


def test_evaluation_in_chunks_counts_what_one_pass_counts_in_blocks_the_heap_serves_again(monkeypatch):
    from dl_lab.training import engine, memory
    from dl_lab.training.device import MMAP_THRESHOLD_BYTES

    # a stack of 10 models 512 wide: each activation of a chunk stays a block glibc's heap reuses
    assert engine.EVAL_BATCH_SIZE == memory.EVAL_ROWS and memory.EVAL_ROWS * 10 * 512 * 4 <= MMAP_THRESHOLD_BYTES
    config = make_config()
    data = dataset(config)
    model = build_mlp(config.model, 784, 10)
    monkeypatch.setattr(engine, "EVAL_BATCH_SIZE", len(data.test))
    whole_loss, whole_correct = evaluate_model(model, data.test)
    monkeypatch.setattr(engine, "EVAL_BATCH_SIZE", 300)  # four chunks, the last one of 100
    loss, correct = evaluate_model(model, data.test)
    assert correct.item() == whole_correct.item() > 0
    assert loss.item() == pytest.approx(whole_loss.item(), rel=1e-5)


class InterruptAt(Quiet):
    def __init__(self, epoch, exception):
        self.epoch, self.exception = epoch, exception

    def epoch_done(self, run, metrics):
        if metrics.epoch == self.epoch:
            raise self.exception


@pytest.mark.parametrize("exception, status", [(KeyboardInterrupt(), "interrupted"), (RuntimeError("boom"), "failed")])
def test_interrupted_and_failed_runs_are_returned_as_such_with_what_was_done(exception, status):
    config = make_config(train={"epochs": 5})
    result = train(config, dataset(config), CPU, Observers([Quiet(), InterruptAt(2, exception)]))
    assert result.status == status
    assert len(result.history) == 2  # epoch 2 finished before the observer raised
    assert (result.error is not None) == (status == "failed")
    if status == "failed":
        assert "boom" in result.error


def test_sequential_engine_trains_each_config_and_stops_after_an_interrupt():
    configs = [make_config(seed=1, train={"epochs": 1}), make_config(seed=2, train={"epochs": 1})]
    results = SequentialEngine().run(configs, dataset(configs[0]), CPU, Quiet())
    assert [r.status for r in results] == ["completed", "completed"]
    assert results[0].final.train_loss != results[1].final.train_loss  # seeds differ
    stopped = SequentialEngine().run(configs, dataset(configs[0]), CPU, InterruptAt(1, KeyboardInterrupt()))
    assert [r.status for r in stopped] == ["interrupted"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_matches_the_data_order_and_learns():
    config = make_config(device="cuda")
    data = load_dataset(config.data, DataRoot(__import__("pathlib").Path("/x"), "t"), torch.device("cuda"))
    result = train(config, data, torch.device("cuda"), Quiet())
    assert result.status == "completed" and result.final.test_acc > 0.8


class FinalEvaluation(Observer):
    """Re-evaluates the trained model, in eval mode, after the run."""

    def run_finished(self, run, model, data):
        self.was_training = model.training
        loss_sum, correct = evaluate_model(model, data.test)
        self.test = (loss_sum.item() / len(data.test), correct.item() / len(data.test))


def test_reported_test_metrics_are_the_eval_mode_numbers_of_the_trained_model():
    config = make_config(model={"dropout": 0.5, "batchnorm": True})
    final = FinalEvaluation()
    result = train(config, dataset(config), CPU, final)
    assert final.was_training  # the trainer switched back to train mode after evaluating
    assert final.test == (pytest.approx(result.final.test_loss, rel=1e-5), result.final.test_acc)


def test_eval_train_adds_an_eval_mode_pass_over_the_training_split():
    config = make_config(model={"dropout": 0.5}, train={"epochs": 2, "eval_train": True})
    result = train(config, dataset(config), CPU, Observer())
    for metrics in result.history:
        assert metrics.train_eval_loss is not None and 0 < metrics.train_eval_acc <= 1
        # Dropout is off in eval mode, so the eval pass scores the training data better than the noisy training pass.
        assert metrics.train_eval_loss < metrics.train_loss
    plain = train(make_config(model={"dropout": 0.5}), dataset(config), CPU, Observer())
    assert plain.final.train_eval_loss is None
    assert [m.test_acc for m in plain.history] == [m.test_acc for m in result.history]  # same training either way


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("optimizer", [{"name": "adam"}, {"name": "sgd", "lr": 0.05, "momentum": 0.9}])
def test_cuda_graphs_train_the_same_model_as_eager_steps(optimizer):
    device = torch.device("cuda")
    config = make_config(device="cuda", optimizer=optimizer, model={"batchnorm": True}, train={"step_grad_norms": True})
    data = load_dataset(config.data, DataRoot(__import__("pathlib").Path("/x"), "t"), device)
    eager = train(config, data, device, Quiet())
    graphed_config = with_section(config, "train", cuda_graphs=True)
    graphed = train(graphed_config, data, device, Quiet())
    assert graphed.status == "completed", graphed.error
    for a, b in zip(eager.history, graphed.history, strict=True):
        assert (b.train_loss, b.test_loss) == pytest.approx((a.train_loss, a.test_loss), rel=1e-2)
        assert b.test_acc == pytest.approx(a.test_acc, abs=5e-3)
        assert len(a.diagnostics.train_grad_norm) == 3  # recorded inside the captured steps too
        assert b.diagnostics.train_grad_norm == pytest.approx(a.diagnostics.train_grad_norm, rel=2e-2)


@pytest.mark.parametrize(
    "name, options",
    [
        ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
        ("adam", {"lr": 0.01}),
        ("adamw", {"lr": 0.01, "weight_decay": 0.1}),
        ("rmsprop", {"lr": 0.01, "centered": True}),
        ("adagrad", {"lr": 0.1, "lr_decay": 0.01}),
    ],
)
def test_the_plain_optimizer_step_makes_exactly_torchs_updates(name, options):
    from dl_lab.components.optimizers import OPTIMIZERS
    from dl_lab.components.plain_optim import plain_step
    from dl_lab.config.schema import OptimizerConfig

    config = OptimizerConfig.model_validate({"name": name, **options})
    start = [torch.randn(20, 7, generator=torch.Generator().manual_seed(1)), torch.randn(7)]
    params = {kind: [p.clone().requires_grad_() for p in start] for kind in ("torch", "plain")}
    optimizers = {kind: OPTIMIZERS[name].build(params[kind], config, CPU) for kind in params}
    steps = {"torch": optimizers["torch"].step, "plain": plain_step(optimizers["plain"])}
    assert steps["plain"] != optimizers["plain"].step, "plain_step fell back to optimizer.step"
    x = torch.randn(32, 20, generator=torch.Generator().manual_seed(2))
    for _ in range(5):
        for kind in params:
            optimizers[kind].zero_grad(set_to_none=True)
            (x @ params[kind][0] + params[kind][1]).tanh().square().sum().backward()
            steps[kind]()
    for a, b in zip(params["torch"], params["plain"]):
        assert torch.equal(a, b) and not torch.equal(a, torch.zeros_like(a))
    assert optimizers["torch"].state_dict()["state"].keys() == optimizers["plain"].state_dict()["state"].keys()


def _adam_twins(monkeypatch, device: str = "cpu", **options):
    """Two identical tanh regressions with torch.optim.Adam(**options): one stepped by torch, one by
    plain_step; and a count of the calls plain_step left to Adam.step (torch.optim.adam.adam)."""
    from torch.optim import adam

    from dl_lab.components.plain_optim import plain_step

    start = [torch.randn(20, 7, generator=torch.Generator().manual_seed(1)), torch.randn(7)]
    params = {kind: [p.clone().to(device).requires_grad_() for p in start] for kind in ("torch", "plain")}
    optimizers = {kind: torch.optim.Adam(params[kind], **options) for kind in params}
    through_adam_step: list[int] = []
    original = adam.adam

    def counting(*args, **kwargs):
        through_adam_step.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(adam, "adam", counting)
    plain = plain_step(optimizers["plain"])
    x = torch.randn(32, 20, generator=torch.Generator().manual_seed(2)).to(device)

    def step(kind: str, without_grad: int | None = None) -> None:
        optimizers[kind].zero_grad(set_to_none=True)
        (x @ params[kind][0] + params[kind][1]).tanh().square().sum().backward()
        if without_grad is not None:
            params[kind][without_grad].grad = None
        (optimizers[kind].step if kind == "torch" else plain)()

    return params, optimizers, step, through_adam_step


@pytest.mark.parametrize(
    "options, direct",
    [
        ({"lr": 0.01, "fused": True}, True),
        ({"lr": 0.01, "fused": True, "weight_decay": 0.1, "maximize": True, "betas": (0.8, 0.99)}, True),
        ({"lr": 0.01, "fused": True, "weight_decay": 0.1, "decoupled_weight_decay": True}, True),  # AdamW
        ({"lr": 0.01, "fused": True, "amsgrad": True}, False),
        ({"lr": torch.tensor(0.01), "fused": True}, False),
        ({"lr": 0.01}, False),  # not fused: the foreach path
    ],
    ids=["adam", "weight decay, maximize, betas", "adamw", "amsgrad", "tensor lr", "unfused"],
)
@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))],
)
def test_fused_adam_called_directly_makes_exactly_adam_steps_updates(monkeypatch, options, direct, device):
    """plain_step calls the fused Adam kernel itself (0.1 ms less per CPU step) where that gives Adam.step's
    numbers bit for bit, and leaves every other case to Adam.step."""
    if device == "cuda" and isinstance(options["lr"], torch.Tensor):
        options = {**options, "lr": options["lr"].to(device)}
    params, optimizers, step, through_adam_step = _adam_twins(monkeypatch, device, **options)
    for number in range(6):
        if number == 3:
            for optimizer in optimizers.values():
                optimizer.param_groups[0]["lr"] = optimizer.param_groups[0]["lr"] * 0.5  # as a schedule would
        step("torch")
        torch_calls = len(through_adam_step)
        step("plain")
        assert len(through_adam_step) - torch_calls == (0 if direct and number else 1), number
    for a, b in zip(params["torch"], params["plain"]):
        assert torch.equal(a, b)
    states = [optimizer.state_dict()["state"] for optimizer in optimizers.values()]
    for name in ("step", "exp_avg", "exp_avg_sq"):
        assert all(torch.equal(states[0][i][name], states[1][i][name]) for i in (0, 1)), name


def test_fused_adam_leaves_a_parameter_without_a_gradient_to_adam_step(monkeypatch):
    params, optimizers, step, through_adam_step = _adam_twins(monkeypatch, lr=0.01, fused=True)
    for number in range(4):
        without = 1 if number == 2 else None  # Adam.step skips it: its step count and moments stay
        step("torch", without)
        calls = len(through_adam_step)
        step("plain", without)
        assert len(through_adam_step) - calls == (1 if number in (0, 2) else 0)
    for a, b in zip(params["torch"], params["plain"]):
        assert torch.equal(a, b)
    assert [s["step"].item() for s in optimizers["plain"].state.values()] == [4.0, 3.0]


def test_a_step_hook_is_honoured_by_falling_back_to_optimizer_step():
    from dl_lab.components.plain_optim import plain_step

    param = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=1.0)
    seen = []
    optimizer.register_step_post_hook(lambda *args: seen.append(1))
    param.sum().backward()
    plain_step(optimizer)()
    assert seen == [1] and param.tolist() == [-1.0, -1.0, -1.0]


def test_training_single_and_stacked_runs_never_loads_torch_dynamo():
    """torch.optim would import torch._dynamo (1.2 s of start-up) on the first optimizer call."""
    import subprocess
    import sys

    from conftest import child_env

    code = (
        "import os, sys, torch\n"
        "from dl_lab.config.schema import ExperimentConfig\n"
        "from dl_lab.experiments.execute import device_and_data\n"
        "from dl_lab.training.engine import Observer, train\n"
        "from dl_lab.training.stack import BatchedEngine\n"
        "configs = [ExperimentConfig.model_validate({'name': 't', 'device': 'cpu', 'seed': s, 'data': {'dataset': 'synthetic',\n"
        "    'train_subset': 500}, 'train': {'epochs': 1}, 'model': {'hidden': [16]}}) for s in (1, 2)]\n"
        "device, data = device_and_data(configs[0], os.environ)\n"
        "results = [train(configs[0], data, device, Observer()), *BatchedEngine().run(configs, data, device, Observer())]\n"
        "print([r.status for r in results], 'torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['completed',", "'completed',", "'completed']", "False"]


def configure_math_default() -> None:
    from dl_lab.training.engine import configure_math

    configure_math(make_config(), CPU)


@pytest.mark.parametrize(
    "device, train_section, precision, cudnn_tf32",
    [
        ("cpu", {}, "highest", False),
        ("cpu", {"bf16_matmul": True}, "medium", False),
        ("cpu", {"tf32": True}, "highest", False),  # TF32 is CUDA's
        ("cuda", {"tf32": True}, "high", True),
        ("cuda", {"bf16_matmul": True}, "highest", False),  # bf16_matmul is the CPU's
    ],
)
def test_each_unit_sets_the_matmul_precision_its_config_and_device_ask_for(
    device, train_section, precision, cudnn_tf32
):
    from dl_lab.training.engine import configure_math

    try:
        configure_math(make_config(train={"bf16_matmul": True, "tf32": True}), CPU)  # whatever came before
        configure_math(make_config(train=train_section), torch.device(device))
        assert torch.get_float32_matmul_precision() == precision
        assert torch.backends.cudnn.allow_tf32 is cudnn_tf32
        expected_cpu = {"highest": "ieee", "medium": "bf16", "high": "tf32"}[precision]
        assert torch.backends.mkldnn.matmul.fp32_precision == expected_cpu
    finally:
        configure_math_default()


def test_bf16_matmuls_train_to_the_fp32_result_within_noise_and_never_stack_with_fp32_runs():
    from dl_lab.training.stackable import batch_key

    plain, bf16 = make_config(), make_config(train={"bf16_matmul": True})
    assert batch_key(plain) != batch_key(bf16)
    data = dataset(plain)
    try:
        exact, rounded = train(plain, data, CPU, Quiet()), train(bf16, data, CPU, Quiet())
    finally:
        configure_math_default()
    assert rounded.status == "completed"
    assert abs(rounded.final.test_acc - exact.final.test_acc) <= 0.02
    assert abs(rounded.final.train_loss - exact.final.train_loss) <= 0.05 * exact.final.train_loss
    if bf16_products() or bf16_operands():  # this CPU rounds the products, or the operands, to bf16
        assert rounded.final.train_loss != exact.final.train_loss


@pytest.mark.parametrize("stacked", [False, True], ids=["one model", "a stack"])
def test_where_bf16_matmul_rounds_the_operands_runs_train_within_noise_of_float32(monkeypatch, stacked):
    """The AMD EPYC's way (avx512_bf16, no AMX): tried on any CPU by saying it is that CPU."""
    from dl_lab.training import device as device_module
    from dl_lab.training.stack import train_batched

    monkeypatch.setattr(device_module, "bf16_operands", lambda: True)
    seeds = (1, 2) if stacked else (1,)
    plain = [make_config(seed=seed) for seed in seeds]
    bf16 = [with_section(c, "train", bf16_matmul=True) for c in plain]
    data = dataset(plain[0])

    def run(configs):
        return train_batched(configs, data, CPU, Quiet()) if stacked else [train(configs[0], data, CPU, Quiet())]

    try:
        exact, rounded = run(plain), run(bf16)
    finally:
        configure_math_default()
    for one, other in zip(exact, rounded, strict=True):
        assert other.status == "completed", other.error
        assert abs(other.final.test_acc - one.final.test_acc) <= 0.02
        assert abs(other.final.train_loss - one.final.train_loss) <= 0.05 * one.final.train_loss
        assert other.final.train_loss != one.final.train_loss  # the operands were rounded


@pytest.mark.parametrize(
    "flags, products, bf16_matmul, device, expected",
    [
        (["avx512f", "avx512_bf16"], False, True, "cpu", True),  # the AMD EPYC: bf16 operands
        (["avx512f", "avx512_bf16"], False, False, "cpu", False),  # ... only when asked
        (["avx512f", "avx512_bf16", "amx_bf16"], True, True, "cpu", False),  # AMX: "medium" rounds the products
        (["avx512f"], False, True, "cpu", False),  # no native bf16: the key changes no numbers
        (["avx512f", "avx512_bf16"], False, True, "cuda", False),  # bf16_matmul is the CPU's
    ],
)
def test_bf16_matmul_rounds_operands_only_where_the_cpu_multiplies_bf16_natively_but_medium_would_not(
    monkeypatch, flags, products, bf16_matmul, device, expected
):
    from dl_lab.training import device as device_module

    monkeypatch.setattr(device_module, "cpu_flags", lambda: flags)
    monkeypatch.setattr(device_module, "bf16_products", lambda: products)
    device_module.bf16_operands.cache_clear()
    try:
        assert device_module.matmul_operands_bf16(bf16_matmul, torch.device(device)) is expected
    finally:
        device_module.bf16_operands.cache_clear()


def medium_matmul_error() -> float:
    """The largest relative error of a 784-256 layer's product under precision "medium", against float64."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.rand(100, 784, generator=g), torch.randn(784, 256, generator=g)
    torch.set_float32_matmul_precision("medium")
    try:
        product = torch.mm(x, w)
    finally:
        torch.set_float32_matmul_precision("highest")
    exact = x.double() @ w.double()
    return ((product.double() - exact).abs().max() / exact.abs().max()).item()


def test_the_bf16_probe_says_what_a_medium_precision_matmul_does_on_this_cpu(monkeypatch):
    from dl_lab.training import device as device_module

    device_module.bf16_products.cache_clear()
    torch.set_float32_matmul_precision("high")  # whatever was set before is set again after
    try:
        found = device_module.bf16_products()
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision("highest")
    error = medium_matmul_error()  # bf16's 8-bit mantissa: ~1e-3; float32: ~1e-7
    assert found is (error > 1e-4), error
    for name in ("mm", "bmm"):  # a kernel that rounds its operands to bf16 is found, in either form
        real = getattr(torch, name)
        with monkeypatch.context() as patch:
            patch.setattr(torch, name, lambda a, b, real=real: real(a.bfloat16().float(), b.bfloat16().float()))
            device_module.bf16_products.cache_clear()
            assert device_module.bf16_products() is True, name
    device_module.bf16_products.cache_clear()


@pytest.mark.parametrize(
    "setting, vendor, bf16, device, onednn",
    [
        (None, "AuthenticAMD", False, "cpu", True),  # auto: measured to pay on AMD EPYC
        ("auto", "AuthenticAMD", False, "cpu", True),
        (None, "AuthenticAMD", True, "cpu", False),  # a CPU where "medium" rounds to bf16: never by default
        ("on", "GenuineIntel", True, "cpu", False),  # ... nor when asked: that is train.bf16_matmul's choice
        (None, "GenuineIntel", False, "cpu", False),  # not measured there: left as it was
        (" ON ", "GenuineIntel", False, "cpu", True),
        ("off", "AuthenticAMD", False, "cpu", False),
        (None, "AuthenticAMD", False, "cuda", False),
    ],
)
def test_stacks_take_onednn_float32_kernels_where_measured_or_asked(monkeypatch, setting, vendor, bf16, device, onednn):
    from dl_lab.training import device as device_module
    from dl_lab.training.engine import configure_math

    monkeypatch.setattr(device_module, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(device_module, "bf16_products", lambda: bf16)
    environ = {} if setting is None else {"DLLAB_ONEDNN_STACKS": setting}
    try:
        assert device_module.choose_stack_matmuls(torch.device(device), environ) is onednn
        assert device_module.onednn_stacks() is onednn
        wide = make_config(model={"hidden": [128, 256]})
        configure_math(wide, CPU, stacked=True)
        assert torch.get_float32_matmul_precision() == ("medium" if onednn else "highest")
        configure_math(wide, CPU)  # a lone run keeps MKL's kernels
        assert torch.get_float32_matmul_precision() == "highest"
        for narrow in ([256, 64], []):  # a hidden layer under 128 wide, or none: MKL's kernels (faster there)
            configure_math(make_config(model={"hidden": narrow}), CPU, stacked=True)
            assert torch.get_float32_matmul_precision() == "highest"
        configure_math(make_config(train={"bf16_matmul": True}), CPU, stacked=True)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        device_module.choose_stack_matmuls(CPU, {"DLLAB_ONEDNN_STACKS": "off"})
        configure_math_default()


def test_a_stack_through_onednn_float32_kernels_trains_to_the_same_result_within_rounding():
    from dl_lab.training import device as device_module
    from dl_lab.training.stack import train_batched

    configs = [make_config(seed=seed, model={"hidden": [128, 128]}) for seed in (1, 2)]
    data = dataset(configs[0])
    results, precisions = {}, []
    try:
        for setting in ("off", "on"):
            device_module.choose_stack_matmuls(CPU, {"DLLAB_ONEDNN_STACKS": setting})
            results[setting] = train_batched(configs, data, CPU, Quiet())
            precisions.append(torch.get_float32_matmul_precision())
    finally:
        device_module.choose_stack_matmuls(CPU, {"DLLAB_ONEDNN_STACKS": "off"})
        configure_math_default()
    assert precisions == ["highest", "highest" if bf16_products() else "medium"]  # "on": oneDNN where float32
    for mkl, onednn in zip(results["off"], results["on"]):  # each product within float32 rounding of MKL's;
        assert onednn.status == mkl.status == "completed"  # Adam scales the gradients' last bits up to an lr
        for a, b in zip(mkl.history, onednn.history):  # step, so runs drift apart by seed-noise amounts
            assert b.train_loss == pytest.approx(a.train_loss, rel=0.02, abs=0.005)
            assert abs(b.test_acc - a.test_acc) <= 0.01


def test_cpu_flags_are_read_from_cpuinfo_and_missing_cpuinfo_is_no_error(monkeypatch, tmp_path):
    import builtins

    from dl_lab.training import device as device_module

    info = tmp_path / "cpuinfo"
    info.write_text(
        "vendor_id\t: AuthenticAMD\nmodel name\t: Some CPU\nflags\t\t: fpu avx512f sse avx512_bf16 amx_tile\n"
    )
    real_open = builtins.open
    monkeypatch.setattr(
        builtins, "open", lambda path, *a, **k: real_open(info if path == "/proc/cpuinfo" else path, *a, **k)
    )
    assert device_module.cpu_flags() == ["avx512f", "avx512_bf16"]  # amx_tile alone is not amx_bf16
    assert device_module.cpu_kind() == "Some CPU (avx512f, avx512_bf16)"
    assert device_module.cpu_vendor() == "AuthenticAMD"
    info.unlink()
    assert device_module.cpu_flags() == [] and device_module.cpu_vendor() == ""
    assert device_module.cpu_kind().endswith("(no avx512f, no native bf16)")


@pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU cannot flush denormals")
@pytest.mark.parametrize(
    "setting, vendor, device, flushed",
    [
        (None, "GenuineIntel", "cpu", True),  # auto: measured to pay on Intel
        ("auto", "GenuineIntel", "cpu", True),
        (None, "AuthenticAMD", "cpu", False),  # not measured there: left as it was
        (None, "", "cpu", False),
        (None, "GenuineIntel", "cuda", False),  # the CPU hardly computes for a CUDA run
        (" ON ", "AuthenticAMD", "cpu", True),
        ("off", "GenuineIntel", "cpu", False),
    ],
)
def test_denormals_are_flushed_where_measured_or_asked(monkeypatch, setting, vendor, device, flushed):
    from dl_lab.training import device as device_module

    monkeypatch.setattr(device_module, "cpu_vendor", lambda: vendor)
    environ = {} if setting is None else {"DLLAB_FLUSH_DENORMALS": setting}
    torch.set_flush_denormal(not flushed)  # whatever came before
    assert device_module.flush_denormals(torch.device(device), environ) is flushed
    assert device_module.denormals_flushed() is flushed
    tiny = torch.tensor([1e-30]) * torch.tensor([1e-9])  # 1e-39: a float32 denormal
    assert (tiny.item() == 0.0) is flushed


@pytest.mark.parametrize(
    "setting, vendor, device, glibc_takes_it, kept",
    [
        (None, "AuthenticAMD", "cpu", True, True),  # auto: measured to pay on AMD EPYC
        ("auto", "AuthenticAMD", "cpu", True, True),
        (None, "GenuineIntel", "cpu", True, False),  # not measured there: left as it was
        (None, "AuthenticAMD", "cuda", True, False),  # the CPU hardly computes for a CUDA run
        (" ON ", "GenuineIntel", "cpu", True, True),
        ("on", "AuthenticAMD", "cpu", False, False),  # not glibc, or a glibc that refuses: says so
        ("off", "AuthenticAMD", "cpu", True, False),
    ],
)
def test_freed_memory_is_kept_where_measured_or_asked(monkeypatch, setting, vendor, device, glibc_takes_it, kept):
    from dl_lab.training import device as device_module

    calls = []
    monkeypatch.setattr(device_module, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(device_module, "_raise_malloc_thresholds", lambda: calls.append(1) or glibc_takes_it)
    monkeypatch.setitem(device_module._malloc, "keeps_freed", False)  # a fresh process's state
    environ = {} if setting is None else {"DLLAB_KEEP_FREED_MEMORY": setting}
    assert device_module.keep_freed_memory(torch.device(device), environ) is kept
    assert device_module.keeps_freed_memory() is kept
    asked = setting is not None and setting.strip() == "on"
    assert len(calls) == (1 if kept or asked else 0)  # glibc is asked only where it is wanted
    if kept:  # set once for the process
        assert device_module.keep_freed_memory(torch.device(device), {"DLLAB_KEEP_FREED_MEMORY": "off"}) is True
        assert len(calls) == 1


@pytest.mark.parametrize("libc", [None, "musl 1.2.4", "no such name", "no confstr"])
def test_freed_memory_is_left_alone_where_the_c_library_is_not_glibc(monkeypatch, libc):
    from dl_lab.training import device as device_module

    def confstr(name):
        if libc == "no such name":  # macOS, musl
            raise ValueError(f"unrecognized configuration name {name!r}")
        return libc

    if libc == "no confstr":  # Windows
        monkeypatch.delattr(device_module.os, "confstr", raising=False)
    else:
        monkeypatch.setattr(device_module.os, "confstr", confstr)
    monkeypatch.setattr(device_module.ctypes, "CDLL", lambda *a: pytest.fail("mallopt called outside glibc"))
    monkeypatch.setitem(device_module._malloc, "keeps_freed", False)
    assert device_module.keep_freed_memory(CPU, {"DLLAB_KEEP_FREED_MEMORY": "on"}) is False


KEEP_FREED_PROBE = """
import ctypes, resource, sys, torch
from dl_lab.training import device
kept = device.keep_freed_memory(torch.device("cpu"), {"DLLAB_KEEP_FREED_MEMORY": sys.argv[1]})
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
MallInfo2 = type("MallInfo2", (ctypes.Structure,), {"_fields_": [(name, ctypes.c_size_t) for name in FIELDS]})
libc = ctypes.CDLL(None)
mallinfo2 = libc.mallinfo2  # glibc >= 2.33
mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
block = libc.malloc(20 * 2**20)  # the heap's top: freed, it is kept or trimmed (given back)
ctypes.memset(block, 1, 20 * 2**20)
libc.free(block)
top = mallinfo2().keepcost // 2**20  # MiB of free memory at the heap's top
elements = 24 * 2**20 // 4  # float32 elements in 24 MiB
def cycle():
    blocks = [torch.ones(elements) for _ in range(3)]  # written: every page touched
    mapped = mallinfo2().hblks
    del blocks
    return mapped
mapped = cycle() - mallinfo2().hblks  # the blocks glibc gave an mmap of their own (unmapped when freed)
for _ in range(5):
    cycle()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print(kept, top, mapped, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and getrusage's page faults: Linux")
def test_with_freed_memory_kept_tensors_reuse_the_heap_instead_of_fresh_pages(tmp_path):
    """In a new process (the setting lasts the process), glibc's defaults give each 24 MiB tensor an
    mmap of its own, unmapped when it is freed, so the next one is fresh pages, one fault per page;
    kept, such tensors come from the heap, a freed block at the heap's top stays there, and once the
    heap has grown to fit, a tensor reuses freed pages: no faults at all."""

    def probe(setting: str) -> tuple[bool, int, int, int]:
        done = subprocess.run(
            [sys.executable, "-c", KEEP_FREED_PROBE, setting], capture_output=True, text=True, timeout=120
        )
        if "undefined symbol: mallinfo2" in done.stderr:
            pytest.skip("glibc before 2.33 (no mallinfo2)")
        assert done.returncode == 0, done.stderr
        kept, top, mapped, faults = done.stdout.split()
        return kept == "True", int(top), int(mapped), int(faults)

    kept, top, mapped, faults = probe("on")
    if not kept:
        pytest.skip("this C library is not glibc, or refused the thresholds")
    assert top >= 20  # the trim threshold: kept, not given back
    assert mapped == 0  # the mmap threshold: from the heap
    assert faults < 0.05 * 5 * 3 * 24 * 2**20 / resource.getpagesize()
    kept, _, mapped, _ = probe("off")
    assert (kept, mapped) == (False, 3)  # what it changes: glibc's own threshold has not reached 24 MiB


@pytest.mark.parametrize("name", ["DLLAB_FLUSH_DENORMALS", "DLLAB_ONEDNN_STACKS", "DLLAB_KEEP_FREED_MEMORY"])
def test_an_unknown_process_setting_is_refused_with_what_is_allowed(name):
    from dl_lab.training.device import choose_stack_matmuls, flush_denormals, keep_freed_memory

    choose = {
        "DLLAB_FLUSH_DENORMALS": flush_denormals,
        "DLLAB_ONEDNN_STACKS": choose_stack_matmuls,
        "DLLAB_KEEP_FREED_MEMORY": keep_freed_memory,
    }[name]
    with pytest.raises(
        ConfigError, match=rf"\${name}='yes please' is not a setting; allowed: auto \(default\), on, off"
    ):
        choose(CPU, {name: "yes please"})


def test_fused_adam_leaves_a_grad_scalers_steps_to_adam_step(monkeypatch):
    """A grad scaler sets grad_scale and found_inf on the optimizer between steps; Adam.step reads them."""
    params, optimizers, step, through_adam_step = _adam_twins(monkeypatch, lr=0.01, fused=True)
    for kind in ("torch", "plain"):
        step(kind)  # the first step initializes state
    for optimizer in optimizers.values():
        optimizer.grad_scale, optimizer.found_inf = torch.tensor(2.0), torch.tensor(0.0)
    calls = len(through_adam_step)
    step("torch")
    step("plain")
    assert len(through_adam_step) - calls == 2
    for a, b in zip(params["torch"], params["plain"]):
        assert torch.equal(a, b)
