"""A torchvision built for another torch, reported as a saev error instead of a traceback.

torchvision is imported lazily (by the transforms, timm and OpenCLIP, 1.7 s), and a torchvision
wheel built for another torch fails there with `RuntimeError: operator torchvision::nms does not
exist`, which names neither package's version nor the fix. `make_vit` and `make_img_transform`
run inside `torchvision_matches_torch()`, which turns that error into a `ModelError` that does.
"""

import contextlib
import importlib.metadata
from collections.abc import Iterator

import torch

from saev.errors import ModelError

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def mismatch_message(err: BaseException) -> str:
    """What is wrong and the one command that installs a matching pair."""
    try:
        vision = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        vision = "(version unknown)"
    release, _, build = torch.__version__.partition("+")
    index = f" --index-url {CPU_INDEX}" if build == "cpu" else ""
    return (
        f"torch {torch.__version__} and torchvision {vision} do not match: torchvision was built for "
        f"another torch ({err}). Install both in one command, so pip picks the torchvision made for "
        f"this torch: pip install torch=={release} torchvision{index}"
    )


@contextlib.contextmanager
def torchvision_matches_torch() -> Iterator[None]:
    """Runs the body; a torchvision that does not match torch raises ModelError with the fix."""
    try:
        yield
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        raise ModelError(mismatch_message(err)) from err
