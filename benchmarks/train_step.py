"""One SAE training step against the matrix products it cannot avoid, and against peer libraries (issue 25).

At d_vit 768 -> d_sae 12,288, k 32, batch 4,096, in float32 and under bfloat16 autocast, the median
of interleaved runs of:

- the floor, the bare encoder product `x @ W_enc`, which every TopK-family step computes;
- saev's full TopK and BatchTopK steps (encoder, selection, decoder, loss, backward, the decoder's
  parallel-gradient removal, Adam, decoder renormalisation), as `saev train` runs them;
- saev's ReLU, JumpReLU and Gated steps, and their own floor: the bare dense products of one
  forward and backward through their encoder and decoder(s) (5 matmuls, 7 for Gated's extra
  frozen decoder);
- the TopK / BatchTopK steps of sparsify (`SPARSIFY_DISABLE_TRITON=1`), SAELens and overcomplete,
  each as its own training loop runs it (its loss, backward, gradient clipping or decoder
  normalisation, Adam).

Targets: TopK <= 1.2x the floor, BatchTopK <= 1.1x TopK, ReLU/JumpReLU/Gated <= 1.3x their dense
products, saev ahead of every peer. Every figure is a ratio within one run.
Run: .venv/bin/python -m benchmarks.train_step [--quick]
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does, before torch loads
os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

import argparse
import contextlib
import platform
from collections.abc import Callable

import torch

import saev.nn
from benchmarks.common import interleaved_medians, table
from saev.nn.architectures.gated import Gated
from saev.nn.objectives import Objective, training_loss
from saev.training import trainer

D_VIT, D_SAE, K = 768, 12_288, 32
Step = Callable[[], None]


def autocast(bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def floor_step(x_BD: torch.Tensor, bf16: bool) -> Step:
    W_enc_DS = torch.randn(D_VIT, D_SAE) / D_VIT**0.5

    def step() -> None:
        with autocast(bf16):
            x_BD @ W_enc_DS

    return step


def dense_products_step(x_BD: torch.Tensor, bf16: bool, decoders: int) -> Step:
    """The matmuls of one forward and backward through a dense encoder and `decoders` decoders sharing
    W_dec (only the first one trained): what a ReLU-family step cannot avoid."""
    W_enc_DS = torch.randn(D_VIT, D_SAE) / D_VIT**0.5
    W_dec_SD = torch.randn(D_SAE, D_VIT) / D_SAE**0.5
    g_BD = torch.randn_like(x_BD)

    def step() -> None:
        with autocast(bf16):
            f_BS = x_BD @ W_enc_DS
            for _ in range(decoders):
                f_BS @ W_dec_SD  # forward decode
                g_BS = g_BD @ W_dec_SD.T  # gradient of the codes
            f_BS.T @ g_BD  # gradient of W_dec
            x_BD.T @ g_BS  # gradient of W_enc

    return step


def saev_step(x_BD: torch.Tensor, bf16: bool, activation: object) -> Step:
    """`saev train`'s step (see `saev.training.trainer._Run.train_step`), no dead latents yet."""
    # As TrainConfig.sae_config builds it: inputs are already centred by the normalisation.
    cfg = saev.nn.SaeConfig(d_vit=D_VIT, d_sae=D_SAE, activation=activation, subtract_b_dec=False)
    sae = saev.nn.SparseAutoencoder(cfg)
    opt = trainer.adam(sae, 1e-4)
    obj = Objective(aux_k=D_VIT // 2 if sae.arch.auxk else 0)
    dead_S = torch.zeros(D_SAE, dtype=torch.bool)
    coeff = sae.arch.default_coeff

    def step() -> None:
        with autocast(bf16):
            out = training_loss(sae, x_BD, coeff, dead_S, obj)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.remove_parallel_grads()
        opt.step()
        sae.normalize_w_dec()

    return step


def sparsify_step(x_BD: torch.Tensor, bf16: bool) -> Step:
    """sparsify's Trainer.fit with `optimizer="adam"` and the fvu loss (it has no BatchTopK)."""
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(D_VIT, SparseCoderConfig(num_latents=D_SAE, k=K), device="cpu")
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (D_SAE / 2**14) ** 0.5)

    def step() -> None:
        sae.set_decoder_norm_to_unit_norm()
        with autocast(bf16):
            out = sae(x_BD, dead_mask=None)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()

    return step


def saelens_step(x_BD: torch.Tensor, bf16: bool, batch_topk: bool) -> Step:
    """SAELens' SAETrainer._train_step (firing statistics, clipping, Adam)."""
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    if batch_topk:
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_VIT, d_sae=D_SAE, k=K, device="cpu"))
    else:
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_VIT, d_sae=D_SAE, k=K, device="cpu"))
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4)
    since_fired_S = torch.zeros(D_SAE)
    dead_S = torch.zeros(D_SAE, dtype=torch.bool)

    def step() -> None:
        with autocast(bf16):
            out = sae.training_forward_pass(
                TrainStepInput(x_BD, {}, dead_S, n_training_steps=0, is_logging_step=False)
            )
            with torch.no_grad():
                did_fire_S = out.feature_acts.bool().float().sum(-2).bool()
                since_fired_S.add_(1)[did_fire_S] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return step


def overcomplete_step(x_BD: torch.Tensor, bf16: bool, batch_topk: bool) -> Step:
    """overcomplete's train_sae loop (MSE criterion, dead-code tracking, clipping, Adam)."""
    import matplotlib

    # overcomplete 0.3 builds colormaps at import with `matplotlib.cm.get_cmap`, gone since matplotlib 3.9.
    if not hasattr(matplotlib.cm, "get_cmap"):
        matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap
    from overcomplete.sae import BatchTopKSAE, TopKSAE
    from overcomplete.sae.trackers import DeadCodeTracker

    if batch_topk:
        sae = BatchTopKSAE(D_VIT, D_SAE, top_k=K * len(x_BD))  # its top_k counts the whole batch
    else:
        sae = TopKSAE(D_VIT, D_SAE, top_k=K)
    opt = torch.optim.Adam(sae.parameters(), lr=5e-4)
    tracker = DeadCodeTracker(D_SAE, "cpu")

    def step() -> None:
        opt.zero_grad()
        with autocast(bf16):
            _, z_BS, x_hat_BD = sae(x_BD)
            loss = (x_BD - x_hat_BD).square().mean()
        tracker.update(z_BS)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()

    return step


def steps(x_BD: torch.Tensor, bf16: bool) -> dict[str, Step]:
    return {
        "floor: x @ W_enc": floor_step(x_BD, bf16),
        "saev topk": saev_step(x_BD, bf16, saev.nn.TopK(k=K)),
        "saev batchtopk": saev_step(x_BD, bf16, saev.nn.BatchTopK(k=K)),
        "dense products (5 matmuls)": dense_products_step(x_BD, bf16, decoders=1),
        "dense products, gated (7 matmuls)": dense_products_step(x_BD, bf16, decoders=2),
        "saev relu": saev_step(x_BD, bf16, saev.nn.Relu()),
        "saev jumprelu": saev_step(x_BD, bf16, saev.nn.JumpRelu()),
        "saev gated": saev_step(x_BD, bf16, Gated()),
        "sparsify topk": sparsify_step(x_BD, bf16),
        "SAELens topk": saelens_step(x_BD, bf16, batch_topk=False),
        "SAELens batchtopk": saelens_step(x_BD, bf16, batch_topk=True),
        "overcomplete topk": overcomplete_step(x_BD, bf16, batch_topk=False),
        "overcomplete batchtopk": overcomplete_step(x_BD, bf16, batch_topk=True),
    }


BASELINE = {
    "saev topk": "floor: x @ W_enc",
    "saev batchtopk": "saev topk",
    "saev relu": "dense products (5 matmuls)",
    "saev jumprelu": "dense products (5 matmuls)",
    "saev gated": "dense products, gated (7 matmuls)",
    "sparsify topk": "saev topk",
    "SAELens topk": "saev topk",
    "SAELens batchtopk": "saev batchtopk",
    "overcomplete topk": "saev topk",
    "overcomplete batchtopk": "saev batchtopk",
}
TARGET = {
    "saev topk": "<= 1.2",
    "saev batchtopk": "<= 1.1",
    "saev relu": "<= 1.3",
    "saev jumprelu": "<= 1.3",
    "saev gated": "<= 1.3",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    args = parser.parse_args()
    torch.manual_seed(0)
    x_BD = torch.randn(args.batch_size, D_VIT)
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    times: dict[str, dict[str, float]] = {}
    for precision in precisions:
        fns = steps(x_BD, precision == "bf16")
        times[precision] = interleaved_medians(fns, repeats=3 if args.quick else 7, warmup=1)
        del fns  # each precision's SAEs and optimiser states go before the next ones are built
    rows = []
    for name in times[precisions[0]]:
        row: list[object] = [name]
        for precision in precisions:
            t = times[precision]
            row += [1e3 * t[name], f"{t[name] / t[BASELINE[name]]:.3f}" if name in BASELINE else ""]
        rows.append([*row, BASELINE.get(name, ""), TARGET.get(name, "")])
    print(
        f"Training step, d_vit {D_VIT} -> d_sae {D_SAE}, k {K}, batch {args.batch_size}; "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )
    headers = ["step"]
    for precision in precisions:
        headers += [f"{precision} ms", f"{precision} ratio"]
    print(table([*headers, "ratio to", "target"], rows))


if __name__ == "__main__":
    main()
