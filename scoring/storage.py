"""Everything that touches a filesystem: URIs, listing, whole-object reads and atomic writes.

Local paths and any fsspec URI (s3://, gs://, az://, ...) go through the same calls; the
protocol's package is imported lazily by fsspec, and a missing one gets an install hint.
"""

from __future__ import annotations

import os
import posixpath
import random
import time
import uuid
from collections.abc import Callable, Iterable
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
    try:
        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        extra = PROTOCOL_EXTRAS.get(protocol)
        hint = f" Install it with: pip install 'scoring[{extra}]'" if extra else ""
        raise StorageError(f"{uri}: no filesystem for protocol '{protocol}' ({exc}).{hint}") from exc
    return fs, path


def is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def unstrip(fs: Any, path: str) -> str:
    """The full URI of ``path`` on ``fs`` (``s3://bucket/key``; plain paths stay plain)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def join(base: str, *parts: str) -> str:
    return posixpath.join(base.rstrip("/"), *parts) if "://" in base else os.path.join(base, *parts)


def list_files(uri: str, storage_options: dict[str, Any], suffixes: Iterable[str]) -> list[str]:
    """Sorted full URIs of the files under a folder, a single file, or a glob.

    Folders are searched recursively; ``suffixes`` (lower case, with the dot) filter by name,
    case-insensitively. Raises ``StorageError`` when nothing matches.
    """
    fs, path = split_uri(uri, storage_options)
    wanted = tuple(suffixes)
    with translated(StorageError, f"listing {uri}"):
        if any(ch in path for ch in "*?["):
            found = [p for p in fs.glob(path) if fs.isfile(p)]
        elif fs.isdir(path):
            found = fs.find(path)
        elif fs.exists(path):
            found = [path]
        else:
            raise StorageError(f"{uri}: no such file or folder. Check input.uri.")
    files = sorted(
        p for p in found if p.lower().endswith(wanted) and not posixpath.basename(p).startswith(("_", "."))
    )
    if not files:
        raise StorageError(
            f"{uri}: found no files ending in {', '.join(wanted)}. Check input.uri and input.format."
        )
    return [unstrip(fs, p) for p in files]


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
            if attempt == attempts - 1:
                raise StorageError(f"{what}: failed after {attempts} attempts: {exc}") from exc
            time.sleep(base_delay * (2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def read_bytes(uri: str, storage_options: dict[str, Any]) -> bytes:
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


def local_temp(path: str) -> str:
    """A fresh temporary name beside local ``path`` (its folder created), to rename onto it."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return f"{path}.{uuid.uuid4().hex[:8]}.tmp"


def write_bytes_atomic(uri: str, data: bytes, storage_options: dict[str, Any]) -> None:
    """Write ``data`` so that readers see either nothing or the whole object.

    Local files are written beside the target and renamed (atomic on POSIX). Object stores
    make an object visible only when its upload completes, so one put is already atomic.
    """
    fs, path = split_uri(uri, storage_options)
    with translated(StorageError, f"writing {uri}"):
        if is_local(fs):
            tmp = local_temp(path)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            with_retries(lambda: fs.pipe_file(path, data), f"writing {uri}")


def check_writable(uri: str, storage_options: dict[str, Any]) -> None:
    """Write and delete a small probe under ``uri``: wrong credentials or a missing bucket fail
    here, before any scoring, instead of in every actor."""
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
        if not fs.exists(path):
            return []
        return sorted(unstrip(fs, p) for p in fs.ls(path, detail=False))
