"""Input formats: how files become shards, and shards become rows. One seam, one module each.

A ``Format`` is built from the input section (``input.*``, its class the format's ``Options``)
and ``storage_options``: plain data, it travels to the workers. Its jobs:

- ``listing() -> [FileInfo]``: the files ``input.uri`` holds for it (``listed``: a folder's files
  by their suffixes; a table's: the data files of one version, from its log). Raises
  ``StorageError`` when there are none, ``InputError`` when they cannot be read as this format;
- ``source() -> Source | None``: what the listing read when it is more than files (a table at
  its version), pinned in the plan; ``resumed(source)``: the format reading what a plan pinned;
- ``plan(files, first_index, first_position) -> [Shard]``: cut the listed files into shards,
  numbered from ``first_index`` (``first_position``: files planned before, for ids that count
  files);
- ``schema(files, columns) -> pa.Schema``: the columns the rows of these files give, one type per
  column over every file, checked against the model on the driver before anything starts;
  raises ``InputError`` (exit 2) when files disagree in a way no value survives;
- ``read(shard, schema, rows, pool) -> Iterator[Chunk]``: the shard's rows, about ``rows`` at a
  time, with ``schema``'s columns in its types; ``pool`` (or None) lends threads. Raises
  ``RowError`` when the whole shard is unreadable; rows or files that are not go to the chunk's
  ``rejected``;
- ``notes(shard) -> [str]``: what ``scoring validate`` says about a shard's first files, beside
  its rows (an audio file's rate, channels, duration and rows); most formats say nothing;
- naming each row's origin (``ByFile``: ``file`` and ``row``; ``ByPath``: ``row`` and ``path``):
  ``provenance`` (the columns), ``where(chunk, take)`` (their values) and ``every_row(shard,
  reason)`` (a whole shard rejected, by the same names).

A format whose files make tables (Delta, Iceberg) also says which folders are its tables
(``table_root(path)``: the table a listed log file belongs to; ``is_table(fs, folder)``), so that
a table listed as plain files is refused (``listed``). Registered in ``scoring.registry.FORMATS``,
imported when used. Example, a format whose every file is one row holding its bytes::

    class Blobs(ByPath):
        name, suffixes, Options = "blobs", (".bin",), InputConfig
        def __init__(self, inp, storage_options): self.inp, self.so = inp, storage_options
        def listing(self): return listed(self.inp, self.so, self.suffixes)
        def source(self): return None
        def resumed(self, source): return self
        def plan(self, files, first_index, first_position):
            return [Shard(first_index + i, f.uri, self.name, (f.uri,), (f.size,), (f.version,), 1)
                    for i, f in enumerate(files)]
        def schema(self, files, columns): return pa.schema([("blob", pa.binary())])
        def read(self, shard, schema, rows, pool):
            data = pa.table({"blob": [storage.read_bytes(shard.uri, self.so)]})
            yield Chunk(data, [shard.uri], np.zeros(1, np.int32), np.zeros(1, np.int64))
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from scoring import listing, registry
from scoring.config import InputConfig
from scoring.errors import InputError, StorageError, translated
from scoring.record import Reason, Rejections
from scoring.shard import FileInfo, Shard, Source
from scoring.storage import unstrip


class Format(Protocol):
    name: str
    suffixes: tuple[str, ...]
    Options: type[InputConfig]
    provenance: tuple[tuple[str, str], ...]

    def listing(self) -> list[FileInfo]: ...

    def source(self) -> Source | None: ...

    def resumed(self, source: Source | None) -> Format: ...

    def plan(self, files: Sequence[FileInfo], first_index: int, first_position: int) -> list[Shard]: ...

    def schema(self, files: Sequence[FileInfo], columns: Sequence[str]) -> pa.Schema: ...

    def read(
        self, shard: Shard, schema: pa.Schema, rows: int, pool: concurrent.futures.Executor | None
    ) -> Iterator[Chunk]: ...

    def where(self, chunk: Chunk, take: np.ndarray) -> list[tuple[pa.Field, pa.Array]]: ...

    def every_row(self, shard: Shard, reason: Reason) -> Rejections: ...

    def notes(self, shard: Shard) -> list[str]: ...


def get(name: str, inp: InputConfig, storage_options: dict[str, Any]) -> Format:
    """The format called ``name`` (``registry.FORMATS``), built for ``inp``."""
    return registry.load(registry.FORMATS[name])(inp, storage_options)  # type: ignore[no-any-return]


def list_input(
    inp: InputConfig, storage_options: dict[str, Any], pinned: Source | None = None
) -> tuple[Format, list[FileInfo]]:
    """The format that reads ``input.uri`` and its files (at the version a resumed plan
    ``pinned``). Raises ``StorageError`` when no format of ``input.format`` finds a file there."""
    names = registry.INPUTS[inp.format].formats
    errors = []
    for name in names:
        fmt = get(name, inp, storage_options).resumed(pinned)
        try:
            return fmt, fmt.listing()
        except StorageError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    wanted = ", ".join(s for name in names for s in registry.load(registry.FORMATS[name]).suffixes)
    raise StorageError(
        f"{inp.uri}: found no files ending in {wanted}; check input.uri and input.format"
    ) from errors[-1]


def table_formats() -> list[Any]:
    """The format classes whose folders are tables (they have ``table_root``)."""
    classes = [registry.load(path) for path in registry.FORMATS.values()]
    return [c for c in classes if hasattr(c, "table_root")]


def listed(inp: InputConfig, storage_options: dict[str, Any], suffixes: Sequence[str]) -> list[FileInfo]:
    """The files under ``input.uri`` ending in ``suffixes`` (``listing.list_files``). Raises
    ``InputError`` when ``input.uri`` is in a table, or holds one: its folder keeps every version's
    files, removed and overwritten rows too; it is read at one version by its own format."""
    kinds = table_formats()
    tables: dict[str, str] = {}

    def seen(uri: str) -> None:
        for kind in kinds:
            root = kind.table_root(uri)
            if root is not None:
                tables.setdefault(root, kind.name)

    files = listing.list_files(inp.uri, storage_options, suffixes, seen)
    found = sorted(tables.items())
    if not found:
        with translated(StorageError, f"looking for a table at or above {inp.uri}"):
            fs, folders = listing.folders_up(inp.uri, storage_options)
            hit = next(((f, k) for f in folders for k in kinds if k.is_table(fs, f)), None)
        if hit is not None:
            found = [(unstrip(fs, hit[0]), hit[1].name)]
    if found:
        root, kind = found[0]
        layout = next(k.layout for k in kinds if k.name == kind)
        raise InputError(
            f"{root} is a{'n' if kind[0] in 'aeiou' else ''} {kind.capitalize()} table (found {layout}): its "
            f"folder keeps the files of every version, rows since removed or overwritten among them, "
            f"so input.format {inp.format} would score rows the table no longer holds. Read it at "
            f"one version with input.format: {kind}"
            + ("" if root.rstrip("/") == inp.uri.rstrip("/") else f" and input.uri: {root}")
        )
    return files


# -- the rows of a shard --------------------------------------------------------------------


@dataclasses.dataclass
class Chunk:
    """Rows of a shard as read: their columns, and where each row comes from.

    ``rejected`` holds rows (or whole files) rejected while reading, already located in their
    files; ``skip`` marks rows of ``data`` among them (their values are placeholders), which
    preprocessing passes over.
    """

    data: pa.Table
    files: list[str]  # the input files of these rows
    file_of: np.ndarray  # int32 per row: its file, an index into ``files``
    rows: np.ndarray  # int64 per row: its index in its file (image files: in the shard)
    rejected: Rejections = dataclasses.field(default_factory=Rejections)
    skip: np.ndarray | None = None

    @classmethod
    def of_file(cls, data: pa.Table, file: str, first_row: int, **kw: Any) -> Chunk:
        n = data.num_rows
        rows = np.arange(first_row, first_row + n, dtype=np.int64)
        return cls(data, [file], np.zeros(n, np.int32), rows, **kw)

    def __len__(self) -> int:
        return int(self.data.num_rows)

    @property
    def absent(self) -> int:
        """Rows rejected while reading that are not rows of ``data`` (a file that could not be
        read; one row when its row count is unknown)."""
        return self.rejected.count - (int(self.skip.sum()) if self.skip is not None else 0)

    def head(self, n: int) -> Chunk:
        """The first ``n`` rows (what was rejected while reading them comes along)."""
        skip = self.skip[:n] if self.skip is not None else None
        return Chunk(self.data.slice(0, n), self.files, self.file_of[:n], self.rows[:n], self.rejected, skip)

    def locate(self, rejected: Rejections) -> Rejections:
        """``rejected`` rows of this chunk (indices into ``data``) as rows of their files."""
        out = Rejections()
        for _, start, stop, reason in rejected.ranges:
            files, rows = self.file_of[start:stop], self.rows[start:stop]
            breaks = (np.flatnonzero((np.diff(files) != 0) | (np.diff(rows) != 1)) + 1).tolist()
            for a, b in zip([0, *breaks], [*breaks, len(rows)]):
                out.add(int(rows[a]), int(rows[b - 1]) + 1, reason, self.files[int(files[a])])
        return out

    def file_column(self, take: np.ndarray) -> pa.Array:
        """The file of each row in ``take``, as strings."""
        if len(self.files) == 1:
            return pa.array(np.full(len(take), self.files[0], dtype=object), pa.string())
        indices = pa.array(self.file_of[take], pa.int32())
        return pa.DictionaryArray.from_arrays(indices, pa.array(self.files, pa.string())).cast(pa.string())


def concat(chunks: Sequence[Chunk]) -> Chunk:
    """One chunk of several (same columns), in order."""
    if len(chunks) == 1:
        return chunks[0]
    files: list[str] = []
    file_of, rejected, skips = [], Rejections(), []
    for c in chunks:
        file_of.append(c.file_of + len(files))
        files += c.files
        rejected.extend(c.rejected)
        skips.append(c.skip if c.skip is not None else np.zeros(len(c), bool))
    skip = np.concatenate(skips)
    return Chunk(
        pa.concat_tables([c.data for c in chunks]),
        files,
        np.concatenate(file_of).astype(np.int32),
        np.concatenate([c.rows for c in chunks]),
        rejected,
        skip if skip.any() else None,
    )


# -- how prediction rows name their origin ---------------------------------------------------


class ByFile:
    """Rows named by their input file and their index in it (``file``, ``row``): Parquet,
    tables, tars."""

    provenance: tuple[tuple[str, str], ...] = (
        ("file", "scoring (the row's input file)"),
        ("row", "scoring (the row's index in its file)"),
    )

    def where(self, chunk: Chunk, take: np.ndarray) -> list[tuple[pa.Field, pa.Array]]:
        return [
            (pa.field("file", pa.string()), chunk.file_column(take)),
            (pa.field("row", pa.int64()), pa.array(chunk.rows[take], pa.int64())),
        ]

    def notes(self, shard: Shard) -> list[str]:
        return []

    def every_row(self, shard: Shard, reason: Reason) -> Rejections:
        """Every row of ``shard`` rejected for ``reason``: its file's rows when the plan knows
        them, else one row per file (count unknown)."""
        out = Rejections()
        if len(shard.files) == 1 and shard.rows is not None:
            out.add(shard.first_row, shard.first_row + shard.rows, reason, shard.uri)
        else:
            for uri in shard.files:
                out.add(-1, -1, reason, uri)
        return out


class ByPath:
    """Rows that are whole files, named by their index in the shard and their path (``row``,
    ``path``): image folders."""

    provenance: tuple[tuple[str, str], ...] = (
        ("row", "scoring (the row's index in its shard)"),
        ("path", "scoring (the image file)"),
    )

    def where(self, chunk: Chunk, take: np.ndarray) -> list[tuple[pa.Field, pa.Array]]:
        return [
            (pa.field("row", pa.int64()), pa.array(chunk.rows[take], pa.int64())),
            (pa.field("path", pa.string()), chunk.file_column(take)),
        ]

    def notes(self, shard: Shard) -> list[str]:
        return []

    def every_row(self, shard: Shard, reason: Reason) -> Rejections:
        """Every file of ``shard`` rejected for ``reason``, one row each."""
        out = Rejections()
        for i, uri in enumerate(shard.files):
            out.add(i, i + 1, reason, uri)
        return out
