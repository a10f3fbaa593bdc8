"""`saev export` (Hub-ready folders with a model card) and the catalogue of published SAEs (`saev catalog`,
names that fill in the ViT and layer for `saev inspect`), offline: the Hub is a fake cache built from fixtures."""

import json
import re

import pytest
import torch

import saev.nn
from saev.activations.families import FAMILIES
from saev.cli import main
from saev.errors import CheckpointError
from saev.nn import catalog, checkpoints, formats
from saev.training import TrainConfig, train
from tests.conftest import TINY_CLIP_HF, hf_cache_put
from tests.ground_truth import make_dictionary_store


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    store = make_dictionary_store(root / "dict", n_atoms=64, d=16, n_tokens=20_000, tokens_per_img=8).store
    cfg = TrainConfig(
        shards=store, out=root / "runs", layer=0, exp_factor=4, k=3, n_train=20_000, batch_size=500
    )
    [result] = train(cfg)
    return result.checkpoint.parent


def test_export_writes_a_card_and_loads_back_from_disk_and_the_hub(run_dir, tmp_path, capsys):
    out = tmp_path / "hub"
    main(["export", str(run_dir), str(out), "--repo", "saev-test/exported-topk"])
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "sae.safetensors", "saev_run.json"]
    original = saev.nn.load(run_dir / "sae.safetensors")
    assert torch.equal(saev.nn.load(out).W_enc, original.W_enc)

    card = (out / "README.md").read_text()
    record = json.loads((run_dir / "config.json").read_text())
    assert card.startswith("---\nlibrary_name: saev\n")
    for fact in ("TopK (k=3, relu=True)", "output of block 0", f"{record['tokens']:,}", "d_sae = 64"):
        assert fact in card, fact
    assert f"{record['eval']['fve']:.4f}" in card and f"{record['eval']['l0']:.2f}" in card
    assert "statistics stored in the file" in card

    # The card's snippet works once the folder is on the Hub (here: the offline cache).
    hf_cache_put("saev-test/exported-topk", {p.name: p for p in out.iterdir()})
    [snippet] = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    scope = {"acts": torch.randn(5, original.cfg.d_vit)}
    exec(snippet, scope)
    torch.testing.assert_close(scope["codes"], original.encode(scope["acts"]))


def test_export_in_saelens_format_folds_the_statistics(run_dir, tmp_path):
    out = tmp_path / "lens"
    main(["export", str(run_dir), str(out), "--format", "saelens"])
    assert formats.detect(out) == "saelens"
    card = (out / "README.md").read_text()
    assert "folded into the weights" in card and "SAE.load_from_disk" in card
    original, exported = saev.nn.load(run_dir / "sae.safetensors"), saev.nn.load(out)
    assert exported.normalization is None
    x = torch.randn(50, 16) * 3
    with torch.no_grad():
        torch.testing.assert_close(exported.encode(x), original.encode(x), atol=1e-4, rtol=1e-4)


def test_export_overwrite_replaces_only_what_an_export_writes(run_dir, tmp_path):
    out = tmp_path / "hub"
    main(["export", str(run_dir), str(out), "--format", "saelens"])
    (out / "notes.txt").write_text("mine")
    main(["export", str(run_dir), str(out), "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "notes.txt",
        "sae.safetensors",
        "saev_run.json",
    ]
    assert formats.detect(out) == "native"


def test_export_refuses_unfinished_runs_and_occupied_folders(run_dir, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "checkpoint.pt").write_bytes(b"x")
    for args, needle in (
        ([str(unfinished), str(tmp_path / "a")], "did not finish; finish it with `saev train ... --resume`"),
        ([str(run_dir), str(run_dir.parent)], "already exists and is not an empty folder"),
    ):
        with pytest.raises(SystemExit) as info:
            main(["export", *args])
        assert info.value.code == 2 and needle in capsys.readouterr().err


# The catalogue.


def test_the_catalogue_cites_every_entry():
    entries = catalog.entries()
    names = [e.name for e in entries]
    assert len(names) == len(set(names)) and "osunlp/SAE_CLIP_24K_ViT-B-16_IN1K" in names
    for e in entries:
        assert e.sources and all(s["url"] and s["quote"] for s in e.sources), e.name
        assert e.format in formats.FORMATS and e.tokens in ("patches", "cls", "all"), e.name
        assert e.vit_family in FAMILIES or e.vit_family == "dinov3", e.name
    clip = catalog.find("osunlp/SAE_CLIP_24K_ViT-B-16_IN1K")
    assert (clip.vit_family, clip.vit_ckpt, clip.layer, clip.n_patches_per_img) == (
        "clip",
        "ViT-B-16/openai",
        10,
        196,
    )


def test_catalogue_names_addresses_and_prefix():
    clip = catalog.find("catalog:osunlp/SAE_CLIP_24K_ViT-B-16_IN1K")
    assert catalog.find("hf://osunlp/SAE_CLIP_24K_ViT-B-16_IN1K") == clip
    assert catalog.find("hf://osunlp/SAE_CLIP_24K_ViT-B-16_IN1K/sae.pt") == clip
    # A repo holding several SAEs names none of them on its own.
    assert catalog.find("hf://osunlp/SAE_DINOv3_ViT-S-16_IN1K") is None
    assert catalog.find("some/local/file.pt") is None
    with pytest.raises(CheckpointError, match="no such SAE in the catalogue; `saev catalog` lists them"):
        catalog.find("catalog:osunlp/NOPE")


def test_catalog_command_lists_the_entries(capsys):
    main(["catalog"])
    out = capsys.readouterr().out
    assert "osunlp/SAE_DINOv2_24K_ViT-B-14_IN1K" in out and "dinov2/dinov2_vitb14_reg" in out
    main(["catalog", "--json"])
    assert len(json.loads(capsys.readouterr().out)) == len(catalog.entries())


@pytest.fixture
def tiny_entry(tmp_path, tiny_clip_dir, monkeypatch):
    """A published SAE for the tiny CLIP: a reference sae.pt in the fake Hub cache and a catalogue entry."""
    sae = saev.nn.SparseAutoencoder(saev.nn.SaeConfig(d_vit=64, d_sae=128, seed=3))
    with torch.no_grad():
        sae.b_enc.fill_(-0.2)
    checkpoints.dump(tmp_path / "sae.pt", sae)
    hf_cache_put("saev-test/SAE_TINY_CLIP", {"sae.pt": tmp_path / "sae.pt"})
    entry = {
        "name": "saev-test/SAE_TINY_CLIP",
        "repo": "saev-test/SAE_TINY_CLIP",
        "file": "sae.pt",
        "vit_family": "clip",
        "vit_ckpt": f"hf-hub:{TINY_CLIP_HF}",
        "layer": 2,
        "tokens": "patches",
        "n_patches_per_img": 196,
        "sources": [{"url": "tests", "quote": "a fixture"}],
    }
    (tmp_path / "extra.json").write_text(json.dumps({"entries": [entry]}))
    monkeypatch.setenv(catalog.ENV, str(tmp_path / "extra.json"))
    return entry


def test_inspect_takes_the_vit_and_layer_from_the_catalogue(tiny_entry, tmp_path, photos):
    sae = saev.nn.load(tiny_entry["name"])
    assert (sae.provenance.vit_ckpt, sae.provenance.layer, sae.provenance.source) == (
        tiny_entry["vit_ckpt"],
        2,
        "V1",
    )
    main(["inspect", str(photos[0]), "--sae", tiny_entry["name"], "--out", str(tmp_path / "out")])
    record = json.loads((tmp_path / "out" / f"{photos[0].stem}.json").read_text())
    assert record["vit"] == f"clip/hf-hub:{TINY_CLIP_HF}" and record["layer"] == 2
    assert record["latents"] and record["latents"][0]["max"] > 0


def test_bad_catalogue_files_are_named(tmp_path, monkeypatch):
    (tmp_path / "bad.json").write_text(
        json.dumps({"entries": [{"name": "x", "repo": "a/b", "file": "f", "layer": "2"}]})
    )
    monkeypatch.setenv(catalog.ENV, str(tmp_path / "bad.json"))
    with pytest.raises(CheckpointError, match="bad.json: catalogue entry 0 \\(x\\)"):
        catalog.entries()
