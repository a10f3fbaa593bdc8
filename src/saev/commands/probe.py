"""`saev probe`: train a linear probe (classification or segmentation) on a ViT's final tokens."""

import sys

from saev.commands.base import Command
from saev.steering.probes import ProbeConfig, ProbeResult, train_probe

Config = ProbeConfig


def report(result: ProbeResult) -> None:
    probe = result.probe
    metrics = probe.metrics
    unit = metrics.get("unit", "image")
    err = sys.stderr
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s)", file=err)
    source = "reused cached features" if result.reused_cache else "computed features"
    print(f"{source}: {result.cache}", file=err)
    counts = f"{metrics['n_train']} train / {metrics['n_val']} val images"
    if unit == "patch":
        counts = (
            f"{metrics['n_train']} train / {metrics['n_val']} val patches "
            f"(of {metrics['n_train_images']} / {metrics['n_val_images']} images)"
        )
    print(
        f"{probe.task} probe of {probe.vit_family}/{probe.vit_ckpt}, {len(probe.classes)} classes; {counts}",
        file=err,
    )
    print(f"  {'lr':>9}  {'wd':>9}  {'train acc':>9}  {'val acc':>9}  {'val loss':>9}", file=err)
    for row in probe.grid:
        kept = row["lr"] == metrics["lr"] and row["weight_decay"] == metrics["weight_decay"]
        print(
            f"{'*' if kept else ' '} {row['lr']:>9.3g}  {row['weight_decay']:>9.3g}  "
            f"{row['train_accuracy']:>9.4f}  {row['val_accuracy']:>9.4f}  {row['val_loss']:>9.4f}",
            file=err,
        )
    per_class = ", ".join(
        f"{name} {'-' if acc is None else f'{acc:.3f}'}"
        for name, acc in metrics["per_class_val_accuracy"].items()
    )
    print(f"kept (*): val {unit} accuracy {metrics['val_accuracy']:.4f}; per class: {per_class}", file=err)
    print(result.path)


COMMAND = Command(Config, train_probe, report)
