"""Training configuration: one frozen dataclass per run; its field docstrings are the CLI help."""

import dataclasses
import functools
import hashlib
import json
import math
import pathlib
from collections.abc import Collection, Sequence
from typing import Any, Literal

from saev import distributed
from saev.data.layout import Tokens
from saev.data.store import ShardStore
from saev.errors import ConfigError, StoreError
from saev.fileio import OutputFolder
from saev.nn import architectures
from saev.nn import config as nn_config
from saev.nn.architectures import Activation, Architecture, ArchName
from saev.nn.objectives import Decoder, Objective
from saev.options import check_finite, flag
from saev.training import sparsity

STREAM_FIELDS = ("shards", "layer", "tokens", "n_train", "batch_size", "data_seed", "holdout", "device")
"""Runs that agree on these read the same batches in the same order, so they train in one pass."""
WARMUP_FRACTION = 0.05
"""The default learning-rate warm-up, as a fraction of the run's steps."""
NOT_IDENTITY = ("out", "sweep", "resume", "device", "log_every", "ckpt_every", "wandb_project", "split")
"""Fields that do not change what a run learns (excluded from its id)."""
POSITIVE = ("exp_factor", "n_train", "batch_size", "dead_tokens", "log_every", "ckpt_every")
"""Integer options that must be at least 1."""
NON_NEGATIVE = ("lr_warmup", "sparsity_warmup", "sparsity_coeff", "aux_k", "aux_coeff", "seed", "data_seed")
"""Options where 0 is meaningful (no warm-up, AuxK off) but a negative value is not."""
INT_LIMIT = 2**63 - 1
"""The largest int64: every integer option ends up in int64 tensors or as a seed."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSettings:
    """Everything about a training run except the architectures' own options."""

    shards: pathlib.Path
    """Activation store directory (from `saev activations` or the reference project)."""
    out: OutputFolder = pathlib.Path("runs")
    """Parent folder; each run writes OUT/<run-id>/."""
    layer: int = -2
    """Layer of the store to train on."""
    tokens: Tokens = "patches"
    """Which tokens of each image are training examples."""
    arch: ArchName = "topk"
    """Architecture (see saev.nn.architectures); its options below apply."""
    matryoshka_prefixes: tuple[int, ...] = ()
    """Nested prefix sizes in latents for a Matryoshka objective, e.g. 128 512 2048."""
    target_l0: float | None = None
    """Active latents per token to aim at: topk, batchtopk (and Matryoshka over them) keep k = this; relu, jumprelu and gated start there and adapt their sparsity coefficient during training (frozen for the last 25%) so that the held-out L0 meets it (default for those, without --sparsity-coeff: 32). A run with a target trains at 4x the default --lr."""
    exp_factor: int = 16
    """d_sae = exp_factor * d_vit."""
    n_train: int = 10_000_000
    """Training tokens (several passes over the store if it is smaller)."""
    batch_size: int = 4096
    """Tokens per step."""
    lr: float | None = None
    """Adam learning rate (default: 2e-4 / sqrt(d_sae / 16384), lower for wider SAEs, as sparsify scales it)."""
    lr_warmup: int | None = None
    """Steps of linear learning-rate warm-up (default: 5% of the run's steps)."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """After warm-up: constant, or cosine decay to zero."""
    sparsity_warmup: int | None = None
    """Steps over which the sparsity coefficient rises linearly from 0 (default: 5% of the run's steps)."""
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
    split: Literal["batch", "runs"] = "batch"
    """Under torchrun: split every batch across the processes (data parallel, gradients all-reduced), or
    give each process whole runs of the sweep (no gradient traffic; for sweeps of many small SAEs)."""
    sweep: pathlib.Path | None = None
    """TOML file of values per key; lists expand to their Cartesian product."""
    wandb_project: str | None = None
    """Log to this Weights & Biases project (needs `pip install -e '.[wandb]'`)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(*architectures.option_classes(), RunSettings):  # type: ignore[misc]  # bases from the registry
    """Train sparse autoencoders on a store's activations (a sweep file trains many in one pass)."""

    # Every architecture's training options (saev.nn.architectures) are inherited fields, so each
    # is a flag and a sweep key; a run reads, records and is identified by those of its own `arch`
    # only, and another architecture's option is refused (`validate`, `check_given`).

    resumes: str | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    """The id of an earlier version's run folder this run continues in (see `resuming`)."""

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
            sparsity_coeff=self.coefficient(),
            normalize_w_dec=self.normalize_w_dec,
            remove_parallel_grads=self.remove_parallel_grads,
            seed=self.seed,
        )

    def learning_rate(self, d_vit: int) -> float:
        """`lr`, or the default for this width: 2e-4 at 16,384 latents, scaled by 1/sqrt(d_sae), and
        `sparsity.TARGET_LR_FACTOR` times that for a run with a target L0."""
        if self.lr is not None:
            return self.lr
        factor = sparsity.TARGET_LR_FACTOR if self.target_l0 is not None else 1.0
        return factor * 2e-4 / math.sqrt(d_vit * self.exp_factor / 2**14)

    def warmup_steps(self, n_steps: int) -> int:
        """`lr_warmup`, or 5% of the run, so that short runs leave their warm-up early too."""
        return self.lr_warmup if self.lr_warmup is not None else max(1, round(WARMUP_FRACTION * n_steps))

    def sparsity_warmup_steps(self, n_steps: int) -> int:
        """`sparsity_warmup`, or 5% of the run."""
        return self.sparsity_warmup if self.sparsity_warmup is not None else round(WARMUP_FRACTION * n_steps)

    def coefficient(self) -> float:
        """`sparsity_coeff`, or the architecture's default."""
        return self.sparsity_coeff if self.sparsity_coeff is not None else self.architecture.default_coeff

    def adapts_coefficient(self) -> bool:
        """Whether training adapts the sparsity coefficient to `target_l0` (see `resolved`)."""
        return self.target_l0 is not None and "sparsity_coeff" in architectures.option_names(self.arch)

    def resolved(self) -> "TrainConfig":
        """The run `--target-l0` asks for: k = the target for the architectures with a k; for the
        penalised ones given neither a target nor a coefficient, the default target (recorded, so
        that such runs are told apart from runs of earlier versions with a fixed default coefficient)."""
        own = architectures.option_names(self.arch)
        if self.target_l0 is not None and "k" in own:
            k: dict[str, Any] = {"k": round(self.target_l0)}  # an option field, which mypy cannot see
            return dataclasses.replace(self, **k)
        if self.target_l0 is None and self.sparsity_coeff is None and "sparsity_coeff" in own:
            return dataclasses.replace(self, target_l0=float(sparsity.DEFAULT_TARGET_L0))
        return self

    def objective(self, d_vit: int) -> Objective:
        aux_k = (d_vit // 2 if self.aux_k is None else self.aux_k) if self.architecture.auxk else 0
        return Objective(self.matryoshka_prefixes, aux_k, self.aux_coeff, self.decoder)

    def to_dict(self) -> dict[str, Any]:
        """The run settings and its architecture's options: what config.json records."""
        foreign = set(architectures.all_option_names()) - set(architectures.option_names(self.arch))
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.init and f.name not in foreign
        }

    def identity(self) -> dict[str, Any]:
        """What the run id hashes: the settings that change what a run learns, each left out where it
        has its default, so that adding an option (with a default) keeps every existing run's id."""
        defaults = _defaults()
        return {
            k: v
            for k, v in self.to_dict().items()
            if k not in NOT_IDENTITY and (k not in defaults or v != defaults[k])
        }

    @property
    def run_id(self) -> str:
        if self.resumes is not None:
            return self.resumes
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        lr = "auto" if self.lr is None else f"{self.lr:g}"
        return f"{self.arch}-x{self.exp_factor}-{self.architecture.tag(self)}-lr{lr}-{digest}"

    def matches(self, saved: dict[str, Any]) -> bool:
        """Whether a run record's config (config.json, of this version or an earlier one) is this run:
        every setting that changes what it learns is equal, one the record lacks counting as its
        default; the record's options of other architectures (earlier versions kept them all) do not count.
        An option left automatic (None) also matches the value it stands for in this run, which
        earlier versions recorded as the default."""
        defaults = json.loads(json.dumps(_defaults()))
        mine = json.loads(json.dumps(self.to_dict()))
        auto = self.architecture.automatic(self)
        return all(
            saved.get(k, defaults.get(k)) in (v, auto.get(k, v))
            for k, v in mine.items()
            if k not in NOT_IDENTITY
        )

    def resuming(self, run_id: str) -> "TrainConfig":
        """This run, continuing in the folder `run_id` an earlier version made for it (its id hashed
        every architecture's options)."""
        cfg = dataclasses.replace(self)
        object.__setattr__(cfg, "resumes", run_id)
        return cfg

    @property
    def stream(self) -> tuple:
        return tuple(getattr(self, f) for f in STREAM_FIELDS)

    def validate(self) -> None:
        """Shape-independent checks; the store's and the architecture's are in `validate_against`."""
        if self.lr is not None and not 0 < self.lr < math.inf:
            raise ConfigError(f"--lr must be a positive number, got {self.lr}.")
        check_finite(self)
        own = architectures.option_names(self.arch)
        for name in self.options_set():
            if name not in own:
                raise ConfigError(foreign_option(name, self.arch))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            # Counts and seeds reach int64 tensors and numpy seeds, which overflow or refuse beyond this.
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_LIMIT:
                raise ConfigError(
                    f"{flag(field.name)} {value} is out of range (at most 2**63 - 1 either way)."
                )
        for name in POSITIVE:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{flag(name)} must be positive, got {getattr(self, name)}.")
        for name in NON_NEGATIVE:
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{flag(name)} must be >= 0, got {value}.")
        self._check_target()
        if not 0 <= self.holdout < 1:
            raise ConfigError(f"--holdout must be in [0, 1), got {self.holdout}.")
        prefixes = self.matryoshka_prefixes
        if any(p <= 0 for p in prefixes) or list(prefixes) != sorted(set(prefixes)):
            raise ConfigError(f"--matryoshka-prefixes must be positive and increasing, got {list(prefixes)}.")
        world = distributed.current()
        if self.split == "batch" and self.batch_size % world.size:
            raise ConfigError(
                f"--batch-size {self.batch_size} does not split evenly over {world.size} processes; give a "
                f"multiple of {world.size} (the global batch is cut into equal slices)."
            )

    def _check_target(self) -> None:
        if self.target_l0 is None:
            return
        if not 0 < self.target_l0 < math.inf:
            raise ConfigError(f"--target-l0 must be a positive number, got {self.target_l0}.")
        if "k" not in architectures.option_names(self.arch):
            return
        if self.target_l0 != round(self.target_l0):
            raise ConfigError(
                f"--target-l0 {self.target_l0:g}: --arch {self.arch} keeps a whole number of latents per "
                "token (its k); give an integer."
            )
        if self.k not in (_defaults()["k"], round(self.target_l0)):
            raise ConfigError(
                f"--k {self.k} and --target-l0 {self.target_l0:g}: give one of them (k = the target)."
            )

    def options_set(self) -> list[str]:
        """The architecture options, of any architecture, that differ from their defaults."""
        defaults = _defaults()
        return [n for n in architectures.all_option_names() if getattr(self, n) != defaults[n]]

    def for_own_arch(self) -> "TrainConfig":
        """This run with the options its architecture does not read back at their defaults."""
        defaults, own = _defaults(), architectures.option_names(self.arch)
        return dataclasses.replace(
            self, **{n: defaults[n] for n in architectures.all_option_names() if n not in own}
        )

    def check_given(self, flags: Collection[str]) -> None:
        """Refuse another architecture's option given on the command line, even at its default value.
        With a sweep file the runs' architectures are only known once it expands (`sweep.expand`)."""
        if self.sweep is not None:
            return
        own = architectures.option_names(self.arch)
        for name in sorted(set(flags) & set(architectures.all_option_names()) - set(own)):
            raise ConfigError(foreign_option(name, self.arch))

    def validate_against(self, store: ShardStore) -> None:
        d_sae = store.d_vit * self.exp_factor
        try:
            store.layer_label(self.layer)
        except StoreError:
            raise ConfigError(
                f"--layer {self.layer}: {store.path} holds layers {list(store.layers)}."
            ) from None
        if self.tokens == "cls" and not store.meta.cls_token:
            raise ConfigError(f"--tokens cls: {store.path} has no [CLS] token.")
        self.architecture.check(self, d_sae)
        if self.target_l0 is not None and self.target_l0 >= d_sae:
            raise ConfigError(
                f"--target-l0 {self.target_l0:g}: the SAE has d_sae = {d_sae} latents ({store.d_vit} x "
                f"--exp-factor {self.exp_factor}); aim at fewer active latents per token."
            )
        if self.matryoshka_prefixes and self.matryoshka_prefixes[-1] >= d_sae:
            raise ConfigError(
                f"--matryoshka-prefixes must be below d_sae = {d_sae}, got {list(self.matryoshka_prefixes)}."
            )


def varying_settings(configs: Sequence[TrainConfig]) -> list[str]:
    """The config keys whose values differ between the runs that have them (an architecture's options
    only count between runs of architectures that read them), in field order."""
    settings = [c.to_dict() for c in configs]
    keys = [f.name for f in dataclasses.fields(TrainConfig) if any(f.name in s for s in settings)]
    return [k for k in keys if len({json.dumps(s[k]) for s in settings if k in s}) > 1]


def foreign_option(name: str, arch: str) -> str:
    """The message refusing `name`, an option `--arch arch` does not read."""
    owners = architectures.readers(name)
    return (
        f"{flag(name)} is an option of {' and '.join(owners)}; --arch {arch} does not read it: drop it, "
        f"or use --arch {owners[0]}."
    )


@functools.cache
def _defaults() -> dict[str, Any]:
    """Each TrainConfig field's default, as `to_dict` writes it (fields without one are left out)."""
    return {
        f.name: _plain(f.default)
        for f in dataclasses.fields(TrainConfig)
        if f.default is not dataclasses.MISSING
    }


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, pathlib.Path) else value
