"""`saev visuals --names --head`: names from `saev label` and each rendered latent's logit lens on a
head, on the pages and in latents.json, kept and extended by the index's own advice."""

import html
import json
import re
import shlex

import pytest
import torch

from saev.cli import main
from saev.data.store import open_shards
from saev.explorer.lens import LENS_IMAGES
from saev.nn import Provenance, SaeConfig, SparseAutoencoder, TopK, checkpoints
from saev.steering import inputs
from saev.steering.heads import open_head
from saev.steering.lens import logit_lens
from saev.visuals.lookup import ImageLookup
from tests.test_recording import cli_args, many_images


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_clip, photos):
    root = tmp_path_factory.mktemp("lens")
    main(cli_args(tiny_clip, many_images(root, photos, 16), root / "shards", batch_size=8))
    [store] = list((root / "shards").iterdir())
    model = SparseAutoencoder(
        SaeConfig(d_vit=open_shards(store).meta.d_vit, d_sae=24, activation=TopK(k=4), seed=1),
        Provenance("clip", tiny_clip, -2, "patches"),
    )
    checkpoints.dump(root / "sae.safetensors", model)
    (root / "classes.txt").write_text("cat\ndog\nrocket\ncoffee\n")
    main(
        [
            "label",
            "--sae",
            str(root / "sae.safetensors"),
            "--shards",
            str(store),
            "--out",
            str(root / "names"),
            "--min-f1",
            "0.05",
        ]
    )
    head = f"clip-zero-shot:{root / 'classes.txt'}"
    gallery = root / "gallery"
    args = ["visuals", "--sae", str(root / "sae.safetensors"), "--shards", str(store), "--out", str(gallery)]
    main([*args, "--names", str(root / "names" / "names.json"), "--head", head, "--latents", "0", "1", "2"])
    return root, store, head, gallery


def rows(gallery) -> dict[int, dict]:
    return {r["latent"]: r for r in json.loads((gallery / "latents.json").read_text())["latents"]}


@pytest.mark.slow
def test_pages_show_the_heads_logit_lens_as_computed_directly(made):
    root, store, head_spec, gallery = made
    got = rows(gallery)
    sae = checkpoints.load(root / "sae.safetensors").eval()
    spliced, transform = inputs.spliced_model(sae, None, None, None, None)
    head = open_head(head_spec, spliced.vit)
    lookup = ImageLookup(open_shards(store))
    x = torch.stack([transform(lookup.load(i)) for i in range(LENS_IMAGES)])
    scales = torch.tensor([got[s]["mean"] for s in (0, 1, 2)])
    expected = {lens.latent: lens.to_json() for lens in logit_lens(spliced, head, x, [0, 1, 2], scales)}
    for s in (0, 1, 2):
        [effect] = got[s]["effects"]
        assert effect["head"] == head_spec and effect["scale"] == pytest.approx(
            expected[s]["scale"], rel=1e-5
        )
        for key in ("promoted", "suppressed"):
            assert [r["class"] for r in effect[key]] == [r["class"] for r in expected[s][key]]
            assert [r["logit_delta"] for r in effect[key]] == pytest.approx(
                [r["logit_delta"] for r in expected[s][key]], rel=1e-4, abs=1e-6
            )
        page = (gallery / "latents" / f"{s}.html").read_text()
        assert "Direct effect on the heads (logit lens)" in page
    assert "effects" not in got[3]


@pytest.mark.slow
def test_names_reach_latents_json_and_the_advice_keeps_names_and_effects(made):
    root, _, head_spec, gallery = made
    named = {
        r["latent"]: r["name"] for r in json.loads((root / "names" / "names.json").read_text())["latents"]
    }
    assert {s: r.get("name") for s, r in rows(gallery).items()} == named
    command = html.unescape(
        re.search(r'<code class="cmd">(.*?)</code>', (gallery / "index.html").read_text()).group(1)
    )
    words = shlex.split(command)
    assert words[words.index("--head") + 1] == head_spec
    main(words[1:])
    after = rows(gallery)
    added = [int(w) for w in words[words.index("--latents") + 1 :]]
    for s in (0, 1, 2, *added):
        assert after[s]["rendered"] and after[s]["effects"][0]["head"] == head_spec
    assert {s: r.get("name") for s, r in after.items()} == named


@pytest.mark.slow
def test_a_bad_head_is_refused_before_the_pass(made, capsys):
    root, store, _, _ = made
    with pytest.raises(SystemExit) as err:
        main(
            [
                "visuals",
                "--sae",
                str(root / "sae.safetensors"),
                "--shards",
                str(store),
                "--out",
                str(root / "x"),
                "--head",
                "nonsense",
            ]
        )
    assert err.value.code == 2
    assert "--head 'nonsense'" in capsys.readouterr().err
    assert not (root / "x").exists()
