"""A Delta table: ``OUT/predictions/`` becomes one, its files committed by delta-rs.

The first commit creates the table with the files (version 0: nothing is a table before it);
each later one adds the files it does not hold yet, in one transaction (an overwrite's first
commit removes the others in the same one). Each commit's info carries the job id, the model's
sha256 and the input table's version (``scoring.*`` keys), read back by ``DeltaTable.history()``.
Files are added as written, never rewritten: their names stay ``part-NNNNNN.parquet``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from scoring import storage
from scoring.config import OutputConfig
from scoring.errors import StorageError
from scoring.outputs import ShardWriter, Written, properties
from scoring.outputs.parquet import ParquetFile
from scoring.store_options import object_store_options


class Delta:
    name = "delta"
    versioned = True
    Options = OutputConfig

    def __init__(self, cfg: OutputConfig, storage_options: dict[str, Any]) -> None:
        self.uri = storage.join(cfg.uri, "predictions")
        self.so = storage_options

    def writer(self, uri: str) -> ShardWriter:
        return ParquetFile(uri, self.so)

    def check(self) -> None:
        from scoring.formats.delta import import_deltalake

        import_deltalake()

    def commit(self, files: Sequence[Written], job: dict[str, Any], replace: bool) -> dict[str, Any] | None:
        from scoring.formats.delta import import_deltalake

        deltalake = import_deltalake()
        from deltalake.exceptions import DeltaError, TableNotFoundError
        from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions

        options = object_store_options(self.uri, self.so) or None
        try:
            try:  # not is_deltatable(): its listing hangs on some S3 servers (moto, seen here)
                table = deltalake.DeltaTable(self.uri, storage_options=options)
            except TableNotFoundError:
                table = None
            held = (
                {a["path"] for a in pa.table(table.get_add_actions()).select(["path"]).to_pylist()}
                if table
                else set()
            )
            todo = [f for f in files if f.name not in held]
            ours = {f.name for f in files}
            replacing = replace and bool(held - ours)
            if not todo and not replacing:
                return None
            actions = [
                AddAction(f.name, f.size, {}, f.modified_ms, True, json.dumps({"numRecords": f.rows}))
                for f in todo
            ]
            schema = _schema(files[0].uri, self.so)
            commit = CommitProperties(custom_metadata=properties(job))
            if table is None:
                create_table_with_add_actions(
                    self.uri, schema, actions, "error", storage_options=options, commit_properties=commit
                )
                version = 0
            else:
                mode = "overwrite" if replacing else "append"
                table.create_write_transaction(actions, mode, schema, commit_properties=commit)
                version = table.version() + 1
        except (DeltaError, OSError, ValueError) as exc:
            raise StorageError(
                f"committing {len(files)} prediction file(s) to the Delta table {self.uri}: {exc}"
            ) from exc
        rows = sum(f.rows for f in todo)
        return {"format": self.name, "table": self.uri, "version": version, "files": len(todo), "rows": rows}


def _schema(uri: str, storage_options: dict[str, Any]) -> Any:
    """The Delta schema of a predictions file: Arrow's, with fixed-size lists as lists (Delta has
    none; the Parquet files hold lists) and large strings as strings."""
    from deltalake import Schema

    from scoring.formats.schemas import read_footer

    arrow, _ = read_footer(uri, storage_options)
    return Schema.from_arrow(pa.schema([f.with_type(_plain(f.type)) for f in arrow]))


def _plain(t: pa.DataType) -> pa.DataType:
    if pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
        return pa.list_(_plain(t.value_type))
    if pa.types.is_list(t):
        return pa.list_(_plain(t.value_type))
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    if pa.types.is_dictionary(t):
        return _plain(t.value_type)
    return t
