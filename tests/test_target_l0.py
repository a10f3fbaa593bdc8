"""`--target-l0`: k = the target for topk/batchtopk (and Matryoshka over them); a controlled sparsity
coefficient, started at the target, for relu, jumprelu and gated (saev.training.sparsity)."""

import json
import math
import pathlib

import pytest
import torch

import saev.nn
from saev.cli import main
from saev.errors import ConfigError
from saev.nn.architectures import jumprelu
from saev.training import TrainConfig, sparsity
from tests.ground_truth import make_dictionary_store, recovered_fraction


def cfg(**kw) -> TrainConfig:
    return TrainConfig(shards=pathlib.Path("s"), **kw)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_a_target_is_the_k_of_the_architectures_with_a_k(arch):
    run = cfg(arch=arch, target_l0=5).resolved()
    assert run.k == 5 and not run.adapts_coefficient()
    matryoshka = cfg(arch=arch, target_l0=5, matryoshka_prefixes=(64,)).resolved()
    assert matryoshka.k == 5
    assert cfg(arch=arch, target_l0=5, k=5).resolved().k == 5


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"arch": "relu", "target_l0": 0.0}, "--target-l0 must be a positive number"),
        ({"arch": "relu", "target_l0": -3.0}, "--target-l0 must be a positive number"),
        ({"arch": "gated", "target_l0": math.inf}, "--target-l0 must be a finite number, got inf"),
        ({"arch": "jumprelu", "target_l0": math.nan}, "--target-l0 must be a finite number, got nan"),
        ({"arch": "topk", "target_l0": 2.5}, "keeps a whole number of latents per token"),
        ({"arch": "batchtopk", "target_l0": 5, "k": 16}, "--k 16 and --target-l0 5: give one of them"),
    ],
)
def test_an_impossible_target_is_refused_by_name(kw, message):
    with pytest.raises(ConfigError, match=message):
        cfg(**kw).validate()


def test_a_penalty_without_a_coefficient_aims_at_the_default_target():
    run = cfg(arch="relu").resolved()
    assert run.target_l0 == sparsity.DEFAULT_TARGET_L0 == 32 and run.adapts_coefficient()
    fixed = cfg(arch="relu", sparsity_coeff=0.05).resolved()
    assert fixed.target_l0 is None and not fixed.adapts_coefficient()
    # A target changes the run id; a fixed coefficient's run keeps the id it always had.
    assert "l0-32" in run.run_id and "c0.05" in fixed.run_id


def test_the_learning_rate_of_a_run_with_a_target():
    """A target brings its own default rate; a run given --k or --sparsity-coeff keeps the old one."""
    base = cfg(arch="topk").learning_rate(64)
    assert base == pytest.approx(8e-4)
    assert cfg(arch="relu", sparsity_coeff=0.05).learning_rate(64) == base
    assert cfg(arch="topk", k=5).resolved().learning_rate(64) == base
    for arch in ("relu", "topk", "batchtopk"):
        run = cfg(arch=arch, target_l0=5).resolved()
        assert run.learning_rate(64) == pytest.approx(sparsity.TARGET_LR_FACTOR * base)
    assert cfg(arch="relu", target_l0=5, lr=1e-4).learning_rate(64) == 1e-4


def test_jumprelu_bandwidth_default_depends_on_the_target():
    arch = jumprelu.ARCHITECTURE
    assert arch.build(cfg(arch="jumprelu", sparsity_coeff=0.01)).bandwidth == 1e-3
    assert arch.build(cfg(arch="jumprelu", target_l0=5)).bandwidth == jumprelu.TARGET_BANDWIDTH
    assert arch.build(cfg(arch="jumprelu", target_l0=5, jumprelu_bandwidth=0.05)).bandwidth == 0.05
    with pytest.raises(ConfigError, match="--jumprelu-bandwidth must be a finite positive number"):
        arch.check(cfg(arch="jumprelu", jumprelu_bandwidth=0.0), 1024)


def test_the_controller_finds_a_coefficient_and_freezes_it():
    """A plant whose L0 follows 2 / coeff with a lag of ~30 steps (as weights follow Adam): the
    controller starts 20x off, settles within 5% of the target and leaves the coefficient alone
    once adapting ends."""
    n_steps = 1000
    adapt = sparsity.adapting_steps(n_steps, warmup=50)
    assert adapt == range(50, 750)
    ctl = sparsity.L0Controller(target=5.0, start_coeff=0.02, adapt=adapt, device="cpu")
    l0 = 2 / 0.02
    coeffs = []
    for step in range(n_steps):
        l0 += (2 / float(ctl.coeff) - l0) / 30
        ctl.update(step, torch.tensor(l0))
        coeffs.append(float(ctl.coeff))
    assert l0 == pytest.approx(5.0, rel=0.05)
    assert coeffs[-1] == pytest.approx(0.4, rel=0.05)
    assert len(set(coeffs[750:])) == 1 and coeffs[749] == coeffs[-1]
    assert max(coeffs) < 0.4 * 1.5  # no wind-up far past the answer


def test_the_controller_stays_within_its_range_when_the_l0_cannot_follow():
    ctl = sparsity.L0Controller(target=5.0, start_coeff=0.1, adapt=range(0, 10_000), device="cpu")
    for step in range(10_000):
        ctl.update(step, torch.tensor(0.0))  # every latent dead: the coefficient can only fall
    assert float(ctl.coeff) == pytest.approx(0.1 / sparsity.RANGE, rel=1e-4)


def test_firing_thresholds_give_each_latent_its_share():
    torch.manual_seed(0)
    pre_BS = torch.randn(2000, 100) * torch.linspace(0.5, 3, 100)
    t_S = sparsity.firing_thresholds(pre_BS, target=5.0)
    fired_S = (pre_BS > t_S).sum(0)
    assert (fired_S == 100).all()  # 2000 * 5 / 100 tokens each
    assert (pre_BS > t_S).sum(1).float().mean() == pytest.approx(5.0)


@pytest.mark.parametrize("arch", ["relu", "gated", "jumprelu"])
def test_a_run_with_a_target_starts_at_it(arch):
    """After `Architecture.start_at` with the batch's firing thresholds, the batch's L0 is the
    target; gated starts as the ReLU SAE of the same weights (its two paths moved together)."""
    torch.manual_seed(0)
    run = cfg(arch=arch, target_l0=4.0, exp_factor=4)
    sae = saev.nn.SparseAutoencoder(run.sae_config(32))
    x_BD = torch.randn(4096, 32) * 3
    with torch.no_grad():
        pre_BS = sae.pre_acts(x_BD)
        t_S = sparsity.firing_thresholds(pre_BS, 4.0)
        run.architecture.start_at(sae, t_S)
        sae.eval()
        f_BS = sae.encode(x_BD)
    assert (f_BS > 0).sum(-1).float().mean() == pytest.approx(4.0, rel=0.05)
    if arch == "gated":
        relu_BS = torch.relu(pre_BS - t_S)
        assert torch.allclose(f_BS, relu_BS, atol=1e-5)
    if arch == "jumprelu":
        theta_S = sae.activation.threshold
        assert torch.allclose(theta_S, (jumprelu.START_JUMP * t_S).clamp_min(1e-3), rtol=1e-5)


def test_saev_train_records_the_adapted_coefficient(tmp_path, capsys, caplog):
    """`saev train --arch relu` with neither a coefficient nor a target says which target it aims at,
    and records the coefficient it settled on in config.json, eval.json and the checkpoint; the
    held-out L0 lands near the target."""
    truth = make_dictionary_store(tmp_path / "truth", n_atoms=64, d=16, n_tokens=40_000)
    common = ["train", "--shards", str(truth.store), "--out", str(tmp_path / "runs"), "--layer", "0"]
    with caplog.at_level("INFO", logger="saev.training"):
        main([*common, "--arch", "relu", "--n-train", "20000", "--batch-size", "1000"])
    assert "aiming at L0 32, the default target" in caplog.text
    # 20 steps, most of them warm-up: the coefficient had no time, and the run says so.
    first = capsys.readouterr()
    assert "the coefficient adapted for" in first.err and first.out.strip()
    with pytest.raises(SystemExit):  # d_sae = 16 x 16 = 256 latents
        main([*common, "--arch", "gated", "--target-l0", "300"])
    assert "--target-l0 300: the SAE has d_sae = 256 latents" in capsys.readouterr().err
    main([*common, "--arch", "relu", "--target-l0", "4", "--n-train", "600000", "--batch-size", "1000"])
    second = capsys.readouterr()
    [path] = second.out.strip().splitlines()
    assert "the coefficient adapted for" not in second.err  # it landed
    run = saev.nn.load(path)
    folder = tmp_path / "runs" / path.split("/")[-2]
    config = json.loads((folder / "config.json").read_text())
    evaluation = json.loads((folder / "eval.json").read_text())
    assert config["config"]["target_l0"] == 4
    coeff = config["sparsity_coeff"]
    assert coeff == evaluation["sparsity_coeff"] == run.cfg.sparsity_coeff
    assert coeff != 0.05 and coeff > 0  # moved from relu's fixed default
    assert evaluation["l0"] == pytest.approx(4, rel=0.15)


@pytest.mark.slow
def test_every_architecture_recovers_the_dictionary_from_a_target_l0(tmp_path, capsys):
    """The issue's check: 512 atoms in d = 64, 3M tokens, `--arch A --target-l0 5` and defaults:
    every architecture recovers >= 90% of the atoms (cosine >= 0.9), its held-out L0 within 10%."""
    truth = make_dictionary_store(tmp_path / "truth", n_atoms=512, d=64, n_tokens=300_000)
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('arch = ["relu", "jumprelu", "gated", "topk", "batchtopk"]\n')
    common = ["train", "--shards", str(truth.store), "--out", str(tmp_path / "runs"), "--layer", "0"]
    common += ["--target-l0", "5", "--n-train", "3000000"]
    main([*common, "--sweep", str(sweep)])
    main([*common, "--arch", "topk", "--matryoshka-prefixes", "128", "512"])
    results = {}
    for path in capsys.readouterr().out.strip().splitlines():
        folder = tmp_path / "runs" / path.split("/")[-2]
        l0 = json.loads((folder / "eval.json").read_text())["l0"]
        config = json.loads((folder / "config.json").read_text())["config"]
        name = config["arch"] + ("+matryoshka" if config.get("matryoshka_prefixes") else "")
        results[name] = (recovered_fraction(truth.atoms_AD, saev.nn.load(path).W_dec), l0)
    assert len(results) == 6
    assert all(r >= 0.9 and abs(l0 - 5) <= 0.5 for r, l0 in results.values()), results


def test_a_jumprelu_run_of_the_previous_version_is_still_this_run():
    """Earlier versions recorded the bandwidth's default, 0.001; now the option is automatic (None),
    standing for 0.001 with a fixed coefficient: `--resume` must still recognise the run."""
    run = cfg(arch="jumprelu", sparsity_coeff=0.01)
    recorded = json.loads(json.dumps(run.to_dict(), default=str))  # as config.json holds it
    earlier = recorded | {"jumprelu_bandwidth": 0.001}
    assert recorded["jumprelu_bandwidth"] is None
    assert run.matches(earlier) and run.matches(recorded)
    assert not run.matches(earlier | {"jumprelu_bandwidth": 0.05})
    assert not cfg(arch="jumprelu", target_l0=5).matches(earlier)  # 0.003 there
