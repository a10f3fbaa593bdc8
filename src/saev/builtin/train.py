"""Train a built-in ViT on freshly generated `saev.synthetic` images and write its weights.

    python -m saev.builtin.train --out src/saev/builtin/shapes-vit.safetensors

Every batch is new images (image `i` of epoch `e` is synthetic image `e * n_images + i` of
`seed`), so the model never sees an image twice and cannot overfit. The loss is binary cross-entropy
on the image's concepts (from [CLS]) plus on every patch's concepts (from that patch's token), so
patch tokens must carry what lies under them. Held-out images come from seed `seed + EVAL_SEED_OFFSET`.
Given a seed and thread count the run is deterministic.
"""

import dataclasses
import json
import logging
import pathlib
import time
from collections.abc import Sequence

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
import tyro
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from saev import builtin, synthetic
from saev.builtin.model import ConceptVit, VitConfig

logger = logging.getLogger("saev.builtin.train")

EVAL_SEED_OFFSET = 1_000_003


@dataclasses.dataclass(frozen=True)
class VitTrainConfig:
    """Train a built-in ViT on fresh synthetic images (not an SAE: see `saev train` for those)."""

    out: pathlib.Path
    """Where to write the weights (`.safetensors`)."""
    name: str = builtin.DEFAULT
    """Built-in architecture to train."""
    n_images: int = 100_000
    """Fresh images per epoch."""
    epochs: int = 4
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 300
    seed: int = 0
    n_eval: int = 2_000
    """Held-out images for the final accuracy (a quarter of them after every epoch)."""
    threads: int = 1
    """torch CPU threads; 1 keeps the run polite on a shared machine."""
    log_every: int = 200
    """Steps between progress lines."""


@dataclasses.dataclass(frozen=True)
class Metrics:
    """Held-out scores; per-concept values are in `synthetic.CONCEPTS` order."""

    n_images: int
    image_accuracy: tuple[float, ...]
    image_f1: tuple[float, ...]
    image_exact: float
    """Fraction of images whose every concept is predicted right."""
    patch_accuracy: tuple[float, ...]
    patch_f1: tuple[float, ...]

    @property
    def image_f1_macro(self) -> float:
        return float(np.mean(self.image_f1))

    @property
    def patch_f1_macro(self) -> float:
        return float(np.mean(self.patch_f1))

    def to_dict(self) -> dict[str, object]:
        dct = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        return {**dct, "image_f1_macro": self.image_f1_macro, "patch_f1_macro": self.patch_f1_macro}

    def table(self) -> str:
        """Markdown table of the per-concept scores."""
        rows = ["| concept | image acc | image F1 | patch acc | patch F1 |", "|---|---|---|---|---|"]
        for i, concept in enumerate(synthetic.CONCEPTS):
            rows.append(
                f"| {concept} | {self.image_accuracy[i]:.3f} | {self.image_f1[i]:.3f} "
                f"| {self.patch_accuracy[i]:.3f} | {self.patch_f1[i]:.3f} |"
            )
        rows.append(
            f"| macro | {np.mean(self.image_accuracy):.3f} | {self.image_f1_macro:.3f} "
            f"| {np.mean(self.patch_accuracy):.3f} | {self.patch_f1_macro:.3f} |"
        )
        return "\n".join(rows)


# Data


def to_input(imgs_BHW3: np.ndarray, cfg: VitConfig) -> Tensor:
    """uint8 RGB images -> model input, with the same steps as the builtin family's transform."""
    x_B3HW = torch.from_numpy(imgs_BHW3).permute(0, 3, 1, 2)
    return TF.normalize(TF.to_dtype(x_B3HW, torch.float32, scale=True), list(cfg.mean), list(cfg.std))


def make_batch(seed: int, indices: Sequence[int], cfg: VitConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Synthetic images `indices` of `seed`: (input [B,3,H,W], image labels [B,C], patch labels [B,N,C])."""
    scene = synthetic.SceneConfig(size=cfg.img_size)
    imgs, image_labels, patch_labels = [], [], []
    for index in indices:
        record = synthetic.sample_record(seed, index, scene)
        img, mask = synthetic.render(record)
        imgs.append(img)
        image_labels.append(synthetic.image_concepts(record))
        patch_labels.append(synthetic.patch_rows(record, (cfg.grid, cfg.grid), mask=mask))
    return (
        to_input(np.stack(imgs), cfg),
        torch.from_numpy(np.stack(image_labels)).float(),
        torch.from_numpy(np.stack(patch_labels)).float(),
    )


# Scores


def f1_scores(pred_NC: Tensor, true_NC: Tensor) -> Tensor:
    """Per-column F1 of boolean predictions; 1.0 where a column has neither positives nor predictions."""
    tp = (pred_NC & true_NC).sum(0).double()
    denom = pred_NC.sum(0).double() + true_NC.sum(0).double()
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.ones_like(tp))


@torch.inference_mode()
def evaluate(model: ConceptVit, seed: int, n_images: int, batch_size: int = 100) -> Metrics:
    """Image- and patch-level scores of `model` on synthetic images 0..n_images-1 of `seed`."""
    model.eval()
    image_pred, image_true, patch_pred, patch_true = [], [], [], []
    for start in range(0, n_images, batch_size):
        indices = range(start, min(start + batch_size, n_images))
        x_B3HW, image_BC, patch_BNC = make_batch(seed, indices, model.cfg)
        image_logits_BC, patch_logits_BNC = model.forward_all(x_B3HW)
        image_pred.append(image_logits_BC > 0)
        image_true.append(image_BC.bool())
        patch_pred.append((patch_logits_BNC > 0).flatten(0, 1))
        patch_true.append(patch_BNC.bool().flatten(0, 1))
    image_pred_NC, image_true_NC = torch.cat(image_pred), torch.cat(image_true)
    patch_pred_NC, patch_true_NC = torch.cat(patch_pred), torch.cat(patch_true)

    def accuracy(pred: Tensor, true: Tensor) -> tuple[float, ...]:
        return tuple((pred == true).double().mean(0).tolist())

    return Metrics(
        n_images=n_images,
        image_accuracy=accuracy(image_pred_NC, image_true_NC),
        image_f1=tuple(f1_scores(image_pred_NC, image_true_NC).tolist()),
        image_exact=float((image_pred_NC == image_true_NC).all(1).double().mean()),
        patch_accuracy=accuracy(patch_pred_NC, patch_true_NC),
        patch_f1=tuple(f1_scores(patch_pred_NC, patch_true_NC).tolist()),
    )


# Training


def train(cfg: VitTrainConfig) -> Metrics:
    """Train, round the weights to float16 as shipped, score them on held-out images, write the file."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    vit_cfg = builtin.config(cfg.name)
    model = ConceptVit(vit_cfg)
    steps_per_epoch = cfg.n_images // cfg.batch_size
    total_steps = cfg.epochs * steps_per_epoch
    if total_steps <= cfg.warmup_steps:
        raise ValueError(f"{total_steps} steps in all: need more than warmup_steps={cfg.warmup_steps}.")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=cfg.warmup_steps),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps - cfg.warmup_steps),
        ],
        milestones=[cfg.warmup_steps],
    )
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        for step in range(steps_per_epoch):
            first = epoch * cfg.n_images + step * cfg.batch_size
            x_B3HW, image_BC, patch_BNC = make_batch(cfg.seed, range(first, first + cfg.batch_size), vit_cfg)
            image_logits_BC, patch_logits_BNC = model.forward_all(x_B3HW)
            image_loss = F.binary_cross_entropy_with_logits(image_logits_BC, image_BC)
            patch_loss = F.binary_cross_entropy_with_logits(patch_logits_BNC, patch_BNC)
            opt.zero_grad(set_to_none=True)
            (image_loss + patch_loss).backward()
            opt.step()
            sched.step()
            done = epoch * steps_per_epoch + step + 1
            if done % cfg.log_every == 0 or done == total_steps:
                elapsed = time.perf_counter() - start
                logger.info(
                    "epoch %d step %d/%d  image loss %.4f  patch loss %.4f  %.0f img/s  %.0f s",
                    epoch,
                    done,
                    total_steps,
                    image_loss.item(),
                    patch_loss.item(),
                    done * cfg.batch_size / elapsed,
                    elapsed,
                )
        progress = evaluate(model, cfg.seed + EVAL_SEED_OFFSET, cfg.n_eval // 4)
        logger.info(
            "epoch %d done: held-out image F1 %.3f, patch F1 %.3f (%s)",
            epoch,
            progress.image_f1_macro,
            progress.patch_f1_macro,
            " ".join(f"{f:.2f}" for f in progress.patch_f1),
        )
    seconds = time.perf_counter() - start
    with torch.no_grad():
        # Score exactly what ships: float16 weights, run in float32.
        for param in model.parameters():
            param.copy_(param.half().float())
    metrics = evaluate(model, cfg.seed + EVAL_SEED_OFFSET, cfg.n_eval)
    training = {**dataclasses.asdict(cfg), "out": str(cfg.out), "seconds": round(seconds, 1)}
    save(cfg.out, model, metrics, training)
    logger.info("held-out scores (%d images):\n%s", metrics.n_images, metrics.table())
    logger.info("image exact match %.3f; wrote %s after %.0f s", metrics.image_exact, cfg.out, seconds)
    return metrics


def save(path: pathlib.Path, model: ConceptVit, metrics: Metrics, training: dict[str, object]) -> None:
    state = {key: value.detach().half().contiguous() for key, value in model.state_dict().items()}
    meta = {
        "format": builtin.FORMAT,
        "config": json.dumps(dataclasses.asdict(model.cfg)),
        "concepts": json.dumps(list(synthetic.CONCEPTS)),
        "metrics": json.dumps(metrics.to_dict()),
        "training": json.dumps(training),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(state, str(path), metadata=meta)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(tyro.cli(VitTrainConfig))


if __name__ == "__main__":
    main()
