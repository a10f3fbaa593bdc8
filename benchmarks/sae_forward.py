"""SAE forward cost versus the two bare matrix multiplies it must do.

Shapes of the public CLIP SAE on one image: [196, 768] -> 24,576 latents -> [196, 768].
Run: .venv/bin/python -m benchmarks.sae_forward
"""

import torch

import saev.nn
from benchmarks.common import interleaved_medians, table


def main() -> None:
    torch.manual_seed(0)
    d_vit, d_sae, n = 768, 24_576, 196
    sae = saev.nn.SparseAutoencoder(saev.nn.SaeConfig(d_vit=d_vit, d_sae=d_sae)).eval()
    x = torch.randn(n, d_vit)
    W_enc, W_dec = sae.W_enc.detach().clone(), sae.W_dec.detach().clone()
    f = torch.relu(x @ W_enc)

    def bare() -> None:
        x @ W_enc
        f @ W_dec

    def forward() -> None:
        sae(x)

    def forward_and_loss() -> None:
        sae(x).loss.loss.item()

    with torch.inference_mode():
        times = interleaved_medians(
            {"two matmuls": bare, "sae(x)": forward, "sae(x) + all loss terms": forward_and_loss},
            repeats=30,
        )
    base = times["two matmuls"]
    rows = [[name, t * 1e3, t / base] for name, t in times.items()]
    print(f"SAE forward, x [{n}, {d_vit}] -> {d_sae} latents, {torch.get_num_threads()} threads")
    print(table(["path", "median ms", "ratio to two matmuls"], rows))


if __name__ == "__main__":
    main()
