"""`saev train`: sweeps in one pass, reproducible and resumable runs, evaluation, and config errors."""

import dataclasses
import json
import sys
import types

import numpy as np
import pytest
import torch

import saev.data
import saev.nn
from saev.cli import main
from saev.errors import ConfigError
from saev.training import TrainConfig, train
from saev.training import trainer as trainer_mod
from tests.ground_truth import make_dictionary_store


@pytest.fixture(scope="module")
def dictionary(tmp_path_factory):
    return make_dictionary_store(
        tmp_path_factory.mktemp("dict"), n_atoms=64, d=16, n_tokens=20_000, tokens_per_img=8
    )


def base(dictionary, tmp_path, **kw) -> TrainConfig:
    defaults = dict(
        shards=dictionary.store,
        out=tmp_path / "runs",
        layer=0,
        exp_factor=4,
        n_train=40_000,
        batch_size=500,
        lr=3e-3,
        lr_warmup=5,
        log_every=5,
        ckpt_every=20,
    )
    if kw.get("arch", "topk") in ("topk", "batchtopk"):  # the others refuse --k
        defaults["k"] = 3
    return TrainConfig(**(defaults | kw))


def weights(path):
    return {k: v.clone() for k, v in saev.nn.load(path).state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu"])
def test_fixed_seed_gives_bit_identical_checkpoints(dictionary, tmp_path, arch):
    cfg = base(dictionary, tmp_path, arch=arch, n_train=10_000)
    [a] = train(cfg)
    [b] = train(dataclasses.replace(cfg, out=tmp_path / "again"))
    assert a.checkpoint.read_bytes() == b.checkpoint.read_bytes()
    [c] = train(dataclasses.replace(cfg, out=tmp_path / "other", seed=1))
    assert c.checkpoint.read_bytes() != a.checkpoint.read_bytes()


@pytest.mark.parametrize(
    "run",
    [
        {"arch": "topk"},
        {"arch": "batchtopk"},
        # the adapted coefficient (and JumpReLU's second parameter group) resume too
        {"arch": "relu", "target_l0": 3.0},
        {"arch": "jumprelu", "target_l0": 3.0},
    ],
)
def test_resume_after_a_kill_ends_with_identical_weights(dictionary, tmp_path, monkeypatch, run):
    cfg = base(dictionary, tmp_path, **run, n_train=60_000, ckpt_every=25)  # 120 steps, 3 epochs
    [whole] = train(cfg)
    killed = dataclasses.replace(cfg, out=tmp_path / "killed")
    real_step = trainer_mod._Run.train_step

    def dying_step(self, x):
        if self.step == 57:
            raise KeyboardInterrupt("killed")
        real_step(self, x)

    monkeypatch.setattr(trainer_mod._Run, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(killed)
    monkeypatch.setattr(trainer_mod._Run, "train_step", real_step)
    run_dir = killed.out / killed.run_id
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 50
    with pytest.raises(ConfigError, match="pass --resume"):
        train(killed)
    [resumed] = train(dataclasses.replace(killed, resume=True))
    assert resumed.checkpoint.read_bytes() == whole.checkpoint.read_bytes()
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(5, 121, 5))
    assert not (run_dir / "checkpoint.pt").exists()


@pytest.mark.slow
def test_sweep_trains_every_combination_in_one_pass(dictionary, tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('arch = ["topk", "batchtopk"]\nk = [2, 3]\nlr = 0.002\n')
    reads = []
    real = trainer_mod.iter_batches

    def counting(*args, **kwargs):
        reads.append(kwargs.get("shuffle"))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "iter_batches", counting)
    args = [
        "train",
        "--shards",
        str(dictionary.store),
        "--out",
        str(tmp_path / "runs"),
        "--layer",
        "0",
        "--exp-factor",
        "4",
        "--n-train",
        "10000",
        "--batch-size",
        "500",
        "--sweep",
        str(sweep),
    ]
    main(args)
    out = capsys.readouterr()
    paths = out.out.strip().splitlines()
    assert len(paths) == 4 and all(p.endswith("sae.safetensors") for p in paths)
    assert reads == [True, False]  # one shuffled training pass, one ordered evaluation pass
    configs = [
        json.loads((saev.nn.checkpoints.pathlib.Path(p).parent / "config.json").read_text())["config"]
        for p in paths
    ]
    assert sorted((c["arch"], c["k"], c["lr"]) for c in configs) == [
        ("batchtopk", 2, 0.002),
        ("batchtopk", 3, 0.002),
        ("topk", 2, 0.002),
        ("topk", 3, 0.002),
    ]
    assert "| run | arch | k | MSE | FVE | L0 | dead | dense |" in out.err  # the settings that vary
    rows = [line for line in out.err.splitlines() if line.startswith(("| topk-", "| batchtopk-"))]
    assert sorted(row.split(" | ")[1:3] for row in rows) == [
        ["batchtopk", "2"],
        ["batchtopk", "3"],
        ["topk", "2"],
        ["topk", "3"],
    ]


def test_sweeps_with_different_data_streams_take_separate_passes(dictionary, tmp_path):
    from saev.training.sweep import expand

    cfgs = expand(base(dictionary, tmp_path), {"batch_size": [250, 500], "lr": [1e-3, 2e-3]})
    assert len({c.stream for c in cfgs}) == 2 and len(cfgs) == 4


def test_schedules_really_change_lr_and_sparsity_coefficient(dictionary, tmp_path):
    [r] = train(
        base(
            dictionary,
            tmp_path,
            arch="relu",
            sparsity_coeff=0.01,
            sparsity_warmup=40,
            lr_warmup=20,
            lr_schedule="cosine",
            n_train=50_000,
            log_every=1,
        )
    )
    lines = [json.loads(line) for line in (r.path / "metrics.jsonl").read_text().splitlines()]
    coeff = [m["sparsity_coeff"] for m in lines]
    assert coeff[0] == 0 and coeff[19] == pytest.approx(0.01 * 19 / 40) and coeff[60] == 0.01
    assert lines[0]["sparsity"] == 0 and lines[60]["sparsity"] == pytest.approx(
        0.01 * lines[60]["l1"], rel=1e-4
    )
    lr = [m["lr"] for m in lines]
    assert lr[0] == pytest.approx(3e-3 / 20) and lr[19] == pytest.approx(3e-3) and lr[-1] < 1e-5
    assert all(a >= b for a, b in zip(lr[19:], lr[20:], strict=False))


def test_evaluation_matches_a_brute_force_computation(dictionary, tmp_path):
    [r] = train(base(dictionary, tmp_path, holdout=0.1))
    sae = saev.nn.load(r.checkpoint).eval()
    store = saev.data.open_shards(dictionary.store)
    n_eval = int(np.ceil(0.1 * len(store)))
    x = torch.from_numpy(
        np.stack([store.acts(i)[0] for i in range(len(store) - n_eval, len(store))]).reshape(-1, 16)
    )
    with torch.no_grad():
        x_n = sae.normalize(x)
        f = sae.encode(x)  # raw activations in: the checkpoint carries the normalisation
        x_hat_n = sae.decode_normalized(f)
    ev = json.loads((r.path / "eval.json").read_text())
    assert ev["n_tokens"] == len(x)
    assert ev["mse"] == pytest.approx(((x_hat_n - x_n) ** 2).mean().item(), rel=1e-4)
    fve = 1 - ((x_hat_n - x_n) ** 2).sum() / ((x_n - x_n.mean(0)) ** 2).sum()
    assert ev["fve"] == pytest.approx(fve.item(), rel=1e-4)
    assert ev["l0"] == pytest.approx((f > 0).float().sum(1).mean().item())
    freq = (f > 0).float().mean(0)
    np.testing.assert_allclose(ev["freq"], freq.numpy(), rtol=1e-5)
    assert ev["n_dead"] == int((freq == 0).sum()) and ev["n_dense"] == int((freq > 0.1).sum())
    assert json.loads((r.path / "config.json").read_text())["eval"]["fve"] == ev["fve"]
    assert sae.provenance.layer == 0 and sae.provenance.tokens == "patches"


def test_relu_runs_export_to_the_reference_format(dictionary, tmp_path):
    [r] = train(base(dictionary, tmp_path, arch="relu", n_train=5_000))
    sae = saev.nn.load(r.checkpoint)
    sae.set_normalization(None)
    saev.nn.dump(tmp_path / "sae.pt", sae)
    back = saev.nn.load(tmp_path / "sae.pt")
    assert back.provenance.source == "V2" and torch.equal(back.W_dec, sae.W_dec)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(layer=-2), "--layer -2: .* holds layers \\[0\\]"),
        (dict(tokens="cls"), "no \\[CLS\\] token"),
        (dict(k=64), "--k 64 must be smaller than d_sae"),
        (dict(batch_size=0), "--batch-size must be positive"),
        (dict(n_train=-5), "--n-train must be positive"),
        (dict(matryoshka_prefixes=(8, 4)), "increasing"),
        (dict(holdout=1.0), "--holdout"),
        (
            dict(batch_size=10**6),
            "has 19,000 training tokens .* fewer than one batch of --batch-size 1000000",
        ),
        (dict(n_train=100), "--n-train 100 is less than one batch of --batch-size 500"),
        (dict(lr=float("nan")), "--lr must be a positive number"),
        (dict(out=None), "inside the run folder"),
    ],
)
def test_bad_configurations_fail_before_any_work(dictionary, tmp_path, change, message):
    if "out" in change:  # an --out inside an existing run folder
        [done] = train(base(dictionary, tmp_path / "first", n_train=5_000))
        change = {"out": done.path / "nested"}
    with pytest.raises(ConfigError, match=message):
        train(base(dictionary, tmp_path, exp_factor=4, **change))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("metrics.jsonl"))


def test_unknown_sweep_keys_and_conflicting_run_dirs(dictionary, tmp_path):
    sweep = tmp_path / "s.toml"
    sweep.write_text("learning_rate = [1, 2]\n")
    with pytest.raises(ConfigError, match="unknown keys \\['learning_rate'\\]"):
        train(base(dictionary, tmp_path, sweep=sweep))
    cfg = base(dictionary, tmp_path, n_train=5_000)
    [r] = train(cfg)
    with pytest.raises(ConfigError, match="already holds this run"):
        train(cfg)
    config = json.loads((r.path / "config.json").read_text())
    config["config"]["lr"] = 1.0
    (r.path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="different run"):
        train(dataclasses.replace(cfg, resume=True))


def test_wandb_is_optional(dictionary, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match="pip install -e '\\.\\[wandb\\]'"):
        train(base(dictionary, tmp_path, wandb_project="p"))
    logged = []

    class FakeRun:
        summary: dict = {}

        def log(self, metrics, step):
            logged.append(step)

        def finish(self):
            logged.append("finished")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: FakeRun()))
    train(base(dictionary, tmp_path, wandb_project="p", n_train=5_000))
    assert logged == [5, 10, "finished"]


def test_matryoshka_prefixes_reconstruct_on_their_own(dictionary, tmp_path):
    [r] = train(base(dictionary, tmp_path, arch="topk", matryoshka_prefixes=(16,), n_train=60_000))
    sae = saev.nn.load(r.checkpoint).eval()
    store = saev.data.open_shards(dictionary.store)
    x_n = sae.normalize(torch.from_numpy(store.acts(0)[0]))
    with torch.no_grad():
        f = sae.encode(torch.from_numpy(store.acts(0)[0]))
        prefix = f[:, :16] @ sae.W_dec[:16] + sae.b_dec
        shuffled = f[:, 16:32] @ sae.W_dec[16:32] + sae.b_dec
    assert ((prefix - x_n) ** 2).mean() < ((shuffled - x_n) ** 2).mean()


def train_on_dictionary(tmp_path, capsys, *args: str):
    """`saev train` on a known dictionary (128 atoms in d = 32); returns the truth and each arch's recovery."""
    from tests.ground_truth import recovered_fraction

    truth = make_dictionary_store(tmp_path / "truth", n_atoms=128, d=32, n_tokens=60_000)
    main(
        [
            "train",
            "--shards",
            str(truth.store),
            "--out",
            str(tmp_path / "runs"),
            "--layer",
            "0",
            "--exp-factor",
            "8",
            "--k",
            "4",
            # relu's coefficient, for sweeps that train it (topk alone refuses it)
            *(("--sparsity-coeff", "0.05") if "--sweep" in args else ()),
            "--sparsity-warmup",
            "200",
            "--n-train",
            "3000000",
            "--batch-size",
            "1024",
            "--lr",
            "3e-3",
            "--lr-warmup",
            "50",
            *args,
        ]
    )
    recovered = {}
    for path in capsys.readouterr().out.strip().splitlines():
        sae = saev.nn.load(path)
        recovered[type(sae.cfg.activation).__name__] = recovered_fraction(truth.atoms_AD, sae.W_dec)
    untrained = recovered_fraction(truth.atoms_AD, saev.nn.SparseAutoencoder(sae.cfg).W_dec)
    return recovered, untrained


@pytest.mark.slow
def test_ground_truth_atoms_are_recovered(tmp_path, capsys):
    """TopK, BatchTopK and ReLU SAEs trained by `saev train` find >= 90% of a known dictionary's atoms."""
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('arch = ["topk", "batchtopk", "relu"]\n')
    recovered, untrained = train_on_dictionary(tmp_path, capsys, "--sweep", str(sweep))
    assert set(recovered) == {"TopK", "BatchTopK", "Relu"}
    assert untrained < 0.05
    assert min(recovered.values()) >= 0.9, recovered


@pytest.mark.slow
def test_bf16_autocast_training_recovers_atoms_too(tmp_path, capsys):
    recovered, _ = train_on_dictionary(tmp_path, capsys, "--autocast", "bf16")
    assert recovered["TopK"] >= 0.9, recovered
    [config] = (tmp_path / "runs").glob("*/config.json")
    assert json.loads(config.read_text())["config"]["autocast"] == "bf16"
    [ckpt] = (tmp_path / "runs").glob("*/sae.safetensors")
    assert saev.nn.load(ckpt).W_enc.dtype == torch.float32
