"""Cost of an edit and of spliced evaluation, beside the plain forward pass.

An edit reruns only the SAE's decoder change and the blocks after L: the prefix (blocks up to L and
the SAE encoding) is computed once per image and reused. Compared, on the same batch:

- full forward: the unmodified model, image to head output;
- edit, prefix reused: edit the codes, add the decoder change, run the blocks after L and the head;
- edit, recomputed: the same edit from the image (what an implementation without a prefix cache does).

and the throughput of `evaluate_splice` (clean, spliced, zero- and mean-ablated runs of the blocks
after L, plus the SAE) against a plain forward over the same images.

    python -m benchmarks.steering [--family clip] [--layers 6 -2] [--batch 8]

The default model is OpenCLIP's ViT-B/16 architecture (12 blocks, random weights, as recording
benchmarks use) with a 16x SAE (12,288 latents) spliced in.
"""

import argparse
import time

import torch

import saev.nn
from benchmarks.common import interleaved_medians, table
from saev.activations import make_vit
from saev.normalization import ActNorm
from saev.steering import Edit, SplicedVit
from saev.steering.heads import Head
from saev.steering.reconstruction import evaluate_splice


def make(family: str, ckpt: str, layer: int) -> tuple[SplicedVit, Head, torch.Tensor]:
    torch.manual_seed(0)
    vit = make_vit(family, ckpt, pretrained=family == "builtin")
    d = vit.d_vit
    sae = saev.nn.SparseAutoencoder(
        saev.nn.SaeConfig(d_vit=d, d_sae=16 * d, activation=saev.nn.TopK(k=32), subtract_b_dec=False),
        saev.nn.Provenance(layer=layer, tokens="patches"),
    )
    sae.set_normalization(ActNorm(torch.zeros(d), 1.0))
    head = Head("model output", ("a",), "image", False, lambda x: vit.head(x))
    size = 128 if family == "builtin" else 224
    return SplicedVit(vit, sae.eval()), head, torch.randn(1, 3, size, size)


def edit_costs(spliced: SplicedVit, head: Head, x: torch.Tensor) -> dict[str, float]:
    prefix = spliced.prefix(x)
    edits = [Edit(int(prefix.codes_BNS.sum((0, 1)).argmax()), "set", -1.0, relative=True)]
    max_S = prefix.codes_BNS.amax((0, 1))

    def full() -> None:
        with torch.inference_mode():
            spliced.vit(x)

    def cached() -> None:
        codes = spliced.edit(prefix, edits, where="active", max_S=max_S)
        head.logits(spliced.finish(spliced.tokens_with(prefix, codes)))

    def recomputed() -> None:
        fresh = spliced.prefix(x)
        codes = spliced.edit(fresh, edits, where="active", max_S=max_S)
        head.logits(spliced.finish(spliced.tokens_with(fresh, codes)))

    return interleaved_medians(
        {"full forward": full, "edit, prefix reused": cached, "edit, recomputed": recomputed},
        repeats=7,
        warmup=1,
    )


def evaluation_rate(
    spliced: SplicedVit, head: Head, x: torch.Tensor, n_batches: int = 3
) -> tuple[float, float]:
    """Images per second: plain forward, and spliced evaluation (all four conditions)."""
    with torch.inference_mode():
        spliced.vit(x)
    start = time.perf_counter()
    for _ in range(n_batches):
        with torch.inference_mode():
            spliced.vit(x)
    plain = n_batches * len(x) / (time.perf_counter() - start)
    start = time.perf_counter()
    evaluate_splice(spliced, head, [(x, None)] * n_batches, torch.zeros(spliced.vit.d_vit))
    spliced_rate = n_batches * len(x) / (time.perf_counter() - start)
    return plain, spliced_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="clip")
    parser.add_argument("--ckpt", default="ViT-B-16/none")
    parser.add_argument("--layers", type=int, nargs="+", default=[6, -2])
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    print(f"{args.family}/{args.ckpt}, batch {args.batch}, {torch.get_num_threads()} threads")
    rows, eval_rows = [], []
    for layer in args.layers:
        spliced, head, x1 = make(args.family, args.ckpt, layer)
        x = x1.expand(args.batch, -1, -1, -1).clone() + torch.randn(args.batch, *x1.shape[1:]) * 0.1
        times = edit_costs(spliced, head, x)
        base = times["full forward"]
        rows += [[layer, name, t * 1e3, t / base] for name, t in times.items()]
        plain, rate = evaluation_rate(spliced, head, x)
        eval_rows.append([layer, plain, rate, rate / plain])
    print(table(["layer", "path", "median ms", "ratio to full forward"], rows))
    print()
    print(table(["layer", "plain forward img/s", "spliced evaluation img/s", "ratio"], eval_rows))


if __name__ == "__main__":
    main()
