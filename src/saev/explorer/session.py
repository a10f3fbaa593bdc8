"""The explorer's state and computations, independent of the web server.

An `Explorer` holds one spliced model, one head, the images the page can pick (a store's or a
folder's) plus uploads, and what `saev visuals` wrote about the latents (their largest activation,
firing frequency, notes and top images). Each image's prefix (the blocks up to the SAE's layer,
the codes and the clean predictions) is computed once and kept in a bounded LRU cache, so a slider
move runs only the decoder change, the blocks after the layer and the head.
"""

import collections
import dataclasses
import hashlib
import io
import pathlib
import re
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from torch import Tensor

from saev.activations.families.base import Transform
from saev.activations.transforms import visible_crop
from saev.data.images import MIN_SIDE, to_rgb
from saev.errors import ConfigError, SaevError
from saev.fileio import check_input, read_json
from saev.steering.edits import Edit
from saev.steering.heads import Head
from saev.steering.splice import Prefix, SplicedVit
from saev.visuals.heatmap import class_colours
from saev.visuals.summary import Names, read_names

MAX_ID = 32
"""Longest image id the API reads; real ones are `s` and an index, or `u` and 16 hex digits."""
MAX_NAME = 1000
"""Longest image name the API reads (names are file paths relative to the image folder)."""
SLIDER = {"min": -5, "max": 5, "suppress": -1}
"""The page's edit slider: factors on a latent's code (1 unchanged, 0 removed, -1 flipped); its
suppress button sets the latent to -1x its largest activation instead, the original demos' edit."""
STORE_ID = re.compile(r"s(0|[1-9][0-9]{0,17})")
"""`s` and an index in ASCII digits, without leading zeros: one id per image, and `int` never sees
a digit of another script or an unbounded number."""


class UnknownImage(SaevError):
    """An image id that names no image the explorer can show (the server answers 404)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    cache_images: int = 64
    """Images whose prefix (activations, codes, clean predictions) stays in memory."""
    upload_bytes: int = 10 * 2**20
    upload_pixels: int = 40_000_000
    max_uploads: int = 64
    dense_freq: float = 0.01
    """Latents firing on more than this fraction of tokens are left out of the list unless asked for."""


@dataclasses.dataclass(frozen=True)
class LatentInfo:
    """What `saev visuals` wrote about every latent (or what is known without it)."""

    max_S: Tensor
    freq_S: Tensor | None
    notes: dict[int, str]
    top: dict[int, list[dict[str, Any]]]
    """Each latent's top images: image index in the store, value."""
    rendered: set[int]
    """Latents with a gallery page."""
    names: Names

    @classmethod
    def from_visuals(cls, folder: pathlib.Path, d_sae: int) -> "LatentInfo":
        try:
            # Checked first: opening a FIFO or a device in their place would block or never end.
            with safe_open(str(check_input(folder / "topk.safetensors")), "pt") as f:
                max_S, freq_S = f.get_tensor("max").float(), f.get_tensor("freq").float()
            rows = read_json(folder / "latents.json", "list of latents")["latents"]
        except (ConfigError, SafetensorError, OSError, KeyError, ValueError, TypeError) as err:
            raise ConfigError(f"--visuals {folder}: not a saev visuals output folder ({err}).") from None
        if max_S.shape != (d_sae,) or freq_S.shape != (d_sae,):
            raise ConfigError(
                f"--visuals {folder}: describes {max_S.shape[0]} latents, but the SAE has {d_sae}."
            )
        if not (torch.isfinite(max_S).all() and torch.isfinite(freq_S).all()):
            raise ConfigError(
                f"--visuals {folder}: topk.safetensors holds non-finite maxima or frequencies; rerun saev visuals."
            )
        try:
            return cls(
                max_S,
                freq_S,
                {r["latent"]: r["note"] for r in rows if r.get("note")},
                {
                    r["latent"]: [{"image_i": t["image_i"], "value": t["value"]} for t in r["top"]]
                    for r in rows
                },
                {r["latent"] for r in rows if r.get("rendered")},
                read_names(rows, folder / "latents.json"),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ConfigError(
                f"--visuals {folder}: latents.json is not a saev visuals list of latents ({type(err).__name__}: {err})."
            ) from None


class ImageSet:
    """The images the page can pick: named, labelled, loaded on demand. Names are what the page
    shows and puts in its URL, so each is made unique: a repeated one gets its index appended."""

    def __init__(self, names: Sequence[str], labels: Sequence[str | None], loader):
        self.names, self.labels, self._load = [], list(labels), loader
        self.index: dict[str, int] = {}
        for i, name in enumerate(names):
            unique = name if name not in self.index else f"{name} ({i})"
            self.names.append(unique)
            self.index[unique] = i

    def __len__(self) -> int:
        return len(self.names)

    def load(self, i: int) -> Image.Image:
        img = self._load(i)
        if img is None:
            raise UnknownImage(f"image s{i} ({self.names[i]}) is missing or cannot be read.")
        return img


@dataclasses.dataclass
class _Entry:
    crop: Image.Image
    prefix: Prefix
    before: Tensor
    """Clean head logits: [classes] or [patches, classes]."""


class Explorer:
    def __init__(
        self,
        spliced: SplicedVit,
        transform: Transform,
        head: Head,
        images: ImageSet,
        latents: LatentInfo,
        limits: Limits = Limits(),
        *,
        layer: int,
        title: str = "",
        dense: bool = False,
    ):
        """`layer` as the command line gave or the SAE recorded it (-2, not block 10 of 12); `dense`:
        whether the page lists dense latents until told otherwise."""
        self.spliced, self.transform, self.head, self.images, self.info_latents = (
            spliced,
            transform,
            head,
            images,
            latents,
        )
        self.limits, self.title, self.layer, self.dense = limits, title, layer, dense
        self._cache: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._uploads: collections.OrderedDict[str, Image.Image] = collections.OrderedDict()
        self._upload_names: dict[str, str] = {}
        """Upload id -> its shown name; a later upload of the same name takes the name over."""
        self._lock = threading.Lock()
        """One computation at a time: the model is shared, and CPU cores are few."""

    # What the page shows

    def info(self) -> dict[str, Any]:
        layout = self.spliced.vit.layout
        sae = self.spliced.sae
        return {
            "title": self.title,
            "vit": self.spliced.vit.name,
            "layer": self.layer,
            "block": self.spliced.layer,
            "n_blocks": len(self.spliced.vit.blocks),
            "tokens": self.spliced.tokens,
            "grid": list(layout.grid),
            "n_patches": layout.n_patches,
            "d_sae": sae.cfg.d_sae,
            "head": {
                "name": self.head.name,
                "kind": self.head.kind,
                "multilabel": self.head.multilabel,
                "classes": list(self.head.classes),
                # The pictures' palette, so a class has one colour everywhere (colour:red is red).
                "colours": ["#{:02x}{:02x}{:02x}".format(*rgb) for rgb in class_colours(self.head.classes)],
            },
            "n_images": len(self.images),
            "dense_freq": self.limits.dense_freq,
            "dense": self.dense,
            "named": bool(self.info_latents.names),
            "slider": SLIDER,
        }

    def image_list(self, offset: int, limit: int) -> dict[str, Any]:
        stop = min(len(self.images), offset + limit)
        return {
            "total": len(self.images),
            "images": [
                {"id": f"s{i}", "name": self.images.names[i], "label": self.images.labels[i]}
                for i in range(offset, stop)
            ],
        }

    def find(self, name: str) -> dict[str, Any]:
        """The image a name (as /api/images lists it, or an upload's) stands for; an id is taken
        too, so that links made before names were used still open."""
        i = self.images.index.get(name)
        if i is not None:
            return {"id": f"s{i}", "name": name, "label": self.images.labels[i]}
        upload = next((k for k, v in reversed(self._upload_names.items()) if v == name), None)
        if upload is not None:
            return {"id": upload, "name": name, "label": None}
        i = self._store_index(name)
        if i is not None:
            return self.find(self.images.names[i])
        shown = name if len(name) <= 100 else name[:100] + "..."
        raise UnknownImage(f"no image named {shown!r}: pick one from /api/images or upload it.")

    def crop_png(self, image_id: str) -> bytes:
        buf = io.BytesIO()
        self._entry(image_id).crop.save(buf, "PNG")
        return buf.getvalue()

    def thumb_jpeg(self, image_id: str, size: int = 112) -> bytes:
        """A small picture of the crop, without running the model."""
        crop = visible_crop(self.transform, self._image(image_id))
        crop.thumbnail((size, size))
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=85)
        return buf.getvalue()

    def upload(self, data: bytes, filename: str = "") -> dict[str, str]:
        """Keep an uploaded image (bounded in bytes, pixels and count); returns its id and the name
        it is shown under: its file name marked as an upload, so it never takes a listed image's."""
        limits = self.limits
        if len(data) > limits.upload_bytes:
            raise ConfigError(f"upload of {len(data)} bytes is over the {limits.upload_bytes}-byte limit.")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
                if img.width * img.height > limits.upload_pixels:
                    raise ConfigError(
                        f"upload of {img.width}x{img.height} pixels is over the {limits.upload_pixels}-pixel limit."
                    )
                img.load()
        except ConfigError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ConfigError("upload refused: over Pillow's decompression-bomb limit.") from None
        except Exception as err:  # Pillow raises many types for undecodable bytes
            raise ConfigError(f"upload is not an image Pillow can decode ({type(err).__name__}).") from None
        if min(img.size) < MIN_SIDE:
            raise ConfigError(
                f"upload of {img.width}x{img.height} pixels is too small (minimum side {MIN_SIDE} px)."
            )
        image_id = "u" + hashlib.sha256(data).hexdigest()[:16]
        name = f"{pathlib.PurePath(filename.strip()).name[:200] or 'image'} (upload)"
        with self._lock:
            self._uploads[image_id] = to_rgb(img)
            self._uploads.move_to_end(image_id)
            self._upload_names.pop(image_id, None)
            self._upload_names[image_id] = name
            while len(self._uploads) > limits.max_uploads:
                old, _ = self._uploads.popitem(last=False)
                self._upload_names.pop(old, None)
        return {"id": image_id, "name": name}

    def latents(self, image_id: str, patches: Sequence[int], top: int, include_dense: bool) -> dict[str, Any]:
        """The latents most active on the selected patches (sum of codes), each with its codes on
        every patch of the image, its note and top images."""
        entry = self._entry(image_id)
        codes_PS = self._patch_codes(entry)
        selected = self._check_patches(patches) or list(range(codes_PS.shape[0]))
        score_S = codes_PS[selected].sum(0)
        info = self.info_latents
        hidden = 0
        if not include_dense and info.freq_S is not None:
            dense_S = info.freq_S.to(score_S.device) > self.limits.dense_freq
            hidden = int((dense_S & (score_S > 0)).sum())
            score_S = torch.where(dense_S, 0.0, score_S)
        order = [int(s) for s in torch.argsort(score_S, descending=True)[:top] if score_S[s] > 0]
        return {
            "image": image_id,
            "patches": selected,
            "latents": [self._latent_row(s, codes_PS, score_S) for s in order],
            "hidden_dense": hidden,
        }

    def search(self, query: str, limit: int) -> dict[str, Any]:
        """Named latents whose name contains `query` (case-insensitive), best F1 first."""
        q = query.strip().casefold()
        found = [
            (s, name)
            for s, name in self.info_latents.names.items()
            if name is not None and q in name.text.casefold()
        ]
        found.sort(key=lambda item: (-item[1].f1, item[0]))
        return {
            "query": query,
            "total": len(found),
            "latents": [{"latent": s, "name": dataclasses.asdict(name)} for s, name in found[:limit]],
        }

    def latent(self, image_id: str, latent: int) -> dict[str, Any]:
        """One latent (added by id), as it appears in the list."""
        self._check_latent(latent)
        entry = self._entry(image_id)
        codes_PS = self._patch_codes(entry)
        return self._latent_row(latent, codes_PS, codes_PS.sum(0))

    def predict(self, image_id: str, edits: Sequence[Edit], patches: Sequence[int] | None) -> dict[str, Any]:
        """The head's predictions before and after the edits, each where its latent fires (on the
        selected patches only, when given)."""
        for e in edits:
            self._check_latent(e.latent)
            if abs(e.value) > 1000:
                raise ConfigError(f"edit of latent {e.latent}: value {e.value:g} is outside -1000..1000.")
        selection = self._check_patches(patches) if patches else None
        entry = self._entry(image_id)
        with self._lock:
            after = entry.before
            if edits:
                spliced = self.spliced
                codes = spliced.edit(
                    entry.prefix, edits, where="active", patches=selection, max_S=self.info_latents.max_S
                )
                after = self.head.logits(spliced.finish(spliced.tokens_with(entry.prefix, codes)))[0].cpu()
        return {
            "image": image_id,
            "before": self._predictions(entry.before),
            "after": self._predictions(after),
            "changed": self._changed(entry.before, after),
        }

    # Internals

    def _entry(self, image_id: str) -> _Entry:
        with self._lock:
            if image_id in self._cache:
                self._cache.move_to_end(image_id)
                return self._cache[image_id]
            img = self._image(image_id)
            crop = visible_crop(self.transform, img)
            prefix = self.spliced.prefix(self.transform(img)[None])
            before = self.head.logits(self.spliced.finish(prefix.tokens_BTD))[0].cpu()
            entry = _Entry(crop, prefix, before)
            self._cache[image_id] = entry
            while len(self._cache) > self.limits.cache_images:
                self._cache.popitem(last=False)
            return entry

    def _image(self, image_id: str) -> Image.Image:
        # `get`: thumbnails read uploads without the lock, while an upload may evict this one.
        upload = self._uploads.get(image_id) if image_id.startswith("u") else None
        if upload is not None:
            return upload
        i = self._store_index(image_id)
        if i is not None:
            return self.images.load(i)
        shown = image_id if len(image_id) <= MAX_ID else image_id[:MAX_ID] + "..."
        raise UnknownImage(f"no image {shown!r}: pick one from /api/images or upload it.")

    def _patch_codes(self, entry: _Entry) -> Tensor:
        """[patches, d_sae]: the codes of the patch tokens, in patch order."""
        at = self.spliced.patch_N >= 0
        codes_PS = torch.zeros(self.spliced.vit.layout.n_patches, self.spliced.sae.cfg.d_sae)
        codes_PS[self.spliced.patch_N[at].cpu()] = entry.prefix.codes_BNS[0, at].cpu()
        return codes_PS

    def _store_index(self, image_id: str) -> int | None:
        store = STORE_ID.fullmatch(image_id)
        return int(store[1]) if store is not None and int(store[1]) < len(self.images) else None

    def _name(self, image_id: str) -> str:
        i = self._store_index(image_id)
        return self.images.names[i] if i is not None else self._upload_names.get(image_id, image_id)

    def _latent_row(self, s: int, codes_PS: Tensor, score_S: Tensor) -> dict[str, Any]:
        info = self.info_latents
        row: dict[str, Any] = {
            "latent": s,
            "score": float(score_S[s]),
            "max": float(info.max_S[s]),
            "freq": float(info.freq_S[s]) if info.freq_S is not None else None,
            "note": info.notes.get(s, ""),
            "codes": [round(float(v), 4) for v in codes_PS[:, s]],
            "top": [{**t, "name": self._name(f"s{t['image_i']}")} for t in info.top.get(s, [])[:6]],
            "page": s in info.rendered,
        }
        if s in info.names:  # absent: naming did not run; null: scored but unexplained
            name = info.names[s]
            row["name"] = None if name is None else dataclasses.asdict(name)
        return row

    def _predictions(self, logits: Tensor) -> dict[str, Any]:
        head = self.head
        predicted = head.predict(logits)
        if head.kind == "image":
            return {
                "probs": [round(float(p), 4) for p in head.probs(logits)],
                "predicted": predicted.tolist(),
            }
        return {
            "classes": [torch.nonzero(row).flatten().tolist() for row in predicted],
            "top": head.top_class(logits).tolist(),
            "probs": [[round(float(p), 3) for p in row] for row in head.probs(logits)],
        }

    def _changed(self, before: Tensor, after: Tensor) -> list[int]:
        diff = self.head.predict(before) != self.head.predict(after)
        if self.head.kind == "image":
            return torch.nonzero(diff).flatten().tolist()
        return torch.nonzero(diff.any(-1)).flatten().tolist()

    def _check_latent(self, latent: int) -> None:
        d_sae = self.spliced.sae.cfg.d_sae
        if not 0 <= latent < d_sae:
            raise ConfigError(f"latent {latent} out of range: the SAE has {d_sae} latents (0..{d_sae - 1}).")

    def _check_patches(self, patches: Sequence[int]) -> list[int]:
        n = self.spliced.vit.layout.n_patches
        bad = sorted({p for p in patches if not 0 <= p < n})
        if bad:
            raise ConfigError(f"patches {bad[:10]} out of range: the model has {n} patches (0..{n - 1}).")
        return sorted(set(patches))
