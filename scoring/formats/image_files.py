"""Image files as shards: up to ``input.files_per_shard`` files of a folder each.

A shard's id is ``FOLDER[START:STOP]``, positions in the job's file list (sorted when the plan was
made; files added later are appended). Each row is one file: its encoded bytes in the column
``image``, its ``path``, its Hive partitions (``label=cat/…``) as string columns. A file that
cannot be read is a rejected row (stage ``read``); decoding is preprocessing's.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from scoring import storage
from scoring.config import InputConfig
from scoring.formats import ByPath, Chunk, Format, listed
from scoring.listing import listing_root, partitions
from scoring.record import Reason, Rejections
from scoring.shard import FileInfo, Shard, Source

IMAGE_COLUMN = "image"


class ImageFiles(ByPath):
    name = "image_files"
    suffixes: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
    Options: type[InputConfig] = InputConfig

    def __init__(self, inp: InputConfig, storage_options: dict[str, Any]) -> None:
        self.inp, self.so = inp, storage_options
        self.root = listing_root(inp.uri, storage_options)

    def listing(self) -> list[FileInfo]:
        return listed(self.inp, self.so, self.suffixes)

    def source(self) -> Source | None:
        return None

    def resumed(self, source: Source | None) -> Format:
        return self

    def plan(self, files: Sequence[FileInfo], first_index: int, first_position: int) -> list[Shard]:
        folder, step = self.inp.uri.rstrip("/"), self.inp.files_per_shard
        shards = []
        for i, start in enumerate(range(0, len(files), step)):
            group = files[start : start + step]
            a = first_position + start
            shards.append(
                Shard(
                    first_index + i,
                    f"{folder}[{a}:{a + len(group)}]",
                    self.name,
                    tuple(f.uri for f in group),
                    tuple(f.size for f in group),
                    tuple(f.version for f in group),
                    len(group),
                )
            )
        return shards

    def schema(self, files: Sequence[FileInfo], columns: Sequence[str]) -> pa.Schema:
        parts = partitions(files[0].uri, self.root)
        return pa.schema([(IMAGE_COLUMN, pa.binary())] + [(k, pa.string()) for k in parts])

    def read(
        self, shard: Shard, schema: pa.Schema, rows: int, pool: concurrent.futures.Executor | None
    ) -> Iterator[Chunk]:
        for start in range(0, len(shard.files), rows):
            uris = list(shard.files[start : start + rows])
            blobs = list(pool.map(self._read, uris)) if pool is not None else [self._read(u) for u in uris]
            rejected, skip = Rejections(), np.zeros(len(uris), bool)
            for i, (uri, blob) in enumerate(zip(uris, blobs)):
                if isinstance(blob, Exception):
                    message = f"{uri}: cannot read image: {blob}. The file is skipped; fix or remove it."
                    rejected.add(start + i, start + i + 1, Reason("read", type(blob).__name__, message), uri)
                    skip[i] = True
            columns = []
            for f in schema:
                if f.name == IMAGE_COLUMN:
                    columns.append(pa.array([None if s else b for b, s in zip(blobs, skip)], pa.binary()))
                else:
                    columns.append(
                        pa.array([partitions(u, self.root).get(f.name) for u in uris], pa.string())
                    )
            data = pa.Table.from_arrays(columns, schema=schema)
            rows_in_shard = np.arange(start, start + len(uris), dtype=np.int64)
            yield Chunk(data, uris, np.arange(len(uris), dtype=np.int32), rows_in_shard, rejected, skip)

    def _read(self, uri: str) -> bytes | Exception:
        try:
            return storage.read_bytes(uri, self.so)
        except Exception as exc:  # one unreadable file is a rejected row, not a failed shard
            return exc
