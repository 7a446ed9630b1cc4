"""Seconds per MNIST epoch, side by side in one process: the classic lab loop vs dllab's engine.

(a) classic: torchvision MNIST + ToTensor + DataLoader(batch 100, shuffle, drop_last), as in the lab
(b) dllab:   dl_lab.training.engine.train on the same MLP (784-256-256-10 ReLU) and optimizer (Adam lr 0.001)
(c) floor:   a bare loop over preloaded tensors with index-slice batches, the same maths
(d) with --compile: dllab's engine with train.compile (torch.compile of the step; its first epoch
    includes compiling, printed apart, and the median of 3+ epochs leaves it out)
(e) with --bf16: dllab's engine with train.bf16_matmul (what it does depends on the CPU: env.json's
    bf16_products and bf16_operands)

Each epoch includes one evaluation of the 10k test images, for all three. The process is set up as
`dllab train` sets up its own (device.configure_process: denormals, the allocator), for every
pipeline alike since the settings are process-wide. With --rounds R the three
pipelines take turns R times (the order rotating each round), and the ratios are taken within each
round, so a machine that gets busier or quieter over the minutes shifts all three alike. Prints each
round's median seconds per epoch and ratios, and the median ratios over the rounds.
Usage: DLLAB_DATA_DIR=../shared/data python bench/epoch_speed.py [--epochs 3] [--rounds 1] [--device cpu] [--compile] [--bf16]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import torch
from torch import nn


def lab_model(device: torch.device) -> nn.Module:
    torch.manual_seed(777)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
    return model.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def classic(root: str, device: torch.device, epochs: int) -> list[float]:
    """The lab's loop: per-sample PIL -> ToTensor in a DataLoader, one .item() per step."""
    import torchvision.datasets as dsets
    import torchvision.transforms as transforms

    train = dsets.MNIST(root=root, train=True, transform=transforms.ToTensor(), download=False)
    test = dsets.MNIST(root=root, train=False, transform=transforms.ToTensor(), download=False)
    loader = torch.utils.data.DataLoader(train, batch_size=100, shuffle=True, drop_last=True)
    model = lab_model(device)
    criterion = nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        avg_cost = 0.0
        for X, Y in loader:
            X, Y = X.view(-1, 28 * 28).to(device), Y.to(device)
            optimizer.zero_grad()
            cost = criterion(model(X), Y)
            cost.backward()
            optimizer.step()
            avg_cost += cost.item() / len(loader)
        with torch.no_grad():
            X_test = (test.data.view(-1, 28 * 28).float() / 255).to(device)
            accuracy = (model(X_test).argmax(1) == test.targets.to(device)).float().mean().item()
        sync(device)
        times.append(time.perf_counter() - start)
    print(f"  classic: last epoch cost {avg_cost:.4f}, test acc {accuracy:.4f}")
    return times


def dllab(root: str, device: torch.device, epochs: int, compile_step: bool = False, bf16: bool = False) -> list[float]:
    from dl_lab.components.datasets import DataRoot, load_dataset
    from dl_lab.config.schema import ExperimentConfig
    from dl_lab.training.engine import Observer, train

    config = ExperimentConfig.model_validate(
        {
            "name": "bench",
            "data": {"download": False},
            "model": {"init": "xavier_uniform"},
            "train": {"epochs": epochs, "compile": compile_step, "bf16_matmul": bf16},
        }
    )
    data = load_dataset(config.data, DataRoot(__import__("pathlib").Path(root), "bench"), device)

    result = train(config, data, device, Observer())
    label = "dllab compiled" if compile_step else "dllab bf16" if bf16 else "dllab"
    if result.status != "completed":
        raise SystemExit(f"{label}: the run {result.status}: {result.error}")
    seconds = [m.seconds for m in result.history]
    print(f"  {label}: last epoch train loss {result.final.train_loss:.4f}, test acc {result.final.test_acc:.4f}")
    if compile_step:
        print(f"  {label}: first epoch {seconds[0]:.2f} s (compiling the step), then {seconds[1:]}")
    return seconds


def floor(root: str, device: torch.device, epochs: int) -> list[float]:
    """No framework: tensors preloaded on the device, index-slice batches, fused Adam."""
    import torchvision.datasets as dsets

    train = dsets.MNIST(root=root, train=True, download=False)
    test = dsets.MNIST(root=root, train=False, download=False)
    x = (train.data.view(-1, 784).float() / 255).to(device)
    y = train.targets.to(device)
    x_test, y_test = (test.data.view(-1, 784).float() / 255).to(device), test.targets.to(device)
    model = lab_model(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001, fused=True)
    criterion = nn.CrossEntropyLoss()
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(x), device=device)
        for i in range(0, len(x) - 99, 100):
            index = order[i : i + 100]
            loss = criterion(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.inference_mode():
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        sync(device)
        times.append(time.perf_counter() - start)
    print(f"  floor:   test acc {accuracy:.4f}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--root", default=os.environ.get("DLLAB_DATA_DIR", "../shared/data"))
    parser.add_argument("--compile", action="store_true", help="add dllab's engine with train.compile")
    parser.add_argument("--bf16", action="store_true", help="add dllab's engine with train.bf16_matmul")
    args = parser.parse_args()
    device = torch.device(args.device)
    from dl_lab.training.device import configure_process, denormals_flushed, hardware, keeps_freed_memory

    configure_process(device, os.environ)
    name = hardware(device)
    print(f"machine: {name}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"denormals flushed {denormals_flushed()}, freed memory kept {keeps_freed_memory()}")  # fmt: skip
    print(f"{args.epochs} epochs each of 784-256-256-10 ReLU, Adam lr 0.001, batch 100, on {device}")
    pipelines = [("classic lab loop", classic), ("dllab engine", dllab), ("bare tensor loop", floor)]
    if args.compile:
        pipelines.append(("dllab compiled", functools.partial(dllab, compile_step=True)))
    if args.bf16:
        pipelines.append(("dllab bf16", functools.partial(dllab, bf16=True)))
    speedups, overheads, compiled, bf16 = [], [], [], []
    for round_ in range(args.rounds):
        turn = pipelines[round_ % len(pipelines) :] + pipelines[: round_ % len(pipelines)]
        medians = {label: statistics.median(fn(args.root, device, args.epochs)) for label, fn in turn}
        base = medians["classic lab loop"]
        print(f"\nround {round_ + 1}: {'pipeline':<18} {'s/epoch (median)':>17} {'speed-up vs classic':>20}")
        for label, _ in pipelines:
            print(f"         {label:<18} {medians[label]:>17.3f} {base / medians[label]:>19.2f}x")
        speedups.append(base / medians["dllab engine"])
        overheads.append(medians["dllab engine"] / medians["bare tensor loop"])
        print(f"         dllab / bare loop: {overheads[-1]:.2f} (1.00 = no framework overhead)")
        if args.compile:
            compiled.append(medians["dllab compiled"] / medians["dllab engine"])
            print(f"         dllab compiled / dllab: {compiled[-1]:.2f}")
        if args.bf16:
            bf16.append(base / medians["dllab bf16"])
            print(f"         classic / dllab bf16: {bf16[-1]:.2f}x")
    if args.rounds > 1:
        print(
            f"\nover {args.rounds} rounds: classic / dllab {statistics.median(speedups):.2f}x "
            f"(each round: {', '.join(f'{r:.2f}' for r in speedups)}); dllab / bare loop "
            f"{statistics.median(overheads):.2f} (each: {', '.join(f'{r:.2f}' for r in overheads)})"
        )
        if compiled:
            each = ", ".join(f"{r:.2f}" for r in compiled)
            print(f"dllab compiled / dllab {statistics.median(compiled):.2f} (each: {each})")
        if bf16:
            each = ", ".join(f"{r:.2f}" for r in bf16)
            print(f"classic / dllab bf16 {statistics.median(bf16):.2f}x (each: {each})")


if __name__ == "__main__":
    main()
