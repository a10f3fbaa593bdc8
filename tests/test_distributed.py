"""saev.distributed without a process group: work splits, one-process no-ops, options checks, threads."""

import pytest
import torch

from saev import distributed, runtime
from saev.errors import ConfigError
from tests.torchrun import torchrun


@pytest.mark.parametrize(("n", "parts", "align"), [(10, 3, 1), (20, 2, 3), (7, 4, 3), (0, 2, 1), (5, 8, 1)])
def test_split_covers_everything_in_order_at_aligned_bounds(n, parts, align):
    ranges = distributed.split(n, parts, align)
    assert len(ranges) == parts
    assert [i for r in ranges for i in r] == list(range(n))
    assert all(r.start % align == 0 for r in ranges if len(r))
    sizes = [len(r) for r in ranges]
    assert max(sizes) - min(sizes) <= align  # as equal as whole units of `align` allow


def test_one_process_collectives_are_no_ops():
    world = distributed.current()
    assert (world.rank, world.size, world.main, world.distributed) == (0, 1, True, False)
    t = torch.arange(3.0)
    assert distributed.all_reduce(t) is t and torch.equal(t, torch.arange(3.0))
    assert distributed.gather({"a": 1}) == [{"a": 1}]
    distributed.check_same({"lr": 1e-3})
    with distributed.alone():
        assert not distributed.current().distributed


def test_timeout_setting_is_checked(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "90")
    assert distributed.timeout().total_seconds() == 90
    for bad in ("0", "-3", "soon", "inf"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(ConfigError, match="SAEV_DIST_TIMEOUT"):
            distributed.timeout()


def test_processes_on_one_machine_share_its_cores():
    assert runtime.choose_threads({"LOCAL_WORLD_SIZE": "2"}, cores=8, load=0.0).threads == 4
    assert runtime.choose_threads({"LOCAL_WORLD_SIZE": "16"}, cores=8, load=0.0).threads == 1
    assert runtime.choose_threads({"LOCAL_WORLD_SIZE": "2", runtime.ENV: "3"}, cores=8, load=0.0).threads == 3


@pytest.mark.slow
def test_commands_that_do_not_scale_out_refuse_torchrun():
    result = torchrun(["catalog"], check=False)
    assert result.returncode != 0
    assert "saev catalog does not run under torchrun; run it as one process" in result.stderr
