"""What training returns, as typed, torch-free records: per-epoch metrics and diagnostics, the batch
plan, pre-training epochs and the result of a run. The run store (runs/) writes them; progress
displays draw them; nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

Status = Literal["completed", "failed", "interrupted", "diverged"]
SATURATION_MARGIN = 0.02  # an output this close to a saturating activation's limit counts as saturated

# Warning thresholds (see warnings_for)
VANISHING_RATIO = 1e-2
EXPLODING_RATIO = 1e2
DEAD_WARNING = 0.5
SATURATED_WARNING = 0.5
SYMMETRIC_WARNING = 0.99


@dataclass(frozen=True)
class Diagnostics:
    grad_norm: tuple[float, ...]  # per Linear layer, input to output
    weight_norm: tuple[float, ...]
    activation_mean: tuple[float, ...]  # per hidden layer
    activation_std: tuple[float, ...]
    saturated_fraction: tuple[float, ...]
    dead_fraction: tuple[float, ...]
    symmetric_fraction: tuple[float, ...]
    histograms: tuple[dict[str, Any], ...]  # per hidden layer: {"edges": [lo, hi], "counts": [...]}
    train_grad_norm: tuple[float, ...] = ()  # per Linear layer: mean over the epoch's training steps

    @property
    def gradient_ratio(self) -> float | None:
        """First layer's gradient norm over the last layer's: << 1 vanishing, >> 1 exploding."""
        if len(self.grad_norm) < 2 or self.grad_norm[-1] == 0:
            return None
        return self.grad_norm[0] / self.grad_norm[-1]

    def columns(self) -> dict[str, float]:
        """Flat, named per-layer columns for metrics.csv (layer numbers start at 1)."""
        out: dict[str, float] = {}
        for prefix, values in [
            ("grad_norm", self.grad_norm),
            ("train_grad_norm", self.train_grad_norm),
            ("weight_norm", self.weight_norm),
            ("act_mean_h", self.activation_mean),
            ("act_std_h", self.activation_std),
            ("saturated_h", self.saturated_fraction),
            ("dead_h", self.dead_fraction),
            ("symmetric_h", self.symmetric_fraction),
        ]:
            separator = "" if prefix.endswith("_h") else "_"
            out.update({f"{prefix}{separator}{i}": v for i, v in enumerate(values, start=1)})
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "grad_norm": list(self.grad_norm),
            "gradient_ratio_first_last": self.gradient_ratio,
            "train_grad_norm": list(self.train_grad_norm),
            "weight_norm": list(self.weight_norm),
            "activation_mean": list(self.activation_mean),
            "activation_std": list(self.activation_std),
            "saturated_fraction": list(self.saturated_fraction),
            "dead_fraction": list(self.dead_fraction),
            "symmetric_fraction": list(self.symmetric_fraction),
            "activation_histograms": list(self.histograms),
        }


@dataclass(frozen=True)
class PretrainEpoch:
    layer: int  # 1-based index of the hidden layer
    epoch: int
    reconstruction_error: float  # mean squared error per visible unit after one up-down pass
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float  # mean over the epoch's training batches, in train mode (dropout on)
    train_acc: float
    test_loss: float  # eval mode, whole test split
    test_acc: float
    seconds: float  # wall time of the epoch (training, evaluation, diagnostics); a stack's runs share it equally
    train_eval_loss: float | None = None  # train.eval_train: the training split in eval mode
    train_eval_acc: float | None = None
    diagnostics: Diagnostics | None = None  # train.diagnostics: probe-batch measurements and step gradient norms

    def as_dict(self) -> dict[str, float | None]:
        """The scalar metrics, then the diagnostics as named per-layer columns (metrics.csv rows)."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "diagnostics"}
        return {**row, **(self.diagnostics.columns() if self.diagnostics else {})}


FINAL_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc")


@dataclass(frozen=True)
class BatchPlan:
    """How one epoch walks the training split: `steps` batches of `batch_size` index slices."""

    samples: int  # training samples seen per epoch
    batch_size: int
    steps: int
    dropped: int  # samples left out per epoch (drop_last, or a lone sample batch norm cannot use)

    @classmethod
    def make(cls, n: int, batch_size: int, drop_last: bool, batchnorm: bool) -> BatchPlan:
        full, rest = divmod(n, batch_size)
        # BatchNorm1d cannot compute batch statistics from one sample, so a final batch of one
        # is dropped even with drop_last: false (documented in docs/config.md).
        keep_rest = rest > 0 and not drop_last and not (batchnorm and rest == 1)
        steps = full + int(keep_rest)
        samples = full * batch_size + (rest if keep_rest else 0)
        return cls(samples, batch_size, steps, n - samples)


@dataclass(frozen=True)
class TrainResult:
    status: Status
    history: tuple[EpochMetrics, ...]
    seconds: float
    plan: BatchPlan
    parameters: int
    error: str | None = None  # traceback text for failed runs, the reason for diverged ones
    pretraining: tuple[PretrainEpoch, ...] = ()
    diverged_at: dict[str, int] | None = None  # {"epoch": e, "step": s}, or {"pretraining_layer", "pretraining_epoch"}

    @property
    def final(self) -> EpochMetrics | None:
        return self.history[-1] if self.history else None


def warnings_for(diagnostics: Diagnostics) -> list[tuple[str, str]]:
    """(key, one-line warning) for every threshold crossed; the key lets callers warn once per run."""
    found = []
    ratio = diagnostics.gradient_ratio
    last = len(diagnostics.grad_norm)
    if ratio is not None and ratio < VANISHING_RATIO:
        found.append(("vanishing", f"layer 1 gradients are {ratio:.1e} of layer {last}'s: vanishing gradients"))
    if ratio is not None and ratio > EXPLODING_RATIO:
        found.append(("exploding", f"layer 1 gradients are {ratio:.1e} times layer {last}'s: exploding gradients"))
    for layer, (dead, saturated, symmetric) in enumerate(
        zip(diagnostics.dead_fraction, diagnostics.saturated_fraction, diagnostics.symmetric_fraction), start=1
    ):
        if symmetric >= SYMMETRIC_WARNING:
            found.append(
                (
                    f"symmetric{layer}",
                    f"all units of layer {layer} are identical: symmetric weights "
                    f"(e.g. zero init) never break symmetry",
                )
            )
        if dead >= DEAD_WARNING:
            found.append((f"dead{layer}", f"{dead:.0%} of layer-{layer} units are dead (zero for every probe sample)"))
        if saturated >= SATURATED_WARNING:
            found.append(
                (
                    f"saturated{layer}",
                    f"{saturated:.0%} of layer-{layer} outputs are saturated "
                    f"(within {SATURATION_MARGIN} of the activation's limits)",
                )
            )
    return found


class WarningTracker:
    """Reports each warning (by key) once per run, the first epoch its threshold is crossed."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def new(self, diagnostics: Diagnostics | None) -> list[str]:
        fresh = [
            (key, text) for key, text in (warnings_for(diagnostics) if diagnostics else []) if key not in self.seen
        ]
        self.seen.update(fresh)
        return [text for _, text in fresh]

    @property
    def all(self) -> list[str]:
        return list(self.seen.values())
