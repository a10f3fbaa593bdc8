"""Steering with ground truth: the built-in ViT, its concepts, and SAEs at every block.

    python -m benchmarks.steering_ground_truth [--quickstart quickstart/] [--n-images 400]

1. The quickstart's SAE (block -2, patch tokens; run `make quickstart` first) on fresh synthetic
   images (a seed the quickstart never used): the steering test on the patch and image heads (each
   concept's best latent, chosen on half the images, set to -1x its largest activation where it
   fires, scored on the other half) and the spliced evaluation (recovered loss).
2. Where the image head is steered best: TopK SAEs with the quickstart's settings trained at every
   block on patch tokens and on all tokens ([CLS] included), each tested the same way.

Both tables compare the chosen latents with the random-latent and random-direction baselines
measured in the same run.
"""

import argparse
import json
import pathlib
import tempfile

import numpy as np
import torch
from PIL import Image

import saev.nn
from benchmarks.common import table
from saev import synthetic
from saev.activations import make_img_transform, make_vit
from saev.activations.recording import RecordConfig, record
from saev.concepts import best_detectors
from saev.steering import SplicedVit
from saev.steering.effects import steering_test
from saev.steering.heads import builtin_head
from saev.steering.reconstruction import evaluate_splice
from saev.training import TrainConfig, train

FRESH_SEED = 12345


def fresh_images(root: pathlib.Path, n: int) -> tuple[torch.Tensor, synthetic.Dataset]:
    dataset = synthetic.generate(root, n, seed=FRESH_SEED)
    transform = make_img_transform("builtin", "shapes-vit")
    return torch.stack([transform(Image.open(root / r.file)) for r in dataset.records]), dataset


def concept_latents(
    spliced: SplicedVit, x: torch.Tensor, dataset: synthetic.Dataset
) -> list[tuple[int, int]]:
    """Each concept's best latent by patch F1, chosen on the even images."""
    codes = spliced.prefix(x).codes_BNS
    patches = spliced.patch_N >= 0
    codes_NS = codes[:, patches].reshape(-1, codes.shape[-1]).cpu()
    labels = np.stack([synthetic.patch_rows(r, spliced.vit.layout.grid) for r in dataset.records])
    labels_NC = torch.from_numpy(labels).reshape(-1, len(synthetic.CONCEPTS))
    n_patches = int(patches.sum())
    select_N = (torch.arange(len(codes_NS)) // n_patches) % 2 == 0
    return [
        (c, d.unit)
        for c, d in enumerate(best_detectors(codes_NS, labels_NC, select_N, signed=False, include_zero=True))
    ]


def steer(spliced: SplicedVit, x: torch.Tensor, dataset: synthetic.Dataset):
    heads = [builtin_head(spliced.vit, "patch"), builtin_head(spliced.vit, "image")]
    targets = concept_latents(spliced, x, dataset)
    max_S = spliced.prefix(x).codes_BNS.amax((0, 1))
    odd = x[1::2]
    batches = [odd[i : i + 64] for i in range(0, len(odd), 64)]
    return steering_test(spliced, heads, batches, targets, max_S)


def quickstart_sae(folder: pathlib.Path, x: torch.Tensor, dataset: synthetic.Dataset) -> None:
    report = json.loads((folder / "report.json").read_text())
    sae_path = pathlib.Path(report["sae"])
    sae_path = sae_path if sae_path.is_absolute() else folder.parent / sae_path
    spliced = SplicedVit(make_vit("builtin", "shapes-vit"), saev.nn.load(sae_path).eval())
    for test in steer(spliced, x, dataset):
        print(f"quickstart SAE ({sae_path}), {test.head}, {len(x) // 2} fresh images scored:")
        print(test.table())
        print()
    labels = {
        "patch": torch.from_numpy(
            np.stack([synthetic.patch_rows(r, (8, 8)) for r in dataset.records])
        ).float(),
        "image": torch.from_numpy(np.stack([synthetic.image_concepts(r) for r in dataset.records])).float(),
    }
    rows = []
    for kind in ("patch", "image"):
        head = builtin_head(spliced.vit, kind)
        batches = [(x[i : i + 64], labels[kind][i : i + 64]) for i in range(0, len(x), 64)]
        ev = evaluate_splice(spliced, head, batches)
        s = ev.scores
        rows.append(
            [
                head.name,
                s["clean"].loss,
                s["spliced"].loss,
                s["zero"].loss,
                s["mean"].loss,
                ev.recovered_zero,
                ev.recovered_mean,
                s["spliced"].kl,
            ]
        )
    print(f"spliced evaluation of the quickstart SAE on {len(x)} fresh images:")
    print(
        table(
            [
                "head",
                "clean loss",
                "spliced loss",
                "zero-ablated",
                "mean-ablated",
                "recovered (zero)",
                "recovered (mean)",
                "KL spliced",
            ],
            rows,
        )
    )
    print()


def per_layer(tmp: pathlib.Path, x: torch.Tensor, dataset: synthetic.Dataset, n_train_images: int) -> None:
    images = tmp / "train"
    synthetic.generate(images, n_train_images, seed=0)
    n_blocks = 4
    store = record(
        RecordConfig(
            vit_family="builtin",
            vit_ckpt="shapes-vit",
            images=str(images / "images"),
            dump_to=tmp / "shards",
            layers=tuple(range(n_blocks)),
            n_workers=1,
        )
    ).path
    rows = []
    for layer in range(n_blocks):
        for tokens in ("patches", "all"):
            cfg = TrainConfig(
                shards=store,
                out=tmp / "runs",
                layer=layer,
                tokens=tokens,
                arch="topk",
                k=16,
                exp_factor=8,
                n_train=3_000_000,
                batch_size=1024,
                lr=1e-3,
                lr_warmup=100,
            )
            [run] = train(cfg)
            spliced = SplicedVit(make_vit("builtin", "shapes-vit"), saev.nn.load(run.checkpoint).eval())
            tests = {t.head: t.medians() for t in steer(spliced, x, dataset)}
            p, i = tests["builtin-patch"], tests["builtin-image"]
            rows.append(
                [
                    layer,
                    tokens,
                    p["target"],
                    p["other"],
                    p["random_latent_target"],
                    i["target"],
                    i["other"],
                    i["random_latent_target"],
                    i["random_direction_target"],
                ]
            )
    print("median change rates per block and token selection (patch head | image head):")
    print(
        table(
            [
                "block",
                "tokens",
                "patch target",
                "patch other",
                "patch random latent",
                "image target",
                "image other",
                "image random latent",
                "image random direction",
            ],
            rows,
        )
    )
    best = max(rows, key=lambda r: r[5])
    print(
        f"image head steered best at block {best[0]}, tokens {best[1]}: median target change rate {best[5]:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quickstart", type=pathlib.Path, default=pathlib.Path("quickstart"))
    parser.add_argument("--n-images", type=int, default=400, help="fresh images for the tests")
    parser.add_argument(
        "--n-train-images", type=int, default=3000, help="images recorded for the per-block SAEs"
    )
    parser.add_argument("--skip-layers", action="store_true", help="only test the quickstart's SAE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = pathlib.Path(tmp_name)
        x, dataset = fresh_images(tmp / "fresh", args.n_images)
        if (args.quickstart / "report.json").exists():
            quickstart_sae(args.quickstart, x, dataset)
        else:
            print(f"no quickstart output at {args.quickstart} (run `make quickstart`): skipping its SAE")
        if not args.skip_layers:
            per_layer(tmp, x, dataset, args.n_train_images)


if __name__ == "__main__":
    main()
