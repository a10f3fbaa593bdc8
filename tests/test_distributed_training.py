"""`torchrun -m saev train` with two Gloo processes: data parallel training agrees with one process
(TopK, BatchTopK, AuxK active), `--split runs` gives each run the one-process weights, a killed run
resumes with any number of processes, and ranks given different options or losing a peer stop with a
message instead of hanging."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

import saev.nn
from tests.ground_truth import make_dictionary_store
from tests.torchrun import kill_when, torchrun

pytestmark = pytest.mark.slow

TOLERANCE = 1e-5
"""Largest weight difference after 40 steps: one process and two sum the batch's gradients in different
orders, so float32 rounding (~1e-7 per step) is all that may differ."""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    return make_dictionary_store(root, n_atoms=64, d=16, n_tokens=20_000, tokens_per_img=8).store


def train_args(store, out, *extra: str) -> list[str]:
    # A 16x SAE with a short dead window: latents die within the run, so AuxK contributes.
    return [
        "train",
        "--shards",
        str(store),
        "--out",
        str(out),
        "--layer",
        "0",
        "--exp-factor",
        "16",
        "--k",
        "3",
        "--n-train",
        "20000",
        "--batch-size",
        "500",
        "--lr",
        "3e-3",
        "--dead-tokens",
        "1000",
        "--aux-k",
        "8",
        "--log-every",
        "5",
        "--ckpt-every",
        "10",
        *extra,
    ]


def one_process(args: list[str]) -> subprocess.CompletedProcess:
    env = {"SAEV_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "saev", *args],
        check=True,
        capture_output=True,
        text=True,
        env=os.environ | env,
    )


def weights(run_dir) -> dict[str, torch.Tensor]:
    return saev.nn.load(run_dir / "sae.safetensors").state_dict()


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu"])
def test_two_processes_train_the_one_process_sae(tmp_path, store, arch):
    # relu with a target: its start (the whole batch's firing thresholds) and its adapted coefficient
    # (the whole batch's L0) are the one process's
    target = ["--target-l0", "3", "--sparsity-warmup", "2"] if arch == "relu" else []

    def args(out):
        full = train_args(store, out, "--arch", arch, *target)
        return [a for i, a in enumerate(full) if not (target and "--k" in full[i - 1 : i + 1])]

    one_process(args(tmp_path / "one"))
    result = torchrun(args(tmp_path / "two"))
    [run] = [p.name for p in (tmp_path / "one").iterdir() if p.is_dir()]
    assert result.stdout.strip() == str(tmp_path / "two" / run / "sae.safetensors")  # rank 0 reports
    one, two = weights(tmp_path / "one" / run), weights(tmp_path / "two" / run)
    for name in one:
        assert (one[name] - two[name]).abs().max() <= TOLERANCE, name
    m1, m2 = metrics(tmp_path / "one" / run), metrics(tmp_path / "two" / run)
    assert [m["step"] for m in m1] == [m["step"] for m in m2]
    if arch != "relu":
        assert max(m["aux"] for m in m1) > 0 and max(m["dead_frac"] for m in m1) > 0  # AuxK was exercised
    for a, b in zip(m1, m2, strict=True):
        for key in ("loss", "mse", "l0", "aux", "dead_frac"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    e1, e2 = (json.loads((d / run / "eval.json").read_text()) for d in (tmp_path / "one", tmp_path / "two"))
    assert e2["l0"] == pytest.approx(e1["l0"], rel=1e-4) and e2["fve"] == pytest.approx(e1["fve"], rel=1e-4)


def test_split_runs_gives_every_run_its_one_process_weights(tmp_path, store):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text("k = [2, 3, 4]\n")
    one_process(train_args(store, tmp_path / "one", "--sweep", str(sweep)))
    result = torchrun(train_args(store, tmp_path / "two", "--sweep", str(sweep), "--split", "runs"))
    runs = sorted(p.name for p in (tmp_path / "one").iterdir() if p.is_dir())
    assert len(runs) == 3 and result.stdout.strip().splitlines() == [
        str(tmp_path / "two" / run / "sae.safetensors") for run in runs
    ]
    for run in runs:  # each run trained alone by one rank on the same stream: bit for bit
        one, two = weights(tmp_path / "one" / run), weights(tmp_path / "two" / run)
        assert all(torch.equal(one[k], two[k]) for k in one), run
    assert (tmp_path / "two" / "sweep.png").exists()


def test_a_killed_run_resumes_with_two_or_one_processes(tmp_path, store):
    torchrun(train_args(store, tmp_path / "whole"))
    [run] = [p.name for p in (tmp_path / "whole").iterdir() if p.is_dir()]
    args = train_args(store, tmp_path / "killed")
    ckpt = tmp_path / "killed" / run / "checkpoint.pt"
    kill_when(args, ckpt.exists)
    assert ckpt.exists() and not (tmp_path / "killed" / run / "sae.safetensors").exists()
    step = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < step < 40
    shutil.copytree(tmp_path / "killed", tmp_path / "killed-one")
    result = torchrun([*args, "--resume"])
    assert f"resuming at step {step} of 40" in result.stderr
    whole, resumed = weights(tmp_path / "whole" / run), weights(tmp_path / "killed" / run)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)  # the same processes: bit for bit
    one_process([*train_args(store, tmp_path / "killed-one"), "--resume"])
    alone = weights(tmp_path / "killed-one" / run)
    assert all((whole[k] - alone[k]).abs().max() <= TOLERANCE for k in whole)


def test_ranks_given_different_options_stop_at_start(tmp_path, store):
    script = tmp_path / "launch.py"
    script.write_text(
        "import os, sys\nfrom saev.cli import main\n"
        f"args = {train_args(store, tmp_path / 'out')!r}\n"
        "if os.environ['RANK'] == '1':\n    args[args.index('--lr') + 1] = '1e-3'\n"
        "main(args)\n"
    )
    result = torchrun([], script=str(script), check=False)
    assert result.returncode != 0
    assert "the 2 ranks were given different options (lr: rank 0 0.003, rank 1 0.001)" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("failure", "timeout"),
    [("os._exit(9)", "600"), ("time.sleep(600)", "10")],
    ids=["dies", "hangs"],
)
def test_a_lost_rank_stops_the_others_with_a_message(tmp_path, store, failure, timeout):
    """Rank 1 dies (or stops answering) at its first step, while rank 0 waits for it in an all-reduce."""
    script = tmp_path / "launch.py"
    script.write_text(
        "import os, time\nfrom saev.cli import main\nfrom saev.training import trainer\n"
        "if os.environ['RANK'] == '1':\n"
        f"    trainer._Run.train_step = lambda self, x: {failure}\n"
        f"main({train_args(store, tmp_path / 'out')!r})\n"
    )
    start = time.time()
    result = torchrun([], script=str(script), check=False, env={"SAEV_DIST_TIMEOUT": timeout})
    assert result.returncode != 0 and time.time() - start < 120
    message = "saev: error: rank 0 of 2: lost contact with the other processes during an all-reduce"
    if failure.startswith("time"):
        assert message in result.stderr  # the timeout names what rank 0 was waiting for
    else:
        # Rank 0 says so, unless torchrun, seeing rank 1 exit, stopped it first; torchrun names rank 1.
        assert message in result.stderr or "exitcode  : 9" in result.stderr
    assert "[rank0]: Traceback" not in result.stderr  # never Gloo's raw traceback
