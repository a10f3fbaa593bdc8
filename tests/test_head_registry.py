"""The head registry (`saev.steering.heads.KINDS`) is the only list of head kinds: `open_head`, the
`--head` help of every command and the error for an unknown head all follow it, so adding a kind
is one module and one registry line."""

import subprocess
import sys
import typing

import pytest

from saev import builtin
from saev.activations.families import FAMILIES, make_vit
from saev.commands import COMMANDS
from saev.errors import ConfigError
from saev.steering import heads
from saev.steering.heads import Head, HeadKind


@pytest.fixture(scope="module")
def vit():
    return make_vit("builtin", builtin.DEFAULT, pretrained=False)


def head_help(config: type) -> str:
    hint = typing.get_type_hints(config, include_extras=True)["head"]
    return next(m.help for m in hint.__metadata__ if getattr(m, "help", None))


def test_every_head_kind_is_in_every_head_help():
    for name in ("steer", "evaluate", "serve", "visuals"):
        config = COMMANDS[name].config
        for kind in heads.KINDS.values():
            assert kind.syntax in head_help(config), (name, kind.name)


def test_open_head_dispatches_by_kind(vit, tmp_path):
    assert heads.open_head("builtin-image", vit).kind == "image"
    assert heads.open_head("builtin-patch", vit).kind == "patch"
    # Each kind's own checks run: a zero-shot head needs a text tower, a probe its file.
    with pytest.raises(ConfigError, match="text tower"):
        heads.open_head(f"clip-zero-shot:{tmp_path / 'classes.txt'}", vit)
    with pytest.raises(ConfigError):
        heads.open_head(str(tmp_path / "missing.safetensors"), vit)


def test_an_unknown_head_lists_the_kinds(vit):
    with pytest.raises(ConfigError) as err:
        heads.open_head("imagenet", vit)
    assert str(err.value).startswith("--head 'imagenet': expected ")
    for kind in heads.KINDS.values():
        assert kind.syntax in str(err.value)


def test_capabilities_come_from_the_family(vit):
    assert heads.TEXT_FAMILIES == tuple(n for n, f in FAMILIES.items() if f.text_tower)
    assert [n for n, f in FAMILIES.items() if f.concept_heads] == ["builtin"]
    assert heads.default_head(vit) == "builtin-patch"
    assert "builtin-patch" in heads.markdown_list()


def fake_kind() -> HeadKind:
    def open_fake(spec: str, vit, prompt: str) -> Head:
        classes = tuple(spec.removeprefix("fake:").split(","))
        return Head(spec, classes, "image", False, lambda x: x[:, 0, : len(classes)])

    return HeadKind("fake", "fake:A,B", "a head for this test", lambda s: s.startswith("fake:"), open_fake)


def test_a_registered_kind_is_opened_described_and_listed(vit, monkeypatch):
    monkeypatch.setitem(heads.KINDS, "fake", fake_kind())
    head = heads.open_head("fake:cat,dog", vit)
    assert head.classes == ("cat", "dog") and head.name == "fake:cat,dog"
    assert heads.describe().endswith(" or fake:A,B")
    with pytest.raises(ConfigError, match="fake:A,B"):
        heads.open_head("imagenet", vit)


ADD_A_HEAD = """
from saev.steering import heads
from saev.steering.heads.base import HeadKind

# What a new head module's KIND and its registry line amount to (before the commands are built).
heads.KINDS["fake"] = HeadKind("fake", "fake:A,B", "a test head", lambda s: False, lambda *a: None)

from saev.cli import main

main(["steer", "--help"])
"""


@pytest.mark.slow
def test_a_registered_kind_is_in_the_commands_help():
    out = subprocess.run(
        [sys.executable, "-c", ADD_A_HEAD],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "SAEV_THREADS": "1", "PATH": ""},
    )
    assert "fake:A,B" in out.stdout, out.stdout + out.stderr
