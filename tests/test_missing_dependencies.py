"""What a test needs but the machine lacks (an oracle package, the reference saev, a program) skips the
test, except under CI=true, where it is a failure naming what is missing."""

import pytest

from tests import conftest
from tests.conftest import ORACLE_HINT, import_or_skip, missing, requires

ABSENT = "saev_no_such_package"


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_a_missing_package_is_skipped_off_ci(ci, monkeypatch):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match=f"package '{ABSENT}' is missing; `pip install"):
        import_or_skip(ABSENT, ORACLE_HINT)


@pytest.mark.parametrize("ci", ["true", "True", "1"])
def test_a_missing_package_fails_under_ci(ci, monkeypatch):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=f"CI={ci}: package '{ABSENT}' is missing"):
        import_or_skip(ABSENT, ORACLE_HINT)
    with pytest.raises(pytest.fail.Exception, match="the reference saev 0.1.0 .* is missing"):
        missing("the reference saev 0.1.0 (at .cache/reference/saev_ref)")


def test_a_missing_submodule_names_what_failed(monkeypatch):
    monkeypatch.setenv("CI", "true")
    match = rf"package '{ABSENT}.metrics' \(No module named '{ABSENT}'\) is missing"
    with pytest.raises(pytest.fail.Exception, match=match):
        import_or_skip(f"{ABSENT}.metrics")
    assert import_or_skip("json").dumps([]) == "[]"


class Item:
    """The part of a pytest item that `pytest_runtest_setup` reads."""

    def __init__(self, mark):
        self.mark = mark

    def iter_markers(self, name):
        return [self.mark.mark] if name == "requires" else []


@pytest.mark.parametrize("ci,outcome", [("false", pytest.skip.Exception), ("true", pytest.fail.Exception)])
def test_a_missing_program_skips_or_fails_under_ci(ci, outcome, monkeypatch):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="Chromium .* is missing; install it"):
        conftest.pytest_runtest_setup(Item(requires(False, "Chromium (on PATH)", "install it")))
    conftest.pytest_runtest_setup(Item(requires(True, "Chromium (on PATH)", "install it")))
