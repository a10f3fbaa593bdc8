"""Every Python block of README.md and docs/*.md works as printed.

A block runs for real, in a folder that holds what the docs' examples name (a small store at
`shards/<hash>`, an SAE trained on it at `sae.safetensors`, a quickstart-shaped `quickstart/`),
unless an HTML comment right before it says why not:

    <!-- not run: needs a weights download -->

Such a block is still compiled and checked for undefined names (ruff's F821), alone or, when the
comment says `continues the block above`, after the file's previous Python block; names the reader
supplies are listed in the comment as `given: NAME, NAME`. Shell blocks may only name `saev`
commands that exist.
"""

import dataclasses
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from saev import synthetic
from saev.cli import main
from saev.commands import COMMANDS

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUFF = pathlib.Path(sys.executable).with_name("ruff")  # a dev dependency, installed beside python
FENCE = re.compile(r"^```(\w*)\s*$")
COMMENT = re.compile(r"^<!--(.*?)-->\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    path: pathlib.Path
    line: int
    """1-based line of the opening fence."""
    lang: str
    code: str
    notes: tuple[str, ...]
    """The HTML comments right before the block (blank lines between are allowed)."""
    previous: "Block | None"
    """The file's previous block of the same language."""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def not_run(self) -> str | None:
        return next((n.split(":", 1)[1].strip() for n in self.notes if n.startswith("not run:")), None)

    @property
    def given(self) -> tuple[str, ...]:
        names = [m.group(1) for n in self.notes if (m := re.search(r"given: ([\w, ]+)", n))]
        return tuple(name.strip() for group in names for name in group.split(",") if name.strip())

    @property
    def continues(self) -> bool:
        return any("continues the block above" in n for n in self.notes)


def blocks(path: pathlib.Path) -> list[Block]:
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        notes, k = [], i - 1
        while k >= 0 and (not lines[k].strip() or COMMENT.match(lines[k].strip())):
            if m := COMMENT.match(lines[k].strip()):
                notes.insert(0, m.group(1).strip())
            k -= 1
        lang = fence.group(1)
        previous = next((b for b in reversed(found) if b.lang == lang), None)
        found.append(Block(path, i + 1, lang, "\n".join(lines[i + 1 : end]) + "\n", tuple(notes), previous))
        i = end + 1
    return found


ALL = [b for path in DOCS for b in blocks(path)]
PYTHON = [b for b in ALL if b.lang == "python"]
RUN = [b for b in PYTHON if b.not_run is None]
SHELL = [b for b in ALL if b.lang in ("sh", "bash", "console", "shell", "text")]


def undefined_names(code: str) -> list[str]:
    """ruff's F821 (undefined name) findings on `code`."""
    assert RUFF.exists(), f"{RUFF} is missing: pip install -e '.[dev]'"
    result = subprocess.run(
        [
            str(RUFF),
            "check",
            "--no-cache",
            "--isolated",
            "--select",
            "F821",
            "--output-format",
            "concise",
            "--stdin-filename",
            "block.py",
            "-",
        ],
        input=code,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    return re.findall(r"F821 Undefined name `([^`]+)`", result.stdout)


def test_the_docs_have_python_blocks_and_most_run():
    assert len(PYTHON) >= 6 and len(RUN) >= 4
    for block in PYTHON:
        if block.not_run is not None:
            assert block.not_run, f"{block.where}: say why the block is not run"


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.where)
def test_every_python_block_compiles_and_names_only_defined_names(block):
    code = block.code
    if block.continues:
        assert block.previous is not None, f"{block.where}: there is no block above to continue"
        code = block.previous.code + code
    compile(code, block.where, "exec")
    code = "".join(f"{name} = None\n" for name in block.given) + code
    assert undefined_names(code) == [], f"{block.where} uses names it never defines"


SAEV = re.compile(r"(?:^|[\s;&|(`$])(?:[\w./-]*/)?saev\s+([a-z][\w-]*)", re.M)


@pytest.mark.parametrize("block", SHELL, ids=lambda b: b.where)
def test_shell_blocks_name_only_saev_commands_that_exist(block):
    code = re.sub(r"<<-?\s*'?(\w+)'?\n.*?^\1$", "", block.code, flags=re.S | re.M)  # here-documents
    code = "\n".join(re.sub(r"(^|\s)#.*", "", line) for line in code.splitlines())  # comments
    if block.lang == "text":  # only the commands a transcript shows being typed
        code = "\n".join(line[2:] for line in code.splitlines() if line.startswith("$ "))
    named = set(SAEV.findall(code))
    assert named <= set(COMMANDS), f"{block.where}: no such saev command: {sorted(named - set(COMMANDS))}"


def test_the_shell_check_sees_commands():
    found = {name for b in SHELL for name in SAEV.findall(b.code)}
    assert {"quickstart", "inspect", "steer", "train", "visuals", "activations"} <= found


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> pathlib.Path:
    """What the docs' examples name: `shards/<hash>` (a store of the built-in ViT's block -2 over
    synthetic images), `sae.safetensors` (a TopK SAE trained on it), and `quickstart/` with its
    images (`002990.png` among them), that SAE under `runs/` and its gallery."""
    ws = tmp_path_factory.mktemp("docs")
    images = ws / "quickstart" / "images"
    synthetic.generate(images, 40, seed=0)
    Image.fromarray(synthetic.render(synthetic.sample_record(0, 2990))[0]).save(
        images / "images" / "002990.png"
    )
    qs = ws / "quickstart"
    main(
        [
            *"activations --vit-family builtin --vit-ckpt shapes-vit".split(),
            "--images",
            str(images / "images"),
            "--dump-to",
            str(qs / "shards"),
        ]
    )
    (store,) = (qs / "shards").iterdir()
    (ws / "shards").mkdir()
    (ws / "shards" / "<hash>").symlink_to(store, target_is_directory=True)
    train = "train --layer -2 --arch topk --k 8 --exp-factor 8 --n-train 4000 --batch-size 256"
    main([*train.split(), "--shards", str(store), "--out", str(qs / "runs")])
    (sae,) = (qs / "runs").glob("*/sae.safetensors")
    shutil.copy(sae, ws / "sae.safetensors")
    visuals = "visuals --top-k 4 --n-latents 2"
    main([*visuals.split(), "--sae", str(sae), "--shards", str(store), "--out", str(qs / "gallery")])
    return ws


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN, ids=lambda b: b.where)
def test_every_runnable_python_block_runs(block, workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    exec(compile(block.code, block.where, "exec"), {"__name__": "__main__"})
