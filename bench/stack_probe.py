"""The per-epoch diagnostics probe of a stack: one pass over the stack (StackNet.diagnose, what the engine
does) against one probe per model (what it did before), side by side in one process.

A stack of --seeds seeds of the relu and sigmoid presets (10 models by default, as `dllab compare relu
sigmoid --seeds 5` trains them), fresh from initialization. The two ways take turns --repeats times;
prints the median milliseconds of each (the per-model way includes copying the stack's weights back
into the models, as the engine had to), and how far apart their numbers are (float rounding: batched
matmuls against one model's).

Usage: DLLAB_DATA_DIR=../shared/data python bench/stack_probe.py [--device cuda] [--seeds 5] [--repeats 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from dl_lab.config.loader import load_config
from dl_lab.experiments.execute import device_and_data
from dl_lab.training.device import hardware
from dl_lab.training.diagnostics import PROBE_SIZE, probe
from dl_lab.training.engine import Observer, _build_member, seed_everything
from dl_lab.training.stack import StackNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    configs = [
        load_config(preset, ["train.epochs=1", f"device={args.device}", f"seed={seed}"]).config
        for preset in ("relu", "sigmoid")
        for seed in range(1, args.seeds + 1)
    ]
    device, data = device_and_data(configs[0], os.environ)
    members = [_build_member(c, seed_everything(c.seed), data, device, Observer()) for c in configs]
    net = StackNet(members, device, False)
    x, y = data.train.x[:PROBE_SIZE], data.train.y[:PROBE_SIZE]
    activations = [c.model.activation for c in configs]
    everyone = list(range(len(configs)))
    loss_fn = torch.nn.CrossEntropyLoss()

    def stacked() -> list:
        return net.diagnose(x, y, activations, everyone)

    def one_by_one() -> list:
        return [probe(model, loss_fn, x, y, a) for model, a in zip(net.models(), activations)]

    timings: dict[str, list[float]] = {"stacked": [], "one by one": []}
    for _ in range(args.repeats + 1):  # the first round warms up
        for name, way in (("stacked", stacked), ("one by one", one_by_one)):
            start = time.perf_counter()
            out = way()  # every way ends in a host transfer: nothing is left queued on a GPU
            timings[name].append(time.perf_counter() - start)
            if name == "stacked":
                together = out
            else:
                alone = out
    print(f"{hardware(device)}, torch {torch.__version__}: a stack of {len(configs)} (relu and sigmoid presets)")
    medians = {name: statistics.median(values[1:]) for name, values in timings.items()}
    for name, median in medians.items():
        print(f"  {name:<11} {1000 * median:7.1f} ms per epoch (median of {args.repeats})")
    print(f"  stacked / one by one: {medians['stacked'] / medians['one by one']:.2f}")
    relative = max(
        abs(a - b) / max(abs(a), 1e-12)
        for one, many in zip(alone, together)
        for name in ("grad_norm", "weight_norm", "activation_mean", "activation_std")
        for a, b in zip(getattr(one, name), getattr(many, name))
    )
    same = sum(one.histograms == many.histograms for one, many in zip(alone, together))
    print(
        f"  largest relative difference of norms, means, stds: {relative:.1e}; equal histograms: {same} of {len(alone)}"
    )


if __name__ == "__main__":
    main()
