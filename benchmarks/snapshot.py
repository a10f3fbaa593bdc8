"""Snapshot of every output the commands make, to show a restructuring changes no result.

    python -m benchmarks.snapshot OUT.json [--src SRC]     # run the commands, hash every file
    python -m benchmarks.snapshot --compare BEFORE.json AFTER.json

It runs a small quickstart (images, store, a TopK SAE, gallery, splice, steering, bench, names),
trains every other architecture (and a Matryoshka TopK) on its store, the penalised ones also with
a fixed coefficient, and runs `saev inspect`,
`saev steer` and `saev evaluate` on scikit-image photos, all with fixed seeds. `--src` runs another
version's source tree (e.g. a `git worktree` of the previous commit) with this machine's packages.
Both runs must use the same --work folder: a store's name hashes its images' absolute paths.

Run ids hash the settings, so the folder names and the text that quotes them are normalised
(`-<8 hex digits>` after an architecture's id becomes `-ID`, also in safetensors headers), JSON keys that hold wall-clock times
are dropped, and files that draw a run id as pixels (curves.png) are listed but not compared.
"""

import argparse
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

RUN_ID = re.compile(r"\b((?:relu|topk|batchtopk|jumprelu|gated)-x\d+-[\w.+-]*?-lr[\w.+-]+?)-[0-9a-f]{8}\b")
VOLATILE_KEYS = re.compile(r"seconds|elapsed|time|duration|started|finished_at|date|took", re.IGNORECASE)
DURATION = re.compile(r"(\d+ images), \d+(\.\d+)? s\b")
"""How long the scorecard took, in its page."""
FINGERPRINTED = "normalization_"
"""Caches beside a store that name its fingerprint (file sizes and modification times) as `store`."""
PIXELS_WITH_RUN_ID = ("curves.png",)
"""Pictures whose title is the run id (differs by design when ids change)."""
WORK = pathlib.Path(tempfile.gettempdir()) / "saev-snapshot"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", nargs="?", type=pathlib.Path, help="JSON file of hashes to write")
    parser.add_argument("--src", type=pathlib.Path, help="source tree to run (default: the installed saev)")
    parser.add_argument("--work", type=pathlib.Path, default=WORK, help="folder for the outputs (replaced)")
    parser.add_argument("--compare", nargs=2, type=pathlib.Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    if args.out is None:
        parser.error("give OUT.json or --compare BEFORE AFTER")
    work = args.work.absolute()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    run_commands(work, args.src)
    hashes = {str(p.relative_to(work)): h for p, h in hash_tree(work).items()}
    args.out.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    print(f"{len(hashes)} files hashed into {args.out}")


def run_commands(work: pathlib.Path, src: pathlib.Path | None) -> None:
    env = dict(os.environ, SAEV_THREADS=os.environ.get("SAEV_THREADS", "2"))
    if src is not None:
        env["PYTHONPATH"] = str(src.resolve())

    def saev(*args: str) -> None:
        print("saev", " ".join(args), flush=True)
        subprocess.run([sys.executable, "-m", "saev", *args], cwd=work, env=env, check=True)

    saev("quickstart", "--out", "qs", "--n-images", "120", "--n-train", "300000", "--n-latents", "8")
    sae = next((work / "qs" / "runs").glob("*/sae.safetensors"))
    store = str(next((work / "qs" / "shards").glob("*/metadata.json")).parent.relative_to(work))
    common = ["--shards", store, "--n-train", "40960", "--batch-size", "1024", "--exp-factor", "4"]
    for arch in ("relu", "jumprelu", "gated", "batchtopk"):
        saev("train", *common, "--arch", arch, "--out", "runs")
    # A fixed coefficient (each architecture's default before --target-l0): runs that must keep
    # their weights; without one, relu, jumprelu and gated now aim at the default target L0.
    for arch, coeff in (("relu", "0.05"), ("jumprelu", "0.01"), ("gated", "0.15")):
        saev("train", *common, "--arch", arch, "--sparsity-coeff", coeff, "--out", "runs")
    saev("train", *common, "--arch", "topk", "--k", "8", "--matryoshka-prefixes", "16", "64", "--out", "runs")
    photos = work / "photos"
    photos.mkdir()
    import skimage.data  # noqa: PLC0415  # a test dependency, only for this script
    from PIL import Image  # noqa: PLC0415

    for name in PHOTOS:
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(photos / f"{name}.png")
    saev("inspect", "--sae", str(sae), "--out", "inspect", "--top", "3", *map(str, sorted(photos.iterdir())))
    edit = ["--sae", str(sae), "--head", "builtin-image", "builtin-patch"]
    saev("steer", *edit, "--edit", "0=-1x", "--out", "steer", str(photos))
    saev("evaluate", "--sae", str(sae), "--head", "builtin-image", "--out", "evaluate", str(photos))


def hash_tree(root: pathlib.Path) -> dict[pathlib.Path, str]:
    hashes = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        normalised = pathlib.Path(RUN_ID.sub(r"\1-ID", str(path)))
        if path.name in PIXELS_WITH_RUN_ID:
            hashes[normalised] = "not compared (run id drawn in the picture)"
            continue
        hashes[normalised] = hashlib.sha256(_content(path)).hexdigest()[:16]
    return hashes


def _content(path: pathlib.Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".safetensors":
        # The header's metadata may quote a run's path (its id); the tensors follow the header.
        n = int.from_bytes(data[:8], "little")
        header = RUN_ID.sub(r"\1-ID", data[8 : 8 + n].decode())
        return json.dumps(json.loads(header), sort_keys=True).encode() + data[8 + n :]
    if path.suffix not in (".json", ".jsonl", ".html", ".md", ".txt", ".csv", ".js", ".toml"):
        return data
    text = DURATION.sub(r"\1, N s", RUN_ID.sub(r"\1-ID", data.decode()))
    if path.name.startswith(FINGERPRINTED):
        text = json.dumps({k: v for k, v in json.loads(text).items() if k != "store"})
    if path.suffix == ".json":
        text = json.dumps(_strip(json.loads(text)), sort_keys=True)
    elif path.suffix == ".jsonl":
        text = "\n".join(json.dumps(_strip(json.loads(line)), sort_keys=True) for line in text.splitlines())
    return text.encode()


def _strip(value: object) -> object:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not VOLATILE_KEYS.search(k)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def compare(before_path: pathlib.Path, after_path: pathlib.Path) -> int:
    before, after = json.loads(before_path.read_text()), json.loads(after_path.read_text())
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    gone, new = sorted(before.keys() - after.keys()), sorted(after.keys() - before.keys())
    same = len(before.keys() & after.keys()) - len(changed)
    print(f"| files | count |\n|---|---|\n| identical | {same} |\n| changed | {len(changed)} |")
    print(f"| only before | {len(gone)} |\n| only after | {len(new)} |")
    for title, names in (("changed", changed), ("only before", gone), ("only after", new)):
        for name in names:
            print(f"{title}: {name}")
    return 1 if changed or gone or new else 0


if __name__ == "__main__":
    main()
