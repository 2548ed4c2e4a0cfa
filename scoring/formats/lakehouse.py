"""What Delta and Iceberg tables share: the data files of one version, read by the Parquet path.

A table format lists its version's live data files from the table's own log (``delta``: delta-rs;
``iceberg``: pyiceberg) with what the log says of each: its rows, the rows its deletes remove
(Delta deletion vectors, Iceberg position deletes) and its partition values (``DataFile``).
Everything else is the Parquet format's: a data file is a shard, big files are split at row
groups, small ones packed, each read chunk by chunk with ``file`` and ``row`` kept — ``row`` is
the row's index in its data file before deletes, so a prediction joins back to the file.

Columns are the table's, under their logical names, in the table's types: a subclass says where
each one is in a data file (``_columns``: Delta column mapping's physical names, Iceberg field
ids), so a renamed column reads under its new name from old files. A column a file lacks is its
partition value (a table that keeps partition columns out of its files) or null (added later).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from scoring.config import InputConfig
from scoring.errors import InputError
from scoring.formats import Chunk, Format
from scoring.formats.packing import Layout
from scoring.formats.parquet import Parquet
from scoring.shard import FileInfo, Shard, Source


class TableInput(InputConfig):
    """The input section of a table: the keys every input has, and the version read."""

    version: int | str | None = Field(
        default=None,
        description="delta: a table version or a timestamp; iceberg: a snapshot id or a timestamp; "
        "latest. Unset: the latest on a first run, the version the plan pinned on a resume",
    )

    @field_validator("version")
    @classmethod
    def _version(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v < 0:
            raise ValueError("expected a version (an integer >= 0), a timestamp or 'latest'")
        return v

    @property
    def data(self) -> str:
        """Columns, or a column of encoded images when ``image_column`` is named."""
        return "images" if "image_column" in self.model_fields_set else super().data


@dataclasses.dataclass(frozen=True)
class DataFile:
    """What a table's log says of one live data file."""

    rows: int  # before deletes
    deleted: np.ndarray | None = None  # sorted int64 positions of the rows the table's deletes remove
    values: dict[str, Any] = dataclasses.field(default_factory=dict)  # partition values by column

    @property
    def live(self) -> int:
        return self.rows - (len(self.deleted) if self.deleted is not None else 0)


class Lakehouse(Parquet):
    """A table at one version. ``listing()`` (a subclass's) fills ``files`` (URI -> ``DataFile``),
    ``table_schema`` (logical names, the table's types) and ``pinned`` (``source()``); these travel
    to the workers with the format. A subclass says what its table's folder holds (``layout``,
    ``table_root``, ``is_table``)."""

    suffixes: tuple[str, ...] = (".parquet",)
    Options: type[InputConfig] = TableInput
    layout = ""  # what marks a folder as one of its tables, for messages

    def __init__(self, inp: TableInput, storage_options: dict[str, Any]) -> None:
        super().__init__(inp, storage_options)
        self.inp: TableInput = inp
        self.files: dict[str, DataFile] = {}
        self.table_schema = pa.schema([])
        self.pinned: Source | None = None

    def source(self) -> Source | None:
        return self.pinned

    def resumed(self, source: Source | None) -> Format:
        """A resume reads the version its plan pinned, unless ``input.version`` names one."""
        if source is None or self.inp.version is not None:
            return self
        return type(self)(self.inp.model_copy(update={"version": source.version}), self.so)

    @classmethod
    def table_root(cls, uri: str) -> str | None:
        """The table a listed file belongs to, when it is a file of a table's log or metadata."""
        raise NotImplementedError

    @classmethod
    def is_table(cls, fs: Any, folder: str) -> bool:
        """Whether ``folder`` (a path on ``fs``) is one of these tables' folders."""
        raise NotImplementedError

    def _columns(self, found: pa.Schema) -> dict[str, str]:
        """Logical column -> its column in a data file of schema ``found``, for those it has."""
        raise NotImplementedError

    def pin(self, version: int | str, files: dict[str, DataFile], metadata: str | None = None) -> Source:
        """What ``source()`` reports of the version read: its live files and rows, and what its
        deletes took away."""
        deleted = [len(f.deleted) for f in files.values() if f.deleted is not None and len(f.deleted)]
        return Source(
            self.name,
            self.inp.uri,
            version,
            files=len(files),
            rows=sum(f.live for f in files.values()),
            files_with_deletes=len(deleted),
            rows_deleted=sum(deleted),
            metadata=metadata,
        )

    # -- planning: rows from the log, footers only for files big enough to split --------------

    def _layouts(self, files: Sequence[FileInfo]) -> tuple[list[Layout], float]:
        big = [f for f in files if self.files[f.uri].rows > self.inp.rows_per_shard]
        footers = dict(zip((f.uri for f in big), self._footers(big)))
        layouts: list[Layout] = [footers.get(f.uri) or [self.files[f.uri].rows] for f in files]
        rows = sum(self.files[f.uri].rows for f in files)
        return layouts, (sum(f.size for f in files) / rows if rows else 1.0)

    def plan(self, files: Sequence[FileInfo], first_index: int, first_position: int = 0) -> list[Shard]:
        """The Parquet format's shards, their rows the live ones (deletes taken out)."""
        return [self._live(s) for s in super().plan(files, first_index, first_position)]

    def _live(self, shard: Shard) -> Shard:
        if shard.rows is None:
            return shard
        gone = 0
        for uri in shard.files:
            deleted = self.files[uri].deleted
            if deleted is None or not len(deleted):
                continue
            if shard.row_start is None:
                gone += len(deleted)
            else:
                lo, hi = np.searchsorted(deleted, [shard.row_start, shard.row_stop or 0])
                gone += int(hi - lo)
        return dataclasses.replace(shard, rows=shard.rows - gone) if gone else shard

    # -- the job's schema, and reading by it --------------------------------------------------

    def schema(self, files: Sequence[FileInfo], columns: Sequence[str]) -> pa.Schema:
        """The table's schema, with a list column as the fixed-size list its first data file
        stores (Delta and Iceberg have no fixed-size lists; Arrow writers keep them in the
        footer): it reaches numpy without a copy, as it would from a Parquet folder. A file
        whose rows differ in length then fails its rows with the reason, as a bad row does."""
        try:
            found = self.footer(files[0].uri)[0]
        except InputError:
            return self.table_schema  # an unreadable first file fails its own shard
        where = self._columns(found)
        fields = []
        for f in self.table_schema:
            stored = found.field(where[f.name]).type if f.name in where else None
            if stored is not None and pa.types.is_fixed_size_list(stored) and _is_list_of(f.type, stored):
                f = f.with_type(pa.list_(f.type.value_field, stored.list_size))
            fields.append(f)
        return pa.schema(fields)

    def _present(self, uri: str, found: pa.Schema, schema: pa.Schema, first: int, rows: int) -> list[str]:
        where = self._columns(found)
        return list(dict.fromkeys(where[f.name] for f in schema if f.name in where))

    def _conform(self, table: pa.Table, uri: str, schema: pa.Schema) -> pa.Table:
        """The logical columns of ``schema`` from a data file's columns: found and cast to the
        table's type, else its partition value, else null."""
        where = self._columns(table.schema)
        values = self.files[uri].values if uri in self.files else {}
        n = table.num_rows
        columns = []
        for f in schema:
            if f.name in where:
                column = table.column(where[f.name])
                columns.append(column if column.type == f.type else column.cast(f.type))
            elif values.get(f.name) is not None:
                columns.append(pa.array([values[f.name]] * n, f.type))
            else:
                columns.append(pa.nulls(n, f.type))
        return pa.Table.from_arrays(columns, schema=schema)

    def _chunk(self, data: pa.Table, uri: str, first_row: int) -> Chunk:
        """The chunk without the rows the table's deletes removed; rows keep their positions."""
        deleted = self.files[uri].deleted if uri in self.files else None
        rows = np.arange(first_row, first_row + data.num_rows, dtype=np.int64)
        if deleted is None or not len(deleted):
            return Chunk.of_file(data, uri, first_row)
        keep = ~np.isin(rows, deleted, assume_unique=True)
        if keep.all():
            return Chunk.of_file(data, uri, first_row)
        kept = rows[keep]
        return Chunk(data.filter(pa.array(keep)), [uri], np.zeros(len(kept), np.int32), kept)


def deleted_positions(mask_or_positions: Any, keep_mask: bool) -> np.ndarray | None:
    """Sorted unique int64 positions of deleted rows: from a keep mask (True = live) or from
    positions; None when none."""
    arr = np.asarray(mask_or_positions)
    positions = np.flatnonzero(~arr.astype(bool)) if keep_mask else np.unique(arr.astype(np.int64))
    return positions.astype(np.int64) if len(positions) else None


def _is_list_of(table: pa.DataType, stored: pa.DataType) -> bool:
    """Whether ``table`` is a (variable) list of what the fixed-size list ``stored`` holds."""
    lists = (pa.types.is_list, pa.types.is_large_list)
    return any(k(table) for k in lists) and table.value_type == stored.value_type
