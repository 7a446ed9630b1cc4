"""Per-epoch cost of train.diagnostics on the lab's relu preset, measured side by side in one process.

Alternates runs with diagnostics off, on (the default: a probe after each epoch) and on with
train.step_grad_norms (gradient norms at every step), same seed and data, and prints the median
seconds per epoch of each and the overheads; then times the two added parts in isolation (steadier
than the difference of two noisy medians). Usage: DLLAB_DATA_DIR=../shared/data python bench/diagnostics_overhead.py
"""

from __future__ import annotations

import os
import statistics
import time

import benchargs
import torch

from dl_lab.components.model import build_mlp, linear_layers
from dl_lab.config.loader import load_config
from dl_lab.experiments.execute import device_and_data
from dl_lab.training.device import hardware
from dl_lab.training.diagnostics import PROBE_SIZE, probe
from dl_lab.training.engine import Observer, train


def main() -> None:
    args = benchargs.parse(__doc__)
    base = load_config("relu", [f"train.epochs={args.epochs}", f"device={args.device}"]).config
    device, data = device_and_data(base, os.environ)
    settings = {
        "off": {"diagnostics": False},
        "on": {"diagnostics": True},
        "on + step_grad_norms": {"diagnostics": True, "step_grad_norms": True},
    }
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.repeats):
        for name, setting in settings.items():
            config = base.model_copy(update={"train": base.train.model_copy(update=setting)})
            result = train(config, data, device, Observer())
            seconds[name] += [m.seconds for m in result.history[1:]]  # skip the warm-up epoch
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    off = medians["off"]
    # The probe alone, timed in isolation: a steadier number than the difference of two noisy medians.
    model = build_mlp(base.model, data.num_features, data.num_classes).to(device)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = data.train.x[:PROBE_SIZE], data.train.y[:PROBE_SIZE]
    probe(model, loss_fn, x, y, base.model.activation)
    start = time.perf_counter()
    for _ in range(20):
        probe(model, loss_fn, x, y, base.model.activation)
    probe_seconds = (time.perf_counter() - start) / 20
    # What every training step adds: the gradient norm of each Linear weight (engine.training_step).
    loss_fn(model(data.train.x[: base.data.batch_size]), data.train.y[: base.data.batch_size]).backward()
    weights = [layer.weight for layer in linear_layers(model)]
    start = time.perf_counter()
    for _ in range(2000):
        torch.stack([w.grad.norm() for w in weights])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    norm_seconds = (time.perf_counter() - start) / 2000
    steps = result.plan.steps
    print(f"machine: {hardware(device)}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"relu preset (784-256-256-10, Adam, batch 100), {args.repeats} x {args.epochs} epochs each, first epoch of each run skipped"
    )
    for name, median in medians.items():
        print(f"diagnostics {name}: {median:.3f} s/epoch (median), {100 * (median / off - 1):+.1f}% vs off")
    print("(differences of medians: noisy on a shared machine)")
    print(f"probe alone: {1000 * probe_seconds:.1f} ms per epoch = {100 * probe_seconds / off:.2f}% of an epoch")
    print(
        f"step gradient norms alone: {1e6 * norm_seconds:.1f} us per step x {steps} steps = "
        f"{1000 * norm_seconds * steps:.1f} ms per epoch = {100 * norm_seconds * steps / off:.2f}% of an epoch"
    )


if __name__ == "__main__":
    main()
