"""Parquet files as shards: big files split at row-group boundaries, small ones packed together.

- A file with more than ``input.rows_per_shard`` rows becomes row ranges (id ``URI#rows=A-B``,
  B exclusive), split at row-group boundaries, so one big file is scored by every worker.
- Files far smaller than a shard (under ``rows_per_shard / packing.SMALL`` rows) are packed, in listing
  order, into shards of about ``rows_per_shard`` rows and at most ``input.files_per_shard`` files
  (id ``FIRST_FILE+N``, N more files): one predictions file, one marker and one record per shard
  instead of one per file.
- Up to ``EXACT_FILES`` files every footer is read and shards know their rows. Past that, a few
  footers give the bytes per row, and only files large enough to be split are opened: sizes from
  the listing place the rest (measured: 20,000 footers take 7.5 s, the listing 0.3 s).

Rows keep their index in their file; Hive partition folders (``key=value``) give string columns.
"""

from __future__ import annotations

import concurrent.futures
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import pyarrow as pa

from scoring import storage
from scoring.config import InputConfig
from scoring.errors import InputError, RowError, StorageError
from scoring.formats import ByFile, Chunk, Format, concat, listed, packing
from scoring.formats.schemas import FOOTER_THREADS, inspect_local, read_footer, threaded, unify_files
from scoring.listing import listing_root, partitions
from scoring.record import Reason, Rejections
from scoring.shard import FileInfo, Shard, Source

EXACT_FILES = 256
SAMPLE = 16  # footers read to estimate bytes per row when there are too many to read them all
WINDOW = 64  # files of a packed shard read ahead at once (a few MB)
# Row-range shards of remote files are read through a block cache of this size (ranged GETs).
REMOTE_BLOCK = 16 << 20
T = TypeVar("T")


class Parquet(ByFile):
    name = "parquet"
    suffixes: tuple[str, ...] = (".parquet", ".pq")
    Options: type[InputConfig] = InputConfig

    def __init__(self, inp: InputConfig, storage_options: dict[str, Any]) -> None:
        self.inp, self.so = inp, storage_options
        self.root = listing_root(inp.uri, storage_options)
        # Footers read on the driver, for the schema and then the plan: one read (a GET in a
        # bucket) per file, not two. Not shipped to the workers.
        self.footers: dict[str, tuple[pa.Schema, list[int]] | InputError] = {}

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"footers": {}}

    def footer(self, uri: str) -> tuple[pa.Schema, list[int]]:
        """A file's schema and rows per row group, read once (a failure too: its retries took
        their time already). Raises ``InputError``."""
        if uri not in self.footers:
            try:
                self.footers[uri] = read_footer(uri, self.so)
            except InputError as exc:
                self.footers[uri] = exc
        found = self.footers[uri]
        if isinstance(found, InputError):
            raise found
        return found

    def listing(self) -> list[FileInfo]:
        return listed(self.inp, self.so, self.suffixes)

    def source(self) -> Source | None:
        return None

    def resumed(self, source: Source | None) -> Format:
        return self

    # -- planning ----------------------------------------------------------------------------

    def plan(self, files: Sequence[FileInfo], first_index: int, first_position: int = 0) -> list[Shard]:
        layouts, bytes_per_row = self._layouts(files)
        return packing.pack(self.name, files, layouts, bytes_per_row, self.inp, first_index)

    def _layouts(self, files: Sequence[FileInfo]) -> tuple[list[packing.Layout], float]:
        """Each file's row groups (``packing.NOT_READ`` for small files left unread, None for a footer
        that cannot be read), and the bytes per row of the files that were read."""
        if len(files) <= EXACT_FILES:
            layouts = self._footers(files)
            return layouts, packing.bytes_per_row(files, layouts)
        step = max(len(files) // SAMPLE, 1)
        sample = files[::step][:SAMPLE]
        bytes_per_row = packing.bytes_per_row(sample, self._footers(sample))
        limit = self.inp.rows_per_shard / packing.SMALL * bytes_per_row
        big = [f for f in files if f.size >= limit]
        found = dict(zip((f.uri for f in big), self._footers(big)))
        return [found.get(f.uri, packing.NOT_READ) for f in files], bytes_per_row

    def _footers(self, files: Sequence[FileInfo]) -> list[packing.Layout]:
        def one(f: FileInfo) -> packing.Layout:
            try:
                return self.footer(f.uri)[1]
            except InputError:
                return None  # a corrupt file is planned whole; scoring it fails its rows, not the job

        return threaded(one, files, FOOTER_THREADS)

    # -- the job's schema --------------------------------------------------------------------

    def schema(self, files: Sequence[FileInfo], columns: Sequence[str]) -> pa.Schema:
        """The first file's columns (and its Hive partitions, as strings), with ``columns``
        unified over every file that has them. Raises ``InputError`` naming two files that
        disagree."""
        first = self.footer(files[0].uri)[0]
        parts = partitions(files[0].uri, self.root)
        fields = [f for f in first if f.name not in parts] + [pa.field(k, pa.string()) for k in parts]
        stored = [c for c in dict.fromkeys(columns) if c in first.names and c not in parts]
        if stored and len(files) > 1:
            types = self._unified(files, stored, first)
            fields = [f.with_type(types[f.name]) if f.name in types else f for f in fields]
        return pa.schema(fields)

    def _unified(self, files: Sequence[FileInfo], columns: list[str], first: pa.Schema) -> dict[str, Any]:
        if storage.is_local(storage.split_uri(files[0].uri, self.so)[0]):
            merged = inspect_local([f.uri for f in files])
            if merged is not None:  # every file agrees (a column of nulls takes the others' type)
                return {c: merged.field(c).type for c in columns}
        return unify_files(files, columns, first, lambda uri: self.footer(uri)[0])

    # -- reading -----------------------------------------------------------------------------

    def read(
        self, shard: Shard, schema: pa.Schema, rows: int, pool: concurrent.futures.Executor | None
    ) -> Iterator[Chunk]:
        if len(shard.files) == 1:
            yield from self._file(shard, schema, rows)
            return
        pending: list[Chunk] = []
        count = 0
        for chunk in _windowed(lambda uri: self._whole(uri, schema), shard.files, pool):
            pending.append(chunk)
            count += len(chunk)
            if count >= rows:
                yield concat(pending)
                pending, count = [], 0
        if pending:
            yield concat(pending)

    def _file(self, shard: Shard, schema: pa.Schema, rows: int) -> Iterator[Chunk]:
        """A whole file or a row range of one, ``rows`` rows at a time."""
        uri, first = shard.uri, shard.first_row
        file, handle = self._open(shard)
        total = shard.row_stop - first if shard.row_stop is not None else file.metadata.num_rows
        try:
            columns = self._present(uri, file.schema_arrow, schema, first, total)
            groups = list(shard.row_groups) or None
            offset = first
            for batch in file.iter_batches(batch_size=rows, row_groups=groups, columns=columns):
                data = self._conform(pa.Table.from_batches([batch]), uri, schema)
                yield self._chunk(data, uri, offset)
                offset += batch.num_rows
        except (OSError, pa.ArrowException) as exc:
            raise RowError(
                "read", f"{uri}: cannot read Parquet data: {exc}", type(exc).__name__, first, first + total
            ) from exc
        finally:
            if handle is not None:
                handle.close()

    def _open(self, shard: Shard) -> tuple[Any, Any]:
        """The ``ParquetFile`` of a shard's one file, and a handle to close. Raises ``RowError``
        (stage read) for an unreadable file: the shard's rows when the plan knows them."""
        import pyarrow.parquet as pq

        uri = shard.uri
        fs, path = storage.split_uri(uri, self.so)
        handle = None
        try:
            if storage.is_local(fs):
                # A buffered stream: without it pyarrow reads whole column chunks ahead (measured:
                # 277 MB held for a 256 MB file, 5 MB with it, at the same speed).
                return pq.ParquetFile(path, buffer_size=8 << 20, pre_buffer=False), None
            if shard.row_groups:
                handle = fs.open(path, "rb", block_size=REMOTE_BLOCK, cache_type="readahead")
                return pq.ParquetFile(handle, pre_buffer=True), handle
            # A whole object in one GET, decoded from memory (zero-copy, unlike io.BytesIO).
            return pq.ParquetFile(pa.BufferReader(storage.read_bytes(uri, self.so))), None
        except (OSError, pa.ArrowException, StorageError) as exc:
            if handle is not None:
                handle.close()
            start = shard.first_row
            known = (start, start + shard.rows) if shard.rows is not None else (-1, -1)
            raise RowError(
                "read", f"{uri}: cannot read Parquet file: {exc}", type(exc).__name__, *known
            ) from exc

    def _whole(self, uri: str, schema: pa.Schema) -> Chunk:
        """One small file of a packed shard, read at once; an unreadable one is its rows rejected."""
        import pyarrow.parquet as pq

        file = None
        try:
            # Read whole, then parsed from memory: 0.3 ms a small file, against 0.6 streamed.
            file = pq.ParquetFile(pa.BufferReader(storage.read_bytes(uri, self.so)))
            n = file.metadata.num_rows
            columns = self._present(uri, file.schema_arrow, schema, 0, n)
            table = self._conform(file.read(columns=columns, use_threads=False), uri, schema)
        except RowError as exc:
            return _rejected(
                schema, uri, exc.row_start, exc.row_stop, Reason(exc.stage, exc.error, exc.message)
            )
        except (OSError, pa.ArrowException, StorageError) as exc:
            n = file.metadata.num_rows if file is not None else None
            why = Reason("read", type(exc).__name__, f"{uri}: cannot read Parquet file: {exc}")
            return _rejected(schema, uri, 0 if n is not None else -1, n if n is not None else -1, why)
        return self._chunk(table, uri, 0)

    def _chunk(self, data: pa.Table, uri: str, first_row: int) -> Chunk:
        """The rows of ``uri`` read from ``first_row`` on, as a chunk (a table leaves out the rows
        its deletes removed)."""
        return Chunk.of_file(data, uri, first_row)

    def _present(self, uri: str, found: pa.Schema, schema: pa.Schema, first: int, rows: int) -> list[str]:
        """The columns of ``schema`` stored in the file; ``RowError`` if one is missing."""
        parts = partitions(uri, self.root)
        missing = [f.name for f in schema if f.name not in found.names and f.name not in parts]
        if missing:
            raise RowError(
                "read",
                f"{uri}: no column {missing} (columns found: {found.names}); every file of the input "
                "needs the columns the model reads (input.columns, input.image_column) and input.keep",
                "InputError",
                first,
                first + rows,
            )
        return [f.name for f in schema if f.name not in parts]

    def _conform(self, table: pa.Table, uri: str, schema: pa.Schema) -> pa.Table:
        """``table`` in the job's types, with its file's Hive partitions as columns."""
        parts = partitions(uri, self.root)
        n = table.num_rows
        columns = [
            pa.array([parts[f.name]] * n, pa.string()) if f.name in parts else table.column(f.name)
            for f in schema
        ]
        return pa.Table.from_arrays(columns, schema=schema)  # type: ignore[arg-type]


def _rejected(schema: pa.Schema, uri: str, start: int, stop: int, reason: Reason) -> Chunk:
    rejected = Rejections()
    rejected.add(start, stop, reason, uri)
    return Chunk.of_file(schema.empty_table(), uri, 0, rejected=rejected)


def _windowed(
    fn: Callable[[str], Chunk], items: Iterable[str], pool: concurrent.futures.Executor | None
) -> Iterator[Chunk]:
    """``map(fn, items)`` in order, up to ``WINDOW`` calls ahead in ``pool`` (memory stays flat)."""
    if pool is None:
        yield from map(fn, items)
        return
    it = iter(items)
    ahead = [pool.submit(fn, i) for i in itertools.islice(it, WINDOW)]
    while ahead:
        future = ahead.pop(0)
        nxt = next(it, None)
        if nxt is not None:
            ahead.append(pool.submit(fn, nxt))
        yield future.result()
