"""Maximally activating images of every latent, in one streaming pass over a store.

For each latent the K distinct images with the highest score (its maximum over patches, its sum
over patches, or its [CLS] activation), ties going to the lower image index, plus the latent's
activation on every patch of those images and its firing statistics. The same pass keeps, per
latent, a uniform sample of the images it fires on (the quantile strip: `SAMPLE` images with their
patch maps) and the firing latents of a bounded sample of tokens (for co-occurrence). Memory is
d_sae x (K + SAMPLE) x patches plus at most `COOCCUR_TOKENS` tokens' codes, whatever the number of
images.
"""

import dataclasses
import math
from typing import Literal

import numpy as np
import torch
import tqdm
from jaxtyping import Float, Int
from torch import Tensor

from saev import distributed
from saev.data.layout import Run, Tokens
from saev.data.readers import find_nonfinite
from saev.data.store import ShardStore
from saev.distributed import split
from saev.errors import CheckpointError, ConfigError
from saev.nn.modeling import SparseAutoencoder

SortBy = Literal["patch", "img", "cls"]
HIST_LOG10_RANGE, HIST_BINS = (-4.0, 4.0), 160
HIST_EDGES = torch.logspace(*HIST_LOG10_RANGE, HIST_BINS + 1)
"""Log-spaced bins of the nonzero-activation histograms (values outside are clipped to the ends)."""
SAMPLE = 9
"""Images sampled per latent for the quantile strip: sorted by score, the i-th of nine uniform draws
sits on average at the (10 i)th percentile, so the strip spans the deciles."""
COOCCUR_TOKENS = 200_000
"""At most about this many patch tokens (whole images, evenly spaced through the store) keep their
firing latents for co-occurrence counts."""


@dataclasses.dataclass(frozen=True)
class LatentStats:
    n_tokens: int
    freq_S: Float[Tensor, " d_sae"]
    """Fraction of tokens where the latent is > 0."""
    mean_S: Float[Tensor, " d_sae"]
    """Mean activation when firing (0 if never)."""
    max_S: Float[Tensor, " d_sae"]
    hist_SB: Int[Tensor, "d_sae bins"]
    """Counts of nonzero activations in the HIST_EDGES bins."""
    img_hist_SB: Int[Tensor, "d_sae bins"]
    """Counts of images by their score (as ranked: max, sum or [CLS]) in the HIST_EDGES bins, for
    the images with a positive score."""


@dataclasses.dataclass(frozen=True)
class CodeSample:
    """The firing latents of the patch tokens of every `stride`-th image of the store, in store order."""

    stride: int
    counts_N: Int[Tensor, " tokens"]
    """How many latents fire on each token."""
    latents_A: Int[Tensor, " active"]
    """Those latents, token after token (ascending within a token)."""

    @property
    def n_tokens(self) -> int:
        return len(self.counts_N)


@dataclasses.dataclass(frozen=True)
class TopActivations:
    values_SK: Float[Tensor, "d_sae k"]
    """Score of each top image (0 where fewer than K images fired)."""
    image_i_SK: Int[Tensor, "d_sae k"]
    """Image index in the store (-1 where fewer than K images fired)."""
    patch_maps_SKP: Float[Tensor, "d_sae k patches"]
    """The latent's activation on every patch of each top image."""
    stats: LatentStats
    sort_by: SortBy
    sample_values_SM: Float[Tensor, "d_sae m"]
    """Scores of a uniform sample of the images each latent fires on (`SAMPLE` of them, those of
    highest `priority`), in ascending order (0 where it fires on fewer images)."""
    sample_image_i_SM: Int[Tensor, "d_sae m"]
    """Their image indices (-1 after the filled slots)."""
    sample_maps_SMP: Float[Tensor, "d_sae m patches"]
    cooccur: CodeSample


def top_activations(
    sae: SparseAutoencoder,
    store: ShardStore,
    layer: int,
    top_k: int = 16,
    sort_by: SortBy = "patch",
    *,
    device: str = "cpu",
    batch_mib: float = 64,
    progress: bool = True,
) -> TopActivations:
    """Stream the store once and keep, per latent, its top-K images with patch maps and statistics.

    Under torchrun each rank streams its share of the store's chunks (see `CHUNKS`) and every rank
    returns the same merged result, bit for bit the result of one process."""
    meta = store.meta
    if sort_by == "cls" and not meta.cls_token:
        raise ConfigError(f"--sort-by cls: {store.path} has no [CLS] token.")
    if sae.cfg.d_vit != meta.d_vit:
        raise ConfigError(
            f"the SAE reads {sae.cfg.d_vit}-dim activations; {store.path} holds {meta.d_vit}-dim ones."
        )
    layer_i = store.layer_index(layer)
    n_sae = sae.cfg.d_sae
    # Patch modes never need the [CLS] token, so it is not even read or encoded.
    first = 0 if sort_by == "cls" else int(meta.cls_token)
    imgs_per_batch = max(1, int(batch_mib * 2**20 // ((meta.n_tokens - first) * n_sae * 4)))
    chunks = plan(store, imgs_per_batch)
    world = distributed.current()
    mine = [chunks[c] for c in world.share(len(chunks))]
    part = _scan(sae, store, layer_i, mine, top_k, sort_by, device, progress)
    parts = distributed.gather(part.to("cpu"), patient=True) if world.distributed else [part]
    return _combine(parts, store, layer, sort_by)


CHUNKS = 64
"""The batches of the pass are cut into this many chunks (fewer when there are fewer batches),
whatever the number of processes: each chunk sums its activations from zero and the chunk totals are
added in store order, so the float64 sums (and the means) are the same bits with one process or
many. Ranks stream whole chunks."""


def plan(store: ShardStore, imgs_per_batch: int) -> list[list[Run]]:
    """The batches of one process's pass (runs of at most `imgs_per_batch` images within a shard),
    grouped into consecutive chunks. Every rank encodes exactly these batches, so its codes are
    bitwise those of one process."""
    runs = store.runs(range(len(store)), imgs_per_batch)
    return [runs[r.start : r.stop] for r in split(len(runs), max(1, min(CHUNKS, len(runs))))]


@dataclasses.dataclass
class _Part:
    """One process's share of the pass."""

    tracker: "_Tracker"
    sampler: "_Sampler"
    stats: "_StatsAccumulator"
    cooccur: CodeSample
    nonfinite_at: tuple[int, int] | None
    """The first (image, token) holding NaN or infinity in this share, if any."""

    def to(self, device: str) -> "_Part":
        sample = CodeSample(
            self.cooccur.stride, self.cooccur.counts_N.to(device), self.cooccur.latents_A.to(device)
        )
        return _Part(
            self.tracker.to(device), self.sampler.to(device), self.stats.to(device), sample, self.nonfinite_at
        )


def _scan(
    sae: SparseAutoencoder,
    store: ShardStore,
    layer_i: int,
    chunks: list[list[Run]],
    top_k: int,
    sort_by: SortBy,
    device: str,
    progress: bool,
) -> _Part:
    """Stream `chunks` (consecutive, in store order) into a tracker and statistics."""
    meta = store.meta
    n_sae, n_patch, cls = sae.cfg.d_sae, meta.n_patches_per_img, int(meta.cls_token)
    first = 0 if sort_by == "cls" else cls
    tracker = _Tracker(n_sae, top_k, n_patch, device)
    sampler = _Sampler(n_sae, SAMPLE, n_patch, device)
    stats = _StatsAccumulator(n_sae, device)
    stride = cooccur_stride(len(store), n_patch)
    counts: list[Tensor] = []
    active: list[Tensor] = []
    sae = sae.to(device).eval()
    runs = [run for chunk in chunks for run in chunk]
    total = sum(run.stop - run.start for run in runs)
    bar = tqdm.tqdm(total=total, unit="img", desc="top-k", disable=not progress, dynamic_ncols=True)
    # One NaN would spread through the codes into every score and into latents.json. The flag stays on
    # the device and is read once at the end: a per-batch check would sync or scan on the CPU.
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    for chunk in chunks:
        stats.start_chunk()
        for run in chunk:
            x_BTD = torch.from_numpy(store.read(run.shard, run.local, layer_i, slice(first, None))).to(device)
            nonfinite |= ~torch.isfinite(x_BTD).all()
            with torch.inference_mode():
                codes_BTS = sae.encode(x_BTD)
            patches_BPS = codes_BTS[:, cls - first :]
            if sort_by == "cls":
                scores_BS, counted_NS = codes_BTS[:, 0], codes_BTS[:, 0]
            else:
                scores_BS = patches_BPS.amax(1) if sort_by == "patch" else patches_BPS.sum(1)
                counted_NS = patches_BPS.reshape(-1, n_sae)
            image_i_B = torch.arange(run.start, run.stop, device=device)
            tracker.add(scores_BS, patches_BPS, image_i_B)
            sampler.add(scores_BS, patches_BPS, image_i_B)
            rows_A, latents_A = stats.add(counted_NS)
            stats.add_images(scores_BS)
            # Whole images at multiples of the stride: the same tokens whatever the batches or ranks.
            kept_B = image_i_B % stride == 0
            if sort_by == "cls":  # the statistics counted [CLS] tokens: find the patches' own
                rows_A, latents_A = torch.nonzero(patches_BPS[kept_B].reshape(-1, n_sae), as_tuple=True)
                kept_N = torch.ones(int(kept_B.sum()) * n_patch, dtype=torch.bool, device=device)
            else:
                kept_N = kept_B.repeat_interleave(n_patch)
                on_A = kept_N[rows_A]
                rows_A, latents_A = rows_A[on_A], latents_A[on_A]
            counts.append(torch.bincount(rows_A, minlength=len(kept_N))[kept_N].int())
            active.append(latents_A.int())
            bar.update(run.stop - run.start)
            distributed.progress()
    bar.close()
    nonfinite_at = None
    if nonfinite:
        # Among the tokens checked, in this share only: the shares before it had none, so the first
        # hit here is the store's first, whatever the number of processes.
        tokens: Tokens = "all" if first == 0 else "patches"
        images = range(runs[0].start, runs[-1].stop)
        [nonfinite_at] = find_nonfinite(store, store.layers[layer_i], tokens, images=images, limit=1)
    sample = CodeSample(
        stride,
        torch.cat(counts) if counts else torch.zeros(0, dtype=torch.int32, device=device),
        torch.cat(active) if active else torch.zeros(0, dtype=torch.int32, device=device),
    )
    return _Part(tracker, sampler, stats, sample, nonfinite_at)


def cooccur_stride(n_images: int, n_patch: int) -> int:
    """Every how many images the co-occurrence sample keeps one, to keep about COOCCUR_TOKENS tokens."""
    return max(1, math.ceil(n_images * n_patch / COOCCUR_TOKENS))


def _combine(parts: list[_Part], store: ShardStore, layer: int, sort_by: SortBy) -> TopActivations:
    """The result of the pass from every process's part (in rank order, so in store order); raises
    the same error on every rank when any part met a non-finite value."""
    hits = [p.nonfinite_at for p in parts if p.nonfinite_at is not None]
    if hits:
        img, tok = hits[0]
        layer_i = store.layer_index(layer)
        raise store.nonfinite_error(img, tok, layer, store.acts(img)[layer_i, tok], "the top-k pass")
    stats = merge_stats([p.stats for p in parts])
    if not torch.isfinite(stats.maxes).all():  # the running max keeps any NaN or infinity it met
        raise CheckpointError(
            f"the SAE's codes are not finite on the finite activations of {store.path}: its weights or "
            "normalisation statistics hold NaN or infinity (was it trained on a store with NaN?)."
        )
    tracker = merge([p.tracker for p in parts])
    values_SM, image_i_SM, maps_SMP = merge_samplers([p.sampler for p in parts]).ascending()
    # Parts come in store order, so their tokens concatenate into those of one process.
    cooccur = CodeSample(
        parts[0].cooccur.stride,
        torch.cat([p.cooccur.counts_N.cpu() for p in parts]),
        torch.cat([p.cooccur.latents_A.cpu() for p in parts]),
    )
    return TopActivations(
        tracker.values_SK.cpu(),
        tracker.image_i_SK.cpu(),
        tracker.maps_SKP.cpu(),
        stats.result(),
        sort_by,
        values_SM.cpu(),
        image_i_SM.cpu(),
        maps_SMP.cpu(),
        cooccur,
    )


class _Tracker:
    """Top-K (score, image) per latent with the matching patch maps, merged batch by batch."""

    def __init__(self, n_sae: int, k: int, n_patch: int, device: str):
        self.k = k
        self.values_SK = torch.zeros(n_sae, k, device=device)
        self.image_i_SK = torch.full((n_sae, k), -1, dtype=torch.int64, device=device)
        self.maps_SKP = torch.zeros(n_sae, k, n_patch, device=device)
        self.n_filled_S = torch.zeros(n_sae, dtype=torch.int64, device=device)

    def to(self, device: str) -> "_Tracker":
        out = _Tracker.__new__(_Tracker)
        out.k = self.k
        out.values_SK, out.image_i_SK = self.values_SK.to(device), self.image_i_SK.to(device)
        out.maps_SKP, out.n_filled_S = self.maps_SKP.to(device), self.n_filled_S.to(device)
        return out

    def add(
        self,
        scores_BS: Float[Tensor, "batch d_sae"],
        patches_BPS: Float[Tensor, "batch patches d_sae"],
        image_i_B: Int[Tensor, " batch"],
    ) -> None:
        kth_S = torch.where(self.n_filled_S < self.k, 0.0, self.values_SK[:, -1])
        # Only a strictly higher score can enter: on a tie the stored image has the lower index.
        changed = torch.nonzero((scores_BS > kth_S).any(0)).flatten()
        if len(changed) == 0:
            return
        old_v, old_i = self.values_SK[changed], self.image_i_SK[changed]
        new_v = scores_BS[:, changed].T
        valid = torch.cat([old_i >= 0, (new_v > 0)], dim=1)
        cand_v = torch.cat([old_v, new_v], dim=1).masked_fill(~valid, float("-inf"))
        cand_i = torch.cat([old_i, image_i_B.expand(len(changed), -1)], dim=1)
        order = torch.sort(cand_v, dim=1, descending=True, stable=True).indices[:, : self.k]
        top_v = cand_v.gather(1, order)
        filled = torch.isfinite(top_v)
        self.values_SK[changed] = torch.where(filled, top_v, 0.0)
        self.image_i_SK[changed] = torch.where(filled, cand_i.gather(1, order), -1)
        self.n_filled_S[changed] = filled.sum(1)
        self._update_maps(changed, order, filled, patches_BPS)

    def _update_maps(self, changed: Tensor, order: Tensor, filled: Tensor, patches_BPS: Tensor) -> None:
        old = order < self.k
        kept = self.maps_SKP[changed].gather(
            1, order.clamp(max=self.k - 1)[..., None].expand(-1, -1, self.maps_SKP.shape[2])
        )
        maps = torch.where((old & filled)[..., None], kept, 0.0)
        rows, slots = torch.nonzero(~old & filled, as_tuple=True)
        maps[rows, slots] = patches_BPS[order[rows, slots] - self.k, :, changed[rows]]
        self.maps_SKP[changed] = maps


def merge(trackers: list[_Tracker]) -> _Tracker:
    """One tracker holding the top-K of all `trackers` (each the top-K of its own images, no image in
    two): per latent the K highest scores, ties going to the lower image index, as `_Tracker.add`
    keeps them. So the merge of trackers over parts of a store equals one tracker over all of it."""
    if len(trackers) == 1:
        return trackers[0]
    k = trackers[0].k
    image_i = torch.cat([t.image_i_SK for t in trackers], dim=1)
    values = torch.cat([t.values_SK for t in trackers], dim=1).masked_fill(image_i < 0, float("-inf"))
    # Sorted by image index, then stably by score: equal scores stay in image order.
    by_image = torch.sort(image_i, dim=1, stable=True).indices
    by_score = torch.sort(values.gather(1, by_image), dim=1, descending=True, stable=True).indices[:, :k]
    order = by_image.gather(1, by_score)
    top_v = values.gather(1, order)
    filled = torch.isfinite(top_v)
    out = _Tracker.__new__(_Tracker)
    out.k = k
    out.values_SK = torch.where(filled, top_v, 0.0)
    out.image_i_SK = torch.where(filled, image_i.gather(1, order), -1)
    out.n_filled_S = filled.sum(1)
    n_patch = trackers[0].maps_SKP.shape[2]
    maps = torch.cat([t.maps_SKP for t in trackers], dim=1).gather(
        1, order[..., None].expand(-1, -1, n_patch)
    )
    out.maps_SKP = torch.where(filled[..., None], maps, 0.0)
    return out


_MASK32 = 0xFFFFFFFF


def _mix32(x: Int[Tensor, "*shape"]) -> Int[Tensor, "*shape"]:
    """A 32-bit integer hash (values in [0, 2**32) to [0, 2**32)); int64 arithmetic never overflows."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    return (x >> 16) ^ x


def priority(image_i: Int[Tensor, "*#shape"], latent: Int[Tensor, "*#shape"]) -> Int[Tensor, "..."]:
    """A pseudo-random rank of (image, latent), the same in any process: 31 hash bits above the
    complement of the image index, so no two images of a latent tie (nor depend on batch order)."""
    return ((_mix32(_mix32(image_i & _MASK32) ^ latent) >> 1) << 32) | (_MASK32 - image_i)


class _Sampler:
    """Per latent, the M firing images of highest `priority`: a uniform sample of the images it
    fires on, whatever the order they come in, so samples of parts of a store merge exactly."""

    def __init__(self, n_sae: int, m: int, n_patch: int, device: str):
        self.keys_SM = torch.full((n_sae, m), -1, dtype=torch.int64, device=device)
        self.values_SM = torch.zeros(n_sae, m, device=device)
        self.image_i_SM = torch.full((n_sae, m), -1, dtype=torch.int64, device=device)
        self.maps_SMP = torch.zeros(n_sae, m, n_patch, device=device)

    def to(self, device: str) -> "_Sampler":
        out = _Sampler.__new__(_Sampler)
        out.keys_SM, out.values_SM = self.keys_SM.to(device), self.values_SM.to(device)
        out.image_i_SM, out.maps_SMP = self.image_i_SM.to(device), self.maps_SMP.to(device)
        return out

    def add(
        self,
        scores_BS: Float[Tensor, "batch d_sae"],
        patches_BPS: Float[Tensor, "batch patches d_sae"],
        image_i_B: Int[Tensor, " batch"],
    ) -> None:
        n_sae, m = self.keys_SM.shape
        latents_S = torch.arange(n_sae, device=scores_BS.device)
        keys_BS = torch.where(scores_BS > 0, priority(image_i_B[:, None], latents_S), -1)
        # Slots are kept in no order: an entering image takes a leaving one's slot, so only the
        # entering maps are copied (`ascending` sorts at the end).
        changed = torch.nonzero((keys_BS > self.keys_SM.amin(1)).any(0)).flatten()
        if len(changed) == 0:
            return
        new_CB = keys_BS[:, changed].T
        cand_k = torch.cat([self.keys_SM[changed], new_CB], dim=1)
        # Stable: among keys of -1 (empty slots, non-firing images) the empty slots stay.
        top = torch.sort(cand_k, dim=1, descending=True, stable=True).indices[:, :m]
        chosen = torch.zeros_like(cand_k, dtype=torch.bool).scatter_(1, top, True)
        # Row-major, so the k-th leaving slot of a latent pairs with its k-th entering image.
        rows, slots = torch.nonzero(~chosen[:, :m], as_tuple=True)
        _, batch = torch.nonzero(chosen[:, m:], as_tuple=True)
        latents = changed[rows]
        self.keys_SM[latents, slots] = new_CB[rows, batch]
        self.values_SM[latents, slots] = scores_BS[batch, latents]
        self.image_i_SM[latents, slots] = image_i_B[batch]
        self.maps_SMP[latents, slots] = patches_BPS[batch, :, latents]

    def ascending(self) -> tuple[Tensor, Tensor, Tensor]:
        """Values, image indices and maps with each latent's filled slots by ascending score (ties:
        lower image first), the empty slots after them."""
        empty = self.image_i_SM < 0
        # Sorted by image, then stably by score: equal scores stay in image order.
        by_image = torch.sort(
            self.image_i_SM.masked_fill(empty, torch.iinfo(torch.int64).max), dim=1, stable=True
        ).indices
        values = self.values_SM.masked_fill(empty, float("inf")).gather(1, by_image)
        order = by_image.gather(1, torch.sort(values, dim=1, stable=True).indices)
        maps = self.maps_SMP.gather(1, order[..., None].expand(-1, -1, self.maps_SMP.shape[2]))
        return self.values_SM.gather(1, order), self.image_i_SM.gather(1, order), maps


def merge_samplers(samplers: list[_Sampler]) -> _Sampler:
    """The sample of all `samplers`' images (no image in two): the M highest keys of their union,
    which is the sample one process would keep."""
    if len(samplers) == 1:
        return samplers[0]
    m = samplers[0].keys_SM.shape[1]
    keys = torch.cat([t.keys_SM for t in samplers], dim=1)
    order = torch.sort(keys, dim=1, descending=True, stable=True).indices[:, :m]
    top = keys.gather(1, order)
    filled = top >= 0
    out = _Sampler.__new__(_Sampler)
    out.keys_SM = torch.where(filled, top, -1)
    out.values_SM = torch.where(filled, torch.cat([t.values_SM for t in samplers], 1).gather(1, order), 0.0)
    out.image_i_SM = torch.where(filled, torch.cat([t.image_i_SM for t in samplers], 1).gather(1, order), -1)
    n_patch = samplers[0].maps_SMP.shape[2]
    maps = torch.cat([t.maps_SMP for t in samplers], dim=1).gather(
        1, order[..., None].expand(-1, -1, n_patch)
    )
    out.maps_SMP = torch.where(filled[..., None], maps, 0.0)
    return out


def _bins(vals: Float[Tensor, " n"]) -> Int[Tensor, " n"]:
    """The HIST_EDGES bin of each positive value (clipped to the end bins)."""
    lo, hi = HIST_LOG10_RANGE
    return ((vals.log10() - lo) * (HIST_BINS / (hi - lo))).floor_().long().clamp_(0, HIST_BINS - 1)


class _StatsAccumulator:
    def __init__(self, n_sae: int, device: str):
        self.n_sae, self.n_tokens = n_sae, 0
        self.fires = torch.zeros(n_sae, dtype=torch.float64, device=device)
        self.maxes = torch.zeros(n_sae, device=device)
        self.hist = torch.zeros(n_sae * HIST_BINS, dtype=torch.int64, device=device)
        self.img_hist = torch.zeros(n_sae * HIST_BINS, dtype=torch.int64, device=device)
        self.chunk_sums: list[Tensor] = []
        """Float64 sums of the firing activations, one per chunk of batches (see `CHUNKS`)."""

    def to(self, device: str) -> "_StatsAccumulator":
        out = _StatsAccumulator.__new__(_StatsAccumulator)
        out.n_sae, out.n_tokens = self.n_sae, self.n_tokens
        out.fires, out.maxes, out.hist = self.fires.to(device), self.maxes.to(device), self.hist.to(device)
        out.img_hist = self.img_hist.to(device)
        out.chunk_sums = [c.to(device) for c in self.chunk_sums]
        return out

    def start_chunk(self) -> None:
        self.chunk_sums.append(torch.zeros_like(self.fires))

    def add(
        self, codes_NS: Float[Tensor, "n d_sae"]
    ) -> tuple[Int[Tensor, " active"], Int[Tensor, " active"]]:
        """Counts `codes_NS`; returns its firing (token, latent) pairs, token after token, for
        callers that need them too (finding them is the costly part)."""
        if not self.chunk_sums:
            self.start_chunk()
        self.n_tokens += len(codes_NS)
        firing = codes_NS > 0
        rows, latents = torch.nonzero(firing, as_tuple=True)
        vals = codes_NS[firing]
        self.fires += torch.bincount(latents, minlength=self.n_sae)
        self.chunk_sums[-1] += torch.bincount(latents, weights=vals.double(), minlength=self.n_sae)
        self.maxes = torch.maximum(self.maxes, codes_NS.amax(0))
        self.hist += torch.bincount(latents * HIST_BINS + _bins(vals), minlength=len(self.hist))
        return rows, latents

    def add_images(self, scores_BS: Float[Tensor, "batch d_sae"]) -> None:
        firing = scores_BS > 0
        latents = torch.nonzero(firing)[:, 1]
        self.img_hist += torch.bincount(
            latents * HIST_BINS + _bins(scores_BS[firing]), minlength=len(self.img_hist)
        )

    @property
    def sums(self) -> Float[Tensor, " d_sae"]:
        """The chunk sums added in chunk order, from zero."""
        total = torch.zeros_like(self.fires)
        for chunk in self.chunk_sums:
            total += chunk
        return total

    def result(self) -> LatentStats:
        n = max(self.n_tokens, 1)
        mean = torch.where(self.fires > 0, self.sums / self.fires.clamp_min(1), 0.0)
        return LatentStats(
            self.n_tokens,
            (self.fires / n).cpu(),
            mean.float().cpu(),
            self.maxes.cpu(),
            self.hist.view(self.n_sae, -1).cpu(),
            self.img_hist.view(self.n_sae, -1).cpu(),
        )


def merge_stats(parts: list[_StatsAccumulator]) -> _StatsAccumulator:
    """The statistics of consecutive parts of a pass, in order: counts, maxima and histograms are
    exact whatever the order; the chunk sums are kept, so `sums` adds them as one process would."""
    if len(parts) == 1:
        return parts[0]
    out = parts[0].to(str(parts[0].fires.device))
    for p in parts[1:]:
        out.n_tokens += p.n_tokens
        out.fires = out.fires + p.fires
        out.maxes = torch.maximum(out.maxes, p.maxes)
        out.hist = out.hist + p.hist
        out.img_hist = out.img_hist + p.img_hist
        out.chunk_sums = out.chunk_sums + p.chunk_sums
    return out


def hist_percentile(counts_B: Int[Tensor, " bins"], value: float) -> float:
    """The percentage of the values counted in `counts_B` (HIST_EDGES bins) that lie below `value`,
    interpolated log-linearly within its bin."""
    total = int(counts_B.sum())
    if total == 0 or value <= 0:
        return 0.0
    b = int(_bins(torch.tensor([value], dtype=torch.float64)))
    lo, hi = math.log10(HIST_EDGES[b]), math.log10(HIST_EDGES[b + 1])
    within = min(max((math.log10(value) - lo) / (hi - lo), 0.0), 1.0)
    return 100 * (int(counts_B[:b].sum()) + within * int(counts_B[b])) / total


def hist_quantile(counts_B: Int[Tensor, " bins"], q: float) -> float:
    """The value below which a fraction `q` of the values counted in `counts_B` (HIST_EDGES bins)
    lie, interpolated log-linearly within its bin (0 when nothing was counted)."""
    total = int(counts_B.sum())
    if total == 0:
        return 0.0
    cum = counts_B.cumsum(0).tolist()
    b = next(i for i, c in enumerate(cum) if c >= q * total)
    before = cum[b - 1] if b else 0
    within = (q * total - before) / max(cum[b] - before, 1)
    lo, hi = math.log10(HIST_EDGES[b]), math.log10(HIST_EDGES[b + 1])
    return 10 ** (lo + within * (hi - lo))


def log_freq(freq_S: Float[Tensor, " d_sae"]) -> Float[np.ndarray, " d_sae"]:
    """log10 of each frequency, -inf for dead latents."""
    with np.errstate(divide="ignore"):
        return np.log10(freq_S.double().numpy())
