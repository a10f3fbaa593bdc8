"""Hub-ready folders: a finished run's SAE, its training record and a model card.

The folder is what `hf upload ORG/NAME OUT .` publishes; `saev.nn.load` reads it back
from disk and as `hf://ORG/NAME`. Uploading stays the user's step.
"""

import dataclasses
import json
import math
import pathlib
from typing import Any

from saev.errors import ConfigError
from saev.fileio import atomic_open, check_output, read_text, write_json
from saev.nn import checkpoints, formats
from saev.nn.architectures import Activation
from saev.nn.modeling import SparseAutoencoder

RUN_RECORD = "saev_run.json"
"""The run's config.json (training options, steps, tokens, held-out metrics), renamed: a `config.json`
would read as a ViT-Prisma folder, and SAELens and sparsify keep theirs in `cfg.json`."""
WEIGHT_FILE = {"native": "sae.safetensors", "saev-pt": "sae.pt"}
EXPORT_FILES = ("README.md", RUN_RECORD, *formats.HUB_FILES)
"""Every file an export may write, and those of the other formats (which would make the folder read
as one of them)."""


@dataclasses.dataclass(frozen=True)
class Exported:
    folder: pathlib.Path
    files: list[pathlib.Path]
    repo: str


def export(
    run_dir: pathlib.Path,
    out: pathlib.Path,
    fmt: str = "native",
    repo: str = "ORG/NAME",
    overwrite: bool = False,
) -> Exported:
    """Write the SAE of `run_dir` (a finished `saev train` run) to `out` as format `fmt` with a model card."""
    record = _run_record(run_dir)
    if fmt not in formats.WRITABLE:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(formats.WRITABLE)}.")
    check_output(out, "folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"{out}: already exists and is not an empty folder; pass --overwrite to replace the files an "
            "export writes there."
        )
    if out.resolve() == run_dir.resolve():
        raise ConfigError(f"{out}: is the run folder itself; give a new folder.")
    sae = checkpoints.load(run_dir / "sae.safetensors")
    # --overwrite replaces what an export writes, never anything else a folder holds (nor a device
    # or FIFO under an export's file name); files of another format would otherwise make the folder
    # read as that format.
    for name in EXPORT_FILES:
        check_output(out / name)
    for name in EXPORT_FILES:
        (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHT_FILE[fmt] if fmt in WEIGHT_FILE else out
    checkpoints.save(weights, sae, fmt)
    write_json(out / RUN_RECORD, record)
    with atomic_open(out / "README.md") as f:
        f.write(model_card(sae, record, fmt, repo).encode())
    return Exported(out, sorted(p for p in out.iterdir()), repo)


def _run_record(run_dir: pathlib.Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder.")
    if not (run_dir / "sae.safetensors").is_file():
        hint = (
            " It has a checkpoint.pt: the run did not finish; finish it with `saev train ... --resume`."
            if (run_dir / "checkpoint.pt").exists()
            else " Give a folder written by `saev train` (runs/<run id>)."
        )
        raise ConfigError(f"{run_dir}: holds no finished SAE (sae.safetensors).{hint}")
    try:
        record = json.loads(read_text(run_dir / "config.json", "run record"))
    except ValueError as err:
        raise ConfigError(f"{run_dir / 'config.json'}: cannot read the run's record ({err}).") from None
    if not isinstance(record, dict) or "config" not in record:
        raise ConfigError(f"{run_dir / 'config.json'}: not a saev run record (no 'config').")
    return record


def model_card(sae: SparseAutoencoder, record: dict[str, Any], fmt: str, repo: str) -> str:
    """A Hugging Face model card (README.md) for the exported SAE."""
    prov, cfg = sae.provenance, sae.cfg
    vit = f"{prov.vit_family}/{prov.vit_ckpt}" if prov.vit_ckpt else "unknown"
    metrics = record.get("eval") or {}
    facts = [
        ("Architecture", f"{type(cfg.activation).__name__} {_params(cfg.activation)}".strip()),
        ("ViT", f"`{vit}`"),
        ("Layer", f"output of block {prov.layer}" if prov.layer is not None else "unknown"),
        ("Tokens", f"{prov.tokens} ({prov.n_patches_per_img} patches per image)"),
        ("Width", f"d_vit = {cfg.d_vit}, d_sae = {cfg.d_sae} ({cfg.d_sae / cfg.d_vit:g}x)"),
        ("Training images", f"`{prov.dataset}`" if prov.dataset else "unknown"),
        ("Training tokens", f"{record.get('tokens', 0):,} ({record.get('steps', 0):,} steps)"),
        ("Encoder input", "x - b_dec" if cfg.subtract_b_dec else "x"),
        ("Normalisation", _normalization(sae, fmt)),
        ("Written by", prov.source or "saev"),
    ]
    scores = [
        ("Held-out tokens", _fmt(metrics.get("n_tokens"), ",")),
        ("MSE (normalised space)", _fmt(metrics.get("mse"), ".4g")),
        ("Fraction of variance explained", _fmt(metrics.get("fve"), ".4f")),
        ("L0 (active latents per token)", _fmt(metrics.get("l0"), ".2f")),
        ("Dead latents (fire on no held-out token)", _fmt(metrics.get("n_dead"), ",")),
        ("Dense latents (fire on > 10% of them)", _fmt(metrics.get("n_dense"), ",")),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in facts)
    score_table = "\n".join(f"| {k} | {v} |" for k, v in scores)
    return f"""---
library_name: saev
tags:
- saev
- sparse-autoencoder
- interpretability
- vision-transformer
---

# {record.get("run_id", "SAE")}: a sparse autoencoder for `{vit}`, block {prov.layer}

A sparse autoencoder trained with [saev](https://github.com/OSU-NLP-Group/saev) on the {prov.tokens}
tokens of `{vit}` after block {prov.layer}. Each of its {cfg.d_sae:,} latents is meant to be read as a concept.

| Fact | Value |
|---|---|
{table}

## Held-out evaluation

| Metric | Value |
|---|---|
{score_table}

## Loading

{_snippet(sae, fmt, repo)}

The training options are in `{RUN_RECORD}`.
"""


def _snippet(sae: SparseAutoencoder, fmt: str, repo: str) -> str:
    prov = sae.provenance
    common = f"""```python
import saev.nn

sae = saev.nn.load("hf://{repo}")  # or the path of this folder
codes = sae.encode(acts)  # acts: [..., {sae.cfg.d_vit}] raw activations of block {prov.layer}
```

Or from the command line: `saev inspect photo.jpg --sae hf://{repo}`."""
    if fmt == "saelens":
        return (
            common
            + f"""

With SAELens (after `hf download {repo} --local-dir sae`):

```python
from sae_lens import SAE

sae = SAE.load_from_disk("sae")
```"""
        )
    if fmt == "sparsify":
        return (
            common
            + f"""

With sparsify: `SparseCoder.load_from_hub("{repo}")`."""
        )
    return common


def _params(act: Activation) -> str:
    fields = dataclasses.asdict(act)
    return "(" + ", ".join(f"{k}={v}" for k, v in fields.items()) + ")" if fields else ""


def _normalization(sae: SparseAutoencoder, fmt: str) -> str:
    norm = sae.normalization
    if norm is None:
        return "none recorded (inputs are used as they are)"
    if fmt == "native":
        return (
            f"`(clamp(x, ±{norm.clamp:g}) - act_mean) / {norm.scale:.6g}`, statistics stored in the file and "
            "applied by `encode`"
        )
    if fmt == "saev-pt":
        return "statistics NOT stored (the reference .pt has no place for them; prefer the native format)"
    return f"`(x - act_mean) / {norm.scale:.6g}` folded into the weights: pass raw activations"


def _fmt(value: object, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)
