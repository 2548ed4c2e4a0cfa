"""The output folder OUT: where each shard's results go, in what order, and what a run leaves.

Layout under OUT (docs/outputs.md):

- ``_plan.parquet``: the plan, written before the first shard is scored (``scoring.plan``);
- ``predictions/part-NNNNNN.parquet``: one complete file per shard, NNNNNN its plan index, written
  by the output's shard writer (``scoring.outputs``);
- ``_errors/part-NNNNNN.parquet``: its rejected rows, one per row;
- ``_progress/part-NNNNNN.json``: its ``ShardRecord``, written last: present = the shard is
  settled (succeeded, partial or failed), which is what resume and report read;
- ``_shards.parquet``, ``_errors.parquet`` (every shard's rejected rows, merged by streaming),
  then ``_job.json`` last when a run ends;
- ``_run.json``: the claim of the run writing OUT (``scoring.fence``).

A shard commits in that order: predictions, errors, marker, under the fence. Nothing unfinished
ever has a name a reader takes: local files are written under a hidden name beside the target and
renamed; an object appears only when its one upload completes.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scoring import storage
from scoring.errors import StorageError
from scoring.fence import LOCK, RUN, Fence, driver_state
from scoring.outputs import ShardWriter, Written, table_bytes
from scoring.plan import Plan, from_table, to_table
from scoring.record import ERROR_COLUMNS, Rejections, ShardRecord, shards_table

PLAN = "_plan.parquet"
PREDICTIONS, ERRORS, PROGRESS = "predictions", "_errors", "_progress"
SUMMARY = ("_shards.parquet", "_errors.parquet", "_job.json")
JOB_FILES = (PLAN, PREDICTIONS, ERRORS, PROGRESS, *SUMMARY, RUN, LOCK)
READ_THREADS = 16  # markers are small: read many at once from object storage


def part(index: int, suffix: str) -> str:
    """A shard's file name in each folder of OUT, by its plan index."""
    return f"part-{index:06d}{suffix}"


class JobFolder:
    """OUT, as one run sees it; ``fence`` is the run's claim on it (``run_id``)."""

    def __init__(self, uri: str, storage_options: dict[str, Any], run_id: str) -> None:
        self.uri, self.storage_options, self.run_id = uri, storage_options, run_id
        fs, self.path = storage.split_uri(uri, storage_options)
        self.local = storage.is_local(fs)
        self.fence = Fence(
            uri,
            run_id,
            self._read,
            self._write,
            lambda name: storage.remove(self.join(name), storage_options),
            self.path if self.local else None,
        )

    def join(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    def _read(self, name: str) -> bytes:
        return storage.read_bytes(self.join(name), self.storage_options)

    def _write(self, name: str, data: bytes) -> None:
        storage.write_bytes_atomic(self.join(name), data, self.storage_options)

    # -- modes, sweeping, the plan -----------------------------------------------------------

    def present(self) -> list[str]:
        so = self.storage_options
        return [n for n in JOB_FILES if n != LOCK and storage.exists(self.join(n), so)]

    def runs(self) -> list[dict[str, Any]]:
        """The runs of the job in OUT so far, for a run that resumes it: those its ``_job.json``
        lists, and one whose driver stopped without a summary (its claim is still there)."""
        runs: list[dict[str, Any]] = []
        if storage.exists(self.join("_job.json"), self.storage_options):
            runs = list(json.loads(self._read("_job.json")).get("runs") or [])
        holder = self.fence.holder()
        known = {r.get("run_id") for r in runs}
        if holder and holder.get("run_id") not in known and driver_state(holder) == "gone":
            started = float(holder.get("started_at") or 0)
            ended = float(holder.get("heartbeat_at") or started)
            runs.append(
                {
                    "run_id": holder.get("run_id"),
                    "started_at": started,
                    "ended_at": ended,
                    "status": "stopped",
                }
            )
        return runs

    def read_plan(self) -> Plan | None:
        if not storage.exists(self.join(PLAN), self.storage_options):
            return None
        return from_table(pq.read_table(pa.BufferReader(self._read(PLAN))))

    def write_plan(self, plan: Plan) -> None:
        self._write(PLAN, table_bytes(to_table(plan)))

    def clear(self, versioned: bool = False) -> None:
        """Remove every job file (overwrite) but the plan, which the new plan replaces — and
        ``predictions/`` when it is a table's (``versioned``): its readers keep the table they
        read until the new job's commit. The plan stays until then, so a plan always numbers past
        every file a table may hold (``plan.make_plan``)."""
        for name in JOB_FILES:
            if name not in (RUN, LOCK, PLAN) and not (versioned and name == PREDICTIONS):
                storage.remove(self.join(name), self.storage_options)

    def start_over(self, settled: Iterable[int], planned: Iterable[int] | None = None) -> None:
        """Before scoring: remove what a run left that is not a settled shard's (their
        predictions, errors and markers are rescored from nothing), the summary of the run before,
        and temporary files of interrupted writes. With ``planned`` (a table's predictions/), a
        predictions file is removed only when it is one of those shards': the others are files an
        earlier job committed to the table."""
        keep = {part(i, "") for i in settled}
        mine = None if planned is None else {part(i, "") for i in planned}
        so = self.storage_options
        for folder in (PREDICTIONS, ERRORS, PROGRESS):
            for uri in storage.list_names(self.join(folder), so):
                name = uri.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]
                if folder == PREDICTIONS and mine is not None and name not in mine:
                    continue
                if name not in keep:
                    storage.remove(uri, so)
        for name in SUMMARY:
            storage.remove(self.join(name), so)
        self.sweep()

    def sweep(self) -> None:
        """Remove the hidden temporary files of interrupted local writes (object stores have none:
        an upload that did not complete leaves no object)."""
        if self.local:
            for folder in ("", PREDICTIONS, ERRORS, PROGRESS):
                storage.sweep_temps(os.path.join(self.path, folder))

    def written(self, records: Iterable[ShardRecord]) -> list[Written]:
        """The predictions files of the settled shards among ``records`` (what their writers
        committed, as their markers say), for a table's commit."""
        out = []
        for r in sorted(records, key=lambda r: r.index):
            if r.status in ("succeeded", "partial") and r.committed:
                out += [Written.from_json(w) for w in r.written]
        return out

    # -- markers and the summary -------------------------------------------------------------

    def markers(self, skip: Iterable[int] = ()) -> dict[int, ShardRecord]:
        """The records of settled shards (their markers), except the indices in ``skip``."""
        skipping = {part(i, ".json") for i in skip}
        uris = [
            u
            for u in storage.list_names(self.join(PROGRESS), self.storage_options)
            if u.endswith(".json") and u.rsplit("/", 1)[-1] not in skipping
        ]

        def one(uri: str) -> ShardRecord:
            return ShardRecord.from_json(json.loads(storage.read_bytes(uri, self.storage_options)))

        with concurrent.futures.ThreadPoolExecutor(READ_THREADS) as pool:
            return {r.index: r for r in pool.map(one, uris)}

    def write_summary(self, records: list[ShardRecord], job: dict[str, Any]) -> None:
        """``_shards.parquet``, ``_errors.parquet`` (merged from ``_errors/`` part by part), then
        ``_job.json`` last."""
        try:
            self._write("_shards.parquet", table_bytes(shards_table(records)))
            self._merge_errors([r for r in records if r.rows_failed])
            self._write("_job.json", json.dumps(job, indent=2, default=str).encode())
        except StorageError as exc:
            raise StorageError(f"writing the job summary under {self.uri}: {exc}") from exc

    def _merge_errors(self, records: list[ShardRecord]) -> None:
        """Stream every settled shard's errors into ``_errors.parquet``: one part in memory at a
        time, whatever the number of rejected rows. A shard that could not be written at all
        (its record only reached the driver) is one row: why."""
        so, target = self.storage_options, self.join("_errors.parquet")
        with storage.atomic_file(target, so) as f:
            writer = pq.ParquetWriter(f, ERROR_COLUMNS, use_dictionary=["shard", "stage", "error", "message"])
            for r in sorted(records, key=lambda r: r.index):
                if r.committed:
                    data = storage.read_bytes(self.join(ERRORS, part(r.index, ".parquet")), so)
                    table = pq.read_table(pa.BufferReader(data)).cast(ERROR_COLUMNS)
                else:
                    row = {"shard": r.shard, "stage": "write", "error": "StorageError"}
                    table = pa.Table.from_pylist([row | {"message": r.first_error}], ERROR_COLUMNS)
                writer.write_table(table)
            writer.close()

    # -- one shard's commit (workers) --------------------------------------------------------

    def predictions(self, index: int) -> str:
        """Where shard ``index``'s predictions go."""
        return self.join(PREDICTIONS, part(index, ".parquet"))

    def shard(self, index: int, shard_id: str, writer: ShardWriter | None = None) -> ShardOutput:
        """Shard ``index``'s commit, its predictions written by ``writer`` (default: a Parquet
        file, ``predictions(index)``)."""
        if writer is None:
            from scoring.outputs.parquet import ParquetFile

            writer = ParquetFile(self.predictions(index), self.storage_options)
        return ShardOutput(self, index, shard_id, writer)


class ShardOutput:
    """One shard's results, committed in order — predictions, errors, marker — under the fence.

    Used as a context manager: predictions not committed are dropped on the way out (an error, a
    shard given up, a fenced commit: no trace).
    """

    def __init__(self, folder: JobFolder, index: int, shard_id: str, writer: ShardWriter) -> None:
        self.folder, self.index, self.shard_id, self.writer = folder, index, shard_id, writer
        self.started = False

    def __enter__(self) -> ShardOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.writer.abort()

    def write(self, table: pa.Table) -> None:
        """Raises ``StorageError`` when the rows cannot be written (a full disk, say)."""
        self.started = True
        self.writer.write(table)

    def commit(self, record: ShardRecord, rejections: Rejections, status: str) -> None:
        """Settle the shard: its predictions (dropped when ``status`` is "failed"), its rejected
        rows, then its record, closed with ``status``. Raises ``Fenced`` if this run no longer
        holds OUT: nothing is written then."""
        with self.folder.fence.fenced():
            with record.timed("write_s"):
                if status == "failed":
                    self.writer.abort()
                elif self.started:
                    record.written = [w.to_json() for w in self.writer.commit()]
                if len(rejections):
                    data = table_bytes(rejections.table(self.shard_id))
                    self.folder._write(storage.join(ERRORS, part(self.index, ".parquet")), data)
            record.close(status, rejections)
            marker = json.dumps(record.to_json()).encode()
            self.folder._write(storage.join(PROGRESS, part(self.index, ".json")), marker)
