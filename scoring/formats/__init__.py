"""Input formats: how files become shards, and shards become rows. One seam, one module each.

A ``Format`` is built from ``input.*`` and ``storage_options`` (plain data: it travels to the
workers) and has these jobs:

- ``listing() -> [FileInfo]``: the files ``input.uri`` holds for it (``listed``: a folder's files
  by their suffixes; a table's: the data files of one version, read from its log). Raises
  ``StorageError`` when there are none, ``InputError`` when they cannot be read as this format;
- ``source() -> dict | None``: what was listed when it is more than files — a table, its
  format and the version read — recorded in the plan and ``_job.json`` (None for folders);
- ``plan(files, first_index, first_position) -> [Shard]``: cut the listed files into shards,
  numbered from ``first_index`` (``first_position``: files planned before, for ids that count
  files);
- ``schema(files, columns) -> pa.Schema``: the columns the rows of these files give, with one
  type for each of ``columns`` over every file; checked against the model on the driver before
  anything starts. Raises ``InputError`` (exit 2) when files disagree in a way no value survives;
- ``read(shard, schema, rows, pool) -> Iterator[Chunk]``: the shard's rows, about ``rows`` at a
  time, with ``schema``'s columns in its types; ``pool`` (or None) lends threads for reading in
  parallel.
  Raises ``RowError`` when the whole shard is unreadable; rows or files that are not go to the
  chunk's ``rejected``.

``provenance`` says how prediction rows name their origin: ``"file"`` (``file`` and ``row``, its
index in the file) or ``"path"`` (``row``, its index in the shard, and ``path``).

Formats are registered by name, imported when used; ``input.format`` names one (or ``images``).
Adding one is a module and a line in ``FORMATS``. Example, a format
whose every file is one row holding its bytes::

    class Blobs:
        name, suffixes, provenance = "blobs", (".bin",), "path"
        def __init__(self, inp, storage_options): self.inp, self.so = inp, storage_options
        def listing(self): return listed(self.inp, self.so, self.suffixes)
        def source(self): return None
        def plan(self, files, first_index, first_position):
            return [Shard(first_index + i, f.uri, self.name, (f.uri,), (f.size,), (f.version,), 1)
                    for i, f in enumerate(files)]
        def schema(self, files, columns): return pa.schema([("blob", pa.binary())])
        def read(self, shard, schema, rows, pool):
            data = pa.table({"blob": [storage.read_bytes(shard.uri, self.so)]})
            yield Chunk.of_file(data, shard.uri, 0)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np
import pyarrow as pa

from scoring import storage
from scoring.config import InputConfig
from scoring.errors import InputError, StorageError
from scoring.record import Reason, Rejections
from scoring.shard import FileInfo, Shard

# Format name -> "module:Class".
FORMATS = {
    "parquet": "scoring.formats.parquet:Parquet",
    "image_files": "scoring.formats.image_files:ImageFiles",
    "webdataset": "scoring.formats.webdataset:WebDataset",
    "delta": "scoring.formats.delta:Delta",
    "iceberg": "scoring.formats.iceberg:Iceberg",
}
# input.format -> the formats that may read it, tried in this order on the listing: each format
# by its own name, and "images", an image folder or Parquet with an image column.
INPUTS = {name: (name,) for name in FORMATS if name != "image_files"} | {"images": ("image_files", "parquet")}
# Shard kinds written by earlier versions of scoring, read by a format of today.
RENAMED = {"image_parquet": "parquet"}
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # Hive's folder name for a null partition value


class Format(Protocol):
    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    provenance: ClassVar[str]

    def listing(self) -> list[FileInfo]: ...

    def source(self) -> dict[str, Any] | None: ...

    def plan(self, files: Sequence[FileInfo], first_index: int, first_position: int) -> list[Shard]: ...

    def schema(self, files: Sequence[FileInfo], columns: Sequence[str]) -> pa.Schema: ...

    def read(
        self, shard: Shard, schema: pa.Schema, rows: int, pool: concurrent.futures.Executor | None
    ) -> Iterator[Chunk]: ...


def get(name: str, inp: InputConfig, storage_options: dict[str, Any]) -> Format:
    """The format called ``name`` (a shard's kind), built for ``inp``."""
    module, cls = FORMATS[RENAMED.get(name, name)].split(":")
    return getattr(importlib.import_module(module), cls)(inp, storage_options)  # type: ignore[no-any-return]


def list_input(inp: InputConfig, storage_options: dict[str, Any]) -> tuple[Format, list[FileInfo]]:
    """The format that reads ``input.uri`` and its files. Raises ``StorageError`` when no format
    of ``input.format`` finds a file there."""
    errors = []
    for name in INPUTS[inp.format]:
        fmt = get(name, inp, storage_options)
        try:
            return fmt, fmt.listing()
        except StorageError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    wanted = ", ".join(s for name in INPUTS[inp.format] for s in get(name, inp, storage_options).suffixes)
    raise StorageError(
        f"{inp.uri}: found no files ending in {wanted}; check input.uri and input.format"
    ) from errors[-1]


def listed(inp: InputConfig, storage_options: dict[str, Any], suffixes: Sequence[str]) -> list[FileInfo]:
    """The files under ``input.uri`` ending in ``suffixes`` (``storage.list_files``). Raises
    ``InputError`` when ``input.uri`` is in a Delta or Iceberg table, or holds one: its folder
    keeps every version's files, removed and overwritten rows too; it is read at one version by
    ``input.format: delta`` or ``iceberg``."""
    tables: list[tuple[str, str]] = []
    files = storage.list_files(inp.uri, storage_options, suffixes, tables)
    tables += storage.tables_above(inp.uri, storage_options)
    if tables:
        root, kind = tables[0]
        raise InputError(
            f"{root} is a{'n' if kind == 'iceberg' else ''} {kind.capitalize()} table (found "
            f"{'_delta_log/' if kind == 'delta' else 'metadata/*.metadata.json'}): its folder keeps the "
            f"files of every version, rows since removed or overwritten among them, so input.format "
            f"{inp.format} would score rows the table no longer holds. Read it at one version with "
            f"input.format: {kind}"
            + ("" if root.rstrip("/") == inp.uri.rstrip("/") else f" and input.uri: {root}")
        )
    return files


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


def every_row(shard: Shard, provenance: str, reason: Reason) -> Rejections:
    """Every row of ``shard`` rejected for ``reason`` (a shard whose worker kept dying): rows of
    its file when the plan knows them, else one row per file."""
    out = Rejections()
    if provenance == "path":  # one row per file, numbered in the shard
        for i, uri in enumerate(shard.files):
            out.add(i, i + 1, reason, uri)
    elif len(shard.files) == 1 and shard.rows is not None:
        out.add(shard.first_row, shard.first_row + shard.rows, reason, shard.uri)
    else:
        for uri in shard.files:
            out.add(-1, -1, reason, uri)
    return out


# -- what folders and files say about their rows -----------------------------------------------


def partitions(uri: str, root: str) -> dict[str, str | None]:
    """Hive partitions of a file: ``key=value`` folders between ``root`` (the listing's root,
    as a URI) and the file, values URL-decoded (Hive's default partition is null)."""
    rel = uri[len(root) :] if uri.startswith(root) else ""
    out: dict[str, str | None] = {}
    for part in rel.split("/")[:-1]:
        key, eq, value = part.partition("=")
        if eq and key:
            decoded = urllib.parse.unquote(value)
            out[key] = None if decoded == HIVE_NULL else decoded
    return out


def listing_root(uri: str, storage_options: dict[str, Any]) -> str:
    """The URI that ``storage.list_files(uri)`` lists below, as its file URIs begin."""
    fs, path = storage.split_uri(uri, storage_options)
    root = storage.listing_root(path)
    if not any(ch in path for ch in "*?[") and fs.isfile(path):
        root = root.rsplit("/", 1)[0]
    return storage.unstrip(fs, root).rstrip("/") + "/"


def unify(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The type both ``a`` and ``b`` convert to without any value changing meaning, or None.

    Integers widen (int32 -> int64; unsigned into a wider signed), floats widen, strings and
    binaries become large, a dictionary becomes its values, lists unify their items; integers
    and floats never mix.
    """
    if a == b:
        return a
    if pa.types.is_null(a) or pa.types.is_null(b):
        return b if pa.types.is_null(a) else a
    if pa.types.is_dictionary(a) or pa.types.is_dictionary(b):
        return unify(_values(a), _values(b))
    for kinds, large in (
        ((pa.types.is_string, pa.types.is_large_string), pa.large_string()),
        ((pa.types.is_binary, pa.types.is_large_binary), pa.large_binary()),
    ):
        if any(k(a) for k in kinds) and any(k(b) for k in kinds):
            return large
    if pa.types.is_integer(a) and pa.types.is_integer(b):
        return _wider_integer(a, b)
    if pa.types.is_floating(a) and pa.types.is_floating(b):
        return a if a.bit_width >= b.bit_width else b
    return _unify_lists(a, b)


def _values(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _wider_integer(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    sa, sb = pa.types.is_signed_integer(a), pa.types.is_signed_integer(b)
    if sa == sb:
        return a if a.bit_width >= b.bit_width else b
    signed, unsigned = (a, b) if sa else (b, a)
    return signed if signed.bit_width > unsigned.bit_width else None


def _unify_lists(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    if pa.types.is_fixed_size_list(a) and pa.types.is_fixed_size_list(b):
        item = unify(a.value_type, b.value_type) if a.list_size == b.list_size else None
        return pa.list_(item, a.list_size) if item is not None else None
    lists = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    if any(k(a) for k in lists) and any(k(b) for k in lists):
        item = unify(a.value_type, b.value_type)
        if item is None:
            return None
        return (
            pa.large_list(item) if pa.types.is_large_list(a) or pa.types.is_large_list(b) else pa.list_(item)
        )
    return None
