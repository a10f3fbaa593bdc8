"""`saev activations`: record a ViT's activations over an image source into a resumable store."""

import contextlib
import dataclasses
import json
import logging
import pathlib
import typing
from typing import Any, Literal

import torch
import tqdm

from saev import distributed
from saev.activations.families import FamilyName, make_img_transform, make_vit
from saev.activations.recorder import RecordedVisionTransformer
from saev.data import metadata as md
from saev.data import parts
from saev.data.images import decode_batches, default_workers
from saev.data.sources import ImageSource, open_source
from saev.data.store import to_stored
from saev.data.writer import ShardWriter, Skip, StoreLock
from saev.errors import ConfigError, StoreError
from saev.fileio import OutputFolder

logger = logging.getLogger("saev.activations")


@dataclasses.dataclass(frozen=True)
class RecordConfig:
    """Record a ViT's activations over a folder of images (or a Hugging Face dataset) into a store."""

    vit_family: FamilyName
    """ViT family (see saev.activations.families and the command's help for checkpoint names)."""
    vit_ckpt: str
    """ViT checkpoint, named as its family expects (e.g. ViT-B-16/openai, dinov2_vitb14_reg)."""
    images: str
    """Image folder (recursive; first-level subfolders are labels) or hf:NAME:SPLIT."""
    dump_to: OutputFolder
    """Parent folder; the store goes to DUMP_TO/<hash>/."""
    layers: tuple[int, ...] = (-2,)
    """Transformer blocks to record (negative counts from the last)."""
    n_patches_per_img: int | None = None
    """Patches per image; checked against the model (default: the model's)."""
    cls_token: bool = True
    """Record the [CLS] token as token 0 (use --no-cls-token for models without one, e.g. SigLIP)."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Storage type; float16 and bfloat16 halve the disk."""
    batch_size: int = 64
    """Images per forward pass."""
    n_patches_per_shard: int = 2_400_000
    """Shard budget in tokens x layers (2.4M is ~7 GB of float32 at d_vit 768)."""
    n_workers: int | None = None
    """Image-decoding worker processes (default: CPU cores minus 2, at most 4, so the forward pass keeps two)."""
    device: str = "cpu"
    """Torch device, e.g. cpu or cuda."""
    autocast: Literal["none", "bf16", "fp16"] = "none"
    """Run the ViT under half-precision autocast (GPU speed-up; activations are then stored from half precision)."""


@dataclasses.dataclass(frozen=True)
class RecordResult:
    path: pathlib.Path
    metadata: md.Metadata
    n_skipped: int
    """Images not recorded (listed in skipped.json): unreadable or with non-finite activations."""
    already_complete: bool
    non_finite: tuple[str, ...] = ()
    """Images skipped because the model gave NaN or inf activations for them (or float16 overflowed)."""


NON_FINITE = "non-finite activations"
"""How the reason of an image skipped for its activations starts in skipped.json."""


def record(cfg: RecordConfig) -> RecordResult:
    _validate(cfg)
    source = open_source(cfg.images)
    n_ignored = getattr(source, "n_ignored", 0)
    if n_ignored:
        logger.info("ignored %d files without an image extension", n_ignored)
    vit = make_vit(cfg.vit_family, cfg.vit_ckpt)
    n_blocks = len(vit.blocks)
    layers = _sorted_layers(cfg.layers, n_blocks)
    n_patches = vit.layout.n_patches if cfg.n_patches_per_img is None else cfg.n_patches_per_img
    recorder = RecordedVisionTransformer(vit, n_patches, cfg.cls_token, layers).to(cfg.device)
    image_size = len(layers) * recorder.n_tokens
    if cfg.n_patches_per_shard < image_size:
        raise ConfigError(
            f"--n-patches-per-shard {cfg.n_patches_per_shard} cannot hold one image "
            f"({len(layers)} layer(s) x {recorder.n_tokens} tokens = {image_size})."
        )
    planned = md.Metadata(
        vit_family=cfg.vit_family,
        vit_ckpt=cfg.vit_ckpt,
        layers=tuple(layers),
        n_patches_per_img=n_patches,
        cls_token=cfg.cls_token,
        d_vit=vit.d_vit,
        n_imgs=len(source),
        max_patches_per_shard=cfg.n_patches_per_shard,
        data=source.describe(),
        dtype=cfg.dtype,
    )
    layout = md.PatchLayout(vit.layout.grid, vit.layout.n_registers, n_blocks)
    transform = make_img_transform(cfg.vit_family, cfg.vit_ckpt)
    world = distributed.current()
    if world.distributed:
        return _record_parts(cfg, world, source, transform, recorder, planned, layout)
    writer = ShardWriter(
        cfg.dump_to, planned, source.fingerprint(), source.describe(), layout, options=_value_options(cfg)
    )
    if writer.complete:
        logger.info("store already complete, nothing to do: %s", writer.root)
        return RecordResult(writer.root, md.read(writer.root / "metadata.json"), 0, True)
    try:
        start = writer.next_source
        if start:
            logger.info(
                "resuming after %d complete shard(s), at image %d of %d",
                len(writer.state["shards"]),
                start,
                len(source),
            )
        writer.check_disk(len(source) - start)
        _run(cfg, source, transform, recorder, writer, start, len(source))
    except BaseException:
        writer.abort()
        raise
    final = writer.finish()
    return _result(writer.root, final, writer.skips)


def _value_options(cfg: RecordConfig) -> dict[str, Any]:
    """The options that change the stored values without changing the store's name (its metadata):
    half-precision autocast, the device's arithmetic, and the batches (a model's arithmetic may
    depend on the batch; saev's built-in ViT's does)."""
    return {"autocast": cfg.autocast, "device": torch.device(cfg.device).type, "batch_size": cfg.batch_size}


def _result(root: pathlib.Path, final: md.Metadata, skips: list[Skip]) -> RecordResult:
    """The result of a finished recording, with warnings about the images it skipped."""
    non_finite = tuple(s.source for s in skips if s.reason.startswith(NON_FINITE))
    n_unreadable = len(skips) - len(non_finite)
    if n_unreadable:
        logger.warning("skipped %d unreadable image(s); see %s", n_unreadable, root / "skipped.json")
    if non_finite:
        logger.warning(
            "skipped %d image(s) whose activations are not finite (NaN or inf): %s; see %s",
            len(non_finite),
            ", ".join(non_finite[:5]) + (", ..." if len(non_finite) > 5 else ""),
            root / "skipped.json",
        )
    return RecordResult(root, final, len(skips), False, non_finite)


def _record_parts(
    cfg: RecordConfig,
    world: distributed.World,
    source: ImageSource,
    transform,
    recorder,
    planned: md.Metadata,
    layout: md.PatchLayout,
) -> RecordResult:
    """Record under torchrun: each rank records a contiguous range of images (starting at a shard
    boundary) into its own part, then the parts become the store one process would have written."""
    root = cfg.dump_to / planned.hash
    fingerprint = source.fingerprint()
    if len(set(distributed.gather(fingerprint))) > 1:
        raise ConfigError(
            f"--images {cfg.images}: the ranks see different images; every rank must read the same source "
            "(a folder shared by the nodes)."
        )
    if (root / "metadata.json").exists():
        md.check_recording(root, md.read_recording(root), _value_options(cfg))
        logger.info("store already complete, nothing to do: %s", root)
        return RecordResult(root, md.read(root / "metadata.json"), 0, True)
    # Rank 0 holds the store's lock for the whole recording; each rank also locks its own part.
    lock = StoreLock(root) if world.main else None
    try:
        images = distributed.split(len(source), world.size, align=planned.n_imgs_per_shard)[world.rank]
        part = parts.part_root(root, images)
        writer = ShardWriter(
            cfg.dump_to,
            dataclasses.replace(planned, n_imgs=len(images)),
            f"{fingerprint}[{images.start}:{images.stop}]",
            source.describe(),
            layout,
            root=part,
            first_source=images.start,
            options=_value_options(cfg),
        )
        if not writer.complete:
            if writer.next_source > images.start:
                logger.info(
                    "resuming after %d complete shard(s) of this rank's part, at image %d of %d-%d",
                    len(writer.state["shards"]),
                    writer.next_source,
                    images.start,
                    images.stop - 1,
                )
            try:
                writer.check_disk(images.stop - writer.next_source)
                _run(cfg, source, transform, recorder, writer, writer.next_source, images.stop)
            except BaseException:
                writer.abort()
                raise
            writer.finish(allow_empty=True)
        distributed.barrier(patient=True)
        counts = distributed.gather(parts.recorded(part))
        if not sum(counts):
            raise StoreError(
                f"no image of {cfg.images} could be read, so no store was written; see {root / parts.PARTS_DIR}"
            )
        parts.place(root, part, sum(counts[: world.rank]), sum(counts), planned)
        distributed.barrier(patient=True)
        if world.main:
            ranges = distributed.split(len(source), world.size, align=planned.n_imgs_per_shard)
            parts.finish(
                root,
                [parts.part_root(root, r) for r in ranges],
                planned,
                source.describe(),
                layout,
                _value_options(cfg),
            )
        distributed.barrier(patient=True)
    finally:
        if lock is not None:
            lock.release()
    skips = [Skip(**s) for s in json.loads((root / "skipped.json").read_text())]
    return _result(root, md.read(root / "metadata.json"), skips)


def _run(
    cfg: RecordConfig, source: ImageSource, transform, recorder, writer: ShardWriter, start: int, stop: int
) -> None:
    """Record the source images [start, stop) into `writer`.

    Batches never cross a multiple of a shard's worth of source images (a block), and recording
    restarts at the beginning of the block that holds `start`, encoding again the images before it
    without storing them. So every image is encoded in the same batch whatever was skipped before it,
    by one process or several, resumed or not: the model's arithmetic, which may depend on the batch,
    and with it the store stay bit for bit the same.
    """
    per = writer.per_shard
    first = start - start % per
    staging = _Staging(cfg.batch_size, torch.device(cfg.device).type == "cuda")
    n_workers = default_workers() if cfg.n_workers is None else cfg.n_workers
    chunks = decode_batches(source, transform, range(first, stop), 16, n_workers=n_workers)
    pending: list[tuple[int, torch.Tensor]] = []
    world = distributed.current()
    desc = f"recording (rank 0's {stop - start:,} of {len(source):,})" if world.distributed else "recording"
    bar = tqdm.tqdm(total=stop - start, unit="img", desc=desc, dynamic_ncols=True)
    with torch.inference_mode(), _autocast(cfg):
        for chunk in chunks:
            for item in chunk.items:
                if item.x_3HW is not None:
                    pending.append((item.index, item.x_3HW))
                elif item.index >= start:
                    reason = item.unreadable or f"cannot preprocess: {item.unprocessable}"
                    logger.warning("skipped %s", reason)
                    writer.skip(item.index, _source_name(source, item.index), reason)
            while pending and (
                len(pending) >= cfg.batch_size or pending[-1][0] // per != pending[0][0] // per
            ):
                pending = _forward(pending, cfg, recorder, writer, source, staging, start)
            bar.update(max(0, chunk.items[-1].index + 1 - start - bar.n))
            distributed.progress()
        while pending:
            pending = _forward(pending, cfg, recorder, writer, source, staging, start)
    bar.update(bar.total - bar.n)
    bar.close()


class _Staging:
    """Stacks image batches, into one reused page-locked buffer when copying to a GPU."""

    def __init__(self, batch_size: int, pinned: bool):
        self.batch_size, self.pinned = batch_size, pinned
        self.buffer: torch.Tensor | None = None

    def stack(self, images: list[torch.Tensor]) -> torch.Tensor:
        if not self.pinned:
            return torch.stack(images)
        if self.buffer is None or self.buffer.shape[1:] != images[0].shape:
            self.buffer = torch.empty((self.batch_size, *images[0].shape), pin_memory=True)
        # Safe to reuse: the previous batch's activations were copied back, which waited for its upload.
        return torch.stack(images, out=self.buffer[: len(images)])


def _forward(
    pending: list,
    cfg: RecordConfig,
    recorder,
    writer: ShardWriter,
    source: ImageSource,
    staging: _Staging,
    start: int,
) -> list:
    """Record the first images of `pending` that share a block (at most a batch); returns the rest.

    Images before `start` are already stored (a resumed block) and only encoded. Images whose
    activations are not finite in the store's dtype are skipped like unreadable ones: a NaN would
    poison every statistic and SAE trained on the store.
    """
    distributed.progress()
    block = pending[0][0] // writer.per_shard
    n = next((k for k, (i, _) in enumerate(pending) if i // writer.per_shard != block), len(pending))
    batch, rest = pending[: min(n, cfg.batch_size)], pending[min(n, cfg.batch_size) :]
    x = staging.stack([t for _, t in batch])
    raw = recorder.record(x.to(cfg.device, non_blocking=True))
    acts = raw.to(getattr(torch, cfg.dtype))
    finite = torch.isfinite(acts).flatten(1).all(1).tolist()
    keep = [k for k, (i, _) in enumerate(batch) if i >= start and finite[k]]
    for k, (i, _) in enumerate(batch):
        if i >= start and not finite[k]:
            name = _source_name(source, i)
            reason = _non_finite_reason(raw[k], recorder.layers, cfg.dtype)
            logger.warning("skipped %s: %s", name, reason)
            writer.skip(i, name, reason)
    if not keep:
        return rest
    stored = to_stored(acts[keep], cfg.dtype)
    indices = [batch[k][0] for k in keep]
    while indices:  # a batch may straddle two shards when images before it were skipped
        n_fit = min(writer.room, len(indices))
        writer.write(stored[:n_fit], indices[:n_fit], [source.record(i) for i in indices[:n_fit]])
        stored, indices = stored[n_fit:], indices[n_fit:]
    return rest


def _non_finite_reason(raw: torch.Tensor, layers: list[int], dtype: str) -> str:
    """Why one image's activations [layers, tokens, d_vit] cannot be stored."""
    bad = [
        layer
        for layer, ok in zip(layers, torch.isfinite(raw).flatten(1).all(1).tolist(), strict=True)
        if not ok
    ]
    if bad:
        return f"{NON_FINITE} (NaN or inf) from the model at layer(s) {bad}"
    return f"{NON_FINITE}: values beyond the range of {dtype}; record with --dtype float32 or bfloat16"


def _autocast(cfg: RecordConfig):
    if cfg.autocast == "none":
        return contextlib.nullcontext()
    device_type = torch.device(cfg.device).type
    return torch.autocast(device_type, dtype=torch.bfloat16 if cfg.autocast == "bf16" else torch.float16)


def _source_name(source: ImageSource, i: int) -> str:
    rec: dict[str, Any] = source.record(i)
    return str(rec.get("path", rec.get("index")))


def _sorted_layers(layers: tuple[int, ...], n_blocks: int) -> list[int]:
    """Layers in block order (the file's layer axis follows the forward pass); duplicates refused."""
    blocks = [layer % n_blocks if -n_blocks <= layer < n_blocks else None for layer in layers]
    if None in blocks:
        bad = [layer for layer, b in zip(layers, blocks, strict=True) if b is None]
        raise ConfigError(f"layers {bad} out of range for a {n_blocks}-block model.")
    if len(set(blocks)) != len(blocks):
        raise ConfigError(f"layers {list(layers)} name the same block twice.")
    return [layer for _, layer in sorted(zip(blocks, layers, strict=True))]


def _validate(cfg: RecordConfig) -> None:
    for name in ("batch_size", "n_patches_per_shard", "n_patches_per_img"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}.")
    if cfg.n_workers is not None and cfg.n_workers < 0:
        raise ConfigError(f"--n-workers must be >= 0, got {cfg.n_workers}.")
    if not cfg.layers:
        raise ConfigError("--layers needs at least one block index.")
    for name in ("dtype", "autocast"):
        choices = typing.get_args(typing.get_type_hints(RecordConfig)[name])
        if getattr(cfg, name) not in choices:
            raise ConfigError(f"--{name} must be one of {', '.join(choices)}, got {getattr(cfg, name)!r}.")
