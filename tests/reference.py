"""The reference saev 0.1.0 (PyPI), imported as `saev_ref` for oracle tests.

`make test` unpacks it into .cache/reference/saev_ref; without it these tests are skipped.
"""

import importlib.util
import json
import pathlib
import sys
from types import ModuleType

import torch

from tests.conftest import missing

REF_DIR = pathlib.Path(__file__).resolve().parents[1] / ".cache" / "reference" / "saev_ref"


def load_reference() -> ModuleType:
    if "saev_ref" in sys.modules:
        return sys.modules["saev_ref"]
    if not (REF_DIR / "__init__.py").exists():
        missing(f"the reference saev 0.1.0 (at {REF_DIR})", "`make test` fetches it from PyPI and unpacks it")
    try:
        import beartype  # noqa: F401
        import einops  # noqa: F401
        import jaxtyping  # noqa: F401
    except ImportError as err:
        missing(f"package {err.name!r}, which the reference saev needs")
    spec = importlib.util.spec_from_file_location(
        "saev_ref", REF_DIR / "__init__.py", submodule_search_locations=[str(REF_DIR)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["saev_ref"] = module
    spec.loader.exec_module(module)
    return module


D_VIT, EXP = 16, 4
D_SAE = D_VIT * EXP

# The header of every reference checkpoint variant (see ../shared/reference/saev-formats.md).
HEADERS = {
    "V0a": {"d_vit": D_VIT, "d_sae": D_SAE, "l1_coeff": 4e-4, "use_ghost_grads": False},
    "V0b": {
        "d_vit": D_VIT,
        "exp_factor": EXP,
        "sparsity_coeff": 4e-4,
        "n_reinit_samples": 0,
        "ghost_grads": False,
        "remove_parallel_grads": True,
        "normalize_w_dec": True,
        "seed": 0,
    },
    "V0c": {
        "d_vit": D_VIT,
        "exp_factor": EXP,
        "n_reinit_samples": 0,
        "remove_parallel_grads": True,
        "normalize_w_dec": True,
        "seed": 0,
    },
    "V1": {
        "schema": 1,
        "cfg": {
            "d_vit": D_VIT,
            "exp_factor": EXP,
            "n_reinit_samples": 0,
            "remove_parallel_grads": True,
            "normalize_w_dec": True,
            "seed": 0,
        },
        "cls": "Relu",
        "commit": "abc",
        "lib": "0.1",
    },
    "V2": {
        "schema": 2,
        "cfg": {
            "d_vit": D_VIT,
            "exp_factor": EXP,
            "n_reinit_samples": 0,
            "remove_parallel_grads": True,
            "normalize_w_dec": True,
            "seed": 0,
            "activation": {"cls": "Relu", "params": {}},
        },
        "commit": "abc",
        "lib": "0.2",
    },
}


def write_reference(path, header, state) -> None:
    with open(path, "wb") as f:
        f.write((json.dumps(header) + "\n").encode())
        torch.save(state, f)
