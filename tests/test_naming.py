"""Automatic latent names (`saev.naming`, `saev label`): the counts against a plain loop, the
candidates, the refusals, and on the built-in world the names of the concept latents and the
honesty of their scores on images never used for naming."""

import json

import numpy as np
import pytest
import torch

from saev import concepts, synthetic
from saev.bench import inputs
from saev.bench.reconstruction import token_sums
from saev.cli import main
from saev.commands import quickstart
from saev.data.store import open_shards
from saev.errors import ConfigError
from saev.naming import candidates as cands
from saev.naming.names import name_latents, read_names
from saev.nn import Provenance, SaeConfig, SparseAutoencoder, TopK, checkpoints
from tests.test_hardening_cli import run_cli
from tests.test_recording import cli_args, many_images


def gathered_from(codes_NPS: torch.Tensor) -> inputs.Gathered:
    codes = inputs.PatchCodes(codes_NPS.shape[1], codes_NPS.shape[2])
    codes.add(codes_NPS)
    codes.freeze()
    fires_NS = (codes_NPS > 0).sum(1).numpy()
    sums = token_sums(torch.zeros(*codes_NPS.shape[:2], 1), torch.zeros(*codes_NPS.shape[:2], 1))
    return inputs.Gathered(
        codes, codes_NPS.amax(1).numpy(), fires_NS, np.full(len(codes_NPS), codes_NPS.shape[1]), sums
    )


def plain_f1(fires: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    tp = float((fires & truth).sum())
    p = tp / fires.sum() if fires.sum() else 0.0
    r = tp / truth.sum() if truth.sum() else 0.0
    return p, r, (2 * tp / (fires.sum() + truth.sum()) if fires.sum() + truth.sum() else 0.0)


def test_names_and_scores_match_a_plain_loop():
    rng = np.random.default_rng(0)
    n, p, s = 40, 6, 9
    patch_truth = rng.random((n, p, 3)) < 0.3
    image_truth = np.eye(2, dtype=bool)[rng.integers(0, 2, n)]
    codes = rng.random((n, p, s)) * (rng.random((n, p, s)) < 0.25)
    # Latent 0 detects patch concept 1 exactly; latent 1 fires on every patch of class-1 images.
    codes[..., 0] = patch_truth[..., 1] * 2.0
    codes[..., 1] = image_truth[:, 1, None] * 1.5
    found = [
        cands.Candidates(("a", "b", "c"), "concept", "patch", patch_truth),
        cands.Candidates(("x", "y"), "label", "image", image_truth),
    ]
    naming = name_latents(gathered_from(torch.tensor(codes, dtype=torch.float32)), found, min_f1=0.3, seed=3)
    order = np.random.default_rng(3).permutation(n)
    choose, score = np.sort(order[: n // 2]), np.sort(order[n // 2 :])
    for latent in range(s):
        best, best_f1 = None, -1.0
        for c in found:
            for k in range(len(c.names)):
                if c.level == "patch":
                    f, t = codes[choose, :, latent] > 0, c.present[choose, :, k]
                else:
                    f, t = (codes[choose, :, latent] > 0).any(1), c.present[choose, k]
                f1 = plain_f1(f.ravel(), t.ravel())[2]
                if f1 > best_f1:
                    best, best_f1 = (c, k), f1
        got = naming.names[latent]
        if best_f1 < 0.3:
            assert got is None, latent
            continue
        c, k = best
        assert got is not None and got.text == c.names[k] and got.chosen_f1 == pytest.approx(best_f1)
        f = codes[score, :, latent] > 0
        t = c.present[score, :, k] if c.level == "patch" else c.present[score, k]
        prec, rec, f1 = plain_f1(f.ravel() if c.level == "patch" else f.any(1), t.ravel())
        assert (got.precision, got.recall, got.f1) == pytest.approx((prec, rec, f1))
    assert naming.names[0].text == "b" and naming.names[0].f1 == pytest.approx(1.0)
    assert naming.names[1].text == "y" and naming.names[1].level == "image"


def test_candidates_add_background_and_cross_axis_pairs_but_not_same_axis_ones():
    patch = np.zeros((1, 4, 3), dtype=bool)
    patch[0, 0] = [True, False, True]  # shape:circle & colour:red
    patch[0, 1] = [False, True, False]
    known = inputs.Knowledge(
        {}, ("shape:circle", "shape:square", "colour:red"), patch, source="built-in world"
    )
    single, pairs = cands.from_knowledge(known)
    assert single.names == ("shape:circle", "shape:square", "colour:red", "background")
    assert single.present[0, :, 3].tolist() == [False, False, True, True]
    assert pairs.names == ("shape:circle & colour:red", "shape:square & colour:red")
    assert pairs.present[0, :, 0].tolist() == [True, False, False, False]
    [labels] = cands.from_labels(["dog", None, "cat", "dog"])
    assert labels.names == ("cat", "dog") and labels.present.tolist() == [
        [False, True],
        [False, False],
        [True, False],
        [False, True],
    ]
    assert cands.from_labels(["dog", "dog"]) == []


def test_naming_without_any_candidate_is_refused():
    with pytest.raises(ConfigError, match="nothing to name latents with"):
        name_latents(gathered_from(torch.rand(8, 4, 5)), [])


@pytest.fixture(scope="module")
def clip_store(tmp_path_factory, tiny_clip, photos):
    root = tmp_path_factory.mktemp("label")
    main(cli_args(tiny_clip, many_images(root, photos, 16), root / "shards", batch_size=8))
    [store] = list((root / "shards").iterdir())
    return store


def clip_sae(store, tiny_clip, path):
    model = SparseAutoencoder(
        SaeConfig(d_vit=open_shards(store).meta.d_vit, d_sae=32, activation=TopK(k=4)),
        Provenance("clip", tiny_clip, -2, "patches"),
    )
    checkpoints.dump(path, model)
    return path


def test_saev_label_names_clip_latents_from_class_folders_and_words(clip_store, tiny_clip, tmp_path, capsys):
    sae = clip_sae(clip_store, tiny_clip, tmp_path / "sae.safetensors")
    main(
        [
            "label",
            "--sae",
            str(sae),
            "--shards",
            str(clip_store),
            "--out",
            str(tmp_path / "n"),
            "--min-f1",
            "0.05",
        ]
    )
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "n" / "names.json")
    data = json.loads((tmp_path / "n" / "names.json").read_text())
    assert data["method"]["sources"] == ["label (image, 4 names)", "text (image, 322 names)"]
    names = read_names(tmp_path / "n" / "names.json")
    assert sorted(names) == list(range(32))
    assert {n["source"] for n in names.values() if n} <= {"label", "text"}
    assert "latents named" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--min-f1", "0"], "--min-f1 must be in"),
        (["--max-images", "3"], "--max-images must be at least 4"),
        (["--top-words", "400"], "--top-words must be in"),
    ],
)
def test_bad_naming_options_are_one_line_errors(clip_store, tiny_clip, tmp_path, capsys, extra, message):
    sae = clip_sae(clip_store, tiny_clip, tmp_path / "sae.safetensors")
    err = run_cli(
        ["label", "--sae", str(sae), "--shards", str(clip_store), "--out", str(tmp_path / "n"), *extra],
        capsys,
    )
    assert message in err
    assert not (tmp_path / "n" / "names.json").exists()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The quickstart's store and SAE (its default size: 3,000 images, 3M training tokens), named by
    `saev label`, and 600 more images of the world (another seed) recorded by the same ViT."""
    root = tmp_path_factory.mktemp("named")
    cfg = quickstart.Config(out=root / "qs")
    store = quickstart._record(cfg, quickstart._generate(cfg), "shapes-vit")
    sae = quickstart._train(cfg, store.path).checkpoint
    main(["label", "--sae", str(sae), "--shards", str(store.path), "--out", str(root / "names")])
    fresh = quickstart.Config(out=root / "fresh", n_images=600, seed=1)
    fresh_store = quickstart._record(fresh, quickstart._generate(fresh), "shapes-vit")
    return (
        store,
        sae,
        read_names(root / "names" / "names.json"),
        fresh_store,
        synthetic.load(root / "fresh" / "images"),
    )


@pytest.mark.slow
def test_each_concepts_best_latent_is_named_after_it(world):
    store, sae, names, _, _ = world
    dataset = synthetic.load(store.image_source["root"] + "/..")
    scores = concepts.score_store(checkpoints.load(sae).eval(), store, -2, dataset)
    right = [s.concept for s in scores if (names[s.latent.unit] or {}).get("text") == s.concept]
    assert len(right) >= 11, [(s.concept, names[s.latent.unit]) for s in scores]


@pytest.mark.slow
def test_a_named_latents_f1_holds_on_images_never_used_for_naming(world):
    _, sae_path, names, fresh, dataset = world
    sae = checkpoints.load(sae_path).eval()
    images = list(range(len(fresh)))
    known = inputs.synthetic_knowledge(dataset, [fresh.images[i]["path"] for i in images], fresh.grid)
    [single, pairs] = cands.from_knowledge(known)
    truth = {n: c.present[..., k] for c in (single, pairs) for k, n in enumerate(c.names)}
    gathered = inputs.gather(sae, fresh, -2, images)
    fires_NPS = np.concatenate([b.numpy() > 0 for b in gathered.codes.blocks()])
    checked = 0
    for latent, name in names.items():
        if name is None or name["fires"] < 300:  # a rare latent's F1 is too noisy to compare to 0.05
            continue
        _, _, f1 = plain_f1(fires_NPS[..., latent].ravel(), truth[name["text"]].ravel())
        assert abs(f1 - name["f1"]) <= 0.05, (latent, name, f1)
        checked += 1
    assert checked >= 12
