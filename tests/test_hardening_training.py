"""`saev train` refuses bad options before any work, stops on NaN with the run left resumable, and
reports a full disk as an error naming the file."""

import contextlib
import dataclasses
import errno
import json
import math
import os
import pathlib
import re

import numpy as np
import pytest
import torch

import saev.nn
from saev.cli import main
from saev.data import open_shards
from saev.data.statistics import store_normalization
from saev.errors import ConfigError, TrainingError
from saev.training import TrainConfig, train
from saev.training import trainer as trainer_mod
from tests.ground_truth import make_dictionary_store

N_IMGS = 500
"""Images of the tiny store (4,000 tokens, 8 per image, d_vit = 16); the last 25 are held out."""


def tiny_store(root: pathlib.Path) -> pathlib.Path:
    return make_dictionary_store(root, n_atoms=32, d=16, n_tokens=4_000, tokens_per_img=8).store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> pathlib.Path:
    return tiny_store(tmp_path_factory.mktemp("store"))


def config(shards: pathlib.Path, tmp_path: pathlib.Path, **kw) -> TrainConfig:
    """120 steps of 100 tokens (38 per epoch), d_sae = 64, a checkpoint every 10 steps."""
    defaults = dict(
        shards=shards,
        out=tmp_path / "runs",
        layer=0,
        exp_factor=4,
        n_train=12_000,
        batch_size=100,
        lr=3e-3,
        lr_warmup=5,
        log_every=7,
        ckpt_every=10,
    )
    if kw.get("arch", "topk") in ("topk", "batchtopk"):  # the others refuse --k
        defaults["k"] = 3
    return TrainConfig(**(defaults | kw))


def set_value(shards: pathlib.Path, image: int, value: float) -> float:
    """Overwrite one activation of `image` in its shard file; returns the value it held."""
    raw = open_shards(shards).raw(0)
    shard = np.memmap(raw.filename, dtype=raw.dtype, mode="r+", shape=raw.shape)
    old = float(shard[image, 0, 2, 5])
    shard[image, 0, 2, 5] = value
    shard.flush()
    return old


def metric_lines(run_dir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def finite_json(path: pathlib.Path):
    """The file's JSON, refusing the NaN and Infinity that Python's json module would accept."""

    def refuse(token: str):
        raise AssertionError(f"{path} holds {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(lr=NAN), "--lr must be a positive number, got nan"),
        (dict(lr=INF), "--lr must be a positive number, got inf"),
        (dict(lr=0.0), "--lr must be a positive number, got 0.0"),
        (dict(lr=-1.0), "--lr must be a positive number, got -1.0"),
        (dict(arch="relu", sparsity_coeff=NAN), "--sparsity-coeff must be a finite number, got nan"),
        (dict(arch="relu", sparsity_coeff=-1.0), "--sparsity-coeff must be >= 0, got -1.0"),
        (dict(arch="gated", sparsity_coeff=-0.5), "--sparsity-coeff must be >= 0"),
        (dict(aux_k=-1), "--aux-k must be >= 0, got -1"),
        (dict(aux_coeff=-0.1), "--aux-coeff must be >= 0"),
        (dict(aux_coeff=INF), "--aux-coeff must be a finite number"),
        (
            dict(arch="jumprelu", jumprelu_bandwidth=0.0),
            "--jumprelu-bandwidth must be a finite positive number",
        ),
        (dict(arch="jumprelu", jumprelu_threshold=-1e-3), "--jumprelu-threshold must be a finite positive"),
        (dict(arch="batchtopk", topk_warmup=1.0), "--topk-warmup is a fraction of training in \\[0, 1\\)"),
        (dict(k=0), "--k must be positive, got 0"),
        (dict(exp_factor=0), "--exp-factor must be positive, got 0"),
        (
            dict(exp_factor=10**9),
            "--exp-factor 1000000000: .* need at least .* GiB on cpu .* physical memory",
        ),
        (dict(batch_size=0), "--batch-size must be positive, got 0"),
        (dict(n_train=0), "--n-train must be positive, got 0"),
        (dict(dead_tokens=0), "--dead-tokens must be positive"),
        (dict(dead_tokens=2**70), "--dead-tokens 1180591620717411303424 is out of range"),
        (dict(log_every=0), "--log-every must be positive"),
        (dict(ckpt_every=-1), "--ckpt-every must be positive"),
        (dict(lr_warmup=-1), "--lr-warmup must be >= 0"),
        (dict(sparsity_warmup=-2), "--sparsity-warmup must be >= 0"),
        (dict(seed=-1), "--seed must be >= 0"),
        (dict(data_seed=-1), "--data-seed must be >= 0"),
        (dict(holdout=NAN), "--holdout must be a finite number"),
        (dict(holdout=-0.1), "--holdout must be in \\[0, 1\\)"),
        (dict(matryoshka_prefixes=(0, 8)), "--matryoshka-prefixes must be positive and increasing"),
        (dict(matryoshka_prefixes=(8, 64)), "--matryoshka-prefixes must be below d_sae = 64"),
        (dict(device="banana"), "--device 'banana' is not a device"),
        (dict(device="cuda:99"), "--device cuda:99: this machine has"),
    ],
)
def test_each_bad_option_is_refused_naming_its_flag_before_any_work(store, tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        train(config(store, tmp_path, **change))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "sweep,message",
    [
        ("lr = [0.001, nan]\n", "the run with lr = nan: --lr must be a positive number, got nan"),
        (
            'arch = ["topk", "jumprelu"]\njumprelu_bandwidth = 0.0\n',
            "the run with arch = 'jumprelu': --jumprelu-bandwidth must be a finite positive number",
        ),
        # A second data pass: its runs are checked before the first pass trains.
        (
            "batch_size = [100, 100000]\n",
            "batch_size = 100000: .* fewer than one batch of --batch-size 100000",
        ),
        ("exp_factor = [4, 1000000000]\n", "--exp-factor 1000000000: the 2 SAE\\(s\\) trained in one pass"),
        (
            'tokens = ["patches", "everything"]\n',
            "tokens must be one of 'patches', 'cls', 'all', got 'everything'",
        ),
        ("exp_factor = [4, true]\n", "exp_factor must be an integer, got True"),
    ],
)
def test_a_sweep_with_one_bad_value_trains_nothing(store, tmp_path, sweep, message):
    path = tmp_path / "sweep.toml"
    path.write_text(sweep)
    with pytest.raises(ConfigError, match=message) as info:
        train(config(store, tmp_path, sweep=path))
    assert str(path) in str(info.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("every_step", [True, False], ids=["cpu-checks-every-step", "device-flag"])
def test_nan_in_a_training_shard_stops_the_run_and_it_resumes_after_repair(tmp_path, monkeypatch, every_step):
    shards = tiny_store(tmp_path / "store")
    cfg = config(shards, tmp_path)
    [clean] = train(dataclasses.replace(cfg, out=tmp_path / "clean"))  # also caches the statistics
    # On an accelerator a run reads its non-finite flag only at logs and checkpoints; test both rules here.
    monkeypatch.setattr(trainer_mod, "_checks_every_step", lambda device: every_step)
    real_step = trainer_mod._Run.train_step
    original = []

    def poisoning_step(self, x):
        if self.step == 15 and not original:  # epoch 0 is read already: epoch 1 meets the NaN
            original.append(set_value(shards, 3, NAN))
        real_step(self, x)

    monkeypatch.setattr(trainer_mod._Run, "train_step", poisoning_step)
    with pytest.raises(TrainingError) as info:
        train(cfg)
    msg = str(info.value)
    found = re.search(r"non-finite loss at step (\d+) of 120 \(([\d,]+) training tokens seen\)", msg)
    assert found and msg.startswith(cfg.run_id), msg
    bad = int(found[1])
    assert 38 < bad <= 76 and int(found[2].replace(",", "")) == bad * 100
    assert ("the batch holds NaN activations" in msg) == every_step

    run_dir = cfg.out / cfg.run_id
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["step"] == (bad - 1) // 10 * 10  # the last checkpoint before the bad step
    assert f"last good checkpoint (step {state['step']}" in msg
    assert all(torch.isfinite(t).all() for t in state["sae"].values() if t.is_floating_point())
    lines = metric_lines(run_dir)
    assert lines and all(m["step"] < bad and all(math.isfinite(v) for v in m.values()) for m in lines)
    assert not (run_dir / "sae.safetensors").exists() and not (run_dir / "eval.json").exists()

    set_value(shards, 3, original[0])
    monkeypatch.setattr(trainer_mod._Run, "train_step", real_step)
    [resumed] = train(dataclasses.replace(cfg, resume=True))
    assert resumed.checkpoint.read_bytes() == clean.checkpoint.read_bytes()
    assert [m["step"] for m in metric_lines(run_dir)] == [*range(7, 120, 7), 120]
    assert finite_json(run_dir / "eval.json")["n_tokens"] == 25 * 8


def test_nan_in_a_held_out_image_stops_the_final_evaluation(tmp_path, monkeypatch):
    shards = tiny_store(tmp_path / "store")
    # Statistics from before the store went bad (their own NaN check would see it in this tiny store).
    clean = store_normalization(open_shards(shards), 0, "patches")
    monkeypatch.setattr(trainer_mod, "store_normalization", lambda *args: clean)
    original = set_value(shards, N_IMGS - 1, NAN)
    cfg = config(shards, tmp_path, n_train=3_000)
    with pytest.raises(TrainingError, match="^final evaluation: held-out activations are non-finite") as info:
        train(cfg)
    assert f"image(s) [{N_IMGS - 1}]" in str(info.value)
    run_dir = cfg.out / cfg.run_id
    assert not (run_dir / "eval.json").exists() and not (run_dir / "sae.safetensors").exists()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 30  # the trained run

    set_value(shards, N_IMGS - 1, original)
    [r] = train(dataclasses.replace(cfg, resume=True))  # evaluates, without training again
    ev = finite_json(run_dir / "eval.json")
    assert ev["n_tokens"] == 25 * 8 and ev["mse"] == r.eval.mse and math.isfinite(ev["fve"])
    assert finite_json(run_dir / "config.json")["steps"] == 30


def test_a_run_that_stops_leaves_the_other_runs_of_its_pass_to_finish(store, tmp_path, monkeypatch):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text("lr = [0.002, 0.003]\n")
    cfg = config(store, tmp_path, n_train=3_000, sweep=sweep)
    real_step = trainer_mod._Run.train_step

    def one_bad_batch(self, x):
        real_step(self, x * NAN if self.cfg.lr == 0.003 and self.step == 12 else x)

    monkeypatch.setattr(trainer_mod._Run, "train_step", one_bad_batch)
    with pytest.raises(TrainingError) as info:
        train(cfg)
    msg = str(info.value)
    assert re.match(r"topk-x4-k3-lr0\.003-\w+: non-finite loss at step 13 of 30 \(1,300 training", msg), msg
    assert "last good checkpoint (step 10" in msg and msg.endswith(
        "1 other run(s) finished; their sae.safetensors are written."
    )
    [finished] = (tmp_path / "runs").glob("*lr0.002*/sae.safetensors")
    assert saev.nn.load(finished).W_dec.isfinite().all()
    [stopped] = (tmp_path / "runs").glob("*lr0.003*")
    assert not (stopped / "sae.safetensors").exists() and (stopped / "checkpoint.pt").exists()


class _FullDisk:
    """A file whose every write fails as on a full disk."""

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self) -> None:
        pass


def test_a_full_disk_while_checkpointing_names_the_file_and_keeps_the_last_checkpoint(
    store, tmp_path, monkeypatch
):
    real_open = trainer_mod.atomic_open
    written = []

    @contextlib.contextmanager
    def second_checkpoint_fails(path, mode="wb"):
        with real_open(path, mode) as f:
            written.append(pathlib.Path(path).name)
            yield _FullDisk() if written.count("checkpoint.pt") == 2 else f

    monkeypatch.setattr(trainer_mod, "atomic_open", second_checkpoint_fails)
    cfg = config(store, tmp_path)
    run_dir = cfg.out / cfg.run_id
    with pytest.raises(OSError) as info:  # the Python API: the OS error, naming the file
        train(cfg)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(run_dir / "checkpoint.pt")
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 10
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]


def cli(store: pathlib.Path, out: pathlib.Path, *extra: str) -> list[str]:
    return [
        "train",
        "--shards",
        str(store),
        "--out",
        str(out),
        "--layer",
        "0",
        "--exp-factor",
        "4",
        *(() if "--arch" in extra else ("--k", "3")),  # other architectures refuse --k
        "--n-train",
        "3000",
        "--batch-size",
        "100",
        *extra,
    ]


@pytest.mark.parametrize(
    "extra,message",
    [
        (("--aux-k", "-1"), "saev: error: --aux-k must be >= 0, got -1."),
        (
            ("--exp-factor", "1000000000"),
            "saev: error: --exp-factor 1000000000: the 1 SAE(s) trained in one pass",
        ),
        (("--arch", "jumprelu", "--jumprelu-bandwidth", "0"), "saev: error: --jumprelu-bandwidth must be"),
    ],
)
def test_the_cli_reports_bad_options_in_one_line(store, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        main(cli(store, tmp_path / "runs", *extra))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_the_cli_refuses_an_out_that_is_a_file(store, tmp_path, capsys):
    out = tmp_path / "runs"
    out.write_text("not a folder")
    with pytest.raises(SystemExit) as info:
        main(cli(store, out))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"saev: error: --out {out} is a file, not a folder; give a folder" in err
    assert out.read_text() == "not a folder"


def test_an_undefined_fve_is_null_in_json_and_warned_about():
    from saev.nn.evaluation import EvalResult
    from saev.training.results import run_warnings

    result = EvalResult(
        n_tokens=10, mse=0.0, fve=math.nan, l0=1.0, n_dead=0, n_dense=0, freq=[0.1], mean_act=[1.0]
    )
    data = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert data["fve"] is None and result.summary()["fve"] is None
    assert math.isnan(EvalResult.from_json(data).fve) and EvalResult.from_json(data).mse == 0.0
    warnings = run_warnings(TrainConfig(shards=pathlib.Path("s")), result, n_steps=100, warmup=5, d_sae=1)
    assert any("held-out FVE is undefined" in w for w in warnings)
