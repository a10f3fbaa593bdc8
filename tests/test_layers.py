"""The layer contracts of pyproject.toml hold, and `make lint` would catch a library module that
imports the commands layer (shown on a scratch copy of the package, never in the tree)."""

import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.conftest import requires

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINT_IMPORTS = pathlib.Path(sys.executable).parent / "lint-imports"

pytestmark = requires(LINT_IMPORTS.exists(), f"import-linter ({LINT_IMPORTS})")


def lint_imports(package_parent: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=package_parent,
        env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )


def test_the_tree_keeps_every_contract():
    result = lint_imports(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    "module,line,broken",
    [
        ("nn/sparse.py", "import saev.commands", "saev.nn is not allowed to import saev.commands"),
        (
            "data/store.py",
            "from saev.commands import COMMANDS",
            "saev.data is not allowed to import saev.commands",
        ),
        ("data/readers.py", "import saev.nn", "saev.data is not allowed to import saev.nn"),
        ("nn/modeling.py", "import saev.visuals", "saev.nn is not allowed to import saev.visuals"),
    ],
)
def test_a_library_module_importing_upwards_fails_the_lint(tmp_path, module, line, broken):
    shutil.copytree(ROOT / "src" / "saev", tmp_path / "saev")
    with open(tmp_path / "saev" / module, "a") as f:
        f.write(f"\n{line}  # deliberate violation\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert broken in result.stdout
