"""Fold input transformations into an SAE's weights, for formats that cannot express them.

Every fold leaves pre-activations unchanged (up to float32 rounding), so codes and reconstructions
of raw activations are those of the unfolded SAE. Weights are under saev's names, plus the Gated
architecture's `b_mag` and `r_mag`, which some folds touch.
"""

import torch
from torch import Tensor

from saev.nn.modeling import SparseAutoencoder

Weights = dict[str, Tensor]


def fold_decoder_norm(w: Weights) -> Weights:
    """SAELens' `rescale_acts_by_decoder_norm`: pre-activations times each decoder row's norm, codes
    divided by it before decoding; the same as scaling encoder columns up and decoder rows down."""
    norm_S = w["W_dec"].norm(dim=1)
    return w | {
        "W_enc": w["W_enc"] * norm_S,
        "b_enc": w["b_enc"] * norm_S,
        "W_dec": w["W_dec"] / norm_S[:, None],
    }


def fold_input_scale(w: Weights, factor: float) -> Weights:
    """An SAE that reads `x * factor` and writes its reconstruction divided by `factor`."""
    return w | {"W_enc": w["W_enc"] * factor, "W_dec": w["W_dec"] / factor, "b_dec": w["b_dec"] / factor}


def fold_normalization(sae: SparseAutoencoder) -> Weights:
    """The SAE's weights (and its architecture's own tensors) with `(x - mean) / scale` folded in.

    With `x_n = (x - m) / s`: the encoder's input `x_n - b_dec` (or `x_n`) times `W_enc` equals
    `(x - (m + s b_dec)) (W_enc / s)` (or `x (W_enc / s) - m W_enc / s`), and the decoder's
    `(f W_dec + b_dec) s + m` equals `f (s W_dec) + (s b_dec + m)`. The clamp at +-1e5 is dropped:
    no ViT activation comes near it. Without statistics the weights are returned as they are.
    """
    w = {name: getattr(sae, name).detach().to(torch.float32) for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    w |= {name: t.detach().to(torch.float32) for name, t in sae.activation.state_dict().items()}
    if (norm := sae.normalization) is None:
        return w
    mean_D, scale = norm.mean.to(torch.float32), norm.scale
    out = w | {"W_enc": w["W_enc"] / scale, "W_dec": w["W_dec"] * scale, "b_dec": w["b_dec"] * scale + mean_D}
    if not sae.cfg.subtract_b_dec:
        shift_S = (mean_D / scale) @ w["W_enc"]
        out["b_enc"] = w["b_enc"] - shift_S
        if "b_mag" in w:  # Gated: the magnitude path reads the same directions, rescaled by exp(r_mag)
            out["b_mag"] = w["b_mag"] - shift_S * w["r_mag"].exp()
    return out
