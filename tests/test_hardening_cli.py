"""Options every command shares are checked before any work: a bad --device, a non-finite number or
an output folder that is an existing file ends in `saev: error: ...` and exit status 2, never in a
traceback; so do a full disk and other states of the user's machine."""

import dataclasses
import errno
import json
import pathlib
import shutil

import pytest
import torch

import saev.nn
from saev.cli import main
from saev.commands import COMMANDS
from saev.commands.base import check_options
from saev.visuals import VisualsConfig
from tests.test_recording import cli_args

# The fewest arguments each command parses with; the checks run before any of them is used, so
# the paths need not exist.
MINIMAL = {
    "activations": [
        "--vit-family",
        "builtin",
        "--vit-ckpt",
        "shapes-vit",
        "--images",
        "nowhere/",
        "--dump-to",
        "s",
    ],
    "train": ["--shards", "nowhere"],
    "normalize": ["--sae", "x.safetensors", "--shards", "nowhere", "--out", "y.safetensors"],
    "visuals": ["--sae", "x.safetensors", "--shards", "nowhere"],
    "inspect": ["img.png", "--sae", "x.safetensors"],
    "quickstart": [],
    "steer": ["img.png", "--sae", "x.safetensors", "--head", "builtin-patch", "--edit", "1=0"],
    "evaluate": ["imgs/", "--sae", "x.safetensors", "--head", "builtin-patch"],
    "probe": ["--vit-family", "builtin", "--vit-ckpt", "shapes-vit", "--images", "nowhere/", "--out", "p"],
    "serve": ["--sae", "x.safetensors", "--visuals", "v/"],
    "convert": ["x.safetensors", "y.safetensors"],
    "catalog": [],
    "export": ["runs/x", "out/"],
    "bench": ["--sae", "x.safetensors", "--shards", "nowhere"],
    "label": ["--sae", "x.safetensors", "--shards", "nowhere"],
}


def run_cli(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    return err


def test_every_command_is_covered():
    assert set(MINIMAL) == set(COMMANDS)


WITH_DEVICE = sorted(
    n for n, c in COMMANDS.items() if "device" in {f.name for f in dataclasses.fields(c.config)}
)


def test_every_compute_command_has_a_device():
    assert set(MINIMAL) - set(WITH_DEVICE) == {"normalize", "convert", "catalog", "export"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", WITH_DEVICE)
def test_cuda_without_a_gpu_is_refused_by_every_command(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = run_cli([command, *MINIMAL[command], "--device", "cuda"], capsys)
    assert "saev: error: --device cuda: this machine has no CUDA GPU" in err
    assert list(tmp_path.iterdir()) == []  # refused before any work


@pytest.mark.parametrize("device", ["garbage", "cuda:x", "meta"])
def test_a_device_that_is_not_one_is_named(device, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = run_cli(["inspect", *MINIMAL["inspect"], "--device", device], capsys)
    assert f"--device {device}" in err or f"--device {device!r}" in err


@pytest.mark.parametrize(
    "command, flag",
    [("inspect", "--out"), ("steer", "--out"), ("evaluate", "--out"), ("quickstart", "--out")],
)
def test_an_output_folder_that_is_a_file_is_refused_and_the_file_kept(
    command, flag, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile.txt").write_text("keep me")
    err = run_cli([command, *MINIMAL[command], flag, "afile.txt"], capsys)
    assert f"{flag} afile.txt is a file, not a folder" in err
    assert (tmp_path / "afile.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "command, args, flag",
    [
        ("steer", ["--evaluate", "--value", "nan"], "--value"),
        ("visuals", ["--log-freq-range", "nan", "0"], "--log-freq-range"),
        ("steer", ["--evaluate", "--value", "inf"], "--value"),
    ],
)
def test_non_finite_numbers_are_refused_by_name(command, args, flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = run_cli([command, *MINIMAL[command], *args], capsys)
    assert f"{flag} must be a finite number" in err


def test_the_default_infinite_bound_stays_allowed():
    check_options(
        VisualsConfig(sae="x", shards=pathlib.Path("nowhere"))
    )  # log_freq_range defaults to (-inf, 0)


def test_a_full_disk_is_a_clear_error_naming_the_file(capsys, tmp_path, tiny_clip, photos, monkeypatch):
    sae = saev.nn.SparseAutoencoder(saev.nn.SaeConfig(d_vit=64, d_sae=128))
    sae.provenance = saev.nn.Provenance(layer=-2, tokens="patches")
    saev.nn.dump(tmp_path / "sae.safetensors", sae)

    def full(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a real write says it: no file name

    monkeypatch.setattr("PIL.Image.Image.save", full)
    args = ["inspect", str(photos[0]), "--sae", str(tmp_path / "sae.safetensors")]
    args += ["--vit-family", "clip", "--vit-ckpt", tiny_clip, "--out", str(tmp_path / "out")]
    err = run_cli(args, capsys)
    assert (
        f"{tmp_path / 'out' / photos[0].stem}.png: No space left on device. Files written before are whole"
        in err
    )


def test_a_bug_still_shows_its_traceback(monkeypatch):
    """Only errors about the user's input or machine are shortened; anything else is a bug."""

    def broken(cfg):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setitem(COMMANDS, "quickstart", dataclasses.replace(COMMANDS["quickstart"], run=broken))
    with pytest.raises(OSError, match="Bad file descriptor"):
        main(["quickstart"])


def test_inspect_gives_each_input_its_own_outputs(capsys, tmp_path, tiny_clip, photos):
    sae = saev.nn.SparseAutoencoder(saev.nn.SaeConfig(d_vit=64, d_sae=128))
    sae.provenance = saev.nn.Provenance(layer=-2, tokens="patches")
    saev.nn.dump(tmp_path / "sae.safetensors", sae)
    (tmp_path / "a").mkdir()
    inputs = [tmp_path / "x.1.png", tmp_path / "x.2.png", tmp_path / "a" / "x.1.png"]
    for path, photo in zip(inputs, photos, strict=False):
        shutil.copy(photo, path)
    args = ["inspect", *map(str, inputs), "--sae", str(tmp_path / "sae.safetensors")]
    main([*args, "--vit-family", "clip", "--vit-ckpt", tiny_clip, "--out", str(tmp_path / "out")])
    written = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[1] for p in written] == ["x.1.png", "x.2.png", "x.1-2.png"]
    images = [
        json.loads((tmp_path / "out" / n).read_text())["image"]
        for n in ("x.1.json", "x.2.json", "x.1-2.json")
    ]
    assert images == list(map(str, inputs))


@pytest.mark.slow
@pytest.mark.parametrize("bounds", [["0", "-5"], ["1", "2"]])
def test_a_frequency_range_that_selects_nothing_is_refused_before_work(bounds, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = run_cli(["visuals", *MINIMAL["visuals"], "--log-freq-range", *bounds], capsys)
    assert f"--log-freq-range {bounds[0]} {bounds[1]} selects nothing" in err


def test_visuals_says_when_no_latent_gets_a_page(capsys, tmp_path, tiny_clip, photos_dir):
    """A range that holds no live latent of this store: the index is written, the command fails."""
    main(cli_args(tiny_clip, photos_dir, tmp_path / "shards"))
    store = next((tmp_path / "shards").iterdir())
    sae = saev.nn.SparseAutoencoder(saev.nn.SaeConfig(d_vit=64, d_sae=48, activation=saev.nn.TopK(k=6)))
    saev.nn.dump(tmp_path / "sae.safetensors", sae)
    capsys.readouterr()
    args = [
        "visuals",
        "--sae",
        str(tmp_path / "sae.safetensors"),
        "--shards",
        str(store),
        "--out",
        str(tmp_path / "v"),
    ]
    err = run_cli([*args, "--log-freq-range", "-100", "-90"], capsys)
    assert "no latent has a page: none of the 48 live latents has log10 frequency in [-100, -90]" in err
    assert (tmp_path / "v" / "index.html").exists() and (tmp_path / "v" / "topk.safetensors").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n-images", "0"], "--n-images must be at least 100"),
        (["--k", "0"], "--k must be positive"),
        (["--n-train", "-5"], "--n-train must be positive"),
        (["--lr", "-1"], "--lr must be a positive number"),
    ],
)
def test_quickstart_checks_its_options_before_generating_images(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = run_cli(["quickstart", *args, "--out", "q"], capsys)
    assert message in err
    assert not (tmp_path / "q").exists()
