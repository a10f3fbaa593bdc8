"""Per-architecture training options: a run reads, records and is identified by its own architecture's
options only; another architecture's option is refused by name; run ids do not move when an option
is added; run folders made by the release before this change still resume."""

import dataclasses
import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from saev.cli import main
from saev.errors import ConfigError
from saev.training import TrainConfig, train
from saev.training import sweep as sweep_mod
from tests.ground_truth import make_dictionary_store
from tests.test_hardening_cli import run_cli

LEGACY = pathlib.Path(__file__).parent / "data" / "legacy_run"
"""A run folder written by saev before per-architecture options (commit be00ad5): `topk`, killed at step
12 of 20 with a checkpoint at step 10. Made by `make_dictionary_store(Path("dict"), n_atoms=32, d=16,
n_tokens=4_000, tokens_per_img=8)` and the settings of `legacy_config` below, run from its parent folder."""
LEGACY_ID = "topk-x2-k3-lr0.003-28d177c5"


def legacy_config(store: pathlib.Path, **kw) -> TrainConfig:
    settings = dict(
        shards=store,
        out=pathlib.Path("runs"),
        layer=0,
        exp_factor=2,
        k=3,
        n_train=10_000,
        batch_size=500,
        lr=3e-3,
        lr_warmup=2,
        log_every=2,
        ckpt_every=5,
    )
    return TrainConfig(**(settings | kw))


@pytest.fixture
def legacy_folder(tmp_path, monkeypatch) -> pathlib.Path:
    """The working folder of the legacy run: its store rebuilt (the same bytes, the same path) and its runs."""
    monkeypatch.chdir(tmp_path)
    store = make_dictionary_store(pathlib.Path("dict"), n_atoms=32, d=16, n_tokens=4_000, tokens_per_img=8)
    saved = json.loads((LEGACY / LEGACY_ID / "config.json").read_text())
    assert str(store.store) == saved["config"]["shards"]
    shutil.copytree(LEGACY, tmp_path / "runs")
    return store.store


def test_another_architectures_option_is_refused_by_name(tmp_path):
    cfg = TrainConfig(shards=tmp_path, arch="topk", jumprelu_threshold=0.5)
    with pytest.raises(ConfigError, match=r"--jumprelu-threshold is an option of jumprelu; --arch topk"):
        cfg.validate()
    with pytest.raises(ConfigError, match=r"--k is an option of topk and batchtopk; --arch relu"):
        TrainConfig(shards=tmp_path, arch="relu", k=8).validate()
    TrainConfig(shards=tmp_path, arch="batchtopk", k=8, topk_warmup=0.5).validate()


def test_the_cli_refuses_another_architectures_flag_even_at_its_default(tmp_path, capsys):
    err = run_cli(
        ["train", "--shards", str(tmp_path), "--arch", "topk", "--jumprelu-threshold", "0.001"], capsys
    )
    assert "--jumprelu-threshold is an option of jumprelu; --arch topk does not read it" in err
    err = run_cli(["train", "--shards", str(tmp_path), "--sparsity-coeff", "0.1"], capsys)
    assert "--sparsity-coeff is an option of relu and jumprelu and gated; --arch topk" in err


def test_train_help_lists_each_architectures_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "jumprelu (--sparsity-coeff, --jumprelu-threshold, --jumprelu-bandwidth)" in " ".join(out.split())


def test_run_ids_hash_only_the_run_and_its_architectures_options(tmp_path):
    base = TrainConfig(shards=tmp_path, arch="topk", k=16)
    assert base.run_id == TrainConfig(shards=tmp_path, arch="topk", k=16, jumprelu_bandwidth=0.001).run_id
    assert "jumprelu_threshold" not in base.to_dict() and "sparsity_coeff" not in base.to_dict()
    assert base.to_dict()["k"] == 16
    # Defaults are left out of the hash, an explicit default is the same run.
    assert base.identity() == {"shards": str(tmp_path), "k": 16}
    assert TrainConfig(shards=tmp_path, arch="topk", k=16, lr_schedule="constant").run_id == base.run_id
    assert dataclasses.replace(base, k=8).run_id != base.run_id
    assert dataclasses.replace(base, seed=1).run_id != base.run_id
    assert dataclasses.replace(base, device="cuda", log_every=7).run_id == base.run_id


ADDED_OPTION = """
import dataclasses, pathlib, sys
from saev.nn.architectures import base, topk, jumprelu

@dataclasses.dataclass(frozen=True, kw_only=True)
class WithWarmup(base.KOption):
    new_option: float = 0.25
    \"\"\"An option added to topk in a later version.\"\"\"

@dataclasses.dataclass(frozen=True, kw_only=True)
class JumpWithMore(jumprelu.JumpReluOptions):
    other_new_option: int = 3
    \"\"\"An option added to jumprelu.\"\"\"

topk.TopKArchitecture.options = WithWarmup
jumprelu.JumpReluArchitecture.options = JumpWithMore
from saev.training import TrainConfig

assert "new_option" in {f.name for f in dataclasses.fields(TrainConfig)}
for arch, kw in (("topk", {"k": 16}), ("jumprelu", {"sparsity_coeff": 0.02})):
    print(TrainConfig(shards=pathlib.Path(sys.argv[1]), arch=arch, lr=0.001, **kw).run_id)
"""


@pytest.mark.slow
def test_adding_an_option_to_an_architecture_keeps_every_run_id(tmp_path):
    ids = [
        TrainConfig(shards=tmp_path, arch="topk", lr=0.001, k=16).run_id,
        TrainConfig(shards=tmp_path, arch="jumprelu", lr=0.001, sparsity_coeff=0.02).run_id,
    ]
    added = subprocess.run(
        [sys.executable, "-c", ADDED_OPTION, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert added.stdout.split() == ids


def test_a_run_record_missing_a_new_option_still_matches(tmp_path):
    cfg = TrainConfig(shards=tmp_path, arch="topk", k=16)
    saved = json.loads(json.dumps(cfg.to_dict()))
    assert cfg.matches(saved)
    del saved["aux_coeff"]  # a record written before this option existed: its default
    assert cfg.matches(saved)
    assert not cfg.matches(saved | {"k": 8})
    assert not cfg.matches(saved | {"arch": "batchtopk"})
    assert cfg.matches(saved | {"jumprelu_threshold": 0.5})  # another architecture's option: not read


def test_sweep_keys_apply_to_the_architectures_that_read_them(tmp_path):
    base = TrainConfig(shards=tmp_path, arch="topk")
    cfgs = sweep_mod.expand(base, {"arch": ["topk", "relu"], "k": [16, 32], "sparsity_coeff": [0.1]})
    # k at its default for the relu run (not read, not recorded): one relu run, not two.
    assert [(c.arch, c.k, c.sparsity_coeff) for c in cfgs] == [
        ("topk", 16, None),
        ("topk", 32, None),
        ("relu", 32, 0.1),
    ]
    assert "k" not in cfgs[2].to_dict()
    with pytest.raises(
        ConfigError, match="jumprelu_threshold is an option of jumprelu, but this sweep trains topk only"
    ):
        sweep_mod.expand(base, {"k": [8, 16], "jumprelu_threshold": 0.5})
    beside = dataclasses.replace(base, arch="relu", k=8)  # --k given with a sweep of relu runs
    with pytest.raises(
        ConfigError, match="k is an option of topk and batchtopk, but this sweep trains relu only"
    ):
        sweep_mod.expand(beside, {"lr": [1e-3, 2e-3]})


@pytest.mark.slow
def test_a_run_folder_of_the_previous_release_resumes(legacy_folder, caplog):
    cfg = legacy_config(legacy_folder)
    assert cfg.run_id != LEGACY_ID  # ids now hash the architecture's own options only
    with pytest.raises(ConfigError, match=f"runs/{LEGACY_ID} already holds this run; pass --resume"):
        train(cfg)
    with caplog.at_level("INFO", logger="saev.training"):
        [result] = train(dataclasses.replace(cfg, resume=True))
    assert f"{LEGACY_ID}: resuming at step 10 of 20" in caplog.text
    assert result.path == pathlib.Path("runs") / LEGACY_ID
    assert sorted(p.name for p in pathlib.Path("runs").iterdir()) == [LEGACY_ID]
    record = json.loads((result.path / "config.json").read_text())
    assert record["run_id"] == LEGACY_ID
    steps = [json.loads(line)["step"] for line in (result.path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(2, 21, 2))
    # Resumed, it ends where an uninterrupted run of this version ends.
    [whole] = train(dataclasses.replace(cfg, out=pathlib.Path("whole")))
    assert result.checkpoint.read_bytes() == whole.checkpoint.read_bytes()
    # And once finished, another --resume finds it again (now under its own record) and does nothing.
    [again] = train(dataclasses.replace(cfg, resume=True))
    assert again.path == result.path


@pytest.mark.slow
def test_the_cli_resumes_a_run_folder_of_the_previous_release(legacy_folder, capsys):
    args = ["train", "--shards", str(legacy_folder), "--out", "runs", "--layer", "0", "--exp-factor", "2"]
    args += ["--k", "3", "--n-train", "10000", "--batch-size", "500", "--lr", "0.003", "--lr-warmup", "2"]
    args += ["--log-every", "2", "--ckpt-every", "5", "--resume"]
    main(args)
    out = capsys.readouterr().out
    assert out.strip() == str(pathlib.Path("runs") / LEGACY_ID / "sae.safetensors")


def test_a_folder_holding_another_run_is_refused(legacy_folder):
    cfg = legacy_config(legacy_folder, resume=True)
    record = pathlib.Path("runs") / LEGACY_ID / "config.json"
    (pathlib.Path("runs") / cfg.run_id).mkdir()
    shutil.copy(record, pathlib.Path("runs") / cfg.run_id / "config.json")
    data = json.loads(record.read_text())
    data["config"]["k"] = 5
    (pathlib.Path("runs") / cfg.run_id / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="already holds a different run"):
        train(cfg)
