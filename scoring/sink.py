"""Writing results: predictions per shard, progress markers, and the job's summary files.

Layout under OUT (README "Output layout"):
- ``predictions/part-NNNNNN.parquet``: one complete object per shard (atomic: never half written);
- ``_progress/part-NNNNNN.json``: the shard's record, written after its predictions. A marker
  present means the shard is complete; this is what ``resume`` and ``report`` read;
- ``_shards.parquet``, ``_errors.parquet``, then ``_job.json`` last: its ``status`` says the job
  is complete.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scoring import storage
from scoring.errors import StorageError

SHARD_COLUMNS = pa.schema(
    [
        ("shard", pa.string()),
        ("rows", pa.int64()),
        ("rows_failed", pa.int64()),
        ("bytes", pa.int64()),
        ("status", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("wall_s", pa.float64()),
        ("read_s", pa.float64()),
        ("preprocess_s", pa.float64()),
        ("infer_s", pa.float64()),
        ("write_s", pa.float64()),
        ("wait_s", pa.float64()),
        ("rows_per_s", pa.float64()),
        ("device", pa.string()),
        ("node", pa.string()),
        ("actors", pa.string()),
    ]
)
ERROR_COLUMNS = pa.schema(
    [
        ("shard", pa.string()),
        ("row", pa.int64()),
        ("stage", pa.string()),
        ("error", pa.string()),
        ("message", pa.string()),
    ]
)
JOB_FILES = ("predictions", "_progress", "_shards.parquet", "_errors.parquet", "_job.json")


def predictions_uri(out: str, index: int) -> str:
    return storage.join(out, "predictions", f"part-{index:06d}.parquet")


def progress_uri(out: str, index: int) -> str:
    return storage.join(out, "_progress", f"part-{index:06d}.json")


def table_bytes(table: pa.Table) -> bytes:
    """Parquet bytes. Dictionary encoding only for text columns: on float predictions it costs
    about as much as the rest of the write together and then falls back to plain anyway."""
    buf = io.BytesIO()
    pq.write_table(table, buf, use_dictionary=_text_columns(table.schema))
    return buf.getvalue()


def _text_columns(schema: pa.Schema) -> list[str]:
    """The columns worth dictionary encoding (see ``table_bytes``)."""
    return [
        f.name
        for f in schema
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_dictionary(f.type)
    ]


class PredictionFile:
    """One shard's predictions, written part by part and visible only once complete; used as a
    context manager, a file not committed is removed on the way out.

    Locally the parts go into a temporary file beside the target, renamed on ``commit``, so
    nothing accumulates in memory. For object storage the compressed Parquet bytes collect in
    memory and go up in one put (retried when transient): an object store shows an object only
    once its upload completes.
    """

    def __init__(self, out: str, index: int, storage_options: dict[str, Any]) -> None:
        self.uri, self.storage_options = predictions_uri(out, index), storage_options
        fs, self.path = storage.split_uri(self.uri, storage_options)
        self.tmp: str | None = None
        self.handle: Any
        if storage.is_local(fs):
            self.tmp = storage.local_temp(self.path)
            self.handle = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        else:
            self.handle = io.BytesIO()
        self.writer: pq.ParquetWriter | None = None
        self.committed = False

    def __enter__(self) -> PredictionFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:  # an error, or a shard given up: no trace of the file
            self.abort()

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(
                self.handle, table.schema, use_dictionary=_text_columns(table.schema)
            )
        self.writer.write_table(table)

    def commit(self) -> None:
        if self.writer is None:
            raise ValueError(f"{self.uri}: nothing was written")
        self.writer.close()
        if self.tmp is not None:
            self.handle.close()
            os.replace(self.tmp, self.path)
        else:
            storage.write_bytes_atomic(self.uri, self.handle.getvalue(), self.storage_options)
        self.committed = True

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.handle.close()
        if self.tmp is not None and os.path.exists(self.tmp):
            os.remove(self.tmp)


def write_progress(out: str, record: dict[str, Any], storage_options: dict[str, Any]) -> None:
    data = json.dumps(record).encode()
    storage.write_bytes_atomic(progress_uri(out, record["index"]), data, storage_options)


def read_progress(out: str, storage_options: dict[str, Any]) -> list[dict[str, Any]]:
    """Records of the shards completed so far (for resume and for reports of running jobs)."""
    records = []
    for uri in storage.list_names(storage.join(out, "_progress"), storage_options):
        if uri.endswith(".json"):
            records.append(json.loads(storage.read_bytes(uri, storage_options)))
    return records


def prepare_output(out: str, mode: str, storage_options: dict[str, Any]) -> list[dict[str, Any]]:
    """Apply ``output.mode``; returns the records of shards already complete (resume only).

    Raises ``StorageError`` in mode "error" when OUT already holds a job.
    """
    present = [name for name in JOB_FILES if storage.exists(storage.join(out, name), storage_options)]
    if not present:
        return []
    if mode == "error":
        raise StorageError(
            f"{out} already holds a job ({', '.join(present)}). Use --mode "
            "overwrite to replace it, --mode resume to finish it, or another output.uri."
        )
    if mode == "overwrite":
        for name in present:
            storage.remove(storage.join(out, name), storage_options)
        return []
    for name in ("_shards.parquet", "_errors.parquet", "_job.json"):
        storage.remove(storage.join(out, name), storage_options)
    return read_progress(out, storage_options)


def error_rows(records: Sequence[dict[str, Any]]) -> pa.Table:
    """Expand each record's error ranges into one row per rejected input row."""
    cols: dict[str, list[Any]] = {name: [] for name in ERROR_COLUMNS.names}
    for rec in records:
        for start, stop, stage, error, message in rec["errors"]:
            rows = range(start, stop) if start >= 0 else [None]
            for row in rows:
                cols["shard"].append(rec["shard"])
                cols["row"].append(row)
                cols["stage"].append(stage)
                cols["error"].append(error)
                cols["message"].append(message)
    return pa.table(cols, schema=ERROR_COLUMNS)


def shard_rows(records: Sequence[dict[str, Any]]) -> pa.Table:
    ordered = sorted(records, key=lambda r: r["index"])
    cols = {name: [r.get(name) for r in ordered] for name in SHARD_COLUMNS.names}
    for name in ("started_at", "finished_at"):
        cols[name] = [int(v * 1e6) if v is not None else None for v in cols[name]]
    return pa.table(cols, schema=SHARD_COLUMNS)


def write_summary(
    out: str, records: Sequence[dict[str, Any]], job: dict[str, Any], storage_options: dict[str, Any]
) -> None:
    """Write ``_shards.parquet`` and ``_errors.parquet``, then ``_job.json`` last."""
    try:
        storage.write_bytes_atomic(
            storage.join(out, "_shards.parquet"), table_bytes(shard_rows(records)), storage_options
        )
        storage.write_bytes_atomic(
            storage.join(out, "_errors.parquet"), table_bytes(error_rows(records)), storage_options
        )
        storage.write_bytes_atomic(
            storage.join(out, "_job.json"), json.dumps(job, indent=2, default=str).encode(), storage_options
        )
    except StorageError as exc:
        raise StorageError(f"writing the job summary under {out}: {exc}") from exc
