"""TopK training-step throughput with dense decoding versus sparse decoding (active rows only).

One full step (encoder, top-k, decoder, loss, backward, Adam) on CPU, for several d_sae / k
ratios at d_vit 768 and batch 4096; also the sparse step under bfloat16 autocast (`--autocast bf16`). The issue's reference point is 16x expansion, k = 32.
Run: .venv/bin/python -m benchmarks.train_decode [--quick]
"""

import argparse

import torch

import saev.nn
from benchmarks.common import interleaved_medians, table
from saev.nn.objectives import Objective, training_loss


def step_fn(sae: saev.nn.SparseAutoencoder, x: torch.Tensor, decoder: str, bf16: bool = False):
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    obj = Objective(decoder=decoder)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = training_loss(sae, x, 0.0, None, obj)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="only the 16x, k=32 point")
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args()
    torch.manual_seed(0)
    d_vit, batch = 768, args.batch_size
    shapes = [(16, 32)] if args.quick else [(2, 128), (4, 64), (8, 32), (16, 32), (16, 8), (32, 32)]
    x = torch.randn(batch, d_vit)
    rows = []
    for exp, k in shapes:
        sae = saev.nn.SparseAutoencoder(
            saev.nn.SaeConfig(
                d_vit=d_vit, d_sae=d_vit * exp, activation=saev.nn.TopK(k=k), subtract_b_dec=False
            )
        )
        fns = {d: step_fn(sae, x, d) for d in ("dense", "sparse")} | {"bf16": step_fn(sae, x, "sparse", True)}
        times = interleaved_medians(fns, repeats=3, warmup=1)
        rows.append(
            [
                d_vit * exp,
                k,
                d_vit * exp // k,
                batch / times["dense"],
                batch / times["sparse"],
                times["dense"] / times["sparse"],
                batch / times["bf16"],
                times["sparse"] / times["bf16"],
            ]
        )
    print(f"TopK training step, d_vit {d_vit}, batch {batch}, {torch.get_num_threads()} threads")
    headers = ["d_sae", "k", "d_sae/k", "dense tok/s", "sparse tok/s", "sparse speed-up"]
    print(table([*headers, "sparse + bf16 autocast tok/s", "bf16 speed-up over sparse"], rows))


if __name__ == "__main__":
    main()
