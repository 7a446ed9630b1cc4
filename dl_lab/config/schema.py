"""The experiment config: frozen, typed, validated once (see config_loader for files and --set).

Field descriptions say what is allowed; error messages and `dllab options` quote them.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dl_lab.config.choices import (
    ACTIVATIONS,
    DATASETS,
    INITIALIZERS,
    OPTIMIZERS,
    Choices,
)

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
MAX_NAME_LENGTH = 200


class Section(BaseModel):
    """Unknown keys are refused; objects are immutable once validated; numbers must be finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _registered(registry: Choices, value: Any) -> Any:
    if value not in registry:
        raise ValueError(registry.unknown_message(value))
    return value


def _used_by_choice(registry: Choices, chooser: str, label: str):
    """Field validator refusing a non-default value for a key the chosen option ignores
    (momentum on Adam, say): silently ignoring it would mislead. ``chooser`` is declared earlier."""

    def check(cls, value: Any, info: ValidationInfo) -> Any:
        chosen = info.data.get(chooser)
        if chosen not in registry or info.field_name in registry[chosen].params:
            return value
        if value != cls.model_fields[info.field_name].default:
            readers = ", ".join(e.name for e in registry if info.field_name in e.params)
            raise ValueError(
                f"{label} {chosen} does not use {info.field_name}; allowed only with: {readers} "
                f"(remove the key or choose one of those)"
            )
        return value

    return check


class DataConfig(Section):
    dataset: str = Field("mnist", description=f"one of: {', '.join(DATASETS.names())}")
    root: Optional[str] = Field(None, description="data folder; null: env DLLAB_DATA_DIR, else the per-user cache")
    download: bool = Field(True, description="download the dataset when it is missing")
    batch_size: int = Field(100, ge=1, description="an integer >= 1")
    drop_last: bool = Field(True, description="drop the last partial training batch")
    normalize: bool = Field(False, description="standardize pixels with the training split's mean and std")
    train_subset: Optional[int] = Field(None, ge=1, description="null or an integer >= 1: train on the first N samples")

    check_dataset = field_validator("dataset")(lambda cls, v: _registered(DATASETS, v))


class BatchNormConfig(Section):
    position: Literal["before", "after"] = Field("before", description="'before' or 'after' the activation")


class RbmConfig(Section):
    """Greedy layer-wise RBM pre-training (model.init: rbm); see pretraining.py."""

    epochs: int = Field(5, ge=1, description="an integer >= 1: pre-training epochs per layer")
    lr: float = Field(0.05, gt=0.0, description="a learning rate > 0 for contrastive divergence")
    k: int = Field(1, ge=1, description="an integer >= 1: Gibbs steps per CD-k update")
    batch_size: int = Field(100, ge=1, description="an integer >= 1")


class ModelConfig(Section):
    hidden: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        (256, 256), description="a list of hidden-layer widths, each >= 1 ([] is softmax regression)"
    )
    activation: str = Field("relu", description=f"one of: {', '.join(ACTIVATIONS.names())}")
    init: str = Field("normal", description=f"one of: {', '.join(INITIALIZERS.names())}")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="a probability in [0, 1)")
    batchnorm: BatchNormConfig | Literal[False] = Field(
        False, description="false, true (= before the activation) or {position: before|after}"
    )
    leaky_relu_slope: float = Field(0.01, ge=0.0, description="a number >= 0 (leaky_relu only)")
    init_gain: Union[Literal["auto"], Annotated[float, Field(gt=0.0)]] = Field(
        "auto",
        description="'auto' (the gain torch recommends for each layer's activation, 1 for the output "
        "layer) or a number > 0 (xavier_*, he_* only)",
    )
    rbm: RbmConfig = Field(RbmConfig(), description="{epochs, lr, k, batch_size} (init: rbm only)")

    check_activation = field_validator("activation")(lambda cls, v: _registered(ACTIVATIONS, v))
    check_init = field_validator("init")(lambda cls, v: _registered(INITIALIZERS, v))
    check_init_params = field_validator("init_gain", "rbm")(_used_by_choice(INITIALIZERS, "init", "init"))

    @field_validator("batchnorm", mode="before")
    @classmethod
    def _batchnorm_true(cls, value: Any) -> Any:
        return {} if value is True else value

    check_activation_params = field_validator("leaky_relu_slope")(
        _used_by_choice(ACTIVATIONS, "activation", "activation")
    )

    @property
    def has_batchnorm_layers(self) -> bool:
        """Whether the built model has BatchNorm1d layers (they follow hidden layers; softmax regression has none)."""
        return self.batchnorm is not False and len(self.hidden) > 0


class OptimizerConfig(Section):
    name: str = Field("adam", description=f"one of: {', '.join(OPTIMIZERS.names())}")
    lr: float = Field(0.001, gt=0.0, description="a learning rate > 0")
    weight_decay: float = Field(0.0, ge=0.0, description="a number >= 0")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="a number in [0, 1) (sgd)")
    nesterov: bool = Field(False, description="Nesterov momentum (sgd, needs momentum > 0)")
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        (0.9, 0.999), description="two numbers in [0, 1) (adam, adamw)"
    )
    eps: Optional[float] = Field(
        None, gt=0.0, description="null (the optimizer's own default) or a number > 0 (adam, adamw, rmsprop, adagrad)"
    )
    alpha: float = Field(0.99, gt=0.0, lt=1.0, description="a smoothing constant in (0, 1) (rmsprop)")
    centered: bool = Field(False, description="normalize by the centred second moment (rmsprop)")
    lr_decay: float = Field(0.0, ge=0.0, description="a number >= 0 (adagrad)")

    check_name = field_validator("name")(lambda cls, v: _registered(OPTIMIZERS, v))

    check_params = field_validator(
        "lr", "weight_decay", "momentum", "nesterov", "betas", "eps", "alpha", "centered", "lr_decay"
    )(_used_by_choice(OPTIMIZERS, "name", "optimizer"))

    @field_validator("nesterov")
    @classmethod
    def _nesterov_needs_momentum(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("momentum") == 0:
            raise ValueError("true needs momentum > 0; allowed: false, or set optimizer.momentum (e.g. 0.9)")
        return value


class TrainConfig(Section):
    epochs: int = Field(15, ge=1, description="an integer >= 1")
    eval_train: bool = Field(
        False,
        description="also evaluate the training split in eval mode each epoch "
        "(train_eval_loss, train_eval_acc in metrics.csv)",
    )
    diagnostics: bool = Field(True, description="per-layer gradient/activation diagnostics on a probe batch each epoch")
    step_grad_norms: bool = Field(
        False,
        description="also measure each layer's gradient norm at every training step "
        "(epoch means in train_grad_norm columns; a non-finite gradient "
        "then stops the run at its own step); 5-12% slower epochs on CPU",
    )
    cuda_graphs: bool = Field(
        False,
        description="capture the training step as a CUDA graph and replay it per batch "
        "(CUDA only, full batches only; ignored elsewhere)",
    )
    compile: bool = Field(
        False,
        description="compile the training step with torch.compile (inductor: fewer, fused kernels; the "
        "first steps wait for the compiler, 2-23 s on a 2-core Intel Xeon, about 14 s on an H200); meant for CUDA, "
        "where the optimizer's update is compiled too; no faster on that CPU",
    )
    tf32: bool = Field(
        False, description="allow TF32 matmuls on CUDA (faster, ~1e-3 relative precision; no effect on CPU)"
    )
    bf16_matmul: bool = Field(
        False,
        description="on CPU, compute float32 matmuls in bfloat16 (weights, gradients, optimizer state and "
        "results stay float32; ~3e-3 relative precision): where oneDNN has a bf16 kernel for the CPU (AMX) "
        "its products are rounded to bf16 inside the kernel; on a CPU with avx512_bf16 but no such kernel "
        "(an AMD EPYC) the training step's matmuls take bf16 operands and give bf16 results, widened back "
        "(env.json's bf16_products and bf16_operands say which); faster for stacked comparisons, not for "
        "one model; no effect on CUDA",
    )
    tensorboard: bool = Field(
        False,
        description="also write the run's TensorBoard event file into its run folder at each epoch boundary "
        '(needs the tensorboard extra: pip install "dl_lab[tensorboard]")',
    )

    @field_validator("step_grad_norms")
    @classmethod
    def _step_grad_norms_need_diagnostics(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("diagnostics") is False:
            raise ValueError("true needs train.diagnostics: true; allowed: false, or turn diagnostics on")
        return value


class ExperimentConfig(Section):
    name: str = Field(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        description=f"the run's name, 1 to {MAX_NAME_LENGTH} characters, no path separators or "
        "control characters, not starting with '.'; default: the config file's stem",
    )
    seed: int = Field(777, ge=0, le=2**63 - 1, description="an integer >= 0")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not DEVICE_PATTERN.match(value):
            raise ValueError(f"unknown device {value!r}")
        return value

    @model_validator(mode="after")
    def _rbm_needs_unit_interval_pixels(self) -> ExperimentConfig:
        if self.model.init == "rbm" and self.data.normalize:
            raise ValueError(
                "model.init: rbm pre-trains Bernoulli units, which need pixels in [0, 1]; "
                "allowed: data.normalize: false with init rbm"
            )
        return self

    @model_validator(mode="after")
    def _batchnorm_needs_two_samples_a_batch(self) -> ExperimentConfig:
        if self.model.has_batchnorm_layers and self.data.batch_size < 2:
            raise ValueError(
                "data.batch_size: 1 with model.batchnorm: batch norm normalizes each feature over the batch, "
                "and one sample has no variance (its running variance would become nan); "
                "allowed: data.batch_size >= 2, or model.batchnorm: false"
            )
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if "/" in value or "\\" in value or value.startswith(".") or not value.isprintable():
            raise ValueError("a name may not contain path separators or control characters, or start with '.'")
        return value

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-ready form: what `config show` prints and runs record."""
        return self.model_dump(mode="json")

    def experiment_hash(self) -> str:
        """Identifies what is trained, ignoring the run's name and seed (used to match runs on resume)."""
        body = {k: v for k, v in self.to_dict().items() if k not in ("name", "seed")}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def config_file_schema() -> dict[str, Any]:
    """The JSON Schema of a config *file*: the ExperimentConfig schema with every key optional (the
    name defaults to the file's stem) and `extends` allowed. `dllab config schema` prints it, and
    configs/config.schema.json ships it for editors (yaml-language-server)."""
    schema = ExperimentConfig.model_json_schema()
    schema.pop("required", None)
    schema["title"] = "dl_lab config file"
    schema["properties"] = {
        "extends": {"type": "string", "description": "a parent config, relative to this file; merged key by key"},
        **schema["properties"],
    }
    return schema
