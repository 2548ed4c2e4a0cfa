"""Audio as rows: sound files in folders, Parquet with an audio column, WebDataset members.

Three formats, one per kind of source, each the format that reads the container (image files'
grouping, Parquet's row ranges and packing, tars as streams) with rows that are clips, which
``clips.Audio`` decodes, resamples and windows into rows (docs/inputs/audio.md). Rows come with
their provenance (``path``; ``file`` and ``row``) plus ``window`` and ``start_s`` when windowed.

A shard's rows are its windows: it is planned, committed and resumed whole, so a window is
scored exactly once whatever the clips' lengths.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from scoring.config import InputConfig
from scoring.errors import InputError
from scoring.formats import Chunk, listed
from scoring.formats.clips import CLIPS_AT_ONCE, Audio, Src, Windows, in_memory, opener, samples_type
from scoring.formats.image_files import ImageFiles
from scoring.formats.parquet import Parquet
from scoring.formats.webdataset import WebDataset, _samples
from scoring.listing import partitions
from scoring.record import Reason
from scoring.shard import FileInfo, Shard

SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
MEMBERS = ("flac", "wav", "mp3", "ogg")  # a tar sample's audio: the first of these it has

# -- the three sources -----------------------------------------------------------------------


class AudioFiles(Audio, ImageFiles):
    """Sound files under a folder, grouped as image files are (``input.files_per_shard``)."""

    name = "audio_files"
    suffixes = SUFFIXES

    def __init__(self, inp: InputConfig, storage_options: dict[str, Any]) -> None:
        super().__init__(inp, storage_options)
        self._audio(inp)

    def listing(self) -> list[FileInfo]:
        return listed(self.inp, self.so, self.suffixes)

    def schema(self, files: Sequence[FileInfo], columns: Sequence[str]) -> pa.Schema:
        parts = partitions(files[0].uri, self.root)
        return pa.schema([(self.column, samples_type(self.audio))] + [(k, pa.string()) for k in parts])

    def read(self, shard: Shard, schema: pa.Schema, rows: int, pool: Any) -> Iterator[Chunk]:
        for start in range(0, len(shard.files), CLIPS_AT_ONCE):
            uris = list(shard.files[start : start + CLIPS_AT_ONCE])
            parts = [f for f in schema if f.name != self.column]
            values = {f.name: [partitions(u, self.root).get(f.name) for u in uris] for f in parts}
            data = pa.table({k: pa.array(v, pa.string()) for k, v in values.items()})
            index = np.arange(len(uris), dtype=np.int32)
            clips = Chunk(data, uris, index, np.arange(start, start + len(uris), dtype=np.int64))
            yield from self._rows(clips, [opener(u, self.so) for u in uris], schema, rows, pool)

    def sample(self, shard: Shard, n: int) -> list[str]:
        return [self.describe(opener(u, self.so), u) for u in shard.files[:n]]


class AudioParquet(Audio, Parquet):
    """Parquet files with an audio column: encoded bytes (binary), a path (string), or Hugging
    Face's ``struct<bytes, path>`` (the bytes when set, else the file at the path: a URI, or a
    path relative to the Parquet file's folder)."""

    name = "audio_parquet"

    def __init__(self, inp: InputConfig, storage_options: dict[str, Any]) -> None:
        super().__init__(inp, storage_options)
        self._audio(inp)
        self.stored: pa.DataType | None = None  # the audio column's type in the files

    def schema(self, files: Sequence[FileInfo], columns: Sequence[str]) -> pa.Schema:
        found = super().schema(files, columns)
        where, col = files[0].uri, self.column
        if col not in found.names:
            raise InputError(
                f"{where}: no column '{col}' (columns found: {found.names}); set input.audio.column to "
                "the column of encoded audio (binary, a path, or Hugging Face's struct<bytes, path>)"
            )
        t = found.field(col).type
        fields = [t.field(i).name for i in range(t.num_fields)] if pa.types.is_struct(t) else []
        if not (_binary(t) or _text(t) or {"bytes", "path"} & set(fields)):
            raise InputError(
                f"{where}: column '{col}' holds {t}; an audio column holds encoded audio (binary), a "
                "path (string) or Hugging Face's struct<bytes: binary, path: string>. Set input.audio.column"
            )
        self.stored = t
        return pa.schema([f.with_type(samples_type(self.audio)) if f.name == col else f for f in found])

    def read(self, shard: Shard, schema: pa.Schema, rows: int, pool: Any) -> Iterator[Chunk]:
        stored = self.stored or self.footer(shard.uri)[0].field(self.column).type
        source = pa.schema([f.with_type(stored) if f.name == self.column else f for f in schema])
        for clips in super().read(shard, source, CLIPS_AT_ONCE, pool):
            srcs = [self._src(clips, i, v) for i, v in enumerate(clips.data.column(self.column).to_pylist())]
            yield from self._rows(clips, srcs, schema, rows, pool)

    def _src(self, clips: Chunk, i: int, value: Any) -> Src | Reason:
        file = clips.files[int(clips.file_of[i])]
        data, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (None, None)
        if isinstance(value, bytes):
            data = value
        elif isinstance(value, str):
            path = value
        if data is not None:
            return in_memory(data)
        if path:
            absolute = "://" in path or path.startswith("/")
            return opener(path if absolute else posixpath.join(posixpath.dirname(file), path), self.so)
        where = f"{file} row {int(clips.rows[i])}"
        why = "the audio is null (no bytes, no path); the row is skipped"
        return Reason("decode", "NullValue", f"{where}: {why}")

    def sample(self, shard: Shard, n: int) -> list[str]:
        clips = next(iter(Parquet.read(self, shard, _only(self, shard), n, None)), None)
        if clips is None:
            return []
        values = clips.data.column(self.column).to_pylist()[:n]
        out = []
        for i, v in enumerate(values):
            src = self._src(clips, i, v)
            where = f"{clips.files[int(clips.file_of[i])]} row {int(clips.rows[i])}"
            out.append(src.message if isinstance(src, Reason) else self.describe(src, where))
        return out


def _only(fmt: AudioParquet, shard: Shard) -> pa.Schema:
    stored = fmt.stored or fmt.footer(shard.uri)[0].field(fmt.column).type
    return pa.schema([(fmt.column, stored)])


def _binary(t: pa.DataType) -> bool:
    return bool(pa.types.is_binary(t) or pa.types.is_large_binary(t))


def _text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


class AudioTars(Audio, WebDataset):
    """WebDataset tars: a sample's audio is the member ``input.audio.column`` (an extension), by
    default the first of flac, wav, mp3, ogg it has; a sample without one is a rejected row."""

    name = "audio_webdataset"

    def __init__(self, inp: InputConfig, storage_options: dict[str, Any]) -> None:
        super().__init__(inp, storage_options)
        self._audio(inp)
        self.member = self.audio.column  # None: the first of MEMBERS

    def schema(self, files: Sequence[FileInfo], columns: Sequence[str]) -> pa.Schema:
        found = super().schema(files, [c for c in columns if c != self.column])
        wanted = [self.member] if self.member else list(MEMBERS)
        if not any(_audio_member(ext, wanted) for ext in found.names):
            raise InputError(
                f"{files[0].uri}: no sample has an audio member ({', '.join(wanted)}); the members "
                f"found: {', '.join(n for n in found.names if n != 'key')}. Set input.audio.column to "
                "the extension of the audio members"
            )
        kept = [f for f in found if f.name != self.column]
        return pa.schema([*kept, pa.field(self.column, samples_type(self.audio))])

    def read(self, shard: Shard, schema: pa.Schema, rows: int, pool: Any) -> Iterator[Chunk]:
        others = pa.schema([f for f in schema if f.name != self.column])
        batch: list[Any] = []
        first = 0
        for sample in _samples(shard.uri, self.so):
            batch.append(sample)
            if len(batch) == CLIPS_AT_ONCE:
                yield from self._tar_rows(shard.uri, first, batch, others, schema, rows, pool)
                first, batch = first + len(batch), []
        if batch:
            yield from self._tar_rows(shard.uri, first, batch, others, schema, rows, pool)

    def _tar_rows(
        self,
        uri: str,
        first: int,
        batch: list[Any],
        others: pa.Schema,
        schema: pa.Schema,
        rows: int,
        pool: Any,
    ) -> Iterator[Windows]:
        clips = self._chunk(uri, first, batch, others)
        srcs = [self._src(uri, first + i, key, members) for i, (key, members) in enumerate(batch)]
        yield from self._rows(clips, srcs, schema, rows, pool)

    def _src(self, uri: str, row: int, key: str, members: dict[str, bytes]) -> Src | Reason:
        wanted = [self.member] if self.member else list(MEMBERS)
        for want in wanted:
            for ext, data in members.items():
                if _audio_member(ext, [want]):
                    return in_memory(data)
        found = ", ".join(members) or "none"
        message = f"{uri} row {row}: sample {key} has no {' or '.join(wanted)} member (members: {found})"
        return Reason("read", "MissingMember", message)

    def sample(self, shard: Shard, n: int) -> list[str]:
        out = []
        for row, (key, members) in enumerate(_samples(shard.uri, self.so)):
            if row == n:
                break
            src = self._src(shard.uri, row, key, members)
            where = f"{shard.uri} row {row}"
            out.append(src.message if isinstance(src, Reason) else self.describe(src, where))
        return out


def _audio_member(ext: str, wanted: Sequence[str]) -> bool:
    """A member extension that is one of ``wanted`` (``flac``, or a compound one: ``audio.flac``)."""
    return any(ext == w or ext.endswith("." + w) for w in wanted)
