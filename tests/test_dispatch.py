"""Units under the runners: ``dispatch`` (retries of shards whose worker died, placement timeout)
and the fence on OUT (claim, take-over, liveness). Real processes for liveness; a small in-test
``Workers`` (the protocol ``dispatch`` drives) stands for a pool whose workers die on cue."""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scoring.errors import JobFailed, StorageError
from scoring.fence import Fence, Fenced, alive, me, process_start
from scoring.record import ShardRecord
from scoring.runners import SHARD_ATTEMPTS, WorkerDied, dispatch
from scoring.shard import Shard


class Pool:
    """``workers`` workers of one slot each; ``deaths[shard index]`` submits of that shard die."""

    slots = 1

    def __init__(self, workers: int, deaths: dict[int, int], ready_after: int = 0) -> None:
        self.workers, self.deaths, self.ready_after = workers, dict(deaths), ready_after
        self.calls: list[tuple[int, int]] = []  # (worker, shard index) per submit
        self.replaced: list[int] = []
        self.polls = 0

    def start(self) -> None: ...

    def ready(self) -> list[int]:
        self.polls += 1
        return list(range(self.workers)) if self.polls > self.ready_after else []

    def submit(self, worker: int, shard: Shard) -> concurrent.futures.Future[ShardRecord]:
        self.calls.append((worker, shard.index))
        future: concurrent.futures.Future[ShardRecord] = concurrent.futures.Future()
        if self.deaths.get(shard.index, 0) > 0:
            self.deaths[shard.index] -= 1
            future.set_exception(WorkerDied(f"worker {worker} died", worker, handle=f"h{worker}"))
        else:
            future.set_result(ShardRecord(shard.index, shard=shard.id, rows=1))
        return future

    def replace(self, worker: int, handle: Any) -> None:
        self.replaced.append(worker)

    def waiting(self) -> str:
        return "2 workers wait for a node with 4 CPUs"

    def stop(self) -> None: ...


class Quiet:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def ready(self, ready: int, workers: int) -> None: ...

    def message(self, text: str) -> None:
        self.messages.append(text)


def _shards(n: int) -> list[Shard]:
    return [Shard(i, f"s{i}", "parquet", (f"f{i}",), (1,), ("v",), 1) for i in range(n)]


def _run(pool: Pool, shards: list[Shard], **kw: Any) -> tuple[dict[int, Any], Quiet]:
    settled: dict[int, Any] = {}

    def settle(shard: Shard, future: concurrent.futures.Future[ShardRecord]) -> None:
        assert shard.index not in settled, "settled twice"
        settled[shard.index] = future.exception() or future.result()

    progress = Quiet()
    assert dispatch(pool, shards, settle, lambda: False, progress, **kw)
    return settled, progress


def test_a_shard_whose_worker_died_is_scored_again_and_the_worker_replaced() -> None:
    pool = Pool(workers=2, deaths={1: 2})
    settled, progress = _run(pool, _shards(4))
    assert sorted(settled) == [0, 1, 2, 3]
    assert all(isinstance(r, ShardRecord) for r in settled.values())
    assert [s for _, s in pool.calls].count(1) == 3  # two deaths, then scored
    assert len(pool.replaced) == 2
    assert sum("s1: worker" in m and "scoring it again" in m for m in progress.messages) == 2


def test_a_shard_that_kills_every_worker_it_meets_is_settled_as_died() -> None:
    pool = Pool(workers=2, deaths={0: 100})
    settled, _ = _run(pool, _shards(2))
    assert isinstance(settled[0], WorkerDied) and isinstance(settled[1], ShardRecord)
    assert [s for _, s in pool.calls].count(0) == SHARD_ATTEMPTS


def test_no_worker_ready_for_the_placement_timeout_fails_the_job_saying_what_they_wait_for() -> None:
    pool = Pool(workers=2, deaths={}, ready_after=10**9)
    with pytest.raises(JobFailed, match=r"no worker was ready for 0.3 s .* 2 workers wait for a node"):
        _run(pool, _shards(1), placement_timeout_s=0.3)


# -- the fence ---------------------------------------------------------------------------------


def _fence(folder: Path, run_id: str) -> Fence:
    def read(name: str) -> bytes:
        try:
            return (folder / name).read_bytes()
        except FileNotFoundError as exc:
            raise StorageError(f"{name}: not found") from exc

    def write(name: str, data: bytes) -> None:
        (folder / f".{name}.tmp").write_bytes(data)
        os.replace(folder / f".{name}.tmp", folder / name)

    folder.mkdir(exist_ok=True)
    return Fence(str(folder), run_id, read, write, lambda name: (folder / name).unlink(), str(folder))


def _held_by(folder: Path, process: dict[str, Any]) -> None:
    (folder / "_run.json").write_text(json.dumps({"run_id": "other", "started_at": 0, **process}))


def test_a_claim_held_by_a_live_driver_is_refused_and_a_dead_ones_taken_over(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = {"host": socket.gethostname(), "pid": sleeper.pid, "process_start": process_start(sleeper.pid)}
        _held_by(tmp_path, live)
        with pytest.raises(StorageError, match=f"being written by another scoring run \\(pid {sleeper.pid}"):
            _fence(tmp_path, "mine").claim()
    finally:
        sleeper.kill()
        sleeper.wait()
    mine = _fence(tmp_path, "mine")
    mine.claim()  # its driver is gone now
    assert mine.holds()
    with mine.fenced():
        pass


def test_a_reused_pid_is_not_taken_for_the_driver_that_claimed(tmp_path: Path) -> None:
    ghost = {**me(), "process_start": "1"}  # this pid, but started at another time
    assert alive(ghost) is False
    assert alive(me()) is True
    assert alive({**me(), "host": "elsewhere"}) is None


def test_a_later_claim_fences_the_earlier_run_out(tmp_path: Path) -> None:
    first, second = _fence(tmp_path, "first"), _fence(tmp_path, "second")
    first.claim()
    second.claim()  # the same driver process (a resume in-process): allowed
    with pytest.raises(Fenced, match="no longer held by run first"):
        with first.fenced():
            pass
    first.revoke()  # not its claim: left alone
    assert second.holds()
    second.revoke()
    assert second.holder() is None


def test_a_driver_owned_by_another_user_counts_as_alive() -> None:
    """``kill(pid, 0)`` on another user's process raises PermissionError: that process runs. A
    forked child turns into user ``nobody`` and asks about this (root's) process."""
    import pwd

    if os.getuid() != 0:
        pytest.skip("needs root to become another user")  # CI and this machine run tests as root
    parent = me()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        try:
            os.setuid(pwd.getpwnam("nobody").pw_uid)
            try:
                os.kill(parent["pid"], 0)
                seen = "signalled"
            except PermissionError:
                seen = "denied"
            os.write(write, json.dumps([seen, alive(parent)]).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as f:
        seen, answer = json.loads(f.read())
    assert seen == "denied"  # the case this test is about
    assert answer is True
