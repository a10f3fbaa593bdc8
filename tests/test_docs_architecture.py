"""docs/architecture.md's generated blocks are what the code says: the layers are the import-linter
contract in pyproject.toml (each package described by its own docstring), the commands are
`saev.commands.COMMANDS`, the heads `saev.steering.heads.KINDS` (listed in docs/steering.md too).

Regenerate the blocks after changing any of those: `python -m tests.test_docs_architecture`.
"""

import ast
import importlib
import pathlib
import pkgutil
import re
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"


def contract_layers() -> list[list[str]]:
    """The layers contract of pyproject.toml, top layer first, each layer's packages in order."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    return [[p.strip() for p in layer.split("|")] for layer in contract["layers"]]


def first_sentence(text: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    match = re.match(r"(.+?[.!?])(\s|$)", paragraph)
    return match.group(1) if match else paragraph


def module_summary(package: str) -> str:
    """The first sentence of a package's (or module's) docstring, read without importing it."""
    path = ROOT / "src" / pathlib.Path(*package.split("."))
    source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return first_sentence(ast.get_docstring(ast.parse(source.read_text())) or "")


def layers_table() -> str:
    rows = ["| layer | package | what it is (its docstring) |", "|---|---|---|"]
    for number, layer in enumerate(contract_layers(), 1):
        rows += [f"| {number} | `{package}` | {module_summary(package)} |" for package in layer]
    return "\n".join(rows)


def commands_table() -> str:
    import saev.commands
    from saev.commands import COMMANDS

    modules = [
        importlib.import_module(f"saev.commands.{m.name}")
        for m in pkgutil.iter_modules(saev.commands.__path__)
    ]
    rows = ["| command | what it does (its `--help`) | module |", "|---|---|---|"]
    for name, command in COMMANDS.items():
        help_text = first_sentence(command.description or command.config.__doc__ or "")
        (module,) = [m.__name__ for m in modules if getattr(m, "COMMAND", None) is command]
        rows.append(f"| `saev {name}` | {help_text} | `{module}` |")
    return "\n".join(rows)


def heads_list() -> str:
    from saev.steering.heads import markdown_list

    return markdown_list()


STEERING = ROOT / "docs" / "steering.md"
BLOCKS = [
    ("layers", DOC, layers_table),
    ("commands", DOC, commands_table),
    ("heads", DOC, heads_list),
    ("heads", STEERING, heads_list),
]


def block(text: str, name: str) -> str:
    match = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", text, re.S)
    assert match, f"no <!-- {name}:start --> ... <!-- {name}:end --> block"
    return match.group(1)


def test_the_layer_table_is_the_import_linter_contract():
    assert block(DOC.read_text(), "layers") == layers_table()


def test_every_saev_package_is_in_a_layer():
    listed = {p for layer in contract_layers() for p in layer}
    packages = {
        f"saev.{p.stem}"
        for p in (ROOT / "src" / "saev").iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and p.stem not in ("__init__", "__main__"))
    }
    assert packages - listed == set(), "add these packages to the layers contract in pyproject.toml"


@pytest.mark.slow
def test_the_command_table_lists_every_command():
    assert block(DOC.read_text(), "commands") == commands_table()


def test_the_data_flow_table_names_only_real_commands():
    from saev.commands import COMMANDS

    text = DOC.read_text()
    flows = text[text.index("## What each command does") :]
    flows = flows[: flows.index("\n## ", 3)]
    named = set(re.findall(r"^\| `saev ([a-z-]+)`", flows, re.M))
    assert named and named <= set(COMMANDS)


def test_the_head_lists_are_the_registry():
    assert block(DOC.read_text(), "heads") == heads_list()
    assert block(STEERING.read_text(), "heads") == heads_list()


def regenerate() -> None:
    for name, path, make in BLOCKS:
        text = path.read_text()
        old = block(text, name)
        path.write_text(
            text.replace(f"<!-- {name}:start -->\n{old}\n", f"<!-- {name}:start -->\n{make()}\n", 1)
        )


if __name__ == "__main__":
    regenerate()
