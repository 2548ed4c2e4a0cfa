"""Everything that touches a filesystem: URIs, whole-object reads, atomic writes, timeouts.

Local paths and any fsspec URI (s3://, gs://, az://, ...) go through the same calls; the
protocol's package is imported lazily by fsspec, and a missing one gets an install hint.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import posixpath
import random
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from scoring.errors import StorageError, translated

# Protocol -> the extra that installs it. Only a hint: fsspec does the importing.
PROTOCOL_EXTRAS = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
}
# These live in one process only; Ray workers would each see an empty filesystem.
PROCESS_LOCAL_PROTOCOLS = ("memory",)
# Every call to a store has a connect and a read timeout and a few retries, so a store that stalls
# fails the call instead of the job waiting forever (botocore's defaults: 60 s per read, times its
# retries, times s3fs's 5 tries: no error after 900 s). With these, a stalled S3 call fails within
# about 100 s (s3fs's 5 tries x 2 attempts x 10 s; botocore's max_attempts counts the retries).
# A user's storage_options win, key by key.
TIMEOUTS: dict[str, dict[str, Any]] = {
    "s3": {
        "config_kwargs": {
            "connect_timeout": 5,
            "read_timeout": 10,  # seconds without a byte, not for a whole transfer
            "retries": {"max_attempts": 1, "mode": "standard"},
        },
    },
    "gs": {"requests_timeout": 10},
    "az": {"connection_timeout": 5, "read_timeout": 10},
}
TIMEOUTS |= {"s3a": TIMEOUTS["s3"], "gcs": TIMEOUTS["gs"], "abfs": TIMEOUTS["az"], "abfss": TIMEOUTS["az"]}
T = TypeVar("T")


def split_uri(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """Return ``(filesystem, path)`` for ``uri``; raise ``StorageError`` for unusable ones."""
    import fsspec

    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    if protocol in PROCESS_LOCAL_PROTOCOLS:
        raise StorageError(
            f"{uri}: the {protocol}:// filesystem lives inside one process, so Ray workers "
            "cannot see it. Use a local path, a shared path or object storage (s3://, gs://, az://)."
        )
    options = with_timeouts(protocol, storage_options or {})
    if protocol in ("s3", "s3a") and "session" not in options:
        options["session"] = _s3_session()
    try:
        fs, path = fsspec.core.url_to_fs(uri, **options)
    except (ImportError, ValueError) as exc:
        extra = PROTOCOL_EXTRAS.get(protocol)
        hint = f" Install it with: pip install 'scoring[{extra}]'" if extra else ""
        raise StorageError(f"{uri}: no filesystem for protocol '{protocol}' ({exc}).{hint}") from exc
    return fs, path


@functools.cache
def _s3_session() -> Any:
    """The process's botocore session for s3fs, without ``Expect: 100-continue`` on uploads.

    botocore asks every PUT to wait for "100 Continue" before its body; when the connection drops
    in that wait (a store restarting, a load balancer resetting), aiohttp waits for the answer
    forever: no connect or read timeout covers it, and the upload, its shard and the job hang.
    Without the header a PUT is one round trip fewer and a dropped connection is an error that
    is retried. One session for all: s3fs keys its cached filesystems by their arguments.
    """
    from aiobotocore.session import AioSession
    from botocore.handlers import add_expect_header

    session = AioSession()
    session.unregister("before-call.s3", add_expect_header)
    return session


def with_timeouts(protocol: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """``storage_options`` over the protocol's default timeouts (nested dicts merged)."""
    return _merged(TIMEOUTS.get(protocol, {}), storage_options)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def unstrip(fs: Any, path: str) -> str:
    """The full URI of ``path`` on ``fs`` (``s3://bucket/key``; plain paths stay plain)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def join(base: str, *parts: str) -> str:
    return posixpath.join(base.rstrip("/"), *parts) if "://" in base else os.path.join(base, *parts)


def with_retries(fn: Callable[[], T], what: str, attempts: int = 3, base_delay: float = 0.2) -> T:
    """Call ``fn``, retrying transient storage errors with exponential backoff and jitter.

    On top of the filesystem's own retries (s3fs: 5 tries, each with botocore's), so a few
    rounds are enough. Missing objects and permission errors are not transient: raised at once.
    """
    for attempt in range(attempts):
        try:
            return fn()
        except (FileNotFoundError, PermissionError, IsADirectoryError):
            raise
        except (OSError, TimeoutError, ConnectionError) as exc:
            if _timed_out(exc):  # the library waited its timeout, times its own tries: not again
                raise StorageError(f"{what}: the store did not answer in time: {exc}") from exc
            if attempt == attempts - 1:
                raise StorageError(f"{what}: failed after {attempts} attempts: {exc}") from exc
            time.sleep(base_delay * (2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def _timed_out(exc: BaseException) -> bool:
    """A timeout, whatever the library calls it (TimeoutError, botocore's ReadTimeoutError and
    ConnectTimeoutError, aiohttp's ServerTimeoutError, fsspec's FSTimeoutError)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def read_bytes(uri: str, storage_options: dict[str, Any]) -> bytes:
    if "://" not in uri:  # a local path: no filesystem object (0.01 ms a small file, not 0.8)
        with translated(StorageError, f"reading {uri}"), open(uri, "rb") as f:
            return f.read()
    fs, path = split_uri(uri, storage_options)
    with translated(StorageError, f"reading {uri}"):
        return with_retries(lambda: _whole(fs, path), f"reading {uri}")


def _whole(fs: Any, path: str) -> bytes:
    """The whole object in one GET.

    With no range, s3fs reads an object past its block size (50 MiB) as a HEAD plus parallel
    ranged GETs joined by a copy: twice the CPU on both ends. The open range ``start=0`` is one
    GET, but on an empty object S3 and GCS refuse it (HTTP 416): that case reads as empty.
    """
    try:
        return bytes(fs.cat_file(path, start=0))
    except OSError:
        try:
            empty = fs.size(path) == 0
        except OSError:
            empty = False
        if empty:
            return b""
        raise


TEMP_SUFFIX = ".tmp"


def local_temp(path: str) -> str:
    """A fresh temporary name beside local ``path`` (its folder created), to rename onto it.

    Hidden (a leading dot), so Parquet readers (pyarrow, Ray Data, Spark, DuckDB, Polars) skip it
    while it is written and if a crash leaves it behind; ``sweep_temps`` removes leftovers.
    """
    folder, name = os.path.split(path)
    os.makedirs(folder or ".", exist_ok=True)
    return os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")


def sweep_temps(folder: str) -> int:
    """Remove the temporary files that interrupted writes left in local ``folder``; how many."""
    removed = 0
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.endswith(TEMP_SUFFIX):  # ours: hidden ones, and visible ones of older versions
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(folder, name))
                    removed += 1
    return removed


class AtomicFile:
    """A file that readers see whole or not at all: write to ``handle``, then ``commit`` or
    ``abort``.

    Locally the bytes go into a hidden temporary file beside the target, renamed on commit
    (atomic on POSIX), so nothing accumulates in memory. Object stores show an object only once
    its upload completes, so the bytes collect in memory and go up in one put, retried when
    transient.
    """

    def __init__(self, uri: str, storage_options: dict[str, Any]) -> None:
        self.uri, self.storage_options = uri, storage_options
        self.fs, self.path = split_uri(uri, storage_options)
        self.tmp: str | None = None
        self.handle: Any
        if is_local(self.fs):
            with translated(StorageError, f"writing {uri}"):
                self.tmp = local_temp(self.path)
                self.handle = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        else:
            self.handle = io.BytesIO()

    def commit(self) -> None:
        with translated(StorageError, f"writing {self.uri}"):
            if self.tmp is not None:
                self.handle.close()
                os.replace(self.tmp, self.path)
            else:
                data = self.handle.getvalue()
                with_retries(lambda: self.fs.pipe_file(self.path, data), f"writing {self.uri}")

    def abort(self) -> None:
        with contextlib.suppress(OSError):  # flushing onto a full disk: the file goes anyway
            self.handle.close()
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.tmp)


@contextlib.contextmanager
def atomic_file(uri: str, storage_options: dict[str, Any]) -> Iterator[Any]:
    """An ``AtomicFile``'s handle, committed when the block ends, aborted if it raises."""
    f = AtomicFile(uri, storage_options)
    try:
        with translated(StorageError, f"writing {uri}"):
            yield f.handle
    except BaseException:
        f.abort()
        raise
    f.commit()


def write_bytes_atomic(uri: str, data: bytes, storage_options: dict[str, Any]) -> None:
    """Write ``data`` so that readers see either nothing or the whole object."""
    with atomic_file(uri, storage_options) as f:
        f.write(data)


def check_writable(uri: str, storage_options: dict[str, Any]) -> None:
    """Write and delete a small probe under ``uri``: wrong credentials or a missing bucket fail
    here, before any scoring, instead of in every actor."""
    fs, path = split_uri(uri, storage_options)
    with translated(StorageError, f"checking output.uri {uri}"):
        is_file = fs.isfile(path)
    if is_file:
        raise StorageError(
            f"output.uri {uri} is a regular file; it must be a folder (or a prefix in object "
            "storage) that will hold predictions/ and the job files. Choose another output.uri."
        )
    probe = join(uri, f"_scoring_probe_{uuid.uuid4().hex[:8]}")
    try:
        write_bytes_atomic(probe, b"", storage_options)
        remove(probe, storage_options)
    except StorageError as exc:
        raise StorageError(
            f"cannot write to output.uri {uri}: {exc}. Check the bucket, the path "
            "and the credentials (storage_options or the environment)."
        ) from exc


def exists(uri: str, storage_options: dict[str, Any]) -> bool:
    fs, path = split_uri(uri, storage_options)
    with translated(StorageError, f"checking {uri}"):
        return bool(fs.exists(path))


def remove(uri: str, storage_options: dict[str, Any]) -> None:
    """Remove a file or a folder tree if it exists."""
    fs, path = split_uri(uri, storage_options)
    with translated(StorageError, f"removing {uri}"):
        if fs.exists(path):
            fs.rm(path, recursive=True)


def list_names(uri: str, storage_options: dict[str, Any]) -> list[str]:
    """Full URIs of the entries directly under a folder; empty when it does not exist."""
    fs, path = split_uri(uri, storage_options)
    with translated(StorageError, f"listing {uri}"):
        fs.invalidate_cache(path)  # other processes write here: never an earlier listing
        if not fs.exists(path):
            return []
        return sorted(unstrip(fs, p) for p in fs.ls(path, detail=False))
