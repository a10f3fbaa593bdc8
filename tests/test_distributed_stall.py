"""A rank that is stopped rather than dead (suspended, a hung GPU, a frozen file system) ends the job after
SAEV_DIST_STALL seconds with a message, while a slower rank that keeps making progress is waited for:
the detector's decisions on their own, then `torchrun` jobs of two Gloo processes with one rank
suspended (SIGSTOP), hung, or slow in the middle of `saev activations`, `saev train` and `saev visuals`."""

import contextlib
import dataclasses
import os
import pathlib
import signal
import subprocess
import threading
import time

import pytest

from saev import distributed
from saev.distributed import Beat, Stall, Watch, find_stall
from saev.errors import ConfigError
from tests.ground_truth import make_dictionary_store
from tests.test_distributed_recording import EXTRA
from tests.test_distributed_visuals import recorded, visuals_args  # noqa: F401 (a fixture)
from tests.test_recording import cli_args, many_images
from tests.torchrun import ENV, command, torchrun

LIMIT = 10.0


def watched(timeline: list[tuple[float, Beat | None]]) -> Watch:
    """A rank as seen after reading `timeline` (None: nothing could be read), watching from time 0."""
    w = Watch(None, 0.0, 0.0)
    for now, beat in timeline:
        w = w.see(beat, now)
    return w


def beats(every: float, until: float, progress_every: float | None, state="working") -> list:
    """Heartbeats every `every` s up to `until`, after one step of work, with progress moving every
    `progress_every` s (None: never again)."""
    n = int(until / every)
    return [
        (k * every, Beat(k, 1 if progress_every is None else 1 + int(k * every / progress_every), state))
        for k in range(1, n + 1)
    ]


ME_WAITING = watched([(0.0, Beat(0, 0, "waiting"))])


def test_stall_setting_is_checked(monkeypatch):
    monkeypatch.delenv(distributed.STALL_ENV, raising=False)
    assert distributed.stall() == distributed.DEFAULT_STALL_S == 300
    monkeypatch.setenv(distributed.STALL_ENV, "7.5")
    assert distributed.stall() == 7.5
    for bad in ("0", "-3", "soon", "inf", "nan"):
        monkeypatch.setenv(distributed.STALL_ENV, bad)
        with pytest.raises(
            ConfigError, match=f"SAEV_DIST_STALL={bad!r}: expected a positive number of seconds"
        ):
            distributed.stall()


def test_a_beat_reads_back_as_written():
    beat = Beat(12, 345, "waiting")
    assert Beat.decode(beat.encode().encode()) == beat


def test_a_frozen_peer_is_given_up_on_after_the_limit_only():
    # Its heartbeat stops at 20 s: judged at 29.9 s it is still waited for, at 30 s it is frozen.
    peer = [*beats(1, 20, progress_every=1), *[(t / 10, None) for t in range(201, 300)]]
    assert find_stall(ME_WAITING, True, {1: watched(peer)}, 29.9, LIMIT) is None
    assert find_stall(ME_WAITING, True, {1: watched(peer)}, 30.0, LIMIT) == Stall(1, 10.0, frozen=True)


def test_a_working_peer_without_progress_is_stuck_even_with_a_heartbeat():
    peer = beats(1, 40, progress_every=None)  # alive, working, its progress never moves
    assert find_stall(ME_WAITING, True, {1: watched(peer[:10])}, 10.5, LIMIT) is None
    assert find_stall(ME_WAITING, True, {1: watched(peer)}, 40.0, LIMIT) == Stall(1, 39.0, frozen=False)


def test_a_frozen_working_peer_is_called_frozen_though_its_progress_stopped_first():
    # Its progress stood still from 0.5 s, its heartbeat from 1.5 s: a late heartbeat defers the
    # progress rule to the heartbeat's, which tells it is not running.
    peer = watched([(0.5, Beat(1, 1, "working")), (1.0, Beat(2, 1, "working")), (1.5, Beat(3, 1, "working"))])
    assert find_stall(ME_WAITING, True, {1: peer}, 10.5, LIMIT) is None
    assert find_stall(ME_WAITING, True, {1: peer}, 11.5, LIMIT) == Stall(1, 10.0, frozen=True)


def test_a_peer_is_judged_by_its_heartbeat_alone_until_its_first_step_of_work():
    # Importing, loading a model, listing images: one long call, as long on each rank.
    starting = watched([(float(t), Beat(t, 0, "working")) for t in range(1, 100)])
    assert find_stall(ME_WAITING, True, {1: starting}, 99.0, LIMIT) is None
    silent = watched([(1.0, Beat(1, 0, "working"))])
    assert find_stall(ME_WAITING, True, {1: silent}, 11.0, LIMIT) == Stall(1, 10.0, frozen=True)


def test_a_slow_peer_that_makes_progress_is_waited_for_indefinitely():
    peer = watched(beats(1, 1000, progress_every=LIMIT / 2))
    assert find_stall(ME_WAITING, True, {1: peer}, 1000.0, LIMIT) is None


def test_a_waiting_or_finished_peer_is_never_given_up_on():
    waiting = watched(beats(1, 1000, progress_every=None, state="waiting"))
    assert find_stall(ME_WAITING, True, {1: waiting}, 1000.0, LIMIT) is None
    finished = watched([(1.0, Beat(1, 5, "done"))])  # a finished rank stops beating on purpose
    assert find_stall(ME_WAITING, True, {1: finished}, 1000.0, LIMIT) is None


def test_a_peer_that_starts_working_again_gets_a_fresh_limit():
    # Waiting without progress for 100 s, then working from 100 s: not stuck before 110 s.
    peer = [*beats(1, 100, None, "waiting"), *[(t, Beat(t, 1, "working")) for t in range(101, 120)]]
    assert find_stall(ME_WAITING, True, {1: watched(peer[:108])}, 108.0, LIMIT) is None
    assert find_stall(ME_WAITING, True, {1: watched(peer)}, 119.0, LIMIT) == Stall(1, 18.0, frozen=False)


def test_no_news_counts_as_standing_still():
    # The store did not answer (it may live in the frozen rank): from the last record read.
    peer = watched([(1.0, Beat(1, 3, "waiting")), *[(float(t), None) for t in range(2, 12)]])
    assert find_stall(ME_WAITING, True, {1: peer}, 11.0, LIMIT) == Stall(1, 10.0, frozen=True)
    never = watched([(float(t), None) for t in range(1, 11)])  # never heard of: since watching began
    assert find_stall(ME_WAITING, True, {1: never}, 10.0, LIMIT) == Stall(1, 10.0, frozen=True)


def test_a_working_rank_gives_up_only_when_blocked_itself_and_only_on_a_frozen_peer():
    frozen = watched([(1.0, Beat(1, 1, "working"))])
    stuck = watched(beats(1, 100, progress_every=None))
    busy_me = watched(beats(1, 100, progress_every=1))
    blocked_me = watched([*beats(1, 50, progress_every=1), *beats(1, 100, progress_every=None)[50:]])
    assert find_stall(busy_me, False, {1: frozen}, 100.0, LIMIT) is None  # its own work goes on
    # Blocked (an NCCL all-reduce a frozen peer never joins shows as this rank's own work standing still).
    assert find_stall(blocked_me, False, {1: frozen, 2: stuck}, 100.0, LIMIT) == Stall(1, 99.0, frozen=True)
    # A stuck peer is not told from one as slow as this rank unless this rank waits in a collective.
    assert find_stall(blocked_me, False, {2: stuck}, 100.0, LIMIT) is None


def test_the_message_names_the_peer_the_setting_and_what_was_waited_for():
    world = distributed.World(rank=0, size=2)
    line = distributed.stall_message(world, "a barrier", Stall(1, 12.4, frozen=True), 10.0)
    assert line == (
        "saev: error: rank 0 of 2: lost contact with the other processes during a barrier: rank 1 has made "
        "no progress for 12 s (SAEV_DIST_STALL=10 s): its process is not running (suspended, or its "
        "machine froze)."
    )
    stuck = distributed.stall_message(world, None, Stall(1, 12.4, frozen=False), 10.0)
    assert "other processes: rank 1" in stuck and "its work is stuck" in stuck


def test_outside_torchrun_no_heartbeat_runs():
    before = threading.active_count()
    assert distributed.setup("cpu") == (distributed.World(), "cpu")
    distributed.progress()
    assert threading.active_count() == before
    distributed.teardown()


# Under torchrun

STALL_S = 5
"""SAEV_DIST_STALL of the jobs with a stopped or hung rank: long against a beat on a loaded machine."""
DEADLINE_S = 240
"""A job that has not ended by then has hung; SAEV_DIST_TIMEOUT is 600 s, so it cannot be the cause."""

LAUNCH = """\
import os, pathlib, signal, time
from saev import distributed
from saev.cli import main

rank, marks, real, calls = int(os.environ["RANK"]), pathlib.Path({marks!r}), distributed.progress, []
(marks / f"{{rank}}.pid").write_text(str(os.getpid()))


def stop():
    os.kill(os.getpid(), signal.SIGSTOP)


def hang():  # running, heartbeat and all, but its work never moves again
    time.sleep(600)


def slow():  # honest: 8 s more work at this step, with progress every half second
    for _ in range(16):
        time.sleep(0.5)
        real()


def progress():  # after its first step of work, rank {target} is stopped, hangs or is slow
    real()
    calls.append(None)
    if rank == {target} and len(calls) == 1:
        {act}()


distributed.progress = progress
main({args!r})
"""


def launch_script(tmp_path: pathlib.Path, args: list[str], target: int, act: str) -> pathlib.Path:
    marks = tmp_path / "pids"
    marks.mkdir()
    script = tmp_path / "launch.py"
    script.write_text(LAUNCH.format(marks=str(marks), target=target, act=act, args=args))
    return script


def running(pid: int) -> bool:
    """Whether the process exists and has not exited (a suspended one runs; a zombie does not)."""
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def terminating(pid: int) -> bool:
    """Whether a SIGTERM waits to be delivered to the process."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return False
    pending = [int(line.split()[1], 16) for line in status if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(mask >> (signal.SIGTERM - 1) & 1 for mask in pending)


@dataclasses.dataclass(frozen=True)
class Ended:
    returncode: int
    stderr: str
    seconds: float
    """From the start until every rank that was not stopped or hung had ended."""
    left_behind: list[int]
    """Ranks still running once torchrun had exited."""


def run_with_a_lost_rank(tmp_path: pathlib.Path, args: list[str], target: int, act: str) -> Ended:
    script = launch_script(tmp_path, args, target, act)
    env = os.environ | ENV | {distributed.STALL_ENV: str(STALL_S), distributed.TIMEOUT_ENV: "600"}
    pids: dict[int, int] = {}
    start = time.monotonic()
    ended = None
    with open(tmp_path / "stderr.txt", "w+") as err:
        proc = subprocess.Popen(
            command([], script=str(script)), stdout=subprocess.DEVNULL, stderr=err, env=env
        )
        try:
            while proc.poll() is None and time.monotonic() - start < DEADLINE_S:
                pids = {int(p.stem): int(p.read_text()) for p in (tmp_path / "pids").glob("*.pid")}
                others = [pid for rank, pid in pids.items() if rank != target]
                if ended is None and len(pids) == 2 and not any(map(running, others)):
                    ended = time.monotonic()
                if ended is not None and terminating(pids[target]):
                    # torchrun's SIGTERM reaches a suspended process only once it runs again (else
                    # torchrun sends SIGKILL 30 s later): resume it, as whoever suspended it would.
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pids[target], signal.SIGCONT)
                time.sleep(0.05)
            proc.wait(timeout=max(1.0, DEADLINE_S - (time.monotonic() - start)))
        finally:
            left = [pid for pid in pids.values() if running(pid)]
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
        err.seek(0)
        stderr = err.read()
    return Ended(proc.returncode, stderr, (ended or time.monotonic()) - start, left)


def assert_stopped_with_a_message(result: Ended, target: int, how: str) -> None:
    assert result.returncode != 0, result.stderr[-3000:]
    assert result.seconds < DEADLINE_S / 2, result.stderr[-3000:]  # not SAEV_DIST_TIMEOUT's 600 s
    survivor = 1 - target
    lines = [line for line in result.stderr.splitlines() if line.startswith("saev: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    [line] = lines
    # During a collective, or (its own work standing still too) between two.
    assert line.startswith(f"saev: error: rank {survivor} of 2: lost contact with the other processes")
    assert f": rank {target} has made no progress for " in line
    assert f"(SAEV_DIST_STALL={STALL_S} s): {how}" in line
    # Neither rank printed a traceback: the only one is torchrun's own summary of the failure.
    assert "Exception in thread" not in result.stderr
    assert result.stderr.count("Traceback") == result.stderr.count("ChildFailedError:")
    assert result.left_behind == []


@pytest.fixture(scope="module")
def train_store(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("stall-train")
    return make_dictionary_store(root, n_atoms=32, d=16, n_tokens=8_000, tokens_per_img=8).store


def train_args(store: pathlib.Path, out: pathlib.Path) -> list[str]:
    return f"train --shards {store} --out {out} --layer 0 --exp-factor 4 --k 3 --n-train 8000 --batch-size 400".split()


@pytest.fixture
def job_args(request, tmp_path, tiny_clip, photos, train_store) -> list[str]:
    """The arguments of a small job of the command `request.param`, writing under tmp_path."""
    if request.param == "activations":
        return cli_args(tiny_clip, many_images(tmp_path, photos, 20), tmp_path / "shards", **EXTRA)
    if request.param == "train":
        return train_args(train_store, tmp_path / "runs")
    tmp, store_dir = request.getfixturevalue("recorded")
    return visuals_args(tmp, store_dir, tmp_path / "visuals")


COMMANDS = ["activations", "train", "visuals"]


@pytest.mark.slow
@pytest.mark.parametrize("target", [0, 1])
@pytest.mark.parametrize("job_args", COMMANDS, indirect=True)
def test_a_suspended_rank_ends_the_job_with_a_message(tmp_path, job_args, target):
    """The rank is suspended (SIGSTOP) at its first step of work; the other ends the job once it waits
    for it (in a patient barrier, a gather or an all-reduce) and it has stood still for SAEV_DIST_STALL."""
    result = run_with_a_lost_rank(tmp_path, job_args, target, "stop")
    assert_stopped_with_a_message(result, target, "its process is not running")


@pytest.mark.slow
def test_a_rank_whose_work_hangs_ends_the_job_with_a_message(tmp_path, train_store):
    """Rank 1 runs (its heartbeat goes on) but its work never moves: a hung GPU or file system."""
    result = run_with_a_lost_rank(tmp_path, train_args(train_store, tmp_path / "runs"), 1, "hang")
    assert_stopped_with_a_message(result, 1, "it is running but its work is stuck")


@pytest.mark.slow
@pytest.mark.parametrize("job_args", ["activations", "train"], indirect=True)
def test_a_slow_rank_that_makes_progress_is_waited_for(tmp_path, job_args):
    """Rank 1 works 8 s longer than rank 0, with SAEV_DIST_STALL at 4 s: rank 0 waits, and the job ends well."""
    script = launch_script(tmp_path, job_args, 1, "slow")
    result = torchrun([], script=str(script), env={distributed.STALL_ENV: "4"})
    assert "lost contact" not in result.stderr
    assert result.stdout.strip()  # rank 0 reported its result
