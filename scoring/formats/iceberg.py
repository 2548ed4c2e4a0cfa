"""Apache Iceberg tables: the data files of one snapshot, planned by pyiceberg.

``input.uri`` is a table's name with ``input.catalog`` (pyiceberg catalog properties: ``type:
sql | rest | glue | hive``, ``uri``, ``warehouse``...; ``name`` defaults to ``default``), or,
without a catalog, its metadata JSON or its folder (the newest ``metadata/*.metadata.json``, or
what ``metadata/version-hint.text`` names). ``input.version`` is a snapshot id or a timestamp
(default: the current snapshot, or the plan's on a resume).

pyiceberg (the ``[iceberg]`` extra) reads the metadata and the manifests and plans the scan: the
snapshot's data files, each with the delete files that apply to it (sequence numbers and
partitions as the spec says). Position deletes (and v3 deletion vectors) are read with
pyiceberg's own reader into the rows they remove; equality deletes, which pyiceberg cannot plan,
are refused before scoring. Columns are found in the data files by field id, so a renamed column
reads under its new name; identity partitions fill a column a file lacks. The data files are read
by scoring's Parquet path (``scoring.formats.lakehouse``).
"""

from __future__ import annotations

import datetime
import re
from typing import Any

import pyarrow as pa
from pydantic import Field

from scoring import listing, storage
from scoring.config import InputConfig
from scoring.errors import ConfigError, InputError, StorageError
from scoring.formats.lakehouse import DataFile, Lakehouse, TableInput, deleted_positions
from scoring.shard import FileInfo
from scoring.store_options import pyiceberg_properties

FIELD_ID = b"PARQUET:field_id"
METADATA_VERSION = re.compile(r"^v?(\d+)[-.]")  # 00003-<uuid>.metadata.json, v3.metadata.json


class IcebergInput(TableInput):
    """An Iceberg input: a table's version, and the catalog that names it."""

    catalog: dict[str, Any] | None = Field(
        default=None,
        description="pyiceberg catalog properties (name: default, type: sql | rest | glue | hive, uri, "
        "warehouse, ...), with input.uri the table's name (db.table)",
    )


def import_pyiceberg() -> Any:
    try:
        import pyiceberg
    except ImportError as exc:
        raise ConfigError(
            "an Iceberg table needs the pyiceberg package; install it with: pip install 'scoring[iceberg]'"
        ) from exc
    return pyiceberg


def load_table(uri: str, catalog: dict[str, Any] | None, storage_options: dict[str, Any]) -> Any:
    """The pyiceberg ``Table``: ``uri`` named in ``catalog``, else a metadata JSON or a table folder.
    Raises ``StorageError`` (nothing there, the store or catalog fails) or ``ConfigError``."""
    import_pyiceberg()
    from pyiceberg.exceptions import NoSuchTableError

    where = catalog.get("warehouse") or catalog.get("uri") or "" if catalog else uri
    io = pyiceberg_properties(str(where), storage_options)
    try:
        if catalog is not None:
            return load_catalog(catalog, io).load_table(uri)
        from pyiceberg.table import StaticTable

        return StaticTable.from_metadata(_metadata_json(uri, storage_options), properties=io)
    except NoSuchTableError as exc:
        raise StorageError(f"{uri}: no such Iceberg table in the catalog ({exc}); check input.uri") from exc
    except (OSError, ValueError) as exc:
        raise StorageError(f"{uri}: cannot load the Iceberg table: {exc}") from exc


def load_catalog(catalog: dict[str, Any], io: dict[str, str]) -> Any:
    """A pyiceberg catalog from ``catalog``'s properties (``name`` defaults to "default"); the
    storage options' FileIO properties under them. Raises ``ConfigError``."""
    from pyiceberg.catalog import load_catalog as load

    props = dict(catalog)
    name = str(props.pop("name", "default"))
    try:
        return load(name, **(io | {k: str(v) if not isinstance(v, str) else v for k, v in props.items()}))
    except (ValueError, ImportError, OSError) as exc:  # an unknown type, a missing driver, a bad uri
        raise ConfigError(
            f"the Iceberg catalog {name!r} ({props.get('type', 'type?')}) cannot be loaded: {exc}"
        ) from exc


def _metadata_json(uri: str, storage_options: dict[str, Any]) -> str:
    """The metadata JSON of a table given by its folder: what ``version-hint.text`` names, else
    the newest ``metadata/*.metadata.json`` (by the version its name starts with)."""
    if uri.endswith(".metadata.json"):
        return uri
    fs, path = storage.split_uri(uri, storage_options)
    folder = f"{path.rstrip('/')}/metadata"
    try:
        if fs.exists(f"{folder}/version-hint.text"):
            return uri  # pyiceberg reads the hint
        names = [p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)]
    except FileNotFoundError:
        names = []
    except OSError as exc:
        raise StorageError(f"{uri}: cannot list its metadata/ folder: {exc}") from exc
    versions = [
        (int(m[1]), n) for n in names if n.endswith(".metadata.json") and (m := METADATA_VERSION.match(n))
    ]
    if not versions:
        raise StorageError(
            f"{uri}: no Iceberg table there (no metadata/*.metadata.json); give input.uri as the table's "
            "folder or metadata JSON, or its name with input.catalog"
        )
    return storage.unstrip(fs, f"{folder}/{max(versions)[1]}")


class Iceberg(Lakehouse):
    name = "iceberg"
    Options: type[InputConfig] = IcebergInput
    layout = "metadata/*.metadata.json"

    def __init__(self, inp: IcebergInput, storage_options: dict[str, Any]) -> None:
        super().__init__(inp, storage_options)
        self.inp: IcebergInput = inp
        self.ids: dict[str, int] = {}  # logical column -> field id
        self.aliases: dict[int, list[str]] = {}  # field id -> names in files without ids

    def listing(self) -> list[FileInfo]:
        table = load_table(self.inp.uri, self.inp.catalog, self.so)
        snapshot = self._snapshot(table)
        if snapshot is None:
            raise StorageError(f"{self.inp.uri}: the Iceberg table has no snapshot: nothing to score")
        scan = table.scan(snapshot_id=snapshot.snapshot_id)
        try:
            tasks = list(scan.plan_files())
        except (ValueError, NotImplementedError) as exc:
            if "equality delete" not in str(exc).lower():
                raise
            raise InputError(
                f"{self.inp.uri} at snapshot {snapshot.snapshot_id} has equality deletes, which pyiceberg "
                "cannot plan yet; nothing was scored. Rewrite them into the data files (Spark: CALL "
                "system.rewrite_data_files) or read a snapshot before them (input.version)"
            ) from exc
        from pyiceberg.io.pyarrow import schema_to_pyarrow

        # The table's schema for its current snapshot (renames since it count), the snapshot's own
        # for an older one (as Spark reads it).
        current = table.current_snapshot()
        schema = table.schema() if snapshot.snapshot_id == current.snapshot_id else scan.projection()
        arrow = schema_to_pyarrow(schema, include_field_ids=False)
        self.table_schema = pa.schema([f.with_type(_small(f.type)) for f in arrow])
        self.ids = {f.name: f.field_id for f in schema.fields}
        mapping = table.name_mapping()
        self.aliases = {m.field_id: list(m.names) for m in mapping} if mapping is not None else {}
        self.files = self._data_files(table, schema, tasks)
        infos = [FileInfo(_uri(t.file.file_path), int(t.file.file_size_in_bytes), "iceberg") for t in tasks]
        found = listing.existing([f.uri for f in infos], _uri(table.location()), self.so)
        gone = [f.uri for f in infos if f.uri not in found]
        if gone:
            raise InputError(
                f"{self.inp.uri} at snapshot {snapshot.snapshot_id} lists {len(gone)} data file(s) that are "
                f"gone from storage (removed by expiring snapshots or orphan-file cleanup?), e.g. {gone[0]}"
            )
        self.pinned = self.pin(snapshot.snapshot_id, self.files, table.metadata_location)
        if not infos:
            raise StorageError(f"{self.inp.uri} at snapshot {snapshot.snapshot_id} holds no data file")
        return sorted(infos, key=lambda f: f.uri)

    @classmethod
    def table_root(cls, uri: str) -> str | None:
        parts = uri.rstrip("/").split("/")
        is_metadata = len(parts) >= 2 and parts[-2] == "metadata" and parts[-1].endswith(".metadata.json")
        return "/".join(parts[:-2]) if is_metadata else None

    @classmethod
    def is_table(cls, fs: Any, folder: str) -> bool:
        return bool(fs.isdir(f"{folder}/metadata") and fs.glob(f"{folder}/metadata/*.metadata.json"))

    def _snapshot(self, table: Any) -> Any:
        version = self.inp.version
        if version in (None, "latest"):
            return table.current_snapshot()
        if isinstance(version, int) or (isinstance(version, str) and version.lstrip("-").isdigit()):
            found = table.snapshot_by_id(int(version))
            if found is None:
                ids = [s.snapshot_id for s in table.snapshots()][-5:]
                raise InputError(
                    f"{self.inp.uri}: no snapshot {version} (expired?); the latest are {ids}; check "
                    "input.version"
                )
            return found
        try:
            when = datetime.datetime.fromisoformat(str(version).replace("Z", "+00:00"))
        except ValueError as exc:
            raise ConfigError(
                "config key 'input.version': expected a snapshot id, a timestamp or 'latest', found "
                f"{version!r}"
            ) from exc
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        found = table.snapshot_as_of_timestamp(int(when.timestamp() * 1000))
        if found is None:
            raise InputError(f"{self.inp.uri}: no snapshot at or before {version}; check input.version")
        return found

    def _data_files(self, table: Any, schema: Any, tasks: list[Any]) -> dict[str, DataFile]:
        """Each data file's rows, the positions its delete files remove, and its identity
        partition values (for a file that lacks those columns)."""
        from pyiceberg.io.pyarrow import _read_deletes
        from pyiceberg.transforms import IdentityTransform

        specs = table.specs()
        read: dict[str, dict[str, Any]] = {}  # a delete file covers many data files: read it once
        out = {}
        for task in tasks:
            path = task.file.file_path
            positions = []
            for delete in task.delete_files:
                if delete.file_path not in read:
                    read[delete.file_path] = _read_deletes(table.io, delete)
                if path in read[delete.file_path]:
                    positions.append(read[delete.file_path][path].to_numpy())
            deleted = (
                deleted_positions(pa.chunked_array([pa.array(p) for p in positions]).to_numpy(), False)
                if positions
                else None
            )
            values = {}
            for i, pf in enumerate(specs[task.file.spec_id].fields):
                if isinstance(pf.transform, IdentityTransform):
                    values[schema.find_field(pf.source_id).name] = task.file.partition[i]
            out[_uri(path)] = DataFile(int(task.file.record_count), deleted, values)
        return out

    def _columns(self, found: pa.Schema) -> dict[str, str]:
        by_id = {int(f.metadata[FIELD_ID]): f.name for f in found if f.metadata and FIELD_ID in f.metadata}
        names = set(found.names)
        out = {}
        for logical, field_id in self.ids.items():
            if by_id:
                if field_id in by_id:
                    out[logical] = by_id[field_id]
            else:  # a file added without field ids (add_files): by the name mapping, else the name
                name = next((n for n in self.aliases.get(field_id, [logical]) if n in names), None)
                if name is not None:
                    out[logical] = name
        return out


def _uri(uri: str) -> str:
    """A URI as storage lists it: local files as plain paths."""
    return uri.removeprefix("file://") if uri.startswith("file://") else uri


def _small(t: pa.DataType) -> pa.DataType:
    """Arrow's 32-bit-offset type for one that pyiceberg maps to a large one, as its own reader
    gives them (``pyarrow.use-large-types-on-read`` is off by default)."""
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_small(t.value_type)))
    return t
