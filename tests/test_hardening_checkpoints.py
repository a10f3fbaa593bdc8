"""Checkpoint loading refuses absurd headers, damaged bytes, non-finite weights and non-files, naming each.

Every checkpoint here is written by saev's own `dump` (or the reference layout of tests.reference) and
then tampered with, the way a damaged download or a hand-edited header would be.
"""

import io
import json
import os
import struct
import threading
import zipfile

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import saev.nn
from saev.cli import main
from saev.errors import CheckpointError
from saev.nn import ActNorm, SaeConfig, SparseAutoencoder, checkpoints
from tests.reference import D_SAE, D_VIT, HEADERS, write_reference

RELU = saev.nn.Relu()


def small_sae(activation: object = RELU, subtract_b_dec: bool = True) -> SparseAutoencoder:
    sae = SparseAutoencoder(
        SaeConfig(d_vit=D_VIT, d_sae=D_SAE, activation=activation, subtract_b_dec=subtract_b_dec, seed=3)
    )
    sae.set_normalization(ActNorm(torch.randn(D_VIT), 1.5))
    sae.provenance = saev.nn.Provenance(vit_family="clip", vit_ckpt="ViT-B-16/openai", layer=-2)
    return sae


@pytest.fixture
def native(tmp_path):
    path = tmp_path / "sae.safetensors"
    saev.nn.dump(path, small_sae())
    return path


@pytest.fixture
def reference(tmp_path):
    """A V0b `sae.pt`, the format of the public checkpoints, with saev's own weights."""
    path = tmp_path / "sae.pt"
    sae = small_sae()
    write_reference(path, HEADERS["V0b"], {k: getattr(sae, k).detach() for k in checkpoints.WEIGHT_NAMES})
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model is built: every refusal below must come before any allocation."""

    def forbidden(cfg, *args):
        raise AssertionError(f"a model was built for {cfg} before the header was checked")

    monkeypatch.setattr(checkpoints, "SparseAutoencoder", forbidden)


def rewrite_metadata(path, edit) -> None:
    """Rewrite a native file's metadata through safetensors' own API; `edit` changes the dict in place."""
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(meta)
    save_file(tensors, path, metadata=meta)


def edit_config(path, **changes) -> None:
    def edit(meta):
        meta["config"] = json.dumps(json.loads(meta["config"]) | changes)

    rewrite_metadata(path, edit)


def rewrite_header(path, **changes) -> None:
    """Replace fields of a reference file's JSON header line, keeping its weights byte for byte."""
    header, weights = path.read_bytes().split(b"\n", 1)
    path.write_bytes(json.dumps(json.loads(header) | changes).encode() + b"\n" + weights)


def refused(path, *needles, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        saev.nn.load(path, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for needle in needles:
        assert needle in message, message
    return message


# Header values: type, finiteness and size, all checked before a model is built.

NATIVE_CONFIGS = {
    "d_sae 10**12": (
        {"d_sae": 10**12},
        ["d_sae=1000000000000", "'W_enc' should have shape [16, 1000000000000]"],
    ),
    "d_vit bool": ({"d_vit": True}, ["config field 'd_vit' must be an integer, got True"]),
    "d_vit float": ({"d_vit": 16.0}, ["config field 'd_vit' must be an integer, got 16.0"]),
    "seed string": ({"seed": "abc"}, ["config field 'seed' must be an integer, got 'abc'"]),
    "seed too large": ({"seed": 2**70}, ["seed must fit in 64 bits"]),
    "coefficient NaN": (
        {"sparsity_coeff": float("nan")},
        ["'sparsity_coeff' must be a finite number, got nan"],
    ),
    "coefficient huge int": ({"sparsity_coeff": 10**400}, ["'sparsity_coeff' must be a finite number"]),
    "flag string": ({"subtract_b_dec": "false"}, ["'subtract_b_dec' must be true or false, got 'false'"]),
    "activation string": ({"activation": "Relu"}, ["'activation' must be an object", "got 'Relu'"]),
    "activation unknown": ({"activation": {"cls": ["Relu"]}}, ["unknown activation ['Relu']"]),
    "k float": (
        {"activation": {"cls": "TopK", "params": {"k": 3.5, "relu": True}}},
        ["TopK parameter 'k' must be an integer, got 3.5"],
    ),
    "config not an object": (None, ["SAE config must be an object, got None"]),
    "unknown key": ({"d_sea": 64}, ["unknown SAE config keys ['d_sea']"]),
}


@pytest.mark.parametrize("case", list(NATIVE_CONFIGS))
def test_native_config_values_are_checked_before_any_model(native, no_model, case):
    changes, needles = NATIVE_CONFIGS[case]
    if changes is None:
        rewrite_metadata(native, lambda meta: meta.update(config="null"))
    else:
        edit_config(native, **changes)
    refused(native, *needles)


NATIVE_METADATA = {
    "provenance layer": (
        "provenance",
        '{"layer": "-2"}',
        "provenance field 'layer' must be an integer, got '-2'",
    ),
    "provenance list": ("provenance", "[1, 2]", "provenance must be an object, got [1, 2]"),
    "clamp NaN": ("normalization", '{"clamp": NaN}', "'clamp' must be a finite number, got nan"),
    "clamp zero": ("normalization", '{"clamp": 0}', "'clamp' must be positive, got 0"),
    "config not JSON": ("config", "{'d_vit': 16", "metadata 'config' is not valid JSON"),
    "config nested": ("config", "[" * 100_000, "metadata 'config' is not valid JSON"),
    "forward": ("forward", "x", "'forward' is 'x' but the config's subtract_b_dec=True means 'x - b_dec'"),
    "newer version": ("format_version", "2", "saev format version '2'; this saev reads version '1'"),
}


@pytest.mark.parametrize("case", list(NATIVE_METADATA))
def test_native_metadata_is_checked_before_any_model(native, no_model, case):
    key, value, needle = NATIVE_METADATA[case]
    rewrite_metadata(native, lambda meta: meta.update({key: value}))
    refused(native, needle)


REFERENCE_HEADERS = {
    "exp_factor 10**10": (
        {"exp_factor": 10**10},
        ["header field 'exp_factor' must be in (0, 65536], got 10000000000"],
    ),
    "exp_factor 4096": (
        {"exp_factor": 4096},
        ["d_sae=65536", "'W_enc' should have shape [16, 65536], but the file has [16, 64]"],
    ),
    "exp_factor NaN": (
        {"exp_factor": float("nan")},
        ["header field 'exp_factor' must be a finite number, got nan"],
    ),
    "exp_factor Infinity": (
        {"exp_factor": float("inf")},
        ["header field 'exp_factor' must be a finite number"],
    ),
    "exp_factor absurd": (
        {"exp_factor": 1e300},
        ["header field 'exp_factor' must be in (0, 65536], got 1e+300"],
    ),
    "exp_factor zero": ({"exp_factor": 0}, ["header field 'exp_factor' must be in (0,", "got 0"]),
    "d_sae 10**12": ({"d_sae": 10**12}, ["d_sae=1000000000000", "should have shape"]),
    "d_sae string": ({"d_sae": "64"}, ["header field 'd_sae' must be an integer, got '64'"]),
    "d_vit bool": ({"d_vit": True}, ["header field 'd_vit' must be an integer, got True"]),
    "d_vit float": ({"d_vit": 16.0}, ["header field 'd_vit' must be an integer, got 16.0"]),
    "d_vit negative": ({"d_vit": -16}, ["d_vit=-16"]),
    "seed string": ({"seed": "abc"}, ["header field 'seed' must be an integer, got 'abc'"]),
    "flag string": ({"normalize_w_dec": "false"}, ["header field 'normalize_w_dec' must be true or false"]),
    "coefficient string": (
        {"sparsity_coeff": "4e-4"},
        ["header field 'sparsity_coeff' must be a finite number"],
    ),
    "seed 400 digits": ({"seed": 10**400}, ["seed must fit in 64 bits, got 1000000", "...000"]),
}


@pytest.mark.parametrize("case", list(REFERENCE_HEADERS))
def test_reference_header_values_are_checked_before_any_model(reference, no_model, case):
    changes, needles = REFERENCE_HEADERS[case]
    rewrite_header(reference, **changes)
    refused(reference, *needles)


def test_integer_past_pythons_digit_limit_is_refused(reference, no_model):
    # json.dumps cannot write it either, so the header is edited as text.
    header, weights = reference.read_bytes().split(b"\n", 1)
    header = header.replace(b'"exp_factor": 4', b'"exp_factor": 1' + b"0" * 5000)
    reference.write_bytes(header + b"\n" + weights)
    refused(reference, "first line is not a JSON header: Exceeds the limit (4300 digits)")


def test_reference_v2_activation_and_schema_are_checked(reference, no_model):
    weights = reference.read_bytes().split(b"\n", 1)[1]
    cases = {
        "bare string": ({"activation": "TopK"}, "header field 'activation' must be an object"),
        "top_k float": (
            {"activation": {"cls": "TopK", "params": {"top_k": 3.5}}},
            "'top_k' must be an integer",
        ),
        "top_k string": (
            {"activation": {"cls": "TopK", "params": {"top_k": "3"}}},
            "'top_k' must be an integer",
        ),
        "top_k too big": ({"activation": {"cls": "TopK", "params": {"top_k": 64}}}, "got k=64"),
        "unknown": ({"activation": {"cls": "Matryoshka"}}, "unknown activation 'Matryoshka'"),
    }
    for case, (changes, needle) in cases.items():
        header = {"schema": 2, "cfg": HEADERS["V2"]["cfg"] | changes}
        reference.write_bytes(json.dumps(header).encode() + b"\n" + weights)
        assert needle in refused(reference), case
    # JSON `true` == 1 in Python, but is no schema; schema 1 names its activation in `cls`.
    for header, needle in [
        ({"schema": True, "cfg": HEADERS["V1"]["cfg"]}, "unknown checkpoint schema True"),
        ({"schema": 1.0, "cfg": HEADERS["V1"]["cfg"]}, "unknown checkpoint schema 1.0"),
        (HEADERS["V1"] | {"cls": "JumpRelu"}, "unknown activation 'JumpRelu'"),
        (HEADERS["V1"] | {"cls": 1}, "header field 'cls' must be a string"),
    ]:
        reference.write_bytes(json.dumps(header).encode() + b"\n" + weights)
        refused(reference, needle)


# Tensors: non-finite weights and degenerate normalisation are refused unless allowed.


def test_nan_weights_are_refused_unless_allowed(tmp_path):
    sae = small_sae()
    with torch.no_grad():
        sae.W_dec[3, 5] = float("nan")
        sae.W_dec[4, 0] = float("inf")
    path = tmp_path / "diverged.safetensors"
    saev.nn.dump(path, sae)
    refused(path, "tensor 'W_dec' holds 1 NaN and 1 infinite values of 1024", "allow_nonfinite=True")
    back = saev.nn.load(path, allow_nonfinite=True)
    assert torch.isnan(back.W_dec[3, 5]) and torch.isinf(back.W_dec[4, 0])
    assert torch.equal(back.W_enc, sae.W_enc)


def test_infinite_weights_in_reference_files_are_refused(reference, no_model):
    header, weights = reference.read_bytes().split(b"\n", 1)
    state = torch.load(io.BytesIO(weights), weights_only=True)
    state["b_enc"][0] = -float("inf")
    write_reference(reference, json.loads(header), state)
    refused(reference, "tensor 'b_enc' holds 0 NaN and 1 infinite values of 64")


@pytest.mark.parametrize(
    ("scale", "mean_nan", "needle"),
    [
        (0.0, False, "'act_scale' is 0.0, but a normalisation scale must be positive"),
        (-2.0, False, "'act_scale' is -2.0"),
        (float("nan"), False, "tensor 'act_scale' holds 1 NaN"),
        (1.0, True, "tensor 'act_mean' holds 1 NaN"),
    ],
)
def test_degenerate_normalisation_is_refused_unless_allowed(tmp_path, scale, mean_nan, needle):
    sae = small_sae()
    mean = torch.randn(D_VIT)
    if mean_nan:
        mean[2] = float("nan")
    sae.set_normalization(ActNorm(mean, scale))
    path = tmp_path / "scale.safetensors"
    saev.nn.dump(path, sae)
    refused(path, needle)
    back = saev.nn.load(path, allow_nonfinite=True)
    torch.testing.assert_close(back.act_scale, torch.tensor(scale), equal_nan=True)
    torch.testing.assert_close(back.act_mean, mean, equal_nan=True)


def test_nan_architecture_weights_are_refused(tmp_path):
    sae = small_sae(activation=saev.nn.JumpRelu(), subtract_b_dec=False)
    with torch.no_grad():
        next(iter(sae.activation.parameters()))[7] = float("nan")
    path = tmp_path / "jumprelu.safetensors"
    saev.nn.dump(path, sae)
    name = next(iter(sae.activation.state_dict()))
    refused(path, f"tensor 'activation.{name}' holds 1 NaN")


def test_bad_normalisation_shapes_are_refused(native, no_model):
    with safe_open(native, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    del meta[checkpoints.CHECKSUM_KEY]  # as from another writer: the checks below must not rely on it
    save_file(tensors | {"act_scale": torch.ones(3)}, native, metadata=meta)
    refused(native, "'act_scale' should have shape [], but the file has [3]")
    del tensors["act_scale"]
    save_file(tensors, native, metadata=meta)
    refused(native, "normalisation statistics are incomplete: 'act_scale' is missing")
    save_file(tensors | {"act_scale": torch.tensor(2, dtype=torch.int64)}, native, metadata=meta)
    refused(native, "'act_scale' is not a dense floating-point tensor")


# Damaged bytes: truncation, flipped bits, broken lengths.


def test_flipped_bit_in_native_tensor_data_fails_the_checksum(native):
    blob = bytearray(native.read_bytes())
    (n,) = struct.unpack("<Q", blob[:8])
    blob[8 + n + 100] ^= 0x10
    native.write_bytes(bytes(blob))
    refused(native, "tensor data is corrupt: its CRC-32 is", "was recorded when the file was written")


def test_native_files_without_checksum_still_load(native):
    sae = saev.nn.load(native)
    rewrite_metadata(native, lambda meta: meta.pop(checkpoints.CHECKSUM_KEY))
    assert torch.equal(saev.nn.load(native).W_enc, sae.W_enc)


def test_checksum_is_recorded_and_dump_stays_deterministic(tmp_path):
    sae = small_sae()
    saev.nn.dump(tmp_path / "a.safetensors", sae)
    saev.nn.dump(tmp_path / "b.safetensors", sae)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    with safe_open(tmp_path / "a.safetensors", "pt") as f:
        assert len(f.metadata()[checkpoints.CHECKSUM_KEY]) == 8


@pytest.mark.parametrize(
    ("keep", "needle"),
    [
        (lambda blob, n: 100, "truncated: the safetensors header declares"),
        (lambda blob, n: 8 + n + 10, "safetensors file is truncated or corrupt"),
        (lambda blob, n: len(blob) - 1, "safetensors file is truncated or corrupt"),
        (lambda blob, n: 5, "not a saev checkpoint"),
    ],
)
def test_truncated_native_files_are_refused(native, keep, needle):
    blob = native.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    native.write_bytes(blob[: keep(blob, n)])
    refused(native, needle)


@pytest.mark.parametrize(
    ("length", "needle"),
    [
        (lambda n: n - 8, "safetensors file is truncated or corrupt"),
        (lambda n: n + 8, "safetensors file is truncated or corrupt"),
        (lambda n: 2**60, "not a saev checkpoint"),
    ],
)
def test_corrupt_native_header_length_is_refused(native, length, needle):
    blob = native.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    native.write_bytes(struct.pack("<Q", length(n)) + blob[8:])
    refused(native, needle)


def test_broken_native_header_json_is_refused(native):
    blob = bytearray(native.read_bytes())
    blob[9] = ord("x")  # the opening quote of the first key
    native.write_bytes(bytes(blob))
    refused(native, "safetensors file is truncated or corrupt")


def member_data_offset(payload: bytes, member: str) -> int:
    """Where a stored zip member's bytes start (after its local header and the alignment padding)."""
    info = zipfile.ZipFile(io.BytesIO(payload)).getinfo(member)
    name_len, extra_len = struct.unpack("<HH", payload[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len


@pytest.mark.parametrize("member", ["archive/data/0", "archive/data.pkl"])
def test_flipped_bit_in_reference_archive_fails_its_crc(reference, member):
    header, payload = reference.read_bytes().split(b"\n", 1)
    # Undetected by torch.load itself: the damaged W_enc used to load as if nothing happened.
    damaged = bytearray(payload)
    damaged[member_data_offset(payload, member) + 1] ^= 0x04
    reference.write_bytes(header + b"\n" + bytes(damaged))
    refused(reference, f"member '{member}' fails its CRC-32 check")


def test_truncated_reference_file_is_refused(reference):
    blob = reference.read_bytes()
    for keep in (len(blob) - 30, len(blob) // 2, blob.index(b"\n") + 3):
        reference.write_bytes(blob[:keep])
        refused(reference, "truncated or corrupt")


# Not a regular file: refused before opening, so nothing blocks.


def load_in_thread(path) -> BaseException | None:
    """`load`, in a daemon thread so that a regression blocks the thread and not the whole test run."""
    outcome = []

    def target():
        try:
            saev.nn.load(path)
        except BaseException as err:  # noqa: BLE001 (handed to the test thread)
            outcome.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), f"saev.nn.load({path}) blocked"
    return outcome[0] if outcome else None


def test_named_pipe_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "sae.safetensors"
    os.mkfifo(fifo)
    err = load_in_thread(fifo)
    assert isinstance(err, CheckpointError)
    assert str(err) == f"{fifo}: is a FIFO, not a checkpoint file; saev reads only regular files."


def test_device_file_is_refused_without_reading(tmp_path):
    err = load_in_thread("/dev/zero")
    assert isinstance(err, CheckpointError)
    assert str(err).startswith("/dev/zero: is a character device")


def test_missing_paths_and_directories_name_the_path(tmp_path, native):
    refused(tmp_path / "nope.safetensors", "no such file")
    refused(native / "inside.pt", "no such file")  # a parent that is a file, not a directory
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    refused(empty, "a folder without a recognised SAE", "it holds nothing")
    # A folder holding sae.safetensors is read as that file.
    assert torch.equal(saev.nn.load(tmp_path).W_enc, saev.nn.load(native).W_enc)


# The command line: one line on stderr, exit status 2.


def cli_refuses(capsys, tmp_path, sae_path) -> str:
    image = tmp_path / "image.png"
    image.write_bytes(b"")
    with pytest.raises(SystemExit) as info:
        main(["inspect", str(image), "--sae", str(sae_path), "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"saev: error: {sae_path}: ") and "\n" not in err, err
    assert not (tmp_path / "out").exists()
    return err


def test_cli_reports_mistyped_header(capsys, tmp_path, native):
    edit_config(native, seed="abc")
    assert "config field 'seed' must be an integer, got 'abc'" in cli_refuses(capsys, tmp_path, native)


def test_cli_reports_nan_weights(capsys, tmp_path):
    sae = small_sae()
    with torch.no_grad():
        sae.b_dec[0] = float("nan")
    saev.nn.dump(tmp_path / "nan.safetensors", sae)
    err = cli_refuses(capsys, tmp_path, tmp_path / "nan.safetensors")
    assert "tensor 'b_dec' holds 1 NaN and 0 infinite values of 16" in err


def test_cli_reports_named_pipe(capsys, tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    assert "is a FIFO, not a checkpoint file" in cli_refuses(capsys, tmp_path, fifo)
