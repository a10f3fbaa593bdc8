"""`torchrun -m saev activations`: two Gloo processes write the store one process writes, byte for byte,
and a killed distributed recording resumes to it."""

import json
import subprocess
import sys

import pytest

from saev.data.writer import PARTS_DIR
from tests.test_recording import cli_args, many_images
from tests.torchrun import kill_when, torchrun

pytestmark = pytest.mark.slow

# 2 layers x 197 tokens x 3 images per shard: 20 images make 7 shards, the last one partial.
EXTRA = dict(batch_size=2, n_patches_per_shard=2 * 197 * 3)


def all_files(root) -> dict[str, bytes]:
    """Every file of a store, hidden ones included (nothing of the parts may be left behind)."""
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def single(tiny_clip, images, dump_to) -> dict[str, bytes]:
    subprocess.run(
        [sys.executable, "-m", "saev", *cli_args(tiny_clip, images, dump_to, **EXTRA)],
        check=True,
        capture_output=True,
    )
    [store] = list(dump_to.iterdir())
    return all_files(store)


@pytest.mark.parametrize("broken", [False, True], ids=["all-readable", "one-unreadable"])
def test_two_processes_write_the_single_process_store(tmp_path, tiny_clip, photos, broken):
    images = many_images(tmp_path, photos, 20)
    if broken:
        # In rank 0's half: rank 1's images then move by one position and are copied, not renamed.
        (images / "c1" / "005.jpg").write_bytes(b"not an image")
    expected = single(tiny_clip, images, tmp_path / "one")
    result = torchrun(cli_args(tiny_clip, images, tmp_path / "two", **EXTRA))
    [store] = list((tmp_path / "two").iterdir())
    assert result.stdout.strip() == str(store)  # only rank 0 reports
    got = all_files(store)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name] == expected[name], name
    assert json.loads(got["metadata.json"])["n_imgs"] == 19 if broken else 20
    assert ("skipped 1 unreadable image" in result.stderr) == broken


def test_a_killed_distributed_recording_resumes_to_the_same_store(tmp_path, tiny_clip, photos):
    # 48 images: rank 0's part (24 images, 8 shards) has 18 images left once its second shard is
    # on disk, so a poller starved on a busy machine still kills it before its part is done.
    images = many_images(tmp_path, photos, 48)
    expected = single(tiny_clip, images, tmp_path / "one")
    args = cli_args(tiny_clip, images, tmp_path / "two", **(EXTRA | dict(batch_size=1)))
    rank0_part = f"*/{PARTS_DIR}/{0:012d}-*"
    done = kill_when(args, lambda: bool(list((tmp_path / "two").glob(f"{rank0_part}/acts000001.bin"))))
    [store] = list((tmp_path / "two").iterdir())
    [part] = store.glob(f"{PARTS_DIR}/{0:012d}-*")
    assert done and not (part / "metadata.json").exists(), "rank 0's part finished before it could be killed"

    result = torchrun(args)
    assert "rank 0: saev.activations: resuming after" in result.stderr
    got = all_files(store)
    # The reference ran in batches of 2 (CLIP's arithmetic does not depend on the batch); the record
    # of the options says which batches made each store.
    assert json.loads(got.pop("recording.json"))["batch_size"] == 1
    assert json.loads(expected.pop("recording.json"))["batch_size"] == 2
    assert got == expected
