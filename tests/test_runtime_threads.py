"""A bad `SAEV_THREADS` (or torchrun's `LOCAL_WORLD_SIZE`) is a `saev: error` naming the value, never
a traceback; good values choose the threads."""

import os
import subprocess
import sys

import pytest

from saev import runtime
from saev.cli import main
from saev.errors import ConfigError

BAD = ["abc", "0", "-1", "+2", "1.5", "0x2", "1e3", "²", "٣", "1025", "99999999999999999999"]


@pytest.mark.parametrize("value", BAD)
def test_bad_thread_counts_are_config_errors_naming_the_value(value):
    with pytest.raises(runtime.ThreadsError) as err:
        runtime.choose_threads({runtime.ENV: value}, cores=2, load=0.0)
    # A ConfigError for the CLI, still a ValueError for code that caught that before.
    assert isinstance(err.value, ConfigError) and isinstance(err.value, ValueError)
    assert f"SAEV_THREADS={value!r}" in str(err.value) and "from 1 to 1024" in str(err.value)


@pytest.mark.parametrize("value,threads", [("1", 1), (" 2 ", 2), ("03", 3), ("1024", 1024)])
def test_good_thread_counts_are_taken_as_given(value, threads):
    assert runtime.choose_threads({runtime.ENV: value}, cores=2, load=9.0).threads == threads


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_setting_follows_the_load(value):
    assert runtime.choose_threads({runtime.ENV: value}, cores=4, load=1.0).threads == 3


def test_a_bad_local_world_size_is_named():
    with pytest.raises(runtime.ThreadsError, match="LOCAL_WORLD_SIZE='two'.*SAEV_THREADS=N"):
        runtime.choose_threads({"LOCAL_WORLD_SIZE": "two"}, cores=4, load=0.0)
    # torchrun's own values, and a set SAEV_THREADS, which makes LOCAL_WORLD_SIZE irrelevant.
    assert runtime.choose_threads({"LOCAL_WORLD_SIZE": "0"}, cores=4, load=0.0).threads == 4
    assert (
        runtime.choose_threads({"LOCAL_WORLD_SIZE": "two", runtime.ENV: "2"}, cores=4, load=0.0).threads == 2
    )


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["quickstart"]])
@pytest.mark.parametrize("value", ["abc", "0", "-1", "²", "99999999999999999999"])
def test_the_cli_reports_a_bad_setting_before_anything_else(argv, value, monkeypatch, capsys):
    monkeypatch.setenv(runtime.ENV, value)
    with pytest.raises(SystemExit) as err:
        main(argv)
    captured = capsys.readouterr()
    assert err.value.code == 2 and captured.out == ""
    assert captured.err.startswith(f"saev: error: SAEV_THREADS={value!r}: expected a whole number")
    assert captured.err.count("\n") == 1


@pytest.mark.slow
def test_a_huge_setting_is_no_traceback_from_the_command_line():
    # torch.set_num_threads overflowed on this one, after the old check had passed it.
    env = dict(os.environ, **{runtime.ENV: "99999999999999999999"})
    result = subprocess.run(
        [sys.executable, "-m", "saev", "train", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("saev: error: SAEV_THREADS='99999999999999999999'"), result.stderr
