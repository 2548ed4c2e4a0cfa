"""Delta Lake tables: the live data files of one version, read from the log by delta-rs.

``input.uri`` is the table's folder (holding ``_delta_log/``), local or in object storage;
``input.version`` a version number or a timestamp (default: the latest, or the plan's on a
resume). delta-rs (``deltalake``, the ``[delta]`` extra) reads the log: the version's add
actions (path, size, rows, typed partition values), the schema with column mapping's physical
names, and deletion vectors as the rows they remove. The data files are then read by scoring's
Parquet path (``scoring.formats.lakehouse``).

A reader feature that the table needs and scoring cannot honour is refused before anything is
scored, naming it (delta-rs refuses some itself when loading the log).
"""

from __future__ import annotations

import posixpath
import urllib.parse
from typing import Any

import pyarrow as pa

from scoring import listing, storage
from scoring.errors import ConfigError, InputError, StorageError
from scoring.formats.lakehouse import DataFile, Lakehouse, TableInput, deleted_positions
from scoring.shard import FileInfo
from scoring.store_options import object_store_options

# Reader features whose tables read right through delta-rs' log and these data files: columns
# by their physical names, deletion vectors applied, types cast to the table's.
READER_FEATURES = {
    "columnMapping",
    "deletionVectors",
    "timestampNtz",
    "v2Checkpoint",
    "vacuumProtocolCheck",
    "typeWidening",
    "typeWidening-preview",
    "variantType",
    "variantType-preview",
}
MAX_READER_VERSION = 3


def import_deltalake() -> Any:
    try:
        import deltalake
    except ImportError as exc:
        raise ConfigError(
            "a Delta table needs the deltalake package (delta-rs); install it with: "
            "pip install 'scoring[delta]'"
        ) from exc
    return deltalake


def open_table(uri: str, storage_options: dict[str, Any], version: int | str | None = None) -> Any:
    """The ``DeltaTable`` at ``uri``, at ``version`` (a number, a timestamp, None/"latest").
    Raises ``StorageError`` (no table there, the store fails) or ``InputError``."""
    deltalake = import_deltalake()
    from deltalake.exceptions import DeltaError, TableNotFoundError

    options = object_store_options(uri, storage_options)
    try:
        table = deltalake.DeltaTable(uri, storage_options=options or None)
        if version not in (None, "latest"):
            table.load_as_version(version)
    except TableNotFoundError as exc:
        raise StorageError(f"{uri}: no Delta table there (no _delta_log/): {exc}; check input.uri") from exc
    except (DeltaError, OSError, ValueError) as exc:
        raise InputError(
            f"{uri}: cannot read the Delta table at version {version or 'latest'}: {exc}"
        ) from exc
    return table


class Delta(Lakehouse):
    name = "delta"
    layout = "_delta_log/"

    def __init__(self, inp: TableInput, storage_options: dict[str, Any]) -> None:
        super().__init__(inp, storage_options)
        self.physical: dict[str, str] = {}  # logical column -> its name in the data files

    @classmethod
    def table_root(cls, uri: str) -> str | None:
        parts = uri.rstrip("/").split("/")
        return "/".join(parts[: parts.index("_delta_log")]) if "_delta_log" in parts[:-1] else None

    @classmethod
    def is_table(cls, fs: Any, folder: str) -> bool:
        return bool(fs.isdir(f"{folder}/_delta_log"))

    def listing(self) -> list[FileInfo]:
        table = open_table(self.inp.uri, self.so, self.inp.version)
        self._check_protocol(table)
        fields = table.schema().fields
        mapped = table.metadata().configuration.get("delta.columnMapping.mode", "none") != "none"
        self.physical = {
            f.name: str(f.metadata.get("delta.columnMapping.physicalName", f.name)) if mapped else f.name
            for f in fields
        }
        self.table_schema = pa.schema(table.schema().to_arrow())
        root = storage.unstrip(*storage.split_uri(self.inp.uri, self.so)).rstrip("/")
        actions = pa.table(table.get_add_actions(flatten=False)).to_pylist()
        deleted = {_uri(u): deleted_positions(sel, keep_mask=True) for u, sel in _vectors(table)}
        files, infos = {}, []
        for action in actions:
            uri = _join(root, action["path"])
            values = {k: v for k, v in (action.get("partition") or {}).items()}
            values |= {logical: values[p] for logical, p in self.physical.items() if p in values}
            rows = action.get("num_records")
            if rows is None:  # no stats in the log: the footer says
                rows = sum(self.footer(uri)[1])
            files[uri] = DataFile(int(rows), deleted.get(uri), values)
            infos.append(FileInfo(uri, int(action["size_bytes"]), f"delta:{action['modification_time']}"))
        self.files = files
        found = listing.existing([f.uri for f in infos], root, self.so)
        gone = [f.uri for f in infos if f.uri not in found]
        if gone:
            raise InputError(
                f"{self.inp.uri} at version {table.version()} lists {len(gone)} data file(s) that are gone "
                f"from storage (vacuumed?), e.g. {gone[0]}; read a later version (input.version), or "
                "restore them"
            )
        self.pinned = self.pin(table.version(), files)
        if not infos:
            raise StorageError(
                f"{self.inp.uri} at version {table.version()} holds no data file: nothing to score"
            )
        return sorted(infos, key=lambda f: f.uri)

    def _check_protocol(self, table: Any) -> None:
        protocol = table.protocol()
        unknown = sorted(set(protocol.reader_features or ()) - READER_FEATURES)
        if protocol.min_reader_version > MAX_READER_VERSION or unknown:
            what = (
                f"reader feature(s) {unknown}" if unknown else f"reader version {protocol.min_reader_version}"
            )
            raise InputError(
                f"{self.inp.uri}: the Delta table needs {what}, which scoring cannot read yet; nothing was "
                f"scored. It reads reader version {MAX_READER_VERSION} with {sorted(READER_FEATURES)}"
            )

    def _columns(self, found: pa.Schema) -> dict[str, str]:
        names = set(found.names)
        return {logical: p for logical, p in self.physical.items() if p in names}


def _vectors(table: Any) -> list[tuple[str, Any]]:
    """``(file URI, keep mask)`` of every data file with a deletion vector."""
    out = []
    for batch in table.deletion_vectors():
        batch = pa.record_batch(batch)
        for uri, mask in zip(
            batch.column("filepath").to_pylist(), batch.column("selection_vector").to_pylist()
        ):
            out.append((uri, mask))
    return out


def _join(root: str, path: str) -> str:
    """A data file's URI from an add action's path (URL-encoded, relative to the table or whole)."""
    path = urllib.parse.unquote(path)
    if "://" in path or path.startswith("/"):
        return _uri(path)
    return posixpath.join(root, path) if "://" in root else f"{root}/{path}"


def _uri(uri: str) -> str:
    """A URI as storage lists it: local files as plain paths."""
    return urllib.parse.unquote(uri.removeprefix("file://")) if uri.startswith("file://") else uri
