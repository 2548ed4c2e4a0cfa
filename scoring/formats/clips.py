"""Clips into rows, for the audio formats (``formats.audio``): each clip of a chunk decoded and
resampled (``sound``), whole or cut into windows, its rows gathered into ``Windows`` chunks.

A chunk of clip rows (as the container's format reads them: image files' grouping, Parquet's row
ranges, a tar's samples) comes with how to open each clip; its rows become one per clip, or one
per window with ``input.audio.window``, each with the clip's provenance plus ``window`` (its index
in the clip) and ``start_s``. The samples are the column ``input.audio.column`` (default
``audio``): ``fixed_size_list<float32>[window]``, or ``list<float32>`` for whole clips.

Clips are decoded ``CLIPS_AT_ONCE`` at a time in the worker's threads (libsndfile and soxr
release the GIL); a windowed clip longer than ``LONG_SAMPLES`` is decoded, resampled and
windowed piece by piece, its windows leaving in chunks of about the rows asked for (an hour at
44.1 kHz stereo: 42 MB to decode and resample instead of 1.8 GB, measured; a whole job over it
peaked at 316 MB, docs/benchmarks.md). A clip that cannot be decoded (garbage,
truncated, no frames, null) is a rejected row, stage ``decode``, with libsndfile's message; a
long one that fails part way keeps the windows already given.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from scoring import storage
from scoring.config import InputConfig, Section
from scoring.formats import ByPath, Chunk
from scoring.formats.sound import Cutter, Header, decode, header
from scoring.record import Reason, Rejections
from scoring.shard import FileInfo, Shard

COLUMN = "audio"
NOTED = 5  # clips scoring validate describes
CLIPS_AT_ONCE = 32  # decoded together in the worker's threads: 10 s clips, ~20 MB
LONG_SAMPLES = 16_000 * 600  # past this (resampled), a windowed clip is decoded in pieces
WINDOW_FIELDS = (
    ("window", "scoring (the window's index in its clip)"),
    ("start_s", "scoring (where the window starts in its clip, in seconds)"),
)
Src = Callable[[], Any]  # opens a clip: a context manager giving a path or a seekable file


class AudioConfig(Section):
    column: str | None = Field(
        default=None,
        description="Parquet: the audio column (binary, or Hugging Face's struct<bytes, path>); "
        "webdataset: a member extension; default: audio (files: the column of samples; tars: the "
        "first of flac, wav, mp3, ogg)",
    )
    sample_rate: int = Field(gt=0, description="samples per second fed to the model (resampled with soxr)")
    channels: Literal["mono", "first"] = Field(
        default="mono", description="mono: the average of the channels; first: the first channel"
    )
    window: int | None = Field(
        default=None,
        gt=0,
        description="samples per row: each clip split into windows, the last padded with zeros; "
        "default: a row is a whole clip",
    )
    hop: int | None = Field(default=None, gt=0, description="samples between window starts; default: window")

    @field_validator("hop")
    @classmethod
    def _hop_needs_window(cls, v: int | None, info: Any) -> int | None:
        if v is not None and info.data.get("window") is None:
            raise ValueError("hop needs window: set input.audio.window too")
        return v


class AudioInput(InputConfig):
    """``input.format: audio``: the common keys and the audio section."""

    audio: AudioConfig = Field(description="decoding, resampling and windowing (docs/inputs/audio.md)")


@dataclasses.dataclass
class Windows(Chunk):
    """A chunk whose rows may be windows of clips: each row's window index and start."""

    window: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    start_s: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float64))

    def head(self, n: int) -> Windows:
        c = super().head(n)
        window, start = self.window[:n], self.start_s[:n]
        return Windows(c.data, c.files, c.file_of, c.rows, c.rejected, c.skip, window, start)


def samples_type(audio: AudioConfig) -> pa.DataType:
    return pa.list_(pa.float32(), audio.window) if audio.window else pa.list_(pa.float32())


class Audio:
    """What the three formats share: rows that are clips become rows of samples (mixed in
    before the container's format)."""

    Options: type[InputConfig] = AudioInput
    audio: AudioConfig
    column: str
    provenance: tuple[tuple[str, str], ...]
    so: dict[str, Any]

    def _audio(self, inp: InputConfig) -> None:
        assert isinstance(inp, AudioInput)  # Options: load_config made it one
        self.audio = inp.audio
        self.column = inp.audio.column or COLUMN
        self.provenance = type(self).provenance + (WINDOW_FIELDS if inp.audio.window else ())

    def where(self, chunk: Chunk, take: np.ndarray) -> list[tuple[pa.Field, pa.Array]]:
        out: list[tuple[pa.Field, pa.Array]] = super().where(chunk, take)  # type: ignore[misc]
        if self.audio.window and isinstance(chunk, Windows):
            out.append((pa.field("window", pa.int64()), pa.array(chunk.window[take], pa.int64())))
            out.append((pa.field("start_s", pa.float64()), pa.array(chunk.start_s[take], pa.float64())))
        elif self.audio.window:  # a chunk of no row (a worker's rehearsal)
            out += [(pa.field("window", pa.int64()), pa.array([], pa.int64()))]
            out += [(pa.field("start_s", pa.float64()), pa.array([], pa.float64()))]
        return out

    def plan(self, files: Sequence[FileInfo], first_index: int, first_position: int = 0) -> list[Shard]:
        """The container's shards; with windows, their rows are counted once scored."""
        shards: list[Shard] = super().plan(files, first_index, first_position)  # type: ignore[misc]
        if not self.audio.window:
            return shards
        return [dataclasses.replace(s, rows=None, rows_estimate=None) for s in shards]

    def notes(self, shard: Shard) -> list[str]:
        """The first ``NOTED`` clips of ``shard``: rate, channels, duration, rows."""
        return [f"audio {line}" for line in self.sample(shard, NOTED)]

    def sample(self, shard: Shard, n: int) -> list[str]:
        raise NotImplementedError

    def describe(self, src: Src, where: str) -> str:
        """A clip's rate, channels, duration and the rows it gives, for ``scoring validate``."""
        try:
            with src() as s:
                h = header(s)
        except Exception as exc:  # libsndfile's or storage's: the clip will be a rejected row
            return f"{where}: cannot decode: {_said(exc)}"
        a = self.audio
        n = h.samples_at(a.sample_rate)
        rows = (max(0, -(-(n - a.window) // (a.hop or a.window))) + 1) if a.window else 1
        resampled = "" if h.sample_rate == a.sample_rate else f" -> {a.sample_rate} Hz"
        up = " (upsampled: no content above the source's Nyquist)" if h.sample_rate < a.sample_rate else ""
        return (
            f"{where}: {h.format} {h.sample_rate} Hz{resampled}{up}, {h.channels} channel(s) -> "
            f"{self.audio.channels}, {h.duration_s:.2f} s, {rows} row(s)"
        )

    # -- clips -> rows -----------------------------------------------------------------------

    def _rows(
        self, clips: Chunk, srcs: Sequence[Src | Reason], schema: pa.Schema, rows: int, pool: Any
    ) -> Iterator[Windows]:
        """The rows of ``clips`` (a chunk of clip rows), each opened by its ``srcs`` entry or
        already rejected for its ``Reason``."""
        out = _Rows(self, clips, schema)
        todo = []
        for i, src in enumerate(srcs):
            if clips.skip is not None and clips.skip[i]:
                continue  # rejected while reading: in clips.rejected already
            if isinstance(src, Reason):
                out.reject(i, src)
            else:
                todo.append(i)
        decoded = _map(pool, lambda i: self._clip(srcs[i]), todo)
        for i, result in zip(todo, decoded):
            if result is None:  # long: in pieces, here
                yield from self._stream(out, i, srcs[i], rows)
            elif isinstance(result, Exception):
                out.reject(i, _reason(result, out.where(i)))
            else:
                out.add(i, result, 0)
            if out.size >= rows:
                yield out.flush()
        if out.size or len(out.rejected):
            yield out.flush()

    def _clip(self, src: Any) -> np.ndarray | Exception | None:
        """A clip's rows (windows [k, window], or its samples), or None for a long windowed clip."""
        import soundfile as sf

        a = self.audio
        try:
            with src() as s, sf.SoundFile(s) as f:
                h = Header(f.samplerate, f.channels, f.frames, f.format)
                if a.window and h.samples_at(a.sample_rate) > LONG_SAMPLES:
                    return None
                pieces = list(decode(s, a.sample_rate, a.channels, opened=f))
        except Exception as exc:  # libsndfile's, storage's: the row is rejected with it
            return exc
        clip = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        if not a.window:
            return clip
        cut = Cutter(a.window, a.hop or a.window)
        return np.concatenate([cut.feed(clip), cut.finish()])

    def _stream(self, out: _Rows, i: int, src: Any, rows: int) -> Iterator[Windows]:
        a = self.audio
        cut, first = Cutter(a.window or 0, a.hop or a.window or 0), 0
        try:
            with src() as s:
                for piece in decode(s, a.sample_rate, a.channels):
                    windows = cut.feed(piece)
                    out.add(i, windows, first)
                    first += len(windows)
                    if out.size >= rows:
                        yield out.flush()
            out.add(i, cut.finish(), first)
        except Exception as exc:  # as in _clip; the windows already given stay scored
            reason = _reason(exc, out.where(i))
            after = f" (after {first} window(s), {first * cut.hop / a.sample_rate:.2f} s, were scored)"
            out.reject(i, Reason(reason.stage, reason.error, reason.message + after))


class _Rows:
    """Rows of a chunk of clips gathered until flushed as a ``Windows`` chunk."""

    def __init__(self, fmt: Audio, clips: Chunk, schema: pa.Schema) -> None:
        self.fmt, self.clips, self.schema = fmt, clips, schema
        self.pieces: list[tuple[int, np.ndarray, int]] = []  # clip, its rows, first window
        self.size = 0
        self.rejected = Rejections()
        self.rejected.extend(clips.rejected)

    def where(self, i: int) -> str:
        c = self.clips
        file = c.files[int(c.file_of[i])]
        return file if isinstance(self.fmt, ByPath) else f"{file} row {int(c.rows[i])}"

    def add(self, i: int, values: np.ndarray, first: int) -> None:
        if len(values):
            self.pieces.append((i, values, first))
            self.size += len(values) if values.ndim == 2 else 1

    def reject(self, i: int, reason: Reason) -> None:
        c = self.clips
        row = int(c.rows[i])
        self.rejected.add(row, row + 1, reason, c.files[int(c.file_of[i])])

    def flush(self) -> Windows:
        a, c = self.fmt.audio, self.clips
        counts = [len(v) if v.ndim == 2 else 1 for _, v, _ in self.pieces]
        clip = np.repeat(np.array([i for i, _, _ in self.pieces], np.int64), counts)
        window = np.concatenate(
            [np.arange(f, f + n, dtype=np.int64) for (_, _, f), n in zip(self.pieces, counts)]
            or [np.zeros(0, np.int64)]
        )
        values = [v.ravel() for _, v, _ in self.pieces]
        flat = pa.array(np.concatenate(values) if values else np.zeros(0, np.float32), pa.float32())
        if a.window:
            samples: pa.Array = pa.FixedSizeListArray.from_arrays(flat, a.window)
        else:
            offsets = np.concatenate([[0], np.cumsum([len(v) for v in values], dtype=np.int64)])
            samples = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat)
        take = pa.array(clip)
        columns = [
            samples if f.name == self.fmt.column else c.data.column(f.name).take(take) for f in self.schema
        ]
        data = pa.Table.from_arrays(columns, schema=self.schema)
        start_s = window * (a.hop or a.window or 0) / a.sample_rate
        chunk = Windows(data, c.files, c.file_of[clip], c.rows[clip], self.rejected, None, window, start_s)
        self.pieces, self.size, self.rejected = [], 0, Rejections()
        return chunk


def _reason(exc: Exception, where: str) -> Reason:
    kind, text = type(exc).__name__, _said(exc).rstrip(".")
    if kind in ("StorageError", "FileNotFoundError", "PermissionError"):
        return Reason("read", kind, f"{where}: cannot read the audio: {text}. The row is skipped")
    fix = "The row is skipped; fix or remove the file"
    return Reason("decode", kind, f"{where}: cannot decode the audio: {text}. {fix}")


def _said(exc: Exception) -> str:
    """An error's message, naming in-memory audio as such (not by a BytesIO's address)."""
    return re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the audio bytes", str(exc))


def _map(pool: concurrent.futures.Executor | None, fn: Any, items: list[int]) -> list[Any]:
    return list(pool.map(fn, items)) if pool is not None and len(items) > 1 else [fn(i) for i in items]


def opener(uri: str, storage_options: dict[str, Any]) -> Src:
    """A clip at ``uri``: a local path as it is (libsndfile reads it), else a seekable fsspec file."""

    @contextlib.contextmanager
    def open_() -> Iterator[Any]:
        fs, path = storage.split_uri(uri, storage_options)
        if storage.is_local(fs):
            yield path
        else:
            with fs.open(path, "rb") as f:
                yield f

    return open_


def in_memory(data: bytes) -> Src:
    return lambda: contextlib.nullcontext(io.BytesIO(data))
