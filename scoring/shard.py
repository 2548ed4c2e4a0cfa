"""The records every stage passes around: a listed input file and a planned shard.

A leaf module: it imports nothing of scoring's, so the formats, the plan, the workers and the
sink can all use it without importing each other.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """A listed file: its full URI, its size and a token that changes when its content does."""

    uri: str
    size: int
    version: str  # the ETag (object stores) or the modification time (local files)


@dataclasses.dataclass(frozen=True)
class Shard:
    """One planned shard: the unit of input, progress, timing and resume.

    ``kind`` names the format that reads it (``scoring.formats``). ``files``, ``sizes`` and
    ``versions`` run in parallel: one file, a row range of one (``row_start``/``row_stop`` in
    the rows of ``row_groups``), or several small files grouped into one shard.
    """

    index: int
    id: str
    kind: str
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
