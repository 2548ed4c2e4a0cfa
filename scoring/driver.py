"""The driver's side of one run: the shards' records as they settle, the rejected-row limit, the
first shards' verdict (``outcome``), the progress lines and the claim's heartbeat.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from scoring import outcome
from scoring.errors import JobFailed, ScoringError, StorageError
from scoring.fence import HEARTBEAT_S, Fenced
from scoring.folder import JobFolder
from scoring.progress import Lines
from scoring.record import Reason, ShardRecord
from scoring.runners import WorkerDied
from scoring.shard import Shard
from scoring.spec import JobSpec
from scoring.stopping import Stop


class Run:
    """The driver's side of the shards of one run: their records as they settle, the rejected-row
    limit, the progress lines, the claim's heartbeat."""

    def __init__(
        self, spec: JobSpec, out: JobFolder, settled: dict[int, ShardRecord], progress: Lines, todo: int
    ) -> None:
        self.spec, self.out, self.progress = spec, out, progress
        self.records = dict(settled)
        self.watch = outcome.Watch(todo)
        self.rejected = sum(r.rows_failed for r in settled.values())
        self.scored = 0  # rows scored by this run (not by the runs it resumes)
        self.beat = time.monotonic()
        self.beating: threading.Thread | None = None
        self.committed: dict[str, Any] | None = None  # what a table output's commit took

    def settle(self, shard: Shard, future: Any) -> None:
        """Take a finished shard's outcome. Raises ``ScoringError`` to stop the job."""
        try:
            rec = future.result()
        except WorkerDied as exc:
            rec = self._died(shard, str(exc))
        except Fenced as exc:
            raise JobFailed(
                f"{self.out.uri} was taken over by another run ({exc}); this run stopped. Run one job "
                "at a time on an output folder."
            ) from exc
        self.records[rec.index] = rec
        self.rejected += rec.rows_failed
        self.scored += rec.rows - rec.rows_failed
        self.progress.settled(rec)
        self.watch.settled(rec)
        limit = self.spec.config.errors.max_rejected_rows
        if self.rejected > limit:
            self.watch.check(f"more than errors.max_rejected_rows={limit} rows were rejected")
            raise JobFailed(
                f"{self.rejected} rows rejected, more than errors.max_rejected_rows={limit}, the last "
                f"{rec.first_error}; the job stopped. See {self.out.uri}/_errors.parquet for the reasons."
            )

    def tick(self, stop: Stop) -> bool:
        """Progress, the claim's heartbeat; True once a signal said to stop."""
        self.progress.tick()
        idle = self.beating is None or not self.beating.is_alive()
        if time.monotonic() - self.beat > HEARTBEAT_S and idle and not stop.event.is_set():
            self.beat = time.monotonic()
            # In a thread of its own: a store that stalls must not hold up dispatch or a signal.
            self.beating = threading.Thread(target=self._heartbeat, daemon=True)
            self.beating.start()
        return stop.event.is_set()

    def _heartbeat(self) -> None:
        try:
            self.out.fence.heartbeat()
        except ScoringError:
            pass  # an outage: the next beat tries again; report calls the driver gone only later

    def _died(self, shard: Shard, why: str) -> ShardRecord:
        """A shard whose worker process kept dying: settled as failed, by the driver."""
        rec = ShardRecord(
            index=shard.index,
            shard=shard.id,
            rows=shard.rows or 0,
            started_at=time.time(),
            run_id=self.spec.run_id,
        )
        reason = Reason("infer", "WorkerDied", f"{shard.id}: {why}")
        failed = self.spec.format.every_row(shard, reason)
        try:
            with self.out.shard(shard.index, shard.id) as output:
                output.commit(rec, failed, "failed")
        except StorageError:  # OUT cannot be written either: resume scores it again
            rec.close("failed", failed)
            rec.committed = False
        return rec

    def collect(self, stop: Stop) -> list[ShardRecord]:
        """Every settled shard: those seen here, and any whose marker landed before the claim was
        revoked but whose record never reached the driver (an interrupted or stopped run). A
        shard that failed to write yet has a marker wins it back: the write landed and only the
        store's answer was lost (a connection reset mid-outage), so resume will not score it
        again and the summary must not call it failed. When OUT cannot be listed, the records
        seen here."""
        known = [i for i, r in self.records.items() if r.committed]
        try:
            found = stop.bounded(lambda: self.out.markers(skip=known), "listing the shards settled")
            self.records.update(found)
        except ScoringError as exc:
            self.progress.message(f"could not list the shards settled in {self.out.uri}: {exc}")
        return sorted(self.records.values(), key=lambda r: r.index)
