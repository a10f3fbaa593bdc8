"""The explicit types a type checker reads must list what the run-time registries hold."""

import ast
import inspect
import typing

from saev.nn import architectures


def _type_checking_union(module, name: str) -> set[type]:
    """The classes of the `name = A | B | ...` assignment under `if typing.TYPE_CHECKING:` in `module`."""
    tree = ast.parse(inspect.getsource(module))
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "typing.TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and [ast.unparse(t) for t in stmt.targets] == [name]:
                    return {eval(part, vars(module)) for part in ast.unparse(stmt.value).split(" | ")}
    raise AssertionError(f"no {name} under typing.TYPE_CHECKING in {module.__name__}")


def test_activation_union_lists_every_config():
    configs = {arch.config for arch in architectures.ARCHITECTURES.values()}
    assert _type_checking_union(architectures, "Activation") == configs
    assert set(typing.get_args(architectures.Activation)) == configs


def test_arch_name_lists_every_architecture():
    assert typing.get_args(architectures.ArchName) == tuple(architectures.ARCHITECTURES)
