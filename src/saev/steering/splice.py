"""An SAE spliced into a running ViT: encode the tokens at block L, edit latents, decode, and run
the rest of the model.

With `x` the layer-L activations of the tokens the SAE reads and `f = E(x)` their codes, an edit
gives codes `f'`. In the default `error` mode the new activations are `x + D(f') - D(f)`, which is
`D(f') + e` with the reconstruction error `e = x - D(f)` added back, computed so that an empty edit
changes nothing, bit for bit. The `replace` mode uses `D(f')` alone (reconstruction evaluation).
Because the SAE carries its normalisation, `D` maps back to raw activations and edits are in the
units the SAE was trained in. The model up to block L runs once per image (`prefix`); every edit
reruns only the decoder and the blocks after L.
"""

import dataclasses
import typing
from collections.abc import Sequence
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from saev.activations import provenance
from saev.activations.vit import Vit
from saev.data.layout import Tokens
from saev.errors import ConfigError, ModelError
from saev.nn.modeling import SparseAutoencoder
from saev.steering.edits import Edit, Where, apply_edits, check_latents, describe, finite

Mode = Literal["error", "replace"]


@dataclasses.dataclass(frozen=True)
class Prefix:
    """What the model computed up to block L for a batch of images (reused by every edit)."""

    tokens_BTD: Float[Tensor, "batch tokens d_vit"]
    """The residual stream after block L, every token."""
    codes_BNS: Float[Tensor, "batch n d_sae"]
    """SAE codes of the tokens it reads."""


class SplicedVit:
    """`vit` with `sae` spliced in after block `layer`, reading `tokens` (default: the SAE's own)."""

    def __init__(
        self,
        vit: Vit,
        sae: SparseAutoencoder,
        layer: int | None = None,
        tokens: Tokens | None = None,
        *,
        force: bool = False,
        where: str = "the SAE",
    ):
        """Refuses a layer, ViT or token selection other than the SAE records, unless `force`
        (`where` names the SAE in messages)."""
        prov = sae.provenance
        if sae.cfg.d_vit != vit.d_vit:
            raise ConfigError(
                f"{where} reads {sae.cfg.d_vit}-dim activations; {vit.name} makes {vit.d_vit}-dim ones."
            )
        layer = prov.layer if layer is None else layer
        if layer is None:
            raise ConfigError(f"{where} does not record its layer: give the layer it reads.")
        block = vit.block_index(layer)
        if prov.tokens is not None and prov.tokens not in typing.get_args(Tokens):
            raise ConfigError(
                f"{where} records tokens {prov.tokens!r}; expected one of {', '.join(typing.get_args(Tokens))}."
            )
        reading = provenance.Reading(vit.family, vit.ckpt, layer, len(vit.blocks), tokens)
        provenance.check(prov, reading, force=force, where=where)
        self.vit, self.sae, self.layer = vit, sae, block
        recorded = typing.cast(Tokens | None, prov.tokens)  # a checkpoint's string, checked above
        self.tokens: Tokens = tokens or recorded or "patches"
        layout = vit.layout
        if self.tokens != "patches" and not layout.has_cls:
            raise ConfigError(f"tokens={self.tokens!r}: {vit.name} has no [CLS] token.")
        patches = torch.arange(layout.n_prefix, layout.n_prefix + layout.n_patches)
        cls = torch.tensor([0])
        self.index_N: Int[Tensor, " n"] = {"patches": patches, "cls": cls, "all": torch.cat([cls, patches])}[
            self.tokens
        ]
        """Positions, in the block's output, of the tokens the SAE reads."""
        self.patch_N: Int[Tensor, " n"] = torch.where(self.index_N == 0, -1, self.index_N - layout.n_prefix)
        """Patch index of each read token (-1 for [CLS])."""

    @property
    def device(self) -> torch.device:
        return self.sae.b_dec.device

    @torch.inference_mode()
    def prefix(self, x_B3HW: Float[Tensor, "batch 3 height width"]) -> Prefix:
        tokens_BTD = self.vit.run_to(x_B3HW.to(self.device), self.layer)
        return Prefix(tokens_BTD, self.sae.encode(tokens_BTD[:, self.index_N]))

    @torch.inference_mode()
    def edit(
        self,
        prefix: Prefix,
        edits: Sequence[Edit],
        *,
        where: Where = "all",
        patches: Sequence[int] | None = None,
        max_S: Float[Tensor, " d_sae"] | None = None,
    ) -> Float[Tensor, "batch n d_sae"]:
        """The codes after `edits`, on every read token or only `patches` (patch indices).

        Refused (ConfigError) when the edited codes, or the activations they give back to the
        residual stream, are not finite: the rest of the model would turn them into NaN predictions.
        """
        check_latents(edits, self.sae.cfg.d_sae, "the SAE")
        codes_BNS = apply_edits(
            prefix.codes_BNS, edits, where=where, eligible_N=self.eligible(patches), max_S=max_S
        )
        if not edits:
            return codes_BNS
        latents = sorted({e.latent for e in edits})
        edited_BNL = codes_BNS[..., latents]
        if not finite(edited_BNL):
            bad = [s for s, col in zip(latents, edited_BNL.unbind(-1), strict=True) if not finite(col)]
            culprits = [e for e in edits if e.latent in bad]
            raise ConfigError(
                f"{describe(culprits)}: the code of latent {bad[0]} reaches "
                f"{_extreme(edited_BNL[..., latents.index(bad[0])])}, beyond float32; use smaller values."
            )
        # Only the edited latents change the activations: (f' - f) W_dec on their columns.
        delta_BND = (edited_BNL - prefix.codes_BNS[..., latents]) @ self.sae.W_dec[latents]
        if self.sae.act_scale is not None:
            delta_BND = delta_BND * self.sae.act_scale
        written_BND = prefix.tokens_BTD[:, self.index_N] + delta_BND
        if not finite(written_BND):
            raise ConfigError(
                f"{describe(edits)}: codes up to {float(edited_BNL.abs().amax()):.3g} make the activations "
                f"written back into the residual stream reach {_extreme(written_BND)}; use smaller values."
            )
        return codes_BNS

    def eligible(self, patches: Sequence[int] | None) -> Bool[Tensor, " n"] | None:
        if patches is None:
            return None
        n_patches = self.vit.layout.n_patches
        bad = sorted({p for p in patches if not 0 <= p < n_patches})
        if bad:
            raise ConfigError(
                f"patches {bad} out of range: {self.vit.name} has {n_patches} patches (0..{n_patches - 1})."
            )
        return torch.isin(self.patch_N, torch.tensor(sorted(set(patches)), dtype=torch.int64)).to(self.device)

    @torch.inference_mode()
    def tokens_with(
        self, prefix: Prefix, codes_BNS: Float[Tensor, "batch n d_sae"] | None = None, mode: Mode = "error"
    ) -> Float[Tensor, "batch tokens d_vit"]:
        """The residual stream after block L with the read tokens' codes replaced by `codes_BNS`."""
        if mode == "error":
            if codes_BNS is None:
                return prefix.tokens_BTD
            return self.add_to_read(prefix, self.decode_delta(prefix.codes_BNS, codes_BNS))
        codes_BNS = prefix.codes_BNS if codes_BNS is None else codes_BNS
        return self.replace_read(prefix, self.sae.decode(codes_BNS))

    @torch.inference_mode()
    def decode_delta(
        self, before_BNS: Float[Tensor, "batch n d_sae"], after_BNS: Float[Tensor, "batch n d_sae"]
    ) -> Float[Tensor, "batch n d_vit"]:
        """`D(after) - D(before)` in raw activations: the decoder is affine, so only the changed codes count."""
        delta_BND = (after_BNS - before_BNS) @ self.sae.W_dec
        return delta_BND * self.sae.act_scale if self.sae.act_scale is not None else delta_BND

    @torch.inference_mode()
    def add_to_read(
        self, prefix: Prefix, delta_BND: Float[Tensor, "batch n d_vit"]
    ) -> Float[Tensor, "batch tokens d_vit"]:
        tokens_BTD = prefix.tokens_BTD.clone()
        tokens_BTD[:, self.index_N] += delta_BND
        return tokens_BTD

    @torch.inference_mode()
    def replace_read(
        self, prefix: Prefix, new_BND: Float[Tensor, "batch n d_vit"]
    ) -> Float[Tensor, "batch tokens d_vit"]:
        tokens_BTD = prefix.tokens_BTD.clone()
        tokens_BTD[:, self.index_N] = new_BND
        return tokens_BTD

    @torch.inference_mode()
    def finish(
        self, tokens_BTD: Float[Tensor, "batch tokens d_vit"], cause: str = ""
    ) -> Float[Tensor, "batch tokens d_vit"]:
        """The last block's output from the residual stream after block L. `cause` names what made
        `tokens_BTD` (an edit) for the error when the output is not finite."""
        out_BTD = self.vit.blocks_from(tokens_BTD, self.layer)
        if finite(out_BTD):
            return out_BTD
        if cause:
            raise ConfigError(
                f"{cause}: the model's output is not finite after it (the activations at block {self.layer} "
                f"reach {float(tokens_BTD.abs().amax()):.3g}, too large for the blocks after); use smaller values."
            )
        raise ModelError(
            f"{self.vit.name}: the output of its last block is not finite (activations at block {self.layer} "
            f"up to {float(tokens_BTD.abs().amax()):.3g})."
        )

    def __call__(
        self,
        x_B3HW: Float[Tensor, "batch 3 height width"],
        edits: Sequence[Edit] = (),
        *,
        where: Where = "all",
        patches: Sequence[int] | None = None,
        max_S: Float[Tensor, " d_sae"] | None = None,
        mode: Mode = "error",
    ) -> Float[Tensor, "batch tokens d_vit"]:
        """The last block's output with `edits` applied (feed it to a head, or `vit.head`)."""
        prefix = self.prefix(x_B3HW)
        codes = self.edit(prefix, edits, where=where, patches=patches, max_S=max_S) if edits else None
        return self.finish(self.tokens_with(prefix, codes, mode), describe(edits) if edits else "")


def _extreme(x: Tensor) -> str:
    """The value of `x` farthest from zero, NaN first, for messages."""
    if x.isnan().any():
        return "nan"
    return f"{float(x.flatten()[x.abs().argmax()]):.3g}"
