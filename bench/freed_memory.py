"""$DLLAB_KEEP_FREED_MEMORY on and off, the user's command whole: `dllab compare relu sigmoid --seeds 5
--set train.epochs=1 --set device=cpu`, each engine, the two settings taking turns (the order swapped
every repeat), several repeats, medians.

The setting lasts a process (glibc's thresholds cannot be given back), so each command is a process
of its own. Prints per engine and setting the runs' training seconds, the whole command's wall time
and its page faults (minor faults: fresh pages from the kernel), and the ratios on / off.
Usage: DLLAB_DATA_DIR=../shared/data python bench/freed_memory.py [--repeats 3] [--engines batched sequential]
       [-- more dllab compare arguments, e.g. --set train.bf16_matmul=true]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from compare_end_to_end import Timed, timed_compare

from dl_lab.training.device import ENV_KEEP_FREED_MEMORY, cpu_kind

SETTINGS = ("on", "off")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--engines", nargs="+", default=["batched", "sequential"])
    parser.add_argument("extra", nargs="*", help="more dllab compare arguments, after --")
    args = parser.parse_args()
    timed: dict[tuple[str, str], list[Timed]] = {(e, s): [] for e in args.engines for s in SETTINGS}
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats):
            for engine in args.engines:
                for setting in SETTINGS if repeat % 2 == 0 else SETTINGS[::-1]:
                    runs = Path(root) / f"{engine}-{setting}-{repeat}"
                    result = timed_compare(
                        engine, runs, args.epochs, args.seeds, args.extra, environ={ENV_KEEP_FREED_MEMORY: setting}
                    )
                    timed[engine, setting].append(result)
                    print(f"  {engine:>10} {setting:>3}: training {result.trained:.2f} s, whole command "
                          f"{result.wall:.2f} s, {result.faults:,} page faults", flush=True)  # fmt: skip
    print(f"machine: {cpu_kind()}; {args.repeats} repeats, medians; compare relu sigmoid --seeds {args.seeds} "
          f"--set train.epochs={args.epochs} --set device=cpu {' '.join(args.extra)}")  # fmt: skip
    for engine in args.engines:
        median = {
            (setting, field): statistics.median(getattr(t, field) for t in timed[engine, setting])
            for setting in SETTINGS
            for field in Timed._fields
        }
        for setting in SETTINGS:
            print(f"  {engine:>10}, {ENV_KEEP_FREED_MEMORY}={setting:<3}: training {median[setting, 'trained']:.2f} s, "
                  f"whole command {median[setting, 'wall']:.2f} s, {median[setting, 'faults']:,.0f} page faults")  # fmt: skip
        ratios = {field: median["on", field] / median["off", field] for field in Timed._fields}
        print(f"  {engine:>10}, on / off: training {ratios['trained']:.2f}, whole command {ratios['wall']:.2f}, "
              f"page faults {ratios['faults']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
