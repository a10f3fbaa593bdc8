"""Reading and writing other libraries' SAE formats: saev's loaders against the libraries' own.

    SPARSIFY_DISABLE_TRITON=1 .venv/bin/python -m benchmarks.interop [--repeats 7] [--convert-repeats 5]

A ViT-B/16-sized TopK SAE (d_vit 768, d_sae 24,576, k 32, random weights, float32: two 75 MB
matrices) is written once in each format into a temporary folder, which is removed at the end.
Every file is read once before timing, so the page cache holds it and disk speed does not
dominate. Each case times saev's path and a baseline in the same run, alternating between them
(medians of `--repeats`, `--convert-repeats` for convert):

- SAELens folder: `saev.nn.load(folder)` vs `sae_lens.SAE.load_from_disk(folder)`.
- sparsify folder: `saev.nn.load(folder)` vs `sparsify.SparseCoder.load_from_disk(folder)`.
- native file: `saev.nn.load(file)` vs a bare `safetensors.torch.load_file`, which maps the file and
  reads nothing until a tensor is used, and vs `load_file` plus a copy of every tensor (the floor
  with the 150 MB actually in memory): what saev's CRC-32, shape and NaN checks and building the
  model cost on top of reading the tensors.
- `saev convert` native -> SAELens (`conversion.convert`: load, save, load the result back and
  compare codes on 512 probe inputs) vs the same load + `checkpoints.save(..., "saelens")` without
  the verification, and vs `checkpoints.save` alone.

Writes fsync (saev's `atomic_open`), so the convert rows include the disk's write speed.
"""

import argparse
import os
import pathlib
import shutil
import sys
import tempfile

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # sparsify's Triton kernels need a GPU

import safetensors.torch
import torch

import saev.nn
from benchmarks.common import interleaved_medians, table
from saev.nn import checkpoints, conversion

D_VIT, D_SAE, K = 768, 24_576, 32


def make_sae() -> saev.nn.SparseAutoencoder:
    sae = saev.nn.SparseAutoencoder(saev.nn.SaeConfig(d_vit=D_VIT, d_sae=D_SAE, activation=saev.nn.TopK(k=K)))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero biases, so every tensor carries information
        sae.b_enc.copy_(0.01 * torch.randn(D_SAE, generator=gen))
        sae.b_dec.copy_(0.01 * torch.randn(D_VIT, generator=gen))
    return sae.eval()


def warm(path: pathlib.Path) -> None:
    """Read every file under `path` once so that timed reads come from the page cache."""
    for p in [path] if path.is_file() else sorted(path.rglob("*")):
        if p.is_file():
            p.read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--convert-repeats", type=int, default=5)
    args = parser.parse_args()

    import sae_lens  # imported here so that import time is not part of any case
    import sparsify

    torch.manual_seed(0)
    sae = make_sae()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="saev-interop-"))
    try:
        native, lens, spars = tmp / "sae.safetensors", tmp / "saelens", tmp / "sparsify"
        checkpoints.save(native, sae, "native")
        checkpoints.save(lens, sae, "saelens")
        checkpoints.save(spars, sae, "sparsify")
        for p in (native, lens, spars):
            warm(p)
        mb = native.stat().st_size / 1e6

        # The libraries read what saev wrote (a sanity check, not timed).
        x = conversion.probe_inputs(sae, n=64)
        with torch.no_grad():
            ref = sae.encode(x)
            theirs = sae_lens.SAE.load_from_disk(lens).eval().encode(x)
            assert (ref - theirs).abs().max() <= 1e-4 * ref.abs().max(), "SAELens disagrees"
            coder = sparsify.SparseCoder.load_from_disk(spars)
            out = coder(x)
            assert (out.sae_out - sae.decode(ref)).abs().max() <= 1e-3 * out.sae_out.abs().max(), (
                "sparsify disagrees"
            )
        del theirs, coder, out

        rows = []

        def case(name: str, ours, base, base_name: str, repeats: int = args.repeats) -> dict[str, float]:
            t = interleaved_medians({"ours": ours, "base": base}, repeats=repeats, warmup=1)
            rows.append([name, base_name, t["ours"], t["base"], t["ours"] / t["base"]])
            print(f"  {name}: {t['ours']:.3f} s vs {t['base']:.3f} s", file=sys.stderr, flush=True)
            return t

        case(
            "SAELens folder: saev.nn.load",
            lambda: saev.nn.load(lens),
            lambda: sae_lens.SAE.load_from_disk(lens),
            "sae_lens.SAE.load_from_disk",
        )
        case(
            "sparsify folder: saev.nn.load",
            lambda: saev.nn.load(spars),
            lambda: sparsify.SparseCoder.load_from_disk(spars),
            "sparsify.SparseCoder.load_from_disk",
        )
        case(
            "native file: saev.nn.load",
            lambda: saev.nn.load(native),
            lambda: safetensors.torch.load_file(native),
            "safetensors.torch.load_file",
        )
        # load_file maps the file and reads nothing until a tensor is used; copying every tensor
        # puts the 150 MB in memory, as saev.nn.load does.
        case(
            "native file: saev.nn.load",
            lambda: saev.nn.load(native),
            lambda: {k: v.clone() for k, v in safetensors.torch.load_file(native).items()},
            "load_file + clone every tensor",
        )

        # Conversion writes 150 MB with fsync each time: fewer repeats, three paths interleaved.
        out_convert, out_plain, out_save = tmp / "converted", tmp / "plain", tmp / "saved"
        conv = interleaved_medians(
            {
                "convert": lambda: conversion.convert(native, out_convert, "saelens", overwrite=True),
                "load + save": lambda: checkpoints.save(out_plain, saev.nn.load(native), "saelens"),
                "save": lambda: checkpoints.save(out_save, sae, "saelens"),
            },
            repeats=args.convert_repeats,
            warmup=1,
        )
        for base in ("load + save", "save"):
            base_name = {"load + save": "saev.nn.load + checkpoints.save", "save": "checkpoints.save"}[base]
            rows.append(
                [
                    "saev convert native -> saelens",
                    base_name,
                    conv["convert"],
                    conv[base],
                    conv["convert"] / conv[base],
                ]
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"SAE d_vit {D_VIT}, d_sae {D_SAE}, TopK k {K}, float32 ({mb:.0f} MB native file); "
        f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads; page cache warm; "
        f"medians of {args.repeats} interleaved runs ({args.convert_repeats} for convert)"
    )
    print(table(["case (ours)", "baseline", "ours s", "baseline s", "ratio"], rows))
    print(
        "\nRatio > 1: saev is slower. sae_lens.SAE.load_from_disk and safetensors.torch.load_file map the "
        "file and read the weights only when first used; saev's loaders read all of it, check the CRC-32 "
        "(native), every shape and NaN/inf, and hand the tensors to the model. The convert rows include "
        "reading the result back and comparing codes on 256 probe inputs."
    )


if __name__ == "__main__":
    main()
