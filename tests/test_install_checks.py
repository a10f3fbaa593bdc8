"""An install whose torchvision was built for another torch gets saev's error with the fix, not a
bare `operator torchvision::nms does not exist` traceback."""

import builtins

import pytest

import saev.activations
from saev.activations import compat
from saev.cli import main
from saev.errors import ModelError

BROKEN = "operator torchvision::nms does not exist"


@pytest.fixture
def mismatched_torchvision(monkeypatch):
    """`import torchvision...` fails as it does when torchvision does not match torch."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "torchvision" or name.startswith("torchvision."):
            raise RuntimeError(BROKEN)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_a_mismatched_torchvision_is_named_with_the_command_that_fixes_it(mismatched_torchvision):
    with pytest.raises(ModelError, match="do not match") as err:
        saev.activations.make_img_transform("builtin", "shapes-vit")
    message = str(err.value)
    assert BROKEN in message
    assert "pip install torch==" in message and "torchvision" in message


def test_the_cli_prints_it_as_a_saev_error(mismatched_torchvision, tmp_path, capsys):
    from PIL import Image

    for colour in ("red", "blue"):
        (tmp_path / "images" / colour).mkdir(parents=True)
        Image.new("RGB", (128, 128), colour).save(tmp_path / "images" / colour / "a.png")
    argv = [*"probe --vit-family builtin --vit-ckpt shapes-vit --images".split(), str(tmp_path / "images")]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--out", str(tmp_path / "probe")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "saev: error: torch " in err and "do not match" in err and "Traceback" not in err


def test_the_fix_pins_torch_and_names_the_cpu_index_for_cpu_builds(monkeypatch):
    monkeypatch.setattr(compat.torch, "__version__", "2.14.1+cpu")
    message = compat.mismatch_message(RuntimeError(BROKEN))
    assert "pip install torch==2.14.1 torchvision --index-url https://download.pytorch.org/whl/cpu" in message
    monkeypatch.setattr(compat.torch, "__version__", "2.14.1")
    assert compat.mismatch_message(RuntimeError(BROKEN)).endswith("pip install torch==2.14.1 torchvision")


def test_other_runtime_errors_keep_their_traceback():
    with pytest.raises(RuntimeError, match="something else"), compat.torchvision_matches_torch():
        raise RuntimeError("something else")
