"""No silent mixing: a store is only resumed or reused with the options that made its values, and an
SAE only reads the model, layer and tokens it was trained on (unless forced)."""

import json
import shutil

import pytest

import saev.nn
from saev.activations import provenance
from saev.cli import main
from saev.data import open_shards
from saev.data.metadata import RECORDING_FILE
from saev.data.store import STATE_FILE
from saev.nn.config import Provenance
from tests.test_hardening_cli import run_cli
from tests.test_hardening_recording import config, interrupted
from tests.test_recording import cli_args


@pytest.fixture
def images(tmp_path, photos):
    root = tmp_path / "images"
    for k, src in enumerate(photos[:6]):
        (root / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / f"c{k % 2}" / f"{k}{src.suffix}")
    return root


BUDGET = 2 * 2 * 197
"""Two images of two layers per shard."""


def record_args(tiny_clip, images, dump_to, **extra):
    return cli_args(tiny_clip, images, dump_to, batch_size=2, n_patches_per_shard=BUDGET, **extra)


# Value-changing recording options


@pytest.mark.parametrize(
    "changed, was, now",
    [
        ({"autocast": "bf16"}, "--autocast none", "--autocast bf16"),
        ({"batch_size": 1}, "--batch-size 2", "--batch-size 1"),
    ],
)
def test_resuming_with_other_values_is_refused_naming_the_option(
    tmp_path, tiny_clip, images, monkeypatch, capsys, changed, was, now
):
    cfg = config(tiny_clip, images, tmp_path / "shards", layers=(-2, 1), n_patches_per_shard=BUDGET)
    root = interrupted(cfg, monkeypatch)
    state = (root / STATE_FILE).read_bytes()
    args = record_args(tiny_clip, images, tmp_path / "shards")
    if "batch_size" in changed:
        args[args.index("--batch-size") + 1] = str(changed["batch_size"])
    else:
        args += [f"--{k.replace('_', '-')}" for k in changed] + [str(v) for v in changed.values()]
    err = run_cli(args, capsys)
    assert f"{root}: was recorded with {was}, but this run says {now}" in err
    assert (root / STATE_FILE).read_bytes() == state  # the unfinished store is left as it was
    main(record_args(tiny_clip, images, tmp_path / "shards"))  # the same options resume it
    assert json.loads((root / RECORDING_FILE).read_text()) == {
        "autocast": "none",
        "device": "cpu",
        "batch_size": 2,
    }


def test_a_finished_store_is_not_reused_for_other_values(tmp_path, tiny_clip, images, capsys):
    main(record_args(tiny_clip, images, tmp_path / "shards"))
    [root] = (tmp_path / "shards").iterdir()
    capsys.readouterr()
    err = run_cli(record_args(tiny_clip, images, tmp_path / "shards", autocast="bf16"), capsys)
    assert "was recorded with --autocast none, but this run says --autocast bf16" in err
    main(record_args(tiny_clip, images, tmp_path / "shards"))
    assert "store already complete" in capsys.readouterr().err
    (root / RECORDING_FILE).unlink()  # a store from before saev kept the record: reused as it is
    main(record_args(tiny_clip, images, tmp_path / "shards", autocast="bf16"))


# Provenance


def test_mismatches_are_named():
    prov = Provenance("clip", "ViT-B-16/openai", -2, "patches")
    same = provenance.Reading("clip", "ViT-B-16/openai", 10, 12, "patches")
    assert provenance.mismatches(prov, same) == []
    other = provenance.Reading("dinov2", "dinov2_vitb14", 9, 12, "cls")
    assert provenance.mismatches(prov, other) == [
        "it was trained on clip/ViT-B-16/openai, not dinov2/dinov2_vitb14",
        "it was trained on block -2, not block 9 of 12",
        "it was trained on patches tokens, not cls tokens",
    ]
    # Unknown depth: only equal numbers name one block; unrecorded facts are not compared.
    assert provenance.mismatches(prov, provenance.Reading("clip", "ViT-B-16/openai", 10, None, "patches"))
    assert provenance.mismatches(Provenance(), other) == []
    assert provenance.mismatches(Provenance(tokens="all"), other) == []


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_clip, photos_dir):
    """A tiny CLIP store of blocks 1 and -2 (= 2) of 4."""
    tmp = tmp_path_factory.mktemp("prov")
    shutil.copytree(photos_dir, tmp / "images" / "photos")
    main(cli_args(tiny_clip, tmp / "images", tmp / "shards"))
    return next((tmp / "shards").iterdir())


def sae_at(path, tiny_clip, layer, tokens="patches", d_sae=48, ckpt=None):
    sae = saev.nn.SparseAutoencoder(saev.nn.SaeConfig(d_vit=64, d_sae=d_sae, activation=saev.nn.TopK(k=4)))
    sae.provenance = Provenance("clip", ckpt or tiny_clip, layer, tokens)
    saev.nn.dump(path, sae)
    return path


def visuals(sae, store, out, *extra):
    return [
        "visuals",
        "--sae",
        str(sae),
        "--shards",
        str(store),
        "--out",
        str(out),
        "--n-latents",
        "2",
        *extra,
    ]


@pytest.mark.slow
def test_visuals_refuses_another_layer_and_reads_the_sae_s_own_by_default(tmp_path, store, tiny_clip, capsys):
    sae = sae_at(tmp_path / "sae.safetensors", tiny_clip, layer=1)
    err = run_cli(visuals(sae, store, tmp_path / "v", "--layer", "-2"), capsys)
    assert "it was trained on block 1, not block -2 of 4" in err and "--force" in err
    assert not (tmp_path / "v").exists()
    main(visuals(sae, store, tmp_path / "v"))  # default: the SAE's layer
    assert json.loads((tmp_path / "v" / "latents.json").read_text())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "v" / "topk.safetensors"), "pt") as f:
        assert f.metadata()["layer"] == "1"
    main(visuals(sae, store, tmp_path / "forced", "--layer", "-2", "--force"))
    # The same block counted from the other end is the same layer.
    main(
        visuals(
            sae_at(tmp_path / "b2.safetensors", tiny_clip, layer=2), store, tmp_path / "v2", "--layer", "-2"
        )
    )


def test_visuals_refuses_another_vit_and_other_tokens(tmp_path, store, tiny_clip, capsys):
    other = sae_at(tmp_path / "other.safetensors", tiny_clip, layer=-2, ckpt="ViT-B-16/openai")
    err = run_cli(visuals(other, store, tmp_path / "v"), capsys)
    assert f"it was trained on clip/ViT-B-16/openai, not clip/{tiny_clip}" in err
    cls = sae_at(tmp_path / "cls.safetensors", tiny_clip, layer=-2, tokens="cls")
    assert "it was trained on cls tokens, not patches tokens" in run_cli(
        visuals(cls, store, tmp_path / "v"), capsys
    )
    patches = sae_at(tmp_path / "p.safetensors", tiny_clip, layer=-2)
    err = run_cli(visuals(patches, store, tmp_path / "v", "--sort-by", "cls"), capsys)
    assert "it was trained on patches tokens, not cls tokens" in err


def test_normalize_refuses_another_layer(tmp_path, store, tiny_clip, capsys):
    sae = sae_at(tmp_path / "sae.safetensors", tiny_clip, layer=1)
    out = tmp_path / "n.safetensors"
    err = run_cli(
        ["normalize", "--sae", str(sae), "--shards", str(store), "--out", str(out), "--layer", "-2"], capsys
    )
    assert "it was trained on block 1, not block -2 of 4" in err and not out.exists()
    main(["normalize", "--sae", str(sae), "--shards", str(store), "--out", str(out)])
    loaded = saev.nn.load(out)
    assert loaded.provenance.layer == 1 and loaded.normalization is not None


def test_a_top_k_that_cannot_fit_is_refused_with_the_numbers_before_the_pass(
    tmp_path, store, tiny_clip, capsys, monkeypatch
):
    sae = sae_at(tmp_path / "sae.safetensors", tiny_clip, layer=-2, d_sae=1024)
    err = run_cli(visuals(sae, store, tmp_path / "v", "--top-k", "100000"), capsys)
    assert (
        "--top-k 100000: keeping 100000 top images and 9 sampled ones with their 196 patch activations for each of 1,024"
        in err
    )
    assert "physical memory; lower --top-k" in err and not (tmp_path / "v").exists()

    def small(device):
        return 2**20, "physical memory"

    monkeypatch.setattr("saev.visuals.build.available_memory", small)
    err = run_cli(visuals(sae, store, tmp_path / "v", "--top-k", "16"), capsys)
    assert "--top-k 16:" in err and "needs at least 61.1 MiB on cpu, but it has 1.0 MiB" in err


def test_an_sae_without_a_recorded_layer_reads_layer_minus_2_with_a_warning(tmp_path, store, caplog):
    sae = saev.nn.SparseAutoencoder(saev.nn.SaeConfig(d_vit=64, d_sae=48))
    saev.nn.dump(tmp_path / "bare.safetensors", sae)
    main(visuals(tmp_path / "bare.safetensors", store, tmp_path / "v"))
    assert "does not record the layer it reads; reading layer -2" in caplog.text


def test_a_store_names_its_layers_from_either_end(store):
    opened = open_shards(store)
    assert opened.n_blocks == 4 and opened.layer_label(2) == -2 and opened.layer_label(-3) == 1
