"""The README's guide code runs unchanged against this package (model names swapped for tiny local ones)."""

import pathlib
import re

import torch

from tests.conftest import hf_cache_put
from tests.reference import HEADERS, write_reference

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_block(marker: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- {marker}:start -->\s*```python\n(.*?)```\s*<!-- {marker}:end -->", text, re.S)
    assert match, f"README has no {marker} block"
    return match.group(1)


def python_block_after(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_guide_snippet_runs_and_gives_reference_codes(tmp_path, tiny_clip, photos_dir):
    d_vit, exp = 64, 4
    g = torch.Generator().manual_seed(0)
    state = {
        "W_enc": torch.randn(d_vit, d_vit * exp, generator=g) * 0.2,
        "b_enc": torch.randn(d_vit * exp, generator=g) * 0.1,
        "W_dec": torch.randn(d_vit * exp, d_vit, generator=g) * 0.2,
        "b_dec": torch.randn(d_vit, generator=g),
    }
    write_reference(tmp_path / "sae.pt", HEADERS["V0b"] | {"d_vit": d_vit, "exp_factor": exp}, state)
    hf_cache_put("osunlp/SAE_CLIP_24K_ViT-B-16_IN1K", {"sae.pt": tmp_path / "sae.pt"})

    code = readme_block("guide")
    code = code.replace('"ViT-B-16/openai"', repr(tiny_clip)).replace("[10]", "[2]")
    code = code.replace('"example.jpg"', repr(str(photos_dir / "chelsea.jpg")))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)

    f_x, vit_acts = scope["f_x"], scope["vit_acts"]
    assert vit_acts.shape == (1, 196, d_vit)
    expected = torch.relu((vit_acts - state["b_dec"]) @ state["W_enc"] + state["b_enc"])
    torch.testing.assert_close(f_x, expected, rtol=1e-5, atol=1e-5)

    # The normalisation recipe that follows runs in the same session and stores the statistics.
    scope["my_image_paths"] = sorted(photos_dir.iterdir())
    norm_code = python_block_after("### Normalisation").replace(
        '"sae-normalised.safetensors"', repr(str(tmp_path / "n.safetensors"))
    )
    exec(compile(norm_code, "README.md", "exec"), scope)
    import saev.nn

    loaded = saev.nn.load(tmp_path / "n.safetensors")
    assert loaded.normalization is not None
    normalised = loaded.normalize(vit_acts)
    assert normalised.norm(dim=-1).mean().item() > 0
    torch.testing.assert_close(
        loaded.encode(vit_acts),
        torch.relu((normalised - state["b_dec"]) @ state["W_enc"] + state["b_enc"]),
        rtol=1e-5,
        atol=1e-5,
    )
