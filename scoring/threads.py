"""A thread pool whose threads never hold the process.

``concurrent.futures.ThreadPoolExecutor`` joins its threads when the interpreter exits, so a
shard stuck in a call to a store that stopped answering would keep an interrupted job from
exiting until that call times out (minutes). These threads are daemons: Ctrl-C and SIGTERM stop
the job within seconds whatever storage does; what they were doing is abandoned uncommitted,
which resume handles like any interrupted shard.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

_busy = 0  # calls running in any pool now
_busy_lock = threading.Lock()


def busy() -> bool:
    """Whether a call still runs in some pool's thread: a process that exits then must not run
    Python's finalisation under it (a session torn down mid-run aborts the process)."""
    return _busy > 0


def call(fn: Callable[[], Any], name: str) -> concurrent.futures.Future[Any]:
    """``fn()`` in a daemon thread of its own, counted as busy while it runs."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        _count(+1)
        try:
            future.set_result(fn())
        except BaseException as exc:  # the caller gets it from the future
            future.set_exception(exc)
        finally:
            _count(-1)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


Work = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def _count(n: int) -> None:
    global _busy
    with _busy_lock:
        _busy += n


class DaemonPool(concurrent.futures.Executor):
    def __init__(self, threads: int, name: str) -> None:
        self._queue: queue.SimpleQueue[Work | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        if self._closed:
            raise RuntimeError("the pool was shut down")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            _count(+1)
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # the caller gets it from the future
                future.set_exception(exc)
            finally:
                _count(-1)

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Stop taking work; wait for running calls (up to ``timeout`` seconds), or with
        ``wait=False`` return at once, leaving them to finish or be abandoned with the process."""
        self._closed = True
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            deadline = None if timeout is None else time.monotonic() + timeout
            for t in self._threads:
                t.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))
