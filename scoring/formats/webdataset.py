"""WebDataset tar shards: each ``.tar`` is a shard, read as a stream, one row per sample.

A sample is the members that share a key: the member's path up to the first dot of its base
name (``d/0001.seg.png`` has key ``d/0001`` and extension ``seg.png``). Its members must be
adjacent in the tar; a key met again after another key is an error of that shard, never a silent
merge (ray-project/ray#44068). Columns: ``key``, then one per extension: ``cls`` as int64,
``txt`` and ``json`` as strings, anything else as binary. The image comes from
``input.image_column`` (an extension), by default the first of jpg, jpeg, png, webp in each
sample, as the column ``image``; a sample without one is a rejected row. ``row`` is the sample's
index in its tar.
"""

from __future__ import annotations

import concurrent.futures
import posixpath
import tarfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from scoring import storage
from scoring.config import InputConfig
from scoring.errors import InputError, RowError, StorageError
from scoring.formats import ByFile, Chunk, Format, listed
from scoring.record import Reason, Rejections
from scoring.shard import FileInfo, Shard, Source

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
AUTO_IMAGE = "image"  # the column holding each sample's first image member
INTEGERS, TEXTS = ("cls",), ("txt", "json")
PEEK = 32  # samples of the first tar looked at to learn its members
STREAM_BLOCK = 8 << 20  # remote tars are streamed through a read-ahead buffer of this size

Sample = tuple[str, dict[str, bytes]]


class WebDataset(ByFile):
    name = "webdataset"
    suffixes: tuple[str, ...] = (".tar",)
    Options: type[InputConfig] = InputConfig

    def __init__(self, inp: InputConfig, storage_options: dict[str, Any]) -> None:
        self.inp, self.so = inp, storage_options

    def listing(self) -> list[FileInfo]:
        return listed(self.inp, self.so, self.suffixes)

    def source(self) -> Source | None:
        return None

    def resumed(self, source: Source | None) -> Format:
        return self

    def plan(self, files: Sequence[FileInfo], first_index: int, first_position: int) -> list[Shard]:
        return [
            Shard(first_index + i, f.uri, self.name, (f.uri,), (f.size,), (f.version,))
            for i, f in enumerate(files)
        ]

    def schema(self, files: Sequence[FileInfo], columns: Sequence[str]) -> pa.Schema:
        """The columns the first ``PEEK`` samples give (of the first tars that can be read: a
        broken one fails its own shard later), and every extension in ``columns`` that they lack
        but some sample of the first tar has (its rows get a null, as for a sample without it).
        Raises ``InputError`` when no sample can be read, or when a member in ``columns`` is in
        none of the samples: with the error met while sampling if there was one, else naming the
        tar that has no such member."""
        samples, errors = self._sample(files)
        if not samples:
            why = f" ({errors[0]})" if errors else ""
            raise InputError(
                f"{files[0].uri}: found no sample in the first tars{why}; are they WebDataset shards?"
            )
        found = {"key": pa.string()}
        for _, members in samples:
            found |= {ext: column_type(ext) for ext in members}
        if any(ext in IMAGE_EXTENSIONS for _, m in samples for ext in m) and AUTO_IMAGE not in found:
            found[AUTO_IMAGE] = pa.binary()
        lacking = [c for c in dict.fromkeys(columns) if c not in found]
        if lacking and errors:
            raise InputError(
                f"{errors[0]} (met while reading the first samples to learn their members; the "
                f"{len(samples)} sample(s) read have no member {lacking})"
            )
        if lacking:
            uri = files[0].uri
            seen = _extensions(uri, self.so, lacking)
            absent = [c for c in lacking if c not in seen]
            if absent:
                have = ", ".join(sorted(seen - {AUTO_IMAGE})) or "none"
                raise InputError(
                    f"{uri}: no sample has a member {absent} (the extensions its samples have: "
                    f"{have}); input.keep, input.image_column and input.text.column name member "
                    "extensions (key is each sample's key)"
                )
            found |= {c: pa.binary() if c == AUTO_IMAGE else column_type(c) for c in lacking}
        return pa.schema(list(found.items()))

    def _sample(self, files: Sequence[FileInfo]) -> tuple[list[Sample], list[str]]:
        """Up to ``PEEK`` samples of the first tar that gives any, and the errors met on the way."""
        samples: list[Sample] = []
        errors = []
        for f in files[:PEEK]:
            try:
                for sample in _samples(f.uri, self.so):
                    samples.append(sample)
                    if len(samples) == PEEK:
                        break
            except RowError as exc:
                errors.append(exc.message)
                continue  # what a broken tar holds may not be all the members: look at the next
            if samples:
                break
        return samples, errors

    def read(
        self, shard: Shard, schema: pa.Schema, rows: int, pool: concurrent.futures.Executor | None
    ) -> Iterator[Chunk]:
        uri, batch, first = shard.uri, [], 0
        for sample in _samples(uri, self.so):
            batch.append(sample)
            if len(batch) == rows:
                yield self._chunk(uri, first, batch, schema)
                first, batch = first + len(batch), []
        if batch:
            yield self._chunk(uri, first, batch, schema)

    def _chunk(self, uri: str, first: int, samples: list[Sample], schema: pa.Schema) -> Chunk:
        rejected, skip = Rejections(), np.zeros(len(samples), bool)

        def reject(i: int, error: str, message: str) -> None:
            if not skip[i]:
                skip[i] = True
                rejected.add(first + i, first + i + 1, Reason("read", error, f"{uri}: {message}"), uri)

        columns = []
        image = self.inp.image_column or AUTO_IMAGE
        for f in schema:
            values: list[Any] = []
            for i, (key, members) in enumerate(samples):
                value = _member(key, members, f.name)
                if value is None and f.name == image:
                    found = ", ".join(members) or "none"
                    want = image if image != AUTO_IMAGE else " or ".join(IMAGE_EXTENSIONS)
                    reject(i, "MissingMember", f"sample {key} has no {want} member (members: {found})")
                elif value is not None and f.name != "key":
                    try:
                        value = _decode(f.name, value)
                    except ValueError as exc:
                        reject(i, "ValueError", f"sample {key}: member {f.name} is not a {f.type}: {exc}")
                        value = None
                values.append(value)
            columns.append(pa.array(values, f.type))
        data = pa.Table.from_arrays(columns, schema=schema)
        rows = np.arange(first, first + len(samples), dtype=np.int64)
        return Chunk(
            data, [uri], np.zeros(len(samples), np.int32), rows, rejected, skip if skip.any() else None
        )


def column_type(extension: str) -> pa.DataType:
    if extension in INTEGERS:
        return pa.int64()
    return pa.string() if extension in TEXTS else pa.binary()


def _member(key: str, members: dict[str, bytes], column: str) -> Any:
    if column == "key":
        return key
    if column == AUTO_IMAGE and AUTO_IMAGE not in members:
        return next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
    return members.get(column)


def _decode(extension: str, data: bytes) -> Any:
    if extension in INTEGERS:
        return int(data.decode().strip())
    if extension in TEXTS:
        return data.decode("utf-8")
    return data


def _key(name: str) -> tuple[str, str] | None:
    """A member's sample key and extension (``d/0001.seg.png``: ``d/0001``, ``seg.png``), or None
    for a member that belongs to no sample."""
    folder, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    if not dot or stem.startswith("__"):
        return None
    return posixpath.join(folder, stem), ext.lower()


def _open(uri: str, storage_options: dict[str, Any]) -> Any:
    fs, path = storage.split_uri(uri, storage_options)
    return open(path, "rb") if storage.is_local(fs) else fs.open(path, "rb", block_size=STREAM_BLOCK)


def _samples(uri: str, storage_options: dict[str, Any]) -> Iterator[Sample]:
    """The samples of a tar, streamed in order. Raises ``RowError`` for the whole shard when the
    tar cannot be read or a key's members are not adjacent."""
    key: str | None = None
    members: dict[str, bytes] = {}
    seen: set[str] = set()
    try:
        with _open(uri, storage_options) as f:
            for name, data in tar_files(f):
                split = _key(name)
                if split is None:
                    continue
                sample, ext = split
                if sample != key:
                    if key is not None:
                        yield key, members
                    if sample in seen:
                        raise RowError(
                            "read",
                            f"{uri}: the members of sample {sample} are not adjacent ({name} comes "
                            "after other samples); rewrite the tar with each sample's members "
                            "together (tar sorted by name)",
                            "NonAdjacentKey",
                        )
                    key, members = sample, {}
                    seen.add(sample)
                members[ext] = data
        if key is not None:
            yield key, members
    except (OSError, tarfile.TarError, StorageError) as exc:
        raise RowError("read", f"{uri}: cannot read the tar: {exc}", type(exc).__name__) from exc


def _extensions(uri: str, storage_options: dict[str, Any], wanted: Sequence[str]) -> set[str]:
    """The member extensions of a tar's samples (``image`` for any image member), from its
    headers alone, the members' data skipped; stops once every one of ``wanted`` is seen.
    Raises ``InputError`` when the tar cannot be read."""
    seen: set[str] = set()
    try:
        with _open(uri, storage_options) as f:
            for name, _ in tar_files(f, data=False):
                split = _key(name)
                if split is not None:
                    seen.add(split[1])
                    if split[1] in IMAGE_EXTENSIONS:
                        seen.add(AUTO_IMAGE)
                    if seen.issuperset(wanted):
                        break
    except (OSError, tarfile.TarError, StorageError) as exc:
        raise InputError(f"{uri}: cannot read the tar: {exc}") from exc
    return seen


def tar_files(f: Any, data: bool = True) -> Iterator[tuple[str, bytes]]:
    """``(name, bytes)`` of each regular file in a tar stream (ustar, GNU long names, pax); with
    ``data=False`` the names alone (bytes empty), the files' data skipped by seeking.

    Not ``tarfile``: reading its members costs 0.08 ms each in Python, a tenth of a JPEG's
    decode, where these 512-byte headers parse in 0.005 ms (8,000 samples: 0.65 s against 0.04).
    Raises ``tarfile.ReadError`` for a header that is not a tar's or data cut short.
    """
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = f.read(512)
        if not header.strip(b"\0"):
            return  # the end-of-archive blocks (or a tar cut at a block boundary: no more members)
        if len(header) < 512 or _checksum(header) != _octal(header[148:156]):
            raise tarfile.ReadError("bad header: not a tar file, or a damaged one")
        kind = header[156:157]
        size = int(pax.get("size", _octal(header[124:136])))
        padded = size + (-size % 512)  # to the next block
        if not data and kind in (b"0", b"\0", b"7"):
            f.seek(padded, 1)
            yield pax.get("path") or long_name or _ustar_name(header), b""
            long_name, pax = None, {}
            continue
        body = f.read(size)
        padding = f.read(padded - size)
        if len(body) < size or len(padding) < padded - size:
            raise tarfile.ReadError(f"unexpected end of data ({len(body)} of {size} bytes)")
        if kind == b"L":  # GNU: the next member's long name
            long_name = body.rstrip(b"\0").decode("utf-8", "replace")
        elif kind == b"x":  # pax: keys for the next member
            pax.update(_pax(body))
        elif kind != b"g":  # (a global pax header: nothing scoring needs)
            name = pax.get("path") or long_name or _ustar_name(header)
            if kind in (b"0", b"\0", b"7"):
                yield name, body
            long_name, pax = None, {}


def _octal(field: bytes) -> int:
    text = field.rstrip(b"\0 ").strip()
    return int(text, 8) if text else 0


def _checksum(header: bytes) -> int:
    return sum(header[:148]) + 8 * 32 + sum(header[156:])


def _ustar_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
    return (prefix + b"/" + name if prefix else name).decode("utf-8", "replace")


def _pax(data: bytes) -> dict[str, str]:
    """Records ``"LEN key=value\\n"``."""
    out, i = {}, 0
    while i < len(data):
        space = data.index(b" ", i)
        length = int(data[i:space])
        key, _, value = data[space + 1 : i + length - 1].partition(b"=")
        out[key.decode()] = value.decode("utf-8", "replace")
        i += length
    return out
