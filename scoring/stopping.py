"""How a job stops on Ctrl-C or SIGTERM: within seconds, whatever storage or Ray is doing.

- Before dispatch (checks, listing, the plan, starting Ray) nothing of the job is written yet: a
  signal interrupts at once (``KeyboardInterrupt``).
- While shards are dispatched, a signal sets ``Stop.event``: the dispatch loop sees it within
  ``POLL_S``, stops the workers, and the driver writes what it can of the summary. Storage that
  stopped answering cannot hold that up: after a signal every call to it gets what is left of
  ``GRACE_S`` (``Stop.bounded``), then the job ends without it and says so.
- A second signal stops at once, without the summary.

Signals reach Python's main thread only; elsewhere (a job run from a thread) nothing is
installed and the event is never set.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from scoring.errors import StorageError

GRACE_S = 5.0  # storage calls after a signal, together (workers, ray.shutdown, exit: the rest of 10 s)
T = TypeVar("T")


class Stop:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.dispatching = False  # before: a signal interrupts at once
        self.deadline: float | None = None
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        """Take SIGINT and SIGTERM (again: ``ray.init`` installs a SIGTERM handler of its own)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous.setdefault(sig, signal.getsignal(sig))
            signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set() or not self.dispatching:
            raise KeyboardInterrupt  # nothing to finish yet, or a second signal: stop now
        self.event.set()
        self.deadline = time.monotonic() + GRACE_S

    def bounded(self, fn: Callable[[], T], what: str) -> T:
        """``fn()``; after a signal, given what is left of the grace period: past it, raises
        ``StorageError`` and leaves ``fn`` running in a daemon thread, abandoned."""
        if self.deadline is None:
            return fn()
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed to the caller below
                box["error"] = exc

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        thread.join(max(self.deadline - time.monotonic(), 0.0))
        if thread.is_alive():
            raise StorageError(f"{what}: storage did not answer within {GRACE_S:g} s of the signal")
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]
