"""Gallery II: rendering into an existing gallery adds to it (the index's own advice loses nothing),
a gallery of another SAE or store is refused, and names, notes, figures and links survive."""

import html
import json
import pathlib
import re
import shlex
import shutil

import pytest
import torch
from PIL import Image

import saev.data
import saev.nn
from saev.cli import main
from saev.errors import ConfigError
from saev.visuals import VisualsConfig, make_visuals
from saev.visuals.gallery import Figure
from tests.test_recording import cli_args

NAMES = {
    3: {
        "text": "shape:circle",
        "source": "concept",
        "level": "patch",
        "f1": 0.84,
        "precision": 0.8,
        "recall": 0.88,
    },
    5: None,
}
"""As the naming engineer's `Naming.as_dicts()` gives them (latent 5 scored, unexplained)."""
NAMING = {"sources": ["concept"], "min_f1": 0.5}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, tiny_clip, photos_dir):
    """16 images (the 8 photographs twice) recorded by a tiny CLIP, and two SAEs that read them."""
    tmp = tmp_path_factory.mktemp("gallery2")
    images = tmp / "images"
    shutil.copytree(photos_dir, images / "a")
    shutil.copytree(photos_dir, images / "b")
    main(cli_args(tiny_clip, images, tmp / "shards"))
    store_dir = next((tmp / "shards").iterdir())
    for seed, name in ((2, "sae.safetensors"), (3, "other.safetensors")):
        sae = saev.nn.SparseAutoencoder(
            saev.nn.SaeConfig(d_vit=64, d_sae=48, activation=saev.nn.TopK(k=6), seed=seed)
        )
        sae.provenance = saev.nn.Provenance(layer=-2)
        saev.nn.dump(tmp / name, sae)
    return tmp, store_dir


def first_gallery(recorded, out: pathlib.Path) -> None:
    """A gallery as `saev quickstart` makes one: annotated latents, a figure, names and a link."""
    tmp, store_dir = recorded
    (out / "steering").mkdir(parents=True)
    Image.new("RGB", (40, 20), (200, 30, 30)).save(out / "steering" / "3.png")
    make_visuals(
        VisualsConfig(
            sae=str(tmp / "sae.safetensors"), shards=store_dir, out=out, layer=-2, top_k=4, latents=(3, 5, 9)
        ),
        notes={3: "best detector of shape:circle (F1 0.84)"},
        figures={3: [Figure("steering/3.png", "Suppressing it", "what suppressing latent 3 does")]},
        links={"The SAE's scorecard": "../bench/index.html"},
        names=NAMES,
        naming=NAMING,
    )


def advice(out: pathlib.Path) -> list[str]:
    """The command the index prints for rendering other latents, as a shell would split it."""
    found = re.search(r'<code class="cmd">(.*?)</code>', (out / "index.html").read_text())
    assert found, "the index prints no command"
    words = shlex.split(html.unescape(found.group(1)))
    assert words[:2] == ["saev", "visuals"]
    return words[1:]


def tree(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def index_rows(out: pathlib.Path) -> list[dict]:
    text = (out / "index.html").read_text()
    return json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', text).group(1))


@pytest.mark.slow
def test_the_printed_advice_adds_pages_and_loses_nothing(recorded, tmp_path, capsys, monkeypatch):
    out = tmp_path / "gallery"
    first_gallery(recorded, out)
    before = json.loads((out / "latents.json").read_text())
    words = advice(out)
    asked = [int(w) for w in words[words.index("--latents") + 1 :]]
    assert len(asked) == 2 and not set(asked) & {3, 5, 9}
    monkeypatch.chdir(tmp_path.parent)  # the printed paths are absolute: any folder will do
    main(words)
    assert capsys.readouterr().out.strip() == str(out.resolve() / "index.html")

    after = json.loads((out / "latents.json").read_text())
    rendered = sorted(r["latent"] for r in after["latents"] if r["rendered"])
    assert rendered == sorted({3, 5, 9, *asked})
    assert sorted(r["latent"] for r in index_rows(out) if r["page"]) == rendered
    for s in rendered:
        assert (out / "latents" / f"{s}.html").exists()
    # Notes, figures, names, links and the naming method stay, on the pages and in latents.json.
    page3 = (out / "latents" / "3.html").read_text()
    assert "best detector of shape:circle (F1 0.84)" in page3
    assert 'src="../steering/3.png"' in page3 and "Suppressing it" in page3
    assert "shape:circle" in page3 and "F1 0.84 (precision 0.80, recall 0.88)" in page3
    assert "unexplained" in (out / "latents" / "5.html").read_text()
    for s in range(48):
        for key in ("note", "figures"):
            assert after["latents"][s][key] == before["latents"][s][key], (s, key)
        assert after["latents"][s].get("name", "absent") == before["latents"][s].get("name", "absent")
    assert after["latents"][3]["name"] == NAMES[3] and after["latents"][5]["name"] is None
    assert "name" not in after["latents"][9]  # never scored: neither named nor unexplained
    assert after["links"] == {"The SAE's scorecard": "../bench/index.html"} and after["naming"] == NAMING
    index = (out / "index.html").read_text()
    assert 'href="../bench/index.html"' in index and "best detector of shape:circle" in index
    assert f"{len(rendered)} of 48 latents have pages" in index
    assert "3 more rendered into this folder by earlier runs" in index
    # The new advice names latents still without pages.
    again = advice(out)
    assert not {int(w) for w in again[again.index("--latents") + 1 :]} & set(rendered)


@pytest.mark.slow
def test_repeating_a_command_recomputes_the_same_bytes(recorded, tmp_path, capsys):
    out = tmp_path / "gallery"
    first_gallery(recorded, out)
    words = advice(out)
    main(words)
    once = tree(out)
    main(words)
    assert tree(out) == once


def test_a_gallery_of_another_sae_store_or_ranking_is_refused(recorded, tmp_path, capsys):
    tmp, store_dir = recorded
    out = tmp_path / "gallery"
    first_gallery(recorded, out)
    kept = tree(out)
    words = advice(out)
    other = ["--sae", str(tmp / "other.safetensors")]
    sae = str((tmp / "sae.safetensors").resolve())
    changes = [
        (other, f"SAE {sae} there, {(tmp / 'other.safetensors').resolve()} now"),
        (["--sort-by", "img"], "--sort-by patch there, img now"),
    ]
    for change, what in changes:
        with pytest.raises(SystemExit):
            main([*words, *change])
        err = capsys.readouterr().err
        assert f"--out {out.resolve()} holds the gallery of another SAE, store, layer or ranking" in err
        assert what in err and "--overwrite" in err
        assert tree(out) == kept  # refused before anything is written
    main([*words, *other, "--overwrite"])
    after = json.loads((out / "latents.json").read_text())
    asked = {int(w) for w in words[words.index("--latents") + 1 :]}
    assert {r["latent"] for r in after["latents"] if r["rendered"]} == asked
    assert not any(r["note"] or "name" in r for r in after["latents"]) and "naming" not in after


def test_an_unreadable_gallery_is_refused(recorded, tmp_path):
    tmp, store_dir = recorded
    out = tmp_path / "gallery"
    first_gallery(recorded, out)
    (out / "latents.json").write_text('{"latents": [{"latent": 0}]}')
    cfg = VisualsConfig(sae=str(tmp / "sae.safetensors"), shards=store_dir, out=out, layer=-2, latents=(1,))
    with pytest.raises(ConfigError, match=r"1 latents there, 48 now"):
        make_visuals(cfg)
    (out / "topk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(
        ConfigError, match=rf"--out {re.escape(str(out))} holds a saev visuals gallery that cannot be read"
    ):
        make_visuals(cfg)


@pytest.mark.parametrize(
    "names, message",
    [
        (
            {3: {"text": "x", "source": "concept", "level": "patch", "precision": 1, "recall": 1}},
            "'f1' must be a number",
        ),
        ({3: {**NAMES[3], "f1": 1.5}}, "'f1' must be a number from 0 to 1, got 1.5"),
        ({48: None}, "latent 48 out of range: the SAE has 48 latents"),
    ],
)
def test_bad_names_are_refused_before_the_pass(recorded, tmp_path, names, message):
    tmp, store_dir = recorded
    cfg = VisualsConfig(sae=str(tmp / "sae.safetensors"), shards=store_dir, out=tmp_path / "g", layer=-2)
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_visuals(cfg, names=names)
    assert not (tmp_path / "g").exists()


def test_a_name_in_latents_json_that_is_not_one_names_the_file(recorded, tmp_path):
    tmp, store_dir = recorded
    out = tmp_path / "gallery"
    first_gallery(recorded, out)
    data = json.loads((out / "latents.json").read_text())
    data["latents"][3]["name"] = {"text": 7}
    (out / "latents.json").write_text(json.dumps(data))
    cfg = VisualsConfig(sae=str(tmp / "sae.safetensors"), shards=store_dir, out=out, layer=-2, latents=(1,))
    with pytest.raises(
        ConfigError, match=re.escape(f"{out / 'latents.json'}: latent 3: the name's 'text' must be text")
    ):
        make_visuals(cfg)


def test_related_latents_match_brute_force(recorded, tmp_path):
    """Neighbours by decoder cosine and co-occurrence over the sampled tokens, as written to latents.json."""
    tmp, store_dir = recorded
    out = tmp_path / "gallery"
    first_gallery(recorded, out)
    data = json.loads((out / "latents.json").read_text())
    sae = saev.nn.load(tmp / "sae.safetensors")
    unit = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    cos = unit @ unit.T
    store = saev.data.open_shards(store_dir)
    layer_i, first = store.layer_index(-2), int(store.meta.cls_token)
    acts = torch.cat([torch.from_numpy(store.acts(i)[layer_i, first:]) for i in range(len(store))])
    with torch.no_grad():
        fires = sae.encode(acts) > 0  # [tokens, d_sae]: every patch token (16 images: all sampled)
    assert data["cooccur_tokens"] == len(fires)
    for s in (3, 5, 9):
        row = data["latents"][s]
        others = [o for o in range(48) if o != s]
        expect = sorted(others, key=lambda o: (-cos[s, o].item(), o))[:5]
        assert [n["latent"] for n in row["neighbours"]] == expect
        assert [n["cosine"] for n in row["neighbours"]] == pytest.approx(
            [cos[s, o].item() for o in expect], abs=1e-6
        )
        together = (fires[fires[:, s]].sum(0).double() / max(int(fires[:, s].sum()), 1)).tolist()
        expect = sorted((o for o in others if together[o] > 0), key=lambda o: (-together[o], o))[:5]
        assert [c["latent"] for c in row["cooccur"]] == expect
        assert [c["p"] for c in row["cooccur"]] == pytest.approx([together[o] for o in expect], abs=1e-6)
    assert "neighbours" not in data["latents"][0]  # only rendered latents


@pytest.mark.slow
def test_the_advice_on_a_quickstart_gallery_loses_no_page_note_name_or_figure(tmp_path, capsys):
    out = tmp_path / "qs"
    main(["quickstart", "--out", str(out), "--n-images", "120", "--n-train", "20000", "--n-latents", "16"])
    capsys.readouterr()
    gallery = out / "gallery"
    before = json.loads((gallery / "latents.json").read_text())
    pages = sorted(p.name for p in (gallery / "latents").iterdir())
    figures = [f["src"] for r in before["latents"] for f in r["figures"]]
    assert len(pages) == 16 and figures and any(r["note"] for r in before["latents"])
    words = advice(gallery)
    asked = [int(w) for w in words[words.index("--latents") + 1 :]]
    main(words)
    after = json.loads((gallery / "latents.json").read_text())
    assert sorted(p.name for p in (gallery / "latents").iterdir()) == sorted(
        [*pages, *(f"{s}.html" for s in asked)]
    )
    for name in pages:
        s = int(name.removesuffix(".html"))
        page = (gallery / "latents" / name).read_text()
        row = after["latents"][s]
        assert row["rendered"] and row["note"] == before["latents"][s]["note"]
        assert row["figures"] == before["latents"][s]["figures"]
        assert row.get("name", "absent") == before["latents"][s].get("name", "absent")
        for f in row["figures"]:
            assert f'src="../{f["src"]}"' in page and (gallery / f["src"]).exists()
        if row["note"]:
            assert html.escape(row["note"]) in page
    assert {k: v for k, v in after.items() if k != "latents"} == {
        k: v for k, v in before.items() if k != "latents"
    }
    assert f"{16 + len(asked)} of " in (gallery / "index.html").read_text()
