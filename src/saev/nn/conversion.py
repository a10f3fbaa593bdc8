"""Convert an SAE between formats, and check that two SAEs compute the same thing.

`convert` reads any format `saev.nn.load` reads, writes one of `formats.WRITABLE`, reads the result
back and compares it with the source on a fixed batch, so a conversion that would change codes
(an unexpressible detail, a bug) stops with an error instead of leaving a wrong file.
"""

import dataclasses
import os
import pathlib
import shutil

import torch
from jaxtyping import Float
from torch import Tensor

from saev.errors import CheckpointError
from saev.fileio import check_output, existing_kind
from saev.nn import checkpoints, formats
from saev.nn.modeling import SparseAutoencoder

TOLERANCE = 1e-4
"""Largest difference in codes or reconstructions, relative to their largest magnitude, that counts as equal
(float32 rounding of folded weights is ~1e-6)."""


@dataclasses.dataclass(frozen=True)
class Agreement:
    """How closely two SAEs agree on the same inputs."""

    n_tokens: int
    max_code_error: float
    """Largest absolute difference between codes."""
    max_recon_error: float
    """Largest absolute difference between reconstructions."""
    code_scale: float
    """Largest absolute code of the first SAE (errors are judged relative to it)."""
    recon_scale: float

    @property
    def relative_error(self) -> float:
        return max(
            self.max_code_error / max(self.code_scale, 1e-12),
            self.max_recon_error / max(self.recon_scale, 1e-12),
        )

    @property
    def agrees(self) -> bool:
        return self.relative_error <= TOLERANCE


@dataclasses.dataclass(frozen=True)
class Conversion:
    source: str
    source_format: str
    target: pathlib.Path
    target_format: str
    agreement: Agreement


def probe_inputs(sae: SparseAutoencoder, n: int = 256, seed: int = 0) -> Float[Tensor, "n d_vit"]:
    """Raw activations that make the SAE's latents fire: sparse positive mixtures of its decoder
    rows, plus noise, mapped back through its normalisation."""
    gen = torch.Generator().manual_seed(seed)
    d_sae, d_vit = sae.cfg.d_sae, sae.cfg.d_vit
    active = torch.rand(n, d_sae, generator=gen) < min(16 / d_sae, 0.5)
    codes = torch.rand(n, d_sae, generator=gen) * 2 * active
    with torch.no_grad():
        x_n = sae.decode_normalized(codes.to(sae.b_dec.device))
        x_n += (
            0.1
            * torch.randn(n, d_vit, generator=gen).to(x_n.device)
            * x_n.norm(dim=1, keepdim=True)
            / d_vit**0.5
        )
        return sae.denormalize(x_n)


def compare(
    a: SparseAutoencoder, b: SparseAutoencoder, x_ND: Float[Tensor, "n d_vit"] | None = None
) -> Agreement:
    """Codes and reconstructions of `a` and `b` on `x` (default: `probe_inputs(a)`)."""
    if (a.cfg.d_vit, a.cfg.d_sae) != (b.cfg.d_vit, b.cfg.d_sae):
        raise CheckpointError(
            f"the SAEs have different shapes: d_vit {a.cfg.d_vit} vs {b.cfg.d_vit}, d_sae {a.cfg.d_sae} vs {b.cfg.d_sae}."
        )
    a, b = a.eval(), b.eval()
    x_ND = probe_inputs(a) if x_ND is None else x_ND
    with torch.no_grad():
        f_a, f_b = a.encode(x_ND), b.encode(x_ND.to(b.b_dec.device)).to(x_ND.device)
        r_a, r_b = a.decode(f_a), b.decode(f_b.to(b.b_dec.device)).to(x_ND.device)
    return Agreement(
        n_tokens=len(x_ND),
        max_code_error=float((f_a - f_b).abs().max()),
        max_recon_error=float((r_a - r_b).abs().max()),
        code_scale=float(f_a.abs().max()),
        recon_scale=float(r_a.abs().max()),
    )


def convert(
    src: str | os.PathLike, dst: str | os.PathLike, to: str, *, overwrite: bool = False
) -> Conversion:
    """Write the SAE at `src` (anything `load` reads) to `dst` in format `to`, then verify it.

    Nothing is overwritten unless `overwrite`; a result that does not agree with the source (see
    `TOLERANCE`) is removed and reported as an error.
    """
    dst = pathlib.Path(dst)
    if to not in formats.WRITABLE:
        raise CheckpointError(f"cannot write format {to!r}; saev writes {', '.join(formats.WRITABLE)}.")
    _check_target(dst, to, overwrite)
    source = checkpoints.locate(src).path
    # realpath, not resolve: a symlink loop is then refused by the load below, by name.
    target, origin = pathlib.Path(os.path.realpath(dst)), pathlib.Path(os.path.realpath(source))
    if target == origin or origin in target.parents:
        raise CheckpointError(
            f"{dst}: is where {os.fspath(src)} is read from; write the conversion elsewhere."
        )
    sae = checkpoints.load(src)
    source_format = formats.detect(source)
    existed = dst.exists()
    if existed and formats.FORMATS[to].folder:
        # Files of another format left in the folder would make it read as that format.
        for name in formats.HUB_FILES:
            (dst / name).unlink(missing_ok=True)
    checkpoints.save(dst, sae, to)
    agreement = compare(sae, checkpoints.load(dst))
    if not agreement.agrees:
        if not existed and dst.is_dir():  # a folder this call made
            shutil.rmtree(dst)
        elif not existed:
            dst.unlink()
        raise CheckpointError(
            f"{dst}: the converted SAE disagrees with {os.fspath(src)} (largest code difference "
            f"{agreement.max_code_error:.3g} of {agreement.code_scale:.3g}, reconstruction "
            f"{agreement.max_recon_error:.3g} of {agreement.recon_scale:.3g}); it was not kept. Please report this."
        )
    return Conversion(os.fspath(src), source_format, dst, to, agreement)


def _check_target(dst: pathlib.Path, to: str, overwrite: bool) -> None:
    folder = formats.FORMATS[to].folder
    found = existing_kind(dst)
    if folder and found not in (None, "a folder"):
        raise CheckpointError(f"{dst}: {to} is a folder format, but this is {found}.")
    if not folder and found == "a folder":
        raise CheckpointError(
            f"{dst}: {to} is written to a file, but this is a folder; name the file inside it."
        )
    # Devices, FIFOs and sockets are never replaced, whatever --overwrite says; nor, in a folder,
    # are the files a conversion would replace there.
    for path in [dst / name for name in formats.HUB_FILES] if folder and found else [dst]:
        check_output(path)
    taken = dst.is_file() or (dst.is_dir() and any(dst.iterdir()))
    if taken and not overwrite:
        raise CheckpointError(f"{dst}: already exists; pass --overwrite to replace it.")
