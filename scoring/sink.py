"""The output folder: where each shard's results go, in what order, and who may write them.

Layout under OUT (README "Output layout"):

- ``_plan.parquet``: the plan, written before the first shard is scored (``scoring.plan``);
- ``predictions/part-NNNNNN.parquet``: one complete file per shard, NNNNNN its plan index;
- ``_errors/part-NNNNNN.parquet``: its rejected rows, one per row;
- ``_progress/part-NNNNNN.json``: its ``ShardRecord``, written last: present = the shard is
  settled (succeeded, partial or failed), which is what resume and report read;
- ``_shards.parquet``, ``_errors.parquet`` (every shard's rejected rows, merged by streaming),
  then ``_job.json`` last when a run ends.

A shard commits in that order: predictions, errors, marker. Nothing unfinished ever has a name a
reader takes: local files are written under a hidden name beside the target and renamed; an
object appears only when its one upload completes.

The fence: a run claims OUT by writing its id to ``_run.json``. Every commit checks the claim
first, so a worker of an earlier run (its driver killed, its actors not yet stopped) can never
overwrite what a later run wrote; a run that stops revokes its claim before it writes the
summary, so no late commit can contradict it. On local disk the check and the commit hold a
shared lock on ``_run.lock`` and claiming takes it exclusively, so nothing slips between them;
in object storage the check and the upload are two requests.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import io
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scoring import storage
from scoring.errors import StorageError, translated
from scoring.outputs import Written
from scoring.plan import Plan, from_table, to_table
from scoring.record import ERROR_COLUMNS, Rejections, ShardRecord, shards_table

PLAN, RUN, LOCK = "_plan.parquet", "_run.json", "_run.lock"
PREDICTIONS, ERRORS, PROGRESS = "predictions", "_errors", "_progress"
SUMMARY = ("_shards.parquet", "_errors.parquet", "_job.json")
JOB_FILES = (PLAN, PREDICTIONS, ERRORS, PROGRESS, *SUMMARY, RUN, LOCK)
READ_THREADS = 16  # markers are small: read many at once from object storage
HEARTBEAT_S = 10.0  # how often a running driver renews its claim's heartbeat
STALE_S = 3 * HEARTBEAT_S  # no heartbeat for this long: the driver is gone


class Fenced(Exception):
    """This run no longer holds OUT: a later run claimed it, or this one stopped. Not a
    ``ScoringError``: the worker's result is dropped, nobody is waiting for it."""


def part(index: int, suffix: str) -> str:
    return f"part-{index:06d}{suffix}"


def text_columns(schema: pa.Schema) -> list[str]:
    """The columns worth dictionary encoding: text. On float predictions dictionary encoding
    costs about as much as the rest of the write together and then falls back to plain anyway."""
    return [
        f.name
        for f in schema
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_dictionary(f.type)
    ]


def table_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, use_dictionary=text_columns(table.schema))
    return buf.getvalue()


class Output:
    """OUT, as one run sees it. ``run_id`` is the run's claim (see the module docstring)."""

    def __init__(self, uri: str, storage_options: dict[str, Any], run_id: str) -> None:
        self.uri, self.storage_options, self.run_id = uri, storage_options, run_id
        fs, self.path = storage.split_uri(uri, storage_options)
        self.local = storage.is_local(fs)
        self.claimed: dict[str, Any] = {}

    def join(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    def _read(self, name: str) -> bytes:
        return storage.read_bytes(self.join(name), self.storage_options)

    def _write(self, name: str, data: bytes) -> None:
        storage.write_bytes_atomic(self.join(name), data, self.storage_options)

    # -- the fence ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self, exclusive: bool) -> Iterator[None]:
        if not self.local:
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
        """Make this run the one that may write OUT. Raises ``StorageError`` if a run that is still
        alive on this machine holds it."""
        with self._lock(exclusive=True):
            other = self.holder()
            if other and _alive(other) and other.get("run_id") != self.run_id:
                raise StorageError(
                    f"{self.uri} is being written by another scoring run (pid {other['pid']}, "
                    f"started {time.ctime(other['started_at'])}); wait for it to finish or stop it"
                )
            now = time.time()
            me = {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid()}
            me |= {"process_start": _process_start(os.getpid()), "started_at": now, "heartbeat_at": now}
            self._write(RUN, json.dumps(me).encode())
            self.claimed = me

    def heartbeat(self) -> None:
        """Say the driver is alive (``_run.json``'s ``heartbeat_at``), so ``scoring report`` can
        tell a running job from one whose driver is gone, from any machine."""
        with self._lock(exclusive=True):
            if self.holds():
                self._write(RUN, json.dumps(self.claimed | {"heartbeat_at": time.time()}).encode())

    def revoke(self) -> None:
        """End this run's claim: from now on none of its commits lands."""
        with self._lock(exclusive=True):
            if (self.holder() or {}).get("run_id") == self.run_id:
                storage.remove(self.join(RUN), self.storage_options)

    def holds(self) -> bool:
        return (self.holder() or {}).get("run_id") == self.run_id

    @contextlib.contextmanager
    def fenced(self) -> Iterator[None]:
        """Run the block only while this run holds OUT; raise ``Fenced`` otherwise."""
        with self._lock(exclusive=False):
            if not self.holds():
                raise Fenced(f"{self.uri} is no longer held by run {self.run_id}")
            yield

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
        holder = self.holder()
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

    def clear(self, tabled: bool = False) -> None:
        """Remove every job file (overwrite) — but ``predictions/`` when it is a table's
        (``tabled``): its readers keep the table they read until the new job's commit."""
        for name in JOB_FILES:
            if name not in (RUN, LOCK) and not (tabled and name == PREDICTIONS):
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

    def next_index(self) -> int:
        """One past the highest shard index of a file in ``predictions/`` (0 when none): where a
        new plan starts numbering so that it reuses no name a table still reads."""
        indices = [
            int(name[5:11])
            for uri in storage.list_names(self.join(PREDICTIONS), self.storage_options)
            if (name := uri.rstrip("/").rsplit("/", 1)[-1]).startswith("part-") and name[5:11].isdigit()
        ]
        return max(indices, default=-1) + 1

    def written(self, records: Iterable[ShardRecord]) -> list[Written]:
        """The predictions files of the settled shards among ``records``, as a table commit
        takes them: size and time from one listing, rows from the records."""
        found = storage.list_sizes(self.join(PREDICTIONS), self.storage_options)
        out = []
        for r in sorted(records, key=lambda r: r.index):
            uri = self.join(PREDICTIONS, part(r.index, ".parquet"))
            if r.status in ("succeeded", "partial") and r.committed and uri in found:
                size, modified = found[uri]
                out.append(Written(uri, part(r.index, ".parquet"), size, r.rows - r.rows_failed, modified))
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

    def shard(self, index: int, shard_id: str) -> ShardOutput:
        return ShardOutput(self, index, shard_id)


class ShardOutput:
    """One shard's results, committed in order — predictions, errors, marker — under the fence.

    Used as a context manager: predictions not committed are removed on the way out. Locally
    they are written part by part into a hidden file beside the target and renamed, so nothing
    accumulates in memory; for object storage the compressed bytes collect in memory and go up
    in one put (retried when transient).
    """

    def __init__(self, out: Output, index: int, shard_id: str) -> None:
        self.out, self.index, self.shard_id = out, index, shard_id
        self.uri = out.join(PREDICTIONS, part(index, ".parquet"))
        self.file: storage.AtomicFile | None = None
        self.writer: pq.ParquetWriter | None = None

    def __enter__(self) -> ShardOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()  # an error, a shard given up, a fenced commit: no trace

    def abort(self) -> None:
        """Drop the predictions written so far (a no-op once committed)."""
        if self.file is not None:
            if self.writer is not None:
                with contextlib.suppress(OSError, pa.ArrowException):  # a full disk: dropped anyway
                    self.writer.close()
                self.writer.is_open = False  # or its __del__ closes (and fails) again
            self.file.abort()
            self.file = None

    def write(self, table: pa.Table) -> None:
        """Raises ``StorageError`` when the bytes cannot be written (a full disk, say)."""
        if self.writer is None:
            self.file = storage.AtomicFile(self.uri, self.out.storage_options)
            self.writer = pq.ParquetWriter(
                self.file.handle, table.schema, use_dictionary=text_columns(table.schema)
            )
        with translated(StorageError, f"writing {self.uri}"):
            self.writer.write_table(table)

    @property
    def started(self) -> bool:
        return self.writer is not None

    def commit(self, record: ShardRecord, rejections: Rejections, status: str) -> None:
        """Settle the shard: its predictions (dropped when ``status`` is "failed"), its rejected
        rows, then its record, closed with ``status``. Raises ``Fenced`` if this run no longer
        holds OUT: nothing is written then."""
        with self.out.fenced():
            with record.timed("write_s"):
                if status == "failed":
                    self.abort()
                elif self.writer is not None and self.file is not None:
                    with translated(StorageError, f"writing {self.uri}"):
                        self.writer.close()
                    self.file.commit()
                    self.file = None
                if len(rejections):
                    data = table_bytes(rejections.table(self.shard_id))
                    self.out._write(storage.join(ERRORS, part(self.index, ".parquet")), data)
            record.close(status, rejections)
            marker = json.dumps(record.to_json()).encode()
            self.out._write(storage.join(PROGRESS, part(self.index, ".json")), marker)


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (Linux: clock ticks after boot), so a reused pid is not taken
    for the process that held OUT."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def driver_state(holder: dict[str, Any], now: float | None = None) -> str:
    """What a claim says of its driver: ``alive``, ``gone`` (checked: same machine, or no
    heartbeat for ``STALE_S``), or ``unknown``."""
    if holder.get("host") == socket.gethostname():
        return "alive" if _alive(holder) or holder.get("pid") == os.getpid() else "gone"
    beat = float(holder.get("heartbeat_at") or holder.get("started_at") or 0)
    return "gone" if (now or time.time()) - beat > STALE_S else "alive"


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the process that claimed OUT still runs (known only on the same machine)."""
    if holder.get("host") != socket.gethostname():
        return False  # another machine's run: it cannot be checked from here
    pid = int(holder.get("pid", -1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    return _process_start(pid) == holder.get("process_start")
