"""What one shard's scoring produced besides predictions: its record and its rejected rows.

``ShardRecord`` is the typed per-shard record: the columns of ``_shards.parquet`` plus what the
progress marker keeps beside them (providers, GPUs). It is a few hundred bytes whatever the
shard holds, which is all that travels from a worker back to the driver.

``Rejections`` holds rejected rows as ranges ``[start, stop)`` of an input file with a stage, an
error kind and a message; consecutive rows rejected for the same reason share one range. The
worker writes them itself (``sink``), one row per rejected row, so their number never reaches the
driver.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

STAGES = ("read", "decode", "preprocess", "infer", "postprocess", "write")  # where a row is rejected
# Where a shard's time goes: the work of each stage, measured where it happens (docs/report.md,
# "Timing"); besides it, the worker's one-off setup and the wait for the session.
WORK_TIMES = ("read_s", "preprocess_s", "infer_s", "write_s")
ERROR_COLUMNS = pa.schema(
    [
        ("shard", pa.string()),
        ("file", pa.string()),
        ("row", pa.int64()),
        ("stage", pa.string()),
        ("error", pa.string()),
        ("message", pa.string()),
    ]
)


def _column(typ: pa.DataType) -> Any:
    return {"column": typ}


@dataclasses.dataclass
class ShardRecord:
    """One shard's outcome and timing. Fields with a ``column`` type are ``_shards.parquet``'s.

    ``status``: ``running`` while scored; ``succeeded``; ``partial`` (some rows rejected);
    ``failed`` (the whole shard rejected: unreadable, or its columns unusable).
    """

    index: int
    shard: str = dataclasses.field(metadata=_column(pa.string()))
    rows: int = dataclasses.field(default=0, metadata=_column(pa.int64()))
    rows_failed: int = dataclasses.field(default=0, metadata=_column(pa.int64()))
    bytes: int = dataclasses.field(default=0, metadata=_column(pa.int64()))
    status: str = dataclasses.field(default="running", metadata=_column(pa.string()))
    started_at: float = dataclasses.field(default=0.0, metadata=_column(pa.timestamp("us", tz="UTC")))
    finished_at: float | None = dataclasses.field(
        default=None, metadata=_column(pa.timestamp("us", tz="UTC"))
    )
    wall_s: float = dataclasses.field(default=0.0, metadata=_column(pa.float64()))
    # The worker's one-off costs (model fetch, session, warm-up, first use of each stage), on its
    # first shard's record and before that shard's start: never counted as any stage's work.
    setup_s: float = dataclasses.field(default=0.0, metadata=_column(pa.float64()))
    read_s: float = dataclasses.field(default=0.0, metadata=_column(pa.float64()))
    preprocess_s: float = dataclasses.field(default=0.0, metadata=_column(pa.float64()))
    infer_s: float = dataclasses.field(default=0.0, metadata=_column(pa.float64()))
    write_s: float = dataclasses.field(default=0.0, metadata=_column(pa.float64()))
    wait_s: float = dataclasses.field(default=0.0, metadata=_column(pa.float64()))
    rows_per_s: float = dataclasses.field(default=0.0, metadata=_column(pa.float64()))
    device: str = dataclasses.field(default="cpu", metadata=_column(pa.string()))
    node: str = dataclasses.field(default="", metadata=_column(pa.string()))
    actors: str = dataclasses.field(default="", metadata=_column(pa.string()))
    # Kept in the progress marker only.
    providers: list[str] = dataclasses.field(default_factory=list)
    fallback: str | None = None
    warmup_error: str | None = None
    gpu_ids: list[int] = dataclasses.field(default_factory=list)
    cuda_visible_devices: str | None = None
    first_error: str | None = None  # the first rejected row's stage and message, for the console
    rejected_by_stage: dict[str, int] = dataclasses.field(default_factory=dict)
    rejected_by_kind: dict[str, int] = dataclasses.field(default_factory=dict)  # "stage: error" -> rows
    committed: bool = True  # False: OUT could not be written (no marker): resume scores it again
    written: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # outputs.Written, committed
    run_id: str = ""  # the run that scored it (a resumed job has several)

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the time spent in the block to ``stage`` (one of ``WORK_TIMES``, ``setup_s``, ``wait_s``)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, stage, getattr(self, stage) + time.perf_counter() - t0)

    def close(self, status: str, rejections: Rejections) -> None:
        """Settle the counts and times once the shard's outcome is known."""
        self.status = status
        self.rows_failed = rejections.count
        self.rejected_by_stage = rejections.by_stage()
        self.rejected_by_kind = rejections.by_kind()
        self.rows = max(self.rows, self.rows_failed)  # an unreadable file of unknown size: 1 row
        self.first_error = rejections.first()
        self.finished_at = time.time()
        self.wall_s = self.finished_at - self.started_at
        scored = self.rows - self.rows_failed
        self.rows_per_s = scored / self.wall_s if self.wall_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


SHARD_COLUMNS = pa.schema(
    [
        pa.field(f.name, f.metadata["column"])
        for f in dataclasses.fields(ShardRecord)
        if "column" in f.metadata
    ]
)


def shards_table(records: list[ShardRecord]) -> pa.Table:
    """``_shards.parquet``: one row per record, in shard order."""
    ordered = sorted(records, key=lambda r: r.index)
    cols: dict[str, list[Any]] = {name: [getattr(r, name) for r in ordered] for name in SHARD_COLUMNS.names}
    for name in ("started_at", "finished_at"):
        cols[name] = [int(v * 1e6) if v is not None else None for v in cols[name]]
    return pa.table(cols, schema=SHARD_COLUMNS)


@dataclasses.dataclass(frozen=True)
class Reason:
    stage: str  # one of STAGES
    error: str  # a short kind: NullValue, ShapeMismatch, ORT's exception class, ...
    message: str  # where, what was expected, what was found, what to do


Range = tuple[str, int, int, Reason]  # file, start, stop, why


class Rejections:
    """Rejected rows as ranges ``[start, stop)`` of one input file, each with a ``Reason``.

    Rows are counted where the rows are: a preprocessor or the session rejects rows of the batch
    it was given (``file`` left empty), and ``formats.Chunk.locate`` turns those into rows of
    their input files, which is what ``_errors.parquet`` holds. ``(-1, -1)`` stands for the rows
    of a file that could not be read at all (count unknown); it counts as one row and is written
    with a null ``row``.
    """

    def __init__(self) -> None:
        self.ranges: list[Range] = []

    def __len__(self) -> int:
        return len(self.ranges)

    @property
    def count(self) -> int:
        return sum(max(stop - start, 1) for _, start, stop, _ in self.ranges)

    def add(self, start: int, stop: int, reason: Reason, file: str = "") -> None:
        if self.ranges:
            last_file, last_start, last_stop, last = self.ranges[-1]
            if last_file == file and last_stop == start and last == reason and start >= 0:
                self.ranges[-1] = (file, last_start, stop, reason)
                return
        self.ranges.append((file, start, stop, reason))

    def add_rows(self, rows: np.ndarray, reason: Reason, file: str = "") -> None:
        """Reject ``rows`` (ascending, distinct); consecutive rows share a range."""
        if len(rows) == 0:
            return
        rows = np.asarray(rows, dtype=np.int64)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        starts = np.concatenate([[0], breaks])
        stops = np.concatenate([breaks, [len(rows)]])
        for a, b in zip(starts.tolist(), stops.tolist()):
            self.add(int(rows[a]), int(rows[b - 1]) + 1, reason, file)

    def extend(self, other: Rejections) -> None:
        for file, start, stop, reason in other.ranges:
            self.add(start, stop, reason, file)

    def rows(self) -> np.ndarray:
        """Every rejected row (of a batch: ranges without a file), ascending."""
        parts = [np.arange(start, stop) for _, start, stop, _ in self.ranges if start >= 0]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def by_stage(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, start, stop, reason in self.ranges:
            counts[reason.stage] = counts.get(reason.stage, 0) + max(stop - start, 1)
        return counts

    def by_kind(self) -> dict[str, int]:
        """Rows per ``"stage: error"``."""
        counts: dict[str, int] = {}
        for _, start, stop, reason in self.ranges:
            kind = f"{reason.stage}: {reason.error}"
            counts[kind] = counts.get(kind, 0) + max(stop - start, 1)
        return counts

    def first(self) -> str | None:
        if not self.ranges:
            return None
        file, start, _, reason = min(self.ranges, key=lambda r: (r[0], r[1]))
        name = file.rstrip("/").rsplit("/", 1)[-1]  # the shard's line names the folder already
        where = (f"{name} " if name else "") + (f"row {start}" if start >= 0 else "the whole file")
        return f"{reason.stage} ({where}): {reason.message}"

    def table(self, shard: str) -> pa.Table:
        """One row per rejected row, by file and row (``ERROR_COLUMNS``); repeated values
        dictionary-encoded."""
        ranges = sorted(self.ranges, key=lambda r: (r[0], r[1]))
        lengths = np.array([max(stop - start, 1) for _, start, stop, _ in ranges], dtype=np.int64)
        which = np.repeat(np.arange(len(ranges)), lengths)
        starts = np.array([start for _, start, _, _ in ranges], dtype=np.int64)
        first_of = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(ranges) else np.zeros(0, np.int64)
        rows = starts[which] + (np.arange(len(which)) - first_of[which])
        known = np.array([start >= 0 for _, start, _, _ in ranges], dtype=bool)
        row = pa.array(rows, pa.int64(), mask=~known[which]) if len(ranges) else pa.array([], pa.int64())

        def column(values: list[str]) -> pa.Array:
            codes: dict[str, int] = {}
            ids = np.array([codes.setdefault(v, len(codes)) for v in values], dtype=np.int32)
            indices = pa.array(ids[which] if len(ranges) else np.zeros(0, np.int32))
            return pa.DictionaryArray.from_arrays(indices, pa.array(list(codes), pa.string())).cast(
                pa.string()
            )

        return pa.table(
            [
                pa.repeat(pa.scalar(shard), len(rows)),
                column([f for f, _, _, _ in ranges]),
                row,
                column([r.stage for _, _, _, r in ranges]),
                column([r.error for _, _, _, r in ranges]),
                column([r.message for _, _, _, r in ranges]),
            ],
            schema=ERROR_COLUMNS,
        )
