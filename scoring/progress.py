"""What a running job shows on the console (docs/report.md).

``Lines``: a line per settled shard and a summary line every ``every_s`` seconds: what a
submitted job's log or CI shows. ``Bar``: one live bar (``rich``) on a terminal: rows and shards
settled of the plan's total, rows/s, ETA, rejected rows and failed shards; other messages print
above it. ``console_progress`` picks one for the standard output.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from scoring.record import ShardRecord
from scoring.shard import Shard

Echo = Callable[[str], None]


class Lines:
    """Plain lines: one per settled shard, and a summary every ``every_s`` seconds."""

    def __init__(self, echo: Echo = print, every_s: float = 10.0) -> None:
        self.echo, self.every_s = echo, every_s
        self.shards = self.rows = self.rejected = self.failed = 0
        self.total_shards = 0
        self.rows_now, self.t0, self.last = 0, time.monotonic(), time.monotonic()
        self.lock = threading.Lock()
        self.pending: dict[int, Shard] = {}
        self.pending_rows = 0  # rows of the shards not settled, where the plan knows or guesses them
        self.pending_bytes = 0  # bytes of those whose rows the plan cannot guess (tars)
        self.settled_bytes = 0
        self.started = False  # a worker was ready: scoring began

    def start(self, shards: Sequence[Shard], settled: list[ShardRecord], what: str) -> None:
        """The job is about to dispatch the plan's ``shards``; ``settled`` are the shards an
        earlier run settled."""
        self.total_shards = len(shards)
        self.pending = {s.index: s for s in shards}
        for s in shards:
            guess = s.rows if s.rows is not None else s.rows_estimate
            self.pending_rows += guess or 0
            self.pending_bytes += s.bytes if guess is None else 0
        for rec in settled:
            self._count(rec)
        self.t0 = self.last = time.monotonic()
        self.message(what)

    @property
    def total_rows(self) -> int:
        """Rows settled, plus those the plan knows or guesses for the rest; rows of shards it
        cannot guess (tars) are guessed from the bytes per row of the shards settled so far."""
        per_byte = self.rows / self.settled_bytes if self.settled_bytes else 0.0
        return self.rows + self.pending_rows + round(self.pending_bytes * per_byte)

    def _count(self, rec: ShardRecord) -> None:
        shard = self.pending.pop(rec.index, None)
        if shard is not None:
            guess = shard.rows if shard.rows is not None else shard.rows_estimate
            self.pending_rows -= guess or 0
            self.pending_bytes -= shard.bytes if guess is None else 0
        self.settled_bytes += rec.bytes
        self.shards += 1
        self.rows += rec.rows
        self.rejected += rec.rows_failed
        self.failed += rec.status == "failed"

    def settled(self, rec: ShardRecord) -> None:
        with self.lock:
            self._count(rec)
            self.rows_now += rec.rows
            self.shard_line(rec)

    def shard_line(self, rec: ShardRecord) -> None:
        bad = f", {rec.rows_failed:,} rejected" if rec.rows_failed else ""
        self.echo(
            f"  [{self.shards}/{self.total_shards}] {rec.shard}: {rec.status}, {rec.rows:,} rows{bad}, "
            f"{rec.wall_s:.2f}s on {rec.device}"
        )

    def ready(self, ready: int, workers: int) -> None:
        """How many of the workers can take shards, each time that changes; rates count from
        the first ready one."""
        if ready and not self.started:
            self.started, self.t0 = True, time.monotonic()
        self.message(f"{ready} of {workers} worker(s) ready")

    def tick(self) -> None:
        """Called often while the job runs: the summary line, when one is due (never before a
        shard has settled: until then it would only say nothing happened)."""
        now = time.monotonic()
        if self.shards and now - self.last >= self.every_s:
            self.last = now
            self.message(self.summary())

    def rate(self) -> float:
        elapsed = time.monotonic() - self.t0
        return self.rows_now / elapsed if elapsed > 0 else 0.0

    def eta(self) -> str:
        rate, left = self.rate(), max(self.total_rows - self.rows, 0)
        return _clock(left / rate) if rate > 0 else "-:--:--"

    def summary(self) -> str:
        rate = self.rate()
        eta = f", ETA {self.eta()}" if rate > 0 and self.rows < self.total_rows else ""
        pct = f" ({100 * self.rows / self.total_rows:.0f}%)" if self.total_rows else ""
        return (
            f"progress: {self.shards}/{self.total_shards} shards, {self.rows:,}/{self.total_rows:,} rows"
            f"{pct}, {rate:,.0f} rows/s{eta}, {self.rejected:,} rejected, {self.failed} failed shard(s)"
        )

    def message(self, text: str) -> None:
        self.echo(text)

    def close(self) -> None:
        """The job stopped dispatching (done, stopped or interrupted)."""


class Bar(Lines):
    """One live ``rich`` bar on a terminal; messages print above it."""

    def __init__(self, stream: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self.console = Console(file=stream or sys.stdout)
        super().__init__(self.console.print, every_s=float("inf"))
        self.bar = Progress(
            BarColumn(bar_width=24),
            TextColumn("{task.percentage:>3.0f}%  {task.fields[rows]} rows  {task.fields[shards]} shards"),
            TextColumn("{task.fields[rate]} rows/s  ETA {task.fields[eta]}"),
            TextColumn("[red]{task.fields[bad]}"),
            console=self.console,
            refresh_per_second=4,
        )
        self.task: Any = None

    def start(self, shards: Sequence[Shard], settled: list[ShardRecord], what: str) -> None:
        super().start(shards, settled, what)
        self.task = self.bar.add_task("scoring", total=max(self.total_rows, 1), **self._fields())
        self.bar.update(self.task, completed=self.rows)

    def ready(self, ready: int, workers: int) -> None:
        super().ready(ready, workers)
        if ready and not self.bar.live.is_started:  # a bar only once something can move it
            self.bar.start()

    def _fields(self) -> dict[str, Any]:
        bad = f"{self.rejected:,} rejected, {self.failed} failed" if self.rejected or self.failed else ""
        return {
            "rows": f"{self.rows:,}/{self.total_rows:,}",
            "shards": f"{self.shards}/{self.total_shards}",
            "rate": f"{self.rate():,.0f}",
            "eta": self.eta(),
            "bad": bad,
        }

    def shard_line(self, rec: ShardRecord) -> None:
        if rec.status != "succeeded":  # the bar counts the others; these deserve a line
            bad = f"{rec.rows_failed:,} rows rejected" if rec.status == "partial" else "failed"
            self.console.print(f"{rec.shard}: {bad}: {rec.first_error or ''}", markup=False, highlight=False)
        self.bar.update(self.task, total=max(self.total_rows, 1), completed=self.rows, **self._fields())

    def tick(self) -> None:
        if self.task is not None:
            self.bar.update(self.task, **self._fields())

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        if self.task is not None:
            self.bar.update(self.task, completed=self.rows, **self._fields())
            self.bar.stop()


def console_progress(echo: Echo) -> Lines:
    """A live bar when the standard output is a terminal, plain lines otherwise."""
    return Bar() if sys.stdout.isatty() else Lines(echo)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
