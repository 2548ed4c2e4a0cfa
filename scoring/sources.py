"""Reading one planned shard: Parquet rows in chunks (a whole file or a row range), image bytes.

A worker's memory stays flat whatever the shard's size: tables arrive ``CHUNK_ROWS`` rows at a
time and image files ``IMAGES_PER_CHUNK`` at a time. Rows keep their index in their file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from scoring import storage
from scoring.errors import RowError, StorageError
from scoring.plan import Shard

# Rows of a table shard in memory at once (at least compute.batch_size).
CHUNK_ROWS = 65536
# Image files read (and decoded) at once: enough for a few batches, little memory (~10 MB at 224²).
IMAGES_PER_CHUNK = 64
# Row-range shards of remote files are read through a block cache of this size (ranged GETs).
REMOTE_BLOCK = 16 << 20


def row_groups(uri: str, storage_options: dict[str, Any]) -> list[int]:
    """Rows per row group of a Parquet file, from its footer alone (small ranged reads)."""
    import pyarrow.parquet as pq

    fs, path = storage.split_uri(uri, storage_options)

    def read() -> list[int]:
        # A small block: s3fs would otherwise fetch 50 MiB to read a footer of a few KB.
        with fs.open(path, "rb", block_size=1 << 16) as f:
            meta = pq.ParquetFile(f).metadata
            return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]

    return storage.with_retries(read, f"reading the footer of {uri}")


def read_schema(uri: str, storage_options: dict[str, Any]) -> pa.Schema:
    """The Arrow schema of a Parquet file, from its footer. Raises ``InputError`` if unreadable."""
    import pyarrow.parquet as pq

    from scoring.errors import InputError

    fs, path = storage.split_uri(uri, storage_options)
    try:
        with fs.open(path, "rb", block_size=1 << 16) as f:
            return pq.ParquetFile(f).schema_arrow
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{uri}: cannot read the Parquet footer ({exc}). Is it a Parquet file?") from exc


@dataclasses.dataclass
class ParquetShard:
    """An open Parquet shard (a file, or a row range of one), read in chunks."""

    shard: Shard
    file: Any  # pq.ParquetFile
    columns: list[str]  # those asked for that the file has
    size: int
    handle: Any = None  # an fsspec file to close, for remote row ranges

    @property
    def first_row(self) -> int:
        return self.shard.row_start or 0

    @property
    def rows(self) -> int:
        if self.shard.row_start is not None and self.shard.row_stop is not None:
            return self.shard.row_stop - self.shard.row_start
        return int(self.file.metadata.num_rows)

    @property
    def schema(self) -> pa.Schema:
        return self.file.schema_arrow

    def chunks(self, rows: int) -> Iterator[tuple[int, pa.Table]]:
        """``(row index in the file of the first row, table)`` of up to ``rows`` rows each.

        Raises ``RowError`` (the whole shard) if the data past the footer is corrupt.
        """
        groups = list(self.shard.row_groups) or None
        offset = self.first_row
        try:
            for batch in self.file.iter_batches(batch_size=rows, row_groups=groups, columns=self.columns):
                yield offset, pa.Table.from_batches([batch])
                offset += batch.num_rows
        except (OSError, pa.ArrowException) as exc:
            raise self.corrupt(exc) from exc
        finally:
            self.close()

    def corrupt(self, exc: Exception) -> RowError:
        """The shard's data past the footer could not be decoded: every row is rejected."""
        uri = self.shard.id
        start = self.first_row
        return RowError(
            "read", f"{uri}: cannot read Parquet shard: {exc}", type(exc).__name__, start, start + self.rows
        )

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def open_parquet(shard: Shard, columns: Sequence[str], storage_options: dict[str, Any]) -> ParquetShard:
    """Open a Parquet shard for reading ``columns`` (those it has; missing ones are left for the
    caller to report by name). Raises ``RowError`` (stage "read") for an unreadable file: its rows
    are the whole shard when the footer can be read, else unknown (-1).

    Local files are read as needed. A whole remote object is fetched in one GET (retried when
    transient) and decoded from memory; a row range of one is read through a block cache, so only
    its row groups travel.
    """
    import pyarrow.parquet as pq

    uri = shard.uri
    fs, path = storage.split_uri(uri, storage_options)
    handle = None
    try:
        if storage.is_local(fs):
            # A buffered stream: without it pyarrow reads whole column chunks ahead (measured:
            # 277 MB held for a 256 MB file, 5 MB with it, at the same speed).
            size, file = fs.size(path), pq.ParquetFile(path, buffer_size=8 << 20, pre_buffer=False)
        elif shard.row_groups:
            handle = fs.open(path, "rb", block_size=REMOTE_BLOCK, cache_type="readahead")
            size, file = shard.bytes, pq.ParquetFile(handle, pre_buffer=True)
        else:
            data = storage.read_bytes(uri, storage_options)
            size, file = len(data), pq.ParquetFile(pa.BufferReader(data))  # zero-copy, unlike io.BytesIO
    except (OSError, pa.ArrowException, StorageError) as exc:
        if handle is not None:
            handle.close()
        rows = _known_rows(shard)
        raise RowError("read", f"{uri}: cannot read Parquet shard: {exc}", type(exc).__name__, *rows) from exc
    present = [c for c in columns if c in file.schema_arrow.names]
    return ParquetShard(shard, file, present, int(size), handle)


def _known_rows(shard: Shard) -> tuple[int, int]:
    """The rows of a shard whose data failed to read: all of them if the plan knows how many."""
    if shard.rows is None:
        return -1, -1
    start = shard.row_start or 0
    return start, start + shard.rows


def image_files(shard: Shard, storage_options: dict[str, Any]) -> Iterator[tuple[int, list[Any]]]:
    """``(position of the first file in the shard, [bytes or the exception reading it])``."""
    for start in range(0, len(shard.files), IMAGES_PER_CHUNK):
        blobs: list[Any] = []
        for uri in shard.files[start : start + IMAGES_PER_CHUNK]:
            try:
                blobs.append(storage.read_bytes(uri, storage_options))
            except Exception as exc:  # one unreadable file is a rejected row, not a failed job
                blobs.append(exc)
        yield start, blobs
