"""The reference saev 0.1.0 (PyPI), imported as `saev_ref` for oracle tests.

`make test` unpacks it into .cache/reference/saev_ref; without it these tests are skipped.
"""

import importlib.util
import pathlib
import sys
from types import ModuleType

import pytest

REF_DIR = pathlib.Path(__file__).resolve().parents[1] / ".cache" / "reference" / "saev_ref"


def load_reference() -> ModuleType:
    if "saev_ref" in sys.modules:
        return sys.modules["saev_ref"]
    if not (REF_DIR / "__init__.py").exists():
        pytest.skip(f"reference saev 0.1.0 not unpacked at {REF_DIR} (`make test` fetches it from PyPI)")
    try:
        import beartype  # noqa: F401
        import einops  # noqa: F401
        import jaxtyping  # noqa: F401
    except ImportError as err:
        pytest.skip(f"reference saev needs {err.name}")
    spec = importlib.util.spec_from_file_location(
        "saev_ref", REF_DIR / "__init__.py", submodule_search_locations=[str(REF_DIR)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["saev_ref"] = module
    spec.loader.exec_module(module)
    return module
