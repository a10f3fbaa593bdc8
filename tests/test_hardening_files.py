"""Files saev reads back (a run folder, a store's JSON files, catalogues, sweeps, labels, caches) are
checked for their shape as well as their kind: a damaged or hand-edited one ends in one line naming
the file, never in a traceback, a hang or a silently wrong result."""

import contextlib
import json
import os
import pathlib
import shutil

import pytest
import torch

import saev.nn
from saev.cli import main
from saev.errors import StoreError
from saev.fileio import read_json
from saev.nn import catalog
from saev.training import trainer as trainer_mod
from tests.test_hardening_cli import run_cli
from tests.test_hardening_outputs import _FillsUp, cli_run_dir
from tests.test_hardening_training import cli, tiny_store

# A run folder written by `saev train`, damaged before --resume


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A tiny store, a run of it stopped after its first checkpoint (step 10 of 30) by a full disk,
    and the same run finished without interruption."""
    tmp = tmp_path_factory.mktemp("run")
    store = tiny_store(tmp / "store")
    real_open = trainer_mod.atomic_open

    @contextlib.contextmanager
    def second_checkpoint_fails(path, mode="wb", **kw):
        with real_open(path, mode, **kw) as f:
            second = pathlib.Path(path).name == "checkpoint.pt" and pathlib.Path(path).exists()
            yield _FillsUp(f, 0) if second else f

    with pytest.MonkeyPatch.context() as m:
        m.setattr(trainer_mod, "atomic_open", second_checkpoint_fails)
        with pytest.raises(SystemExit):  # the disk error, exit status 2
            main(cli(store, tmp / "runs", "--ckpt-every", "10"))
    main(cli(store, tmp / "whole", "--ckpt-every", "10"))
    return (
        store,
        cli_run_dir(store, tmp / "runs", ckpt_every=10),
        cli_run_dir(store, tmp / "whole", ckpt_every=10),
    )


def copy_run(interrupted, tmp_path) -> tuple[list[str], pathlib.Path]:
    store, run_dir, _ = interrupted
    out = tmp_path / "runs"
    shutil.copytree(run_dir, out / run_dir.name)
    return cli(store, out, "--ckpt-every", "10"), out / run_dir.name


CONFIGS = {
    "empty": b"",
    "not JSON": b"{oops",
    "a list": b"[1, 2]",
    "no config": b'{"run_id": "x"}',
    "config a list": b'{"config": [1]}',
    "NaN": b"NaN",
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "huge integer": b'{"config": {"k": ' + b"9" * 5000 + b"}}",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_damaged_run_record_is_named(interrupted, tmp_path, capsys, name):
    args, run_dir = copy_run(interrupted, tmp_path)
    (run_dir / "config.json").write_bytes(CONFIGS[name])
    err = run_cli([*args, "--resume"], capsys)
    assert f"{run_dir / 'config.json'}:" in err


def checkpoint_with(path: pathlib.Path, **changes) -> None:
    state = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    torch.save(state, path)


CHECKPOINTS = {
    "no step": dict(step=None),
    "no optimiser": dict(opt=None),
    "step past the end": dict(step=10**12),
    "negative step": dict(step=-5),
    "step a string": dict(step="10"),
    "last_fired too short": dict(last_fired=torch.zeros(3, dtype=torch.int64)),
    "weights of another SAE": dict(sae={"W_enc": torch.zeros(2, 2)}),
    "NaN weights": "nan",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_a_damaged_checkpoint_is_named_and_left_alone(interrupted, tmp_path, capsys, name):
    args, run_dir = copy_run(interrupted, tmp_path)
    ckpt = run_dir / "checkpoint.pt"
    if CHECKPOINTS[name] == "nan":
        state = torch.load(ckpt, weights_only=True)
        state["sae"]["W_dec"][0, 0] = float("nan")
        torch.save(state, ckpt)
    else:
        checkpoint_with(ckpt, **CHECKPOINTS[name])
    before = ckpt.read_bytes()
    err = run_cli([*args, "--resume"], capsys)
    assert f"{ckpt}: " in err and "remove it to start the run again" in err
    assert ckpt.read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize("content", [b"", b"not a zip", b"PK\x03\x04 truncated"])
def test_an_unreadable_checkpoint_is_named(interrupted, tmp_path, capsys, content):
    args, run_dir = copy_run(interrupted, tmp_path)
    (run_dir / "checkpoint.pt").write_bytes(content)
    err = run_cli([*args, "--resume"], capsys)
    assert f"{run_dir / 'checkpoint.pt'}: damaged checkpoint" in err


@pytest.mark.slow
def test_damaged_metrics_lines_are_dropped_with_a_warning(interrupted, tmp_path, caplog):
    args, run_dir = copy_run(interrupted, tmp_path)
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + 'garbage\n[1]\n{"step": "x"}\n')
    main([*args, "--resume"])
    assert "dropped 3 line(s) that are not metrics records" in caplog.text
    assert all(isinstance(json.loads(line)["step"], int) for line in metrics.read_text().splitlines())


@pytest.mark.slow
def test_resuming_a_checkpoint_gives_the_uninterrupted_run(interrupted, tmp_path):
    args, run_dir = copy_run(interrupted, tmp_path)
    main([*args, "--resume"])
    _, _, reference = interrupted
    a, b = saev.nn.load(run_dir / "sae.safetensors"), saev.nn.load(reference / "sae.safetensors")
    assert torch.equal(a.W_dec, b.W_dec) and torch.equal(a.b_enc, b.b_enc)


# A store's JSON files, hand-edited


def edited_store(tmp_path, name: str, content) -> pathlib.Path:
    store = tiny_store(tmp_path / "store")
    path = store / name
    text = content(json.loads(path.read_text())) if callable(content) else content
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return store


STORE_EDITS = [
    ("metadata.json", lambda m: m | {"n_imgs": 2.5}, "'n_imgs' must be an integer"),
    ("metadata.json", '{"n_imgs": Infinity}', "Infinity is not a JSON number"),
    ("metadata.json", lambda m: m | {"d_vit": "16"}, "'d_vit' must be an integer"),
    ("metadata.json", lambda m: m | {"layers": 0}, "'layers' must be a list"),
    ("metadata.json", lambda m: m | {"layers": [0.5]}, "'layers' must be an integer"),
    ("metadata.json", "[]", "expected a JSON object"),
    ("metadata.json", '{"d_vit": NaN}', "NaN is not a JSON number"),
    ("layout.json", "[]", "expected {'grid'"),
    ("layout.json", {"grid": [-2, -2]}, "must be positive"),
    ("layout.json", {"grid": [2, 4], "n_blocks": 2.5}, "'n_blocks' must be an integer"),
    ("layout.json", {"grid": [2, 4], "n_registers": -1}, "the registers not negative"),
    ("images.json", "[]", "images.json: expected"),
    ("images.json", {"source": 5, "images": []}, "images.json: expected"),
    ("images.json", {"source": {}, "images": [1, 2]}, "entries, not all objects"),
    ("images.json", {"source": {}, "images": [{"index": 0}]}, "it has 1 entries"),
]


@pytest.mark.parametrize("name, content, message", STORE_EDITS)
def test_a_hand_edited_store_file_is_named(tmp_path, name, content, message):
    store = edited_store(tmp_path, name, content)
    with pytest.raises(StoreError, match=f"{name}") as err:
        opened = saev.data.open_shards(store)
        opened.images  # noqa: B018 (images.json is read on first use)
    assert message in str(err.value)


def test_a_skipped_list_that_is_no_list_does_not_break_opening(tmp_path):
    store = tiny_store(tmp_path / "store")
    (store / "skipped.json").write_text("5")
    assert len(saev.data.open_shards(store)) > 0


# Catalogues, sweeps, labels, hub addresses


@pytest.mark.parametrize(
    "entries, message",
    [
        ("5", "'entries' must be a list"),
        ("null", "'entries' must be a list"),
        (
            '[{"name": "x", "repo": "a/b", "file": "f.pt", "vit_family": "clip", "vit_ckpt": "c", "layer": 1, '
            '"unverified": 5}]',
            "'unverified' must be a list of strings",
        ),
        (
            '[{"name": "x", "repo": "a/b", "file": "f.pt", "vit_family": "clip", "vit_ckpt": "c", "layer": 1, '
            '"sources": [[[[]]]]}]',
            "'sources' must be a list",
        ),
        (
            '[{"name": "x", "repo": "a/b", "file": "f.pt", "vit_family": "clip", "vit_ckpt": "c", "layer": NaN}]',
            "NaN is not a JSON number",
        ),
    ],
)
def test_a_malformed_catalogue_is_named(tmp_path, capsys, monkeypatch, entries, message):
    path = tmp_path / "catalog.json"
    path.write_text(f'{{"entries": {entries}}}')
    monkeypatch.setenv("SAEV_CATALOG", str(path))
    catalog._entries.cache_clear()
    try:
        err = run_cli(["catalog", "--json"], capsys)
    finally:
        catalog._entries.cache_clear()
    assert str(path) in err and message in err


@pytest.mark.parametrize(
    "sweep, message",
    [
        ("k = [" * 2000 + "]" * 2000, "not valid TOML"),
        (
            "lr = [" + ", ".join(["1e-3"] * 40) + "]\nk = [" + ", ".join(map(str, range(1, 41))) + "]",
            "expands to 1,600 runs (40 lr x 40 k)",
        ),
    ],
)
def test_a_sweep_that_cannot_run_is_refused(tmp_path, capsys, sweep, message):
    path = tmp_path / "sweep.toml"
    path.write_text(sweep)
    err = run_cli(["train", "--shards", str(tmp_path), "--sweep", str(path)], capsys)
    assert f"{path}:" in err and message in err


@pytest.mark.parametrize(
    "address, message",
    [
        ("hf://a b/c d/sae.safetensors", "is not a Hugging Face repo id"),
        ("hf://../../x.safetensors", "is not a Hugging Face repo id"),
        ("hf://a/b/../../../etc/passwd.pt", "may not contain '.' or '..' segments"),
    ],
)
def test_malformed_hub_addresses_are_refused(tmp_path, capsys, address, message):
    err = run_cli(["inspect", str(tmp_path / "x.png"), "--sae", address], capsys)
    assert message in err


def test_a_symlink_loop_is_named(tmp_path, capsys):
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop)
    err = run_cli(["convert", str(loop), str(tmp_path / "out.safetensors")], capsys)
    assert f"{loop}: is unreadable (Too many levels of symbolic links), not a checkpoint file" in err


@pytest.mark.parametrize("seed", ["-1", str(2**70)])
def test_seeds_out_of_range_are_refused_by_every_command(tmp_path, capsys, monkeypatch, seed):
    from tests.test_hardening_cli import MINIMAL

    monkeypatch.chdir(tmp_path)
    for command in ("visuals", "steer", "quickstart", "train", "probe"):
        err = run_cli([command, *MINIMAL[command], "--seed", seed], capsys)
        assert f"--seed must be in 0..2**63-1, got {seed}" in err, command


def test_json_inputs_refuse_nan_and_infinity(tmp_path):
    path = tmp_path / "x.json"
    for literal in ("NaN", "Infinity", "-Infinity", '{"a": [1, NaN]}'):
        path.write_text(literal)
        with pytest.raises(saev.errors.ConfigError, match="is not a JSON number"):
            read_json(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r["objects"][0] | {"shape": "hexagon"}, "unknown concepts"),
        (lambda r: r["objects"][0] | {"colour": "mauve"}, "unknown concepts"),
    ],
)
def test_labels_with_unknown_concepts_are_refused(tmp_path, capsys, edit, message):
    from saev import synthetic

    synthetic.generate(tmp_path / "syn", 2, seed=1)
    labels_path = tmp_path / "syn" / "labels.json"
    labels = json.loads(labels_path.read_text())
    labels["images"][0]["objects"][0] = edit(labels["images"][0])
    labels_path.write_text(json.dumps(labels))
    with pytest.raises(saev.errors.ConfigError, match=message):
        synthetic.load(tmp_path / "syn")


def test_a_probe_feature_cache_that_disagrees_with_itself_is_recomputed(tmp_path, caplog):
    from saev.steering.probes import Features, load_features, save_features

    path = tmp_path / "features.safetensors"
    good = Features(torch.ones(3, 4), None, ("a", "b", "c"), {}, "cls", (2, 2), 1)
    save_features(path, "key", good)
    assert load_features(path, "key").images == ("a", "b", "c")
    save_features(path, "key", Features(torch.ones(1, 4), None, ("a", "b", "c"), {}, "cls", (2, 2), 1))
    assert load_features(path, "key") is None and "recomputing" in caplog.text
    os.truncate(path, 20)
    assert load_features(path, "key") is None


@pytest.mark.parametrize(
    "command, flag", [("probe", "--vit-batch-size"), ("probe", "--epochs"), ("quickstart", "--n-images")]
)
def test_integers_past_int64_are_refused_before_any_work(tmp_path, capsys, monkeypatch, command, flag):
    from tests.test_hardening_cli import MINIMAL

    monkeypatch.chdir(tmp_path)
    err = run_cli([command, *MINIMAL[command], flag, str(10**30)], capsys)
    assert f"{flag} {10**30} is out of range" in err and list(tmp_path.iterdir()) == []
