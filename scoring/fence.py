"""The fence: which run may write the output folder, and whether the process behind a run lives.

A run claims OUT by writing its id to ``_run.json`` (with its host, pid, the pid's start time and
a heartbeat). Every shard's commit checks the claim first, so a worker of an earlier run (its
driver killed, its actors not yet stopped) can never overwrite what a later run wrote; a run that
stops revokes its claim before it writes the summary, so no late commit can contradict it. On
local disk the check and the commit hold a shared lock on ``_run.lock`` and claiming takes it
exclusively, so nothing slips between them; in object storage the check and the upload are two
requests.

Whether a claim's driver lives is one question with one answer (``alive``): on its own machine,
its pid runs and started when the claim says (a reused pid is not it); elsewhere, its heartbeat
is recent. A store that cannot be read is an outage, never "no claim" or "taken over".
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from scoring.errors import StorageError

RUN, LOCK = "_run.json", "_run.lock"
HEARTBEAT_S = 10.0  # how often a running driver renews its claim's heartbeat
STALE_S = 3 * HEARTBEAT_S  # no heartbeat for this long: the driver is gone


class Fenced(Exception):
    """This run no longer holds OUT: a later run claimed it, or this one stopped. Not a
    ``ScoringError``: the worker's result is dropped, nobody is waiting for it."""


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (Linux: clock ticks after boot), so a reused pid is not taken
    for the process that claimed OUT."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def me() -> dict[str, Any]:
    """This process, as a claim names its driver."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "process_start": process_start(pid)}


def alive(process: dict[str, Any]) -> bool | None:
    """Whether the process a claim names (``host``, ``pid``, ``process_start``) still runs: None
    on another machine (it cannot be checked from here). A pid owned by another user is alive
    (``kill`` may not signal it, but it runs)."""
    if process.get("host") != socket.gethostname():
        return None
    try:
        pid = int(process.get("pid", -1))
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    except PermissionError:
        pass
    started = process.get("process_start")
    return started is None or process_start(pid) == started


def driver_state(holder: dict[str, Any], now: float | None = None) -> str:
    """What a claim says of its driver: ``alive`` or ``gone`` (checked on its machine; elsewhere
    by its heartbeat, gone after ``STALE_S``)."""
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        return "alive"
    checked = alive(holder)
    if checked is not None:
        return "alive" if checked else "gone"
    beat = float(holder.get("heartbeat_at") or holder.get("started_at") or 0)
    return "gone" if (now or time.time()) - beat > STALE_S else "alive"


class Fence:
    """The claim on one output folder, as run ``run_id`` sees it. ``read`` and ``write`` reach
    the folder's files by name (``write`` atomic); ``remove`` deletes one; ``path`` is its local
    path (None in object storage: no lock there)."""

    def __init__(
        self,
        uri: str,
        run_id: str,
        read: Callable[[str], bytes],
        write: Callable[[str, bytes], None],
        remove: Callable[[str], None],
        path: str | None,
    ) -> None:
        self.uri, self.run_id, self.path = uri, run_id, path
        self._read, self._write, self._remove = read, write, remove
        self.claimed: dict[str, Any] = {}

    @contextlib.contextmanager
    def _lock(self, exclusive: bool) -> Iterator[None]:
        if self.path is None:
            yield
            return
        os.makedirs(self.path, exist_ok=True)
        with open(os.path.join(self.path, LOCK), "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def holder(self) -> dict[str, Any] | None:
        """The claim in ``_run.json``, if any. Raises ``StorageError`` when it cannot be read: a
        store that does not answer is an outage, never "no claim" (or "taken over")."""
        try:
            return dict(json.loads(self._read(RUN)))
        except StorageError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                return None
            raise
        except ValueError:
            return None  # half-written by a run that died while claiming: nobody's claim

    def claim(self) -> None:
        """Make this run the one that may write OUT. Raises ``StorageError`` if a run whose driver
        is alive on this machine holds it."""
        with self._lock(exclusive=True):
            other = self.holder()
            mine = other is not None and other.get("run_id") == self.run_id
            if other and not mine and other.get("pid") != os.getpid() and alive(other):
                raise StorageError(
                    f"{self.uri} is being written by another scoring run (pid {other['pid']}, "
                    f"started {time.ctime(other['started_at'])}); wait for it to finish or stop it"
                )
            now = time.time()
            self.claimed = {"run_id": self.run_id, **me(), "started_at": now, "heartbeat_at": now}
            self._write(RUN, json.dumps(self.claimed).encode())

    def heartbeat(self) -> None:
        """Say the driver is alive (``heartbeat_at``), so ``scoring report`` can tell a running
        job from one whose driver is gone, from any machine."""
        with self._lock(exclusive=True):
            if self.holds():
                self._write(RUN, json.dumps(self.claimed | {"heartbeat_at": time.time()}).encode())

    def revoke(self) -> None:
        """End this run's claim: from now on none of its commits lands."""
        with self._lock(exclusive=True):
            if (self.holder() or {}).get("run_id") == self.run_id:
                self._remove(RUN)

    def holds(self) -> bool:
        return (self.holder() or {}).get("run_id") == self.run_id

    @contextlib.contextmanager
    def fenced(self) -> Iterator[None]:
        """Run the block only while this run holds OUT; raise ``Fenced`` otherwise."""
        with self._lock(exclusive=False):
            if not self.holds():
                raise Fenced(f"{self.uri} is no longer held by run {self.run_id}")
            yield
