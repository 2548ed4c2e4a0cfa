"""Parquet files: ``OUT/predictions/`` is the output, complete once the job is; no commit.

``ParquetFile`` is the shard writer every output here uses: a shard's rows written chunk by
chunk into one Parquet file that readers see whole or not at all. Locally they go into a hidden
temporary file beside the target, renamed on commit, so nothing accumulates in memory; for object
storage the compressed bytes collect in memory and go up in one put (retried when transient).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from scoring import storage
from scoring.config import OutputConfig
from scoring.errors import StorageError, translated
from scoring.outputs import ShardWriter, Written, text_columns


class ParquetFile:
    """One shard's predictions as the Parquet file ``uri`` (see the module docstring)."""

    def __init__(self, uri: str, storage_options: dict[str, Any]) -> None:
        self.uri, self.so = uri, storage_options
        self.file: storage.AtomicFile | None = None
        self.writer: Any = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        """Raises ``StorageError`` when the bytes cannot be written (a full disk, say)."""
        import pyarrow.parquet as pq

        if self.writer is None:
            self.file = storage.AtomicFile(self.uri, self.so)
            self.writer = pq.ParquetWriter(
                self.file.handle, table.schema, use_dictionary=text_columns(table.schema)
            )
        with translated(StorageError, f"writing {self.uri}"):
            self.writer.write_table(table)
        self.rows += table.num_rows

    def commit(self) -> list[Written]:
        if self.writer is None or self.file is None:
            return []
        with translated(StorageError, f"writing {self.uri}"):
            self.writer.close()
        size = self.file.handle.tell()
        self.file.commit()
        self.file = None
        name = self.uri.rstrip("/").rsplit("/", 1)[-1]
        return [Written(self.uri, name, size, self.rows, int(time.time() * 1000))]

    def abort(self) -> None:
        """Drop the rows written so far (a no-op once committed)."""
        if self.file is not None:
            if self.writer is not None:
                with contextlib.suppress(OSError, pa.ArrowException):  # a full disk: dropped anyway
                    self.writer.close()
                self.writer.is_open = False  # or its __del__ closes (and fails) again
            self.file.abort()
            self.file = None


class Files:
    name = "parquet"
    versioned = False
    Options = OutputConfig

    def __init__(self, cfg: OutputConfig, storage_options: dict[str, Any]) -> None:
        self.so = storage_options

    def writer(self, uri: str) -> ShardWriter:
        return ParquetFile(uri, self.so)

    def check(self) -> None:
        pass

    def commit(self, files: Sequence[Written], job: dict[str, Any], replace: bool) -> dict[str, Any] | None:
        return None
