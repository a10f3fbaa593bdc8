"""Training configuration: one frozen dataclass per run; its field docstrings are the CLI help."""

import dataclasses
import hashlib
import json
import pathlib
from typing import Any, Literal

from saev.data.layout import Tokens
from saev.errors import ConfigError
from saev.nn import architectures
from saev.nn import config as nn_config
from saev.nn.architectures import Activation, Architecture, ArchName
from saev.nn.objectives import Decoder, Objective

STREAM_FIELDS = ("shards", "layer", "tokens", "n_train", "batch_size", "data_seed", "holdout", "device")
"""Runs that agree on these read the same batches in the same order, so they train in one pass."""
NOT_IDENTITY = ("out", "sweep", "resume", "device", "log_every", "ckpt_every", "wandb_project")
"""Fields that do not change what a run learns (excluded from its id)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSettings:
    """Everything about a training run except the architectures' own options."""

    shards: pathlib.Path
    """Activation store directory (from `saev activations` or the reference project)."""
    out: pathlib.Path = pathlib.Path("runs")
    """Parent folder; each run writes OUT/<run-id>/."""
    layer: int = -2
    """Layer of the store to train on."""
    tokens: Tokens = "patches"
    """Which tokens of each image are training examples."""
    arch: ArchName = "topk"
    """Architecture (see saev.nn.architectures); its options below apply."""
    matryoshka_prefixes: tuple[int, ...] = ()
    """Nested prefix sizes in latents for a Matryoshka objective, e.g. 128 512 2048."""
    exp_factor: int = 16
    """d_sae = exp_factor * d_vit."""
    n_train: int = 10_000_000
    """Training tokens (several passes over the store if it is smaller)."""
    batch_size: int = 4096
    """Tokens per step."""
    lr: float = 4e-4
    """Adam learning rate."""
    lr_warmup: int = 500
    """Steps of linear learning-rate warm-up."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """After warm-up: constant, or cosine decay to zero."""
    sparsity_warmup: int = 0
    """Steps over which the sparsity coefficient rises linearly from 0."""
    aux_k: int | None = None
    """Dead latents in the AuxK loss per token (architectures that use it: topk, batchtopk); default d_vit/2, 0 disables."""
    aux_coeff: float = 1 / 32
    """Weight of the AuxK loss."""
    dead_tokens: int = 1_000_000
    """A latent silent for this many training tokens counts as dead."""
    decoder: Decoder = "auto"
    """TopK-family decoding: sparse (active rows only), dense, or auto (the faster for the shape)."""
    autocast: Literal["none", "bf16"] = "none"
    """bf16: the encoder and decoder products run in bfloat16 mixed precision (weights, optimiser and loss stay float32); faster on GPUs and on CPUs with AVX512-BF16 or AMX, slower on other CPUs."""
    normalize_w_dec: bool = True
    """Keep decoder rows at unit norm."""
    remove_parallel_grads: bool = True
    """Remove decoder gradients parallel to the rows."""
    init_b_dec: bool = True
    """Initialise b_dec to the mean of the first batch."""
    holdout: float = 0.05
    """Fraction of images (the last ones by index) held out for evaluation."""
    seed: int = 0
    """Seed of the weight initialisation."""
    data_seed: int = 0
    """Seed of the data order (shared by runs of a sweep)."""
    device: str = "cpu"
    """Torch device, e.g. cpu or cuda."""
    log_every: int = 50
    """Steps between lines of metrics.jsonl."""
    ckpt_every: int = 1000
    """Steps between checkpoints."""
    resume: bool = False
    """Continue runs from their last checkpoint in OUT."""
    sweep: pathlib.Path | None = None
    """TOML file of values per key; lists expand to their Cartesian product."""
    wandb_project: str | None = None
    """Log to this Weights & Biases project (needs `pip install 'saev[wandb]'`)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(*architectures.option_classes(), RunSettings):
    """Train sparse autoencoders on a store's activations (a sweep file trains many in one pass)."""

    # Every architecture's training options (saev.nn.architectures) are inherited fields, so each
    # is a flag and a sweep key; a run reads those of its own `arch`.

    @property
    def architecture(self) -> Architecture:
        return architectures.by_name(self.arch)

    def activation(self) -> Activation:
        return self.architecture.build(self)

    def sae_config(self, d_vit: int) -> nn_config.SaeConfig:
        return nn_config.SaeConfig(
            d_vit=d_vit,
            d_sae=d_vit * self.exp_factor,
            activation=self.activation(),
            subtract_b_dec=False,
            sparsity_coeff=self.sparsity_coeff,
            normalize_w_dec=self.normalize_w_dec,
            remove_parallel_grads=self.remove_parallel_grads,
            seed=self.seed,
        )

    def objective(self, d_vit: int) -> Objective:
        aux_k = (d_vit // 2 if self.aux_k is None else self.aux_k) if self.architecture.auxk else 0
        return Objective(self.matryoshka_prefixes, aux_k, self.aux_coeff, self.decoder)

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in dataclasses.asdict(self).items()}

    @property
    def run_id(self) -> str:
        identity = {k: v for k, v in self.to_dict().items() if k not in NOT_IDENTITY}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.arch}-x{self.exp_factor}-{self.architecture.tag(self)}-lr{self.lr:g}-{digest}"

    @property
    def stream(self) -> tuple:
        return tuple(getattr(self, f) for f in STREAM_FIELDS)

    def validate(self) -> None:
        """Shape-independent checks; store-dependent ones happen in `validate_against`."""
        for name in ("n_train", "batch_size", "exp_factor", "log_every", "ckpt_every", "dead_tokens"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{_flag(name)} must be positive, got {getattr(self, name)}.")
        for name in ("lr_warmup", "sparsity_warmup", "sparsity_coeff", "aux_coeff"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}.")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}.")
        if not 0 <= self.holdout < 1:
            raise ConfigError(f"--holdout must be in [0, 1), got {self.holdout}.")
        prefixes = self.matryoshka_prefixes
        if any(p <= 0 for p in prefixes) or list(prefixes) != sorted(set(prefixes)):
            raise ConfigError(f"--matryoshka-prefixes must be positive and increasing, got {list(prefixes)}.")

    def validate_against(self, d_vit: int, store_layers: tuple[int, ...], has_cls: bool, where: str) -> None:
        d_sae = d_vit * self.exp_factor
        if self.layer not in store_layers:
            raise ConfigError(f"--layer {self.layer}: {where} holds layers {list(store_layers)}.")
        if self.tokens == "cls" and not has_cls:
            raise ConfigError(f"--tokens cls: {where} has no [CLS] token.")
        self.architecture.check(self, d_sae)
        if self.matryoshka_prefixes and self.matryoshka_prefixes[-1] >= d_sae:
            raise ConfigError(
                f"--matryoshka-prefixes must be below d_sae = {d_sae}, got {list(self.matryoshka_prefixes)}."
            )


def _flag(name: str) -> str:
    return name.replace("_", "-")
