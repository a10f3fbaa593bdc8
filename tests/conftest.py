"""Shared fixtures: offline Hugging Face cache, tiny real-architecture ViTs, real photographs; and
`missing`, `import_or_skip` and `requires`: what a test needs but this machine lacks is skipped,
or a failure under CI=true."""

import importlib
import json
import os
import pathlib
import shutil
import tempfile
from types import ModuleType
from typing import NoReturn

# Tests never download: point the Hugging Face cache at a private folder and forbid network use
# before anything imports huggingface_hub.
_HF_HOME = pathlib.Path(tempfile.mkdtemp(prefix="saev-tests-hf-"))
os.environ["HF_HOME"] = str(_HF_HOME)
os.environ["HF_HUB_OFFLINE"] = "1"
# The reference saev passes this folder to OpenCLIP as its Hugging Face cache.
os.environ["SAEV_CACHE"] = str(_HF_HOME / "hub")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")
# Tiny test models gain nothing from intra-op threads, and a busy second core makes them crawl.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# sparsify (an oracle for the format tests) needs Triton, a GPU compiler, unless told to run eagerly.
os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
os.environ.setdefault("SAEV_THREADS", "1")  # the CLI would otherwise pick a count from the load average

# Shapes and types are checked at test time: every function and dataclass of saev imported from
# here on is wrapped by jaxtyping (shape annotations) with beartype (every other annotation; an
# int passes for a float, as PEP 484 says).
from jaxtyping import install_import_hook  # noqa: E402

install_import_hook("saev", "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

TINY_CLIP_CFG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 224,
            "layers": 4,
            "width": 64,
            "head_width": 32,
            "patch_size": 16,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    },
}
TINY_CLIP_HF = "saev-test/tiny-clip"
FAKE_COMMIT = "0" * 40


def hf_cache_put(repo_id: str, files: dict[str, pathlib.Path]) -> None:
    """Place files in the offline Hugging Face cache as if downloaded from `repo_id`."""
    repo = _HF_HOME / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(FAKE_COMMIT)
    for name, src in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, snapshot / name)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> pathlib.Path:
    """An OpenCLIP `local-dir:` with a 4-block ViT-B/16-shaped model (width 64) and random weights."""
    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("tiny-clip")
    (root / "open_clip_config.json").write_text(json.dumps(TINY_CLIP_CFG))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{root}", load_weights=False)
    # Random init leaves the positional embedding tiny; scale everything up so tokens differ.
    with torch.no_grad():
        model.visual.positional_embedding.normal_(0, 0.5)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        root / "open_clip_model.safetensors",
    )
    hf_cache_put(
        TINY_CLIP_HF,
        {
            "open_clip_config.json": root / "open_clip_config.json",
            "open_clip_model.safetensors": root / "open_clip_model.safetensors",
        },
    )
    return root


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_dir) -> str:
    return f"local-dir:{tiny_clip_dir}"


PHOTOS = {
    "astronaut.png": "astronaut",
    "chelsea.jpg": "chelsea",
    "coffee.jpg": "coffee",
    "rocket.jpg": "rocket",
    "camera.png": "camera",
    "immunohistochemistry.jpg": "immunohistochemistry",
    "hubble.jpg": "hubble_deep_field",
    "colorwheel.png": "colorwheel",
}


def photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(np.asarray(getattr(skimage.data, name)()))


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory) -> pathlib.Path:
    """Real photographs from scikit-image, saved as files (JPEG and PNG, RGB and grayscale)."""
    root = tmp_path_factory.mktemp("photos")
    for fname, name in PHOTOS.items():
        photo(name).save(root / fname)
    return root


@pytest.fixture(scope="session")
def photos(photos_dir) -> list[pathlib.Path]:
    return sorted(photos_dir.iterdir())


# What a test needs but this machine lacks (an oracle library, the reference saev, Chromium): skipped
# here, a failure under CI=true, where `make test` and .ci/run install everything and a skip would
# hide a broken setup.
DEV_HINT = "`pip install -e '.[dev,oracle]'` installs it (`make test` does)"
ORACLE_HINT = "`pip install -e '.[oracle]'` installs it (`make test` does)"


def on_ci() -> bool:
    """CI systems set CI=true; CI=1 counts too."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def missing(what: str, hint: str = DEV_HINT) -> NoReturn:
    """Skip the test (or the test module, at import) for lack of `what`; fail instead under CI=true."""
    message = f"{what} is missing; {hint}"
    if on_ci():
        pytest.fail(f"CI={os.environ['CI']}: {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def import_or_skip(name: str, hint: str = DEV_HINT) -> ModuleType:
    """`pytest.importorskip` that fails under CI=true, naming the package."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        what = f"package {name!r}" + ("" if err.name == name else f" ({err})")
    missing(what, hint)  # outside the except: the message alone, not the ImportError chained to it


def requires(available: bool, what: str, hint: str = DEV_HINT) -> pytest.MarkDecorator:
    """Mark a test that needs a program: skipped where it is missing, failing under CI=true (see
    pytest_runtest_setup)."""
    return pytest.mark.requires(available, what, hint)


def pytest_runtest_setup(item):
    for mark in item.iter_markers("requires"):
        available, what, hint = mark.args
        if not available:
            missing(what, hint)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# A system program, not a Python package: .ci/run installs it where it can (root, apt-get), and a CI
# machine without it skips the browser tests with this reason rather than failing the run.
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium (`chromium` or `chromium-browser` on PATH) is missing for this browser test; "
    "install it, e.g. `apt-get install chromium` (.ci/run does where it can)",
)


def launch_chromium(playwright):
    """The system Chromium, headless, with nothing that would reach the network on its own."""
    flags = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ]
    return playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
