"""What a new user runs into: thread defaults, warm-ups that scale with the run, loud warnings,
clear errors, `saev --version`, layer names from either end, and no half-made store."""

import json
import pathlib

import pytest

import saev
from saev import runtime, synthetic
from saev.cli import main
from saev.errors import ConfigError
from saev.nn.evaluation import DEAD_DEFINITION
from saev.training import TrainConfig, results_table, train
from tests.test_training import base


@pytest.fixture(scope="module")
def dictionary(tmp_path_factory):
    from tests.ground_truth import make_dictionary_store

    return make_dictionary_store(
        tmp_path_factory.mktemp("dict"), n_atoms=64, d=16, n_tokens=20_000, tokens_per_img=8
    )


@pytest.mark.parametrize(
    "env,cores,load,threads",
    [({}, 2, 0.0, 2), ({}, 2, 1.1, 1), ({}, 2, 3.0, 1), ({}, 8, 2.4, 6), ({"SAEV_THREADS": "3"}, 2, 5.0, 3)],
)
def test_threads_leave_busy_cores_alone(env, cores, load, threads):
    assert runtime.choose_threads(env, cores, load).threads == threads


def test_bad_thread_settings_are_refused(capsys, monkeypatch):
    with pytest.raises(ValueError, match="SAEV_THREADS='0'"):
        runtime.choose_threads({"SAEV_THREADS": "0"}, 2, 0.0)
    monkeypatch.setenv("SAEV_THREADS", "many")
    with pytest.raises(SystemExit) as err:
        main(["train", "--help"])
    assert err.value.code == 2 and "SAEV_THREADS='many'" in capsys.readouterr().err


def test_version(capsys):
    main(["--version"])
    assert capsys.readouterr().out.strip() == f"saev {saev.__version__}"


@pytest.mark.slow
def test_the_default_warm_up_is_a_small_share_of_the_run(dictionary, tmp_path):
    cfg = TrainConfig(shards=dictionary.store, out=tmp_path, layer=0)
    assert cfg.warmup_steps(40) == 2 and cfg.warmup_steps(10_000) == 500 and cfg.warmup_steps(3) == 1
    assert cfg.sparsity_warmup_steps(200) == 10
    assert cfg.learning_rate(64) == pytest.approx(2e-4 * (2**14 / (64 * 16)) ** 0.5)
    [run] = train(base(dictionary, tmp_path, n_train=20_000, batch_size=500, lr_warmup=None, log_every=1))
    lrs = [json.loads(line)["lr"] for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert lrs[1] == pytest.approx(3e-3) and run.warnings == ()  # 40 steps: warm-up 2


def test_a_run_that_never_left_its_warm_up_is_flagged(dictionary, tmp_path, caplog):
    [run] = train(base(dictionary, tmp_path, n_train=10_000, batch_size=500, lr_warmup=500))
    assert any("ended inside its learning-rate warm-up (20 steps, warm-up 500)" in w for w in run.warnings)
    assert "never reached" in caplog.text
    table = results_table([run])
    assert "warning, " + run.run_id in table and DEAD_DEFINITION in table


def test_negative_fve_is_flagged(dictionary, tmp_path):
    cfg = base(
        dictionary, tmp_path, arch="relu", sparsity_coeff=50.0, sparsity_warmup=0, n_train=10_000, lr=0.05
    )
    [run] = train(cfg)
    assert run.eval.fve < 0
    assert any(f"held-out FVE is {run.eval.fve:.3f}" in w for w in run.warnings)


def test_mostly_dead_latents_are_flagged(dictionary, tmp_path):
    # 1,024 latents, one active per token and no auxiliary loss: most never win a token.
    [run] = train(base(dictionary, tmp_path, exp_factor=64, k=1, aux_k=0, n_train=10_000))
    assert run.eval.n_dead > 1024 / 2
    assert any(
        f"{run.eval.n_dead} of 1024 latents" in w and "are dead (fire on none of the" in w
        for w in run.warnings
    )


def test_train_prints_where_dead_is_defined(dictionary, tmp_path, capsys):
    args = ["train", "--shards", str(dictionary.store), "--out", str(tmp_path / "runs"), "--layer", "0"]
    main([*args, "--exp-factor", "4", "--k", "3", "--n-train", "10000", "--batch-size", "500"])
    err = capsys.readouterr().err
    assert "dead: a latent that fires on none of the tokens counted (here the 1,000 held-out tokens)" in err
    assert "training curves:" in err


def test_layers_can_be_named_from_either_end(tmp_path, capsys):
    synthetic.generate(tmp_path / "syn", 12, seed=1)
    main(
        [
            "activations",
            "--vit-family",
            "builtin",
            "--vit-ckpt",
            "shapes-vit",
            "--images",
            str(tmp_path / "syn" / "images"),
        ]
        + ["--dump-to", str(tmp_path / "shards"), "--n-workers", "0"]
    )
    store = capsys.readouterr().out.strip().splitlines()[-1]
    cfg = TrainConfig(
        shards=pathlib.Path(store),
        out=tmp_path / "runs",
        layer=2,
        exp_factor=2,
        k=4,
        n_train=2_000,
        batch_size=256,
    )
    [run] = train(cfg)  # recorded as -2 of 4 blocks
    assert run.eval is not None
    with pytest.raises(ConfigError, match=r"--layer 1: .* holds layers \[-2\]"):
        train(TrainConfig(shards=pathlib.Path(store), out=tmp_path / "runs", layer=1, k=4))


def test_inspect_checks_the_layer_and_fails_when_no_image_is_readable(tmp_path, tiny_clip, photos, capsys):
    from tests.test_inspect import make_sae

    sae = tmp_path / "sae.safetensors"
    make_sae(sae)  # trained, it says, on block -2
    image = str(photos[0])
    base_args = [
        "--sae",
        str(sae),
        "--vit-family",
        "clip",
        "--vit-ckpt",
        tiny_clip,
        "--out",
        str(tmp_path / "i"),
    ]
    with pytest.raises(SystemExit) as err:
        main(["inspect", image, *base_args, "--layer", "0"])
    assert err.value.code == 2 and "it was trained on block -2, not block 0" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nothing")
    with pytest.raises(SystemExit) as err:
        main(["inspect", str(bad), *base_args, "--layer", "-2"])
    assert err.value.code == 2 and "none of the 1 image(s) could be read" in capsys.readouterr().err


def test_a_folder_of_unreadable_files_leaves_no_store(tmp_path, capsys):
    images = tmp_path / "broken"
    images.mkdir()
    for name in ("a.png", "b.jpg"):
        (images / name).write_bytes(b"not an image")
    with pytest.raises(SystemExit) as err:
        main(
            ["activations", "--vit-family", "builtin", "--vit-ckpt", "shapes-vit", "--images", str(images)]
            + ["--dump-to", str(tmp_path / "shards"), "--n-workers", "0"]
        )
    assert err.value.code == 2
    assert "no image could be read (2 tried), so no store was written" in capsys.readouterr().err
    assert not any((tmp_path / "shards").iterdir())
