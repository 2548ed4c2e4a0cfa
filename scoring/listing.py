"""Listing an input: the files under a folder, a file or a glob, as Spark and Hive leave them.

Files and folders whose name starts with ``_`` or ``.`` are skipped at any depth (``_SUCCESS``,
``.crc``, ``_temporary/``, ``_delta_log/``), as pyarrow, Spark and Hive skip them; ``key=value``
folders between the listing's root and a file are its Hive partitions. Sizes and versions (ETag or
modification time) come from the listing itself: no request per file.

What a folder *is* (a Delta or Iceberg table) is each format's own knowledge (``scoring.formats``):
``list_files`` shows it every path it met, hidden ones included.
"""

from __future__ import annotations

import posixpath
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from scoring.errors import StorageError, translated
from scoring.shard import FileInfo
from scoring.storage import is_local, split_uri, unstrip

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # Hive's folder name for a null partition value
# Keys that fsspec filesystems use for a content version, most specific first.
VERSION_KEYS = ("ETag", "etag", "generation", "md5Hash", "mtime", "LastModified", "last_modified", "updated")


def _version(info: dict[str, Any]) -> str:
    for key in VERSION_KEYS:
        if info.get(key) not in (None, ""):
            value = info[key]
            return f"{key}={value.isoformat() if hasattr(value, 'isoformat') else value}"
    return ""


def list_files(
    uri: str,
    storage_options: dict[str, Any],
    suffixes: Iterable[str],
    seen: Callable[[str], None] | None = None,
) -> list[FileInfo]:
    """The files under a folder, a single file, or a glob, sorted by URI, with sizes and versions.

    Folders are searched recursively; ``suffixes`` (lower case, with the dot) filter by name,
    case-insensitively; hidden files and folders are skipped (see the module docstring).
    ``seen``, when given, is called with the URI of every path found on the way, hidden ones
    too. Raises ``StorageError`` when nothing matches.
    """
    fs, path = split_uri(uri, storage_options)
    wanted = tuple(suffixes)
    root = root_of(path)
    with translated(StorageError, f"listing {uri}"):
        fs.invalidate_cache(root)  # files added since an earlier listing in this process count
        if any(ch in path for ch in "*?["):
            found = {p: i for p, i in fs.glob(path, detail=True).items() if i.get("type") == "file"}
        elif fs.isdir(path):
            found = fs.find(path, detail=True)
        elif fs.exists(path):
            found = {path: fs.info(path)}
            root = posixpath.dirname(path.rstrip("/"))
        else:
            raise StorageError(f"{uri}: no such file or folder; check input.uri")
    if seen is not None:
        for p in found:
            seen(unstrip(fs, p))
    files = sorted(p for p in found if p.lower().endswith(wanted) and not hidden(p, root))
    if not files:
        raise StorageError(
            f"{uri}: found no files ending in {', '.join(wanted)}; check input.uri and input.format"
        )
    return [FileInfo(unstrip(fs, p), int(found[p].get("size") or 0), _version(found[p])) for p in files]


def folders_up(uri: str, storage_options: dict[str, Any], levels: int = 8) -> tuple[Any, list[str]]:
    """The filesystem, and the folder ``uri`` is (or a file's or a glob's folder) with up to
    ``levels`` folders above it, nearest first; never a bucket's root."""
    fs, path = split_uri(uri, storage_options)
    folder = root_of(path).rstrip("/")
    if not any(ch in path for ch in "*?[") and fs.isfile(path):
        folder = posixpath.dirname(folder)
    out: list[str] = []
    for _ in range(levels):
        if not folder or folder in ("/", ".") or ("/" not in folder.strip("/") and not is_local(fs)):
            break  # a bucket's root holds no table
        out.append(folder)
        parent = posixpath.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return fs, out


def root_of(path: str) -> str:
    """The folder a listing of ``path`` starts from: ``path`` itself, or a glob's fixed prefix."""
    path = path.rstrip("/")
    cut = min((path.index(ch) for ch in "*?[" if ch in path), default=None)
    return path if cut is None else posixpath.dirname(path[:cut])


def listing_root(uri: str, storage_options: dict[str, Any]) -> str:
    """The URI that ``list_files(uri)`` lists below, as its file URIs begin (with a slash)."""
    fs, path = split_uri(uri, storage_options)
    root = root_of(path)
    if not any(ch in path for ch in "*?[") and fs.isfile(path):
        root = root.rsplit("/", 1)[0]
    return unstrip(fs, root).rstrip("/") + "/"


def relative_parts(path: str, root: str) -> list[str]:
    """The folders and name of ``path`` below ``root`` (both as a filesystem lists them)."""
    rel = path[len(root) :] if path.startswith(root) else posixpath.basename(path)
    return [p for p in rel.split("/") if p]


def hidden(path: str, root: str) -> bool:
    """Whether a file or a folder on its way below ``root`` starts with ``_`` or ``.``."""
    return any(part.startswith(("_", ".")) for part in relative_parts(path, root))


def partitions(uri: str, root: str) -> dict[str, str | None]:
    """Hive partitions of a file: ``key=value`` folders between ``root`` (``listing_root``) and the
    file, values URL-decoded (Hive's default partition is null)."""
    rel = uri[len(root) :] if uri.startswith(root) else ""
    out: dict[str, str | None] = {}
    for part in rel.split("/")[:-1]:
        key, eq, value = part.partition("=")
        if eq and key:
            decoded = urllib.parse.unquote(value)
            out[key] = None if decoded == HIVE_NULL else decoded
    return out


def existing(uris: Iterable[str], root: str, storage_options: dict[str, Any]) -> set[str]:
    """Which of ``uris`` exist: one listing of ``root``, and a request for each one outside it."""
    fs, path = split_uri(root, storage_options)
    wanted = list(uris)
    with translated(StorageError, f"listing {root}"):
        fs.invalidate_cache(path)
        found = {unstrip(fs, p) for p in fs.find(path)} if fs.isdir(path) else set()
        prefix = unstrip(fs, path).rstrip("/") + "/"
        for uri in wanted:
            if uri not in found and not uri.startswith(prefix):
                other, where = split_uri(uri, storage_options)
                if other.exists(where):
                    found.add(uri)
    return found & set(wanted)
