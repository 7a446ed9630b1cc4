"""The options the single-model benchmarks share: epochs, repeats, device."""

from __future__ import annotations

import argparse


def parse(doc: str, epochs: int = 3, repeats: int = 3) -> argparse.Namespace:
    """--epochs, --repeats and --device (default cpu), with the script's first docstring line as help."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()
