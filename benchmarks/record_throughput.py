"""Recording throughput against a bare forward pass through the same blocks on the same batches.

ViT-B/16 (OpenCLIP architecture, random weights), recording block -2 of 12 from a folder of JPEG
photos at ImageNet-like sizes (500 x 375): decoding in DataLoader workers, hooks, copies and shard writes should hide behind the
forward pass. Run: .venv/bin/python -m benchmarks.record_throughput [--n-imgs 64]
"""

import argparse
import json
import pathlib
import shutil
import statistics
import tempfile
import time

import numpy as np
import open_clip
import skimage.data
import torch
from PIL import Image
from safetensors.torch import save_file

from benchmarks.common import table
from saev.activations import RecordedVisionTransformer, make_img_transform, make_vit
from saev.activations.recording import RecordConfig, _run, default_workers
from saev.data import metadata as md
from saev.data.images import load_rgb
from saev.data.sources import scan_folder
from saev.data.writer import ShardWriter

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "colorwheel",
    "retina",
)


def vit_b16_dir(root: pathlib.Path) -> str:
    if not (root / "open_clip_model.safetensors").exists():
        root.mkdir(parents=True, exist_ok=True)
        cfg = {
            "model_cfg": open_clip.get_model_config("ViT-B-16"),
            "preprocess_cfg": {
                "mean": list(open_clip.OPENAI_DATASET_MEAN),
                "std": list(open_clip.OPENAI_DATASET_STD),
            },
        }
        (root / "open_clip_config.json").write_text(json.dumps(cfg))
        model = open_clip.create_model(f"local-dir:{root}", load_weights=False)
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, root / "open_clip_model.safetensors"
        )
    return f"local-dir:{root}"


def image_folder(root: pathlib.Path, n: int) -> pathlib.Path:
    if len(list(root.glob("*.jpg"))) != n:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.asarray(getattr(skimage.data, PHOTOS[i % len(PHOTOS)])())).convert("RGB").save(
                root / f"{i:04d}.jpg", quality=90
            )
    return root


def bare_forward(vit, batches: list[torch.Tensor], deepest: int) -> float:
    """The same blocks, no hooks, no copies, no writes."""
    visual = vit.model
    start = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            h = visual._embeds(x)
            for block in visual.transformer.resblocks[: deepest + 1]:
                h = block(h)
    return time.perf_counter() - start


def recording(ckpt: str, folder: pathlib.Path, batch_size: int, n_workers: int, vit, transform) -> float:
    cfg = RecordConfig(
        vit_family="clip",
        vit_ckpt=ckpt,
        images=str(folder),
        dump_to=pathlib.Path(tempfile.mkdtemp(dir=".cache/bench")),
        batch_size=batch_size,
        n_workers=n_workers,
    )
    source = scan_folder(folder)
    recorder = RecordedVisionTransformer(vit, 196, True, [-2])
    planned = md.Metadata(
        "clip", ckpt, (-2,), 196, True, vit.d_vit, len(source), cfg.n_patches_per_shard, source.describe()
    )
    writer = ShardWriter(cfg.dump_to, planned, source.fingerprint(), source.describe())
    start = time.perf_counter()
    _run(cfg, source, transform, recorder, writer, 0)
    writer.finish()
    elapsed = time.perf_counter() - start
    shutil.rmtree(cfg.dump_to)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-imgs", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n-workers", type=int, default=None, help="default: as `saev activations` picks")
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    bench = pathlib.Path(".cache/bench")
    ckpt = vit_b16_dir(bench / "vit-b-16")
    folder = image_folder(bench / "photos", args.n_imgs)
    vit = make_vit("clip", ckpt)
    transform = make_img_transform("clip", ckpt)
    xs = torch.stack([transform(load_rgb(p)) for p in sorted(folder.glob("*.jpg"))])
    batches = list(xs.split(args.batch_size))
    n_workers = default_workers() if args.n_workers is None else args.n_workers
    rows = []
    for trial in range(args.trials):  # alternate the two so machine noise hits both alike
        bare = bare_forward(vit, batches, deepest=len(vit.blocks) - 2)
        rec = recording(ckpt, folder, args.batch_size, n_workers, vit, transform)
        rows.append([trial, args.n_imgs / bare, args.n_imgs / rec, bare / rec])
    rows.append(["median", *(statistics.median(r[i] for r in rows) for i in (1, 2, 3))])
    print(
        f"ViT-B/16, record block -2 of 12, {args.n_imgs} JPEG photos, batch {args.batch_size}, {n_workers} decoding worker(s), {torch.get_num_threads()} threads"
    )
    print(table(["trial", "bare forward img/s", "recording img/s", "recording / bare"], rows))


if __name__ == "__main__":
    main()
