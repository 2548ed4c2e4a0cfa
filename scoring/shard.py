"""The records every stage passes around: a listed input file, what a listing read, a shard.

A leaf module: it imports nothing of scoring's, so the formats, the plan, the workers and the
sink can all use it without importing each other.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """A listed file: its full URI, its size and a token that changes when its content does."""

    uri: str
    size: int
    version: str  # the ETag (object stores) or the modification time (local files)


@dataclasses.dataclass(frozen=True)
class Shard:
    """One planned shard: the unit of input, progress, timing and resume.

    ``format`` names the format that planned it (``scoring.registry.FORMATS``), as the plan
    records it. ``files``, ``sizes`` and ``versions`` run in parallel: one file, a row range of
    one (``row_start``/``row_stop`` in the rows of ``row_groups``), or several small files grouped
    into one shard.
    """

    index: int
    id: str
    format: str
    files: tuple[str, ...]
    sizes: tuple[int, ...]
    versions: tuple[str, ...]
    rows: int | None = None  # None: unknown until read (grouped files, tar shards, an unreadable footer)
    row_start: int | None = None  # a row range of a split file: [row_start, row_stop)
    row_stop: int | None = None
    row_groups: tuple[int, ...] = ()  # the row groups holding that range
    rows_estimate: int | None = None  # when ``rows`` is None: a guess from sizes, for progress only

    @property
    def uri(self) -> str:
        return self.files[0]

    @property
    def bytes(self) -> int:
        return sum(self.sizes)

    @property
    def first_row(self) -> int:
        return self.row_start or 0


@dataclasses.dataclass(frozen=True)
class Source:
    """What a listing read when it is more than files: a table at one version (``Format.source``).

    Pinned in the plan (a resume reads the same version), recorded in ``_job.json``, shown by
    ``validate`` and the report, and put in the metadata of a predictions table's commits.
    """

    format: str  # delta | iceberg
    table: str  # the table as input.uri names it
    version: int | str  # a Delta version, an Iceberg snapshot id
    files: int = 0  # live data files
    rows: int = 0  # live rows (deletes taken out)
    files_with_deletes: int = 0
    rows_deleted: int = 0
    metadata: str | None = None  # Iceberg: the metadata JSON read

    def describe(self) -> str:
        return f"{self.format} table {self.table} at version {self.version}"

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Source | None:
        if not data:
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
