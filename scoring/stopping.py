"""How a job stops on Ctrl-C or SIGTERM: within seconds, whatever storage or Ray is doing.

- Before dispatch (checks, listing, the plan, starting Ray) nothing of the job is written yet: a
  signal interrupts at once (``KeyboardInterrupt``).
- While shards are dispatched, a signal sets ``Stop.event``: the dispatch loop sees it within
  ``POLL_S``, stops the workers, and the driver writes what it can of the summary. Storage that
  stopped answering cannot hold that up: every call to it from here on (the plan, the claim's
  revoke, the final listing, the summary) runs through ``Stop.bounded`` and gets what is left of
  ``GRACE_S`` after a signal — a call already waiting on a stalled store when the signal comes
  too — then the job ends without it and says so.
- A second signal stops at once, without the summary.

Signals reach Python's main thread only; elsewhere (a job run from a thread) nothing is
installed and the event is never set.
"""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from scoring import threads
from scoring.errors import StorageError

GRACE_S = 5.0  # storage calls after a signal, together (workers, ray.shutdown, exit: the rest of 10 s)
WAIT_S = 0.1  # how often a bounded call's wait looks at the deadline
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
        """``fn()``, in a daemon thread that the main thread waits for until it returns or, once a
        signal came (before the call or while it runs), until the grace period ends: past it,
        raises ``StorageError`` and leaves ``fn`` running, abandoned. A second signal stops the
        wait at once (``KeyboardInterrupt``). Off the main thread, where no signal arrives, a
        plain call."""
        if threading.current_thread() is not threading.main_thread():
            return fn()
        future = threads.call(fn, "scoring-storage")
        while True:
            try:
                return future.result(timeout=WAIT_S)  # type: ignore[no-any-return]
            except concurrent.futures.TimeoutError:
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    raise StorageError(
                        f"{what}: storage did not answer within {GRACE_S:g} s of the signal"
                    ) from None
