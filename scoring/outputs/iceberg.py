"""An Iceberg table: the prediction files are added to ``output.table`` in ``output.catalog``.

pyiceberg adds the files as they are (``add_files``: their footers give the statistics; nothing
is rewritten). A table that is absent is created with the predictions' schema in the same
transaction as its first files (its namespace first), so no reader sees it before its rows; an
overwrite's first commit deletes the table's other rows in the same transaction. Each snapshot's
summary carries the job id, the model's sha256 and the input table's version (``scoring.*``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field

from scoring.config import OutputConfig
from scoring.errors import ConfigError, ScoringError, StorageError
from scoring.outputs import ShardWriter, Written, properties
from scoring.outputs.parquet import ParquetFile
from scoring.store_options import pyiceberg_properties


class IcebergOutput(OutputConfig):
    """An Iceberg output: the table the predictions go to, and its catalog."""

    table: str | None = Field(default=None, description="namespace.table, created when absent")
    catalog: dict[str, Any] | None = Field(
        default=None, description="pyiceberg catalog properties, as input.catalog"
    )


class Iceberg:
    name = "iceberg"
    versioned = True
    Options = IcebergOutput

    def __init__(self, cfg: IcebergOutput, storage_options: dict[str, Any]) -> None:
        if cfg.table is None or cfg.catalog is None:
            raise ConfigError(
                "output.format iceberg needs config keys 'output.table' (namespace.table) and "
                "'output.catalog' (pyiceberg catalog properties, e.g. {type: sql, uri: ..., warehouse: ...})"
            )
        if "." not in cfg.table.strip("."):
            raise ConfigError(f"config key 'output.table': expected namespace.table, found {cfg.table!r}")
        self.table, self.catalog, self.so = cfg.table, cfg.catalog, storage_options
        self.io = pyiceberg_properties(cfg.uri, storage_options)

    def writer(self, uri: str) -> ShardWriter:
        return ParquetFile(uri, self.so)

    def check(self) -> None:
        from scoring.formats.iceberg import import_pyiceberg, load_catalog

        import_pyiceberg()
        load_catalog(self.catalog, self.io)

    def commit(self, files: Sequence[Written], job: dict[str, Any], replace: bool) -> dict[str, Any] | None:
        from pyiceberg.exceptions import NoSuchTableError
        from pyiceberg.expressions import AlwaysTrue

        from scoring.formats.iceberg import load_catalog
        from scoring.formats.schemas import read_footer

        catalog = load_catalog(self.catalog, self.io)
        props = properties(job)
        try:
            try:
                table = catalog.load_table(self.table)
            except NoSuchTableError:
                table = None
            held = (
                {_plain(t.file.file_path) for t in table.scan().plan_files()} if table is not None else set()
            )
            todo = [f for f in files if f.uri not in held]
            replacing = replace and bool(held - {f.uri for f in files})
            if not todo and not replacing:
                return None
            uris = [f.uri for f in todo]
            if table is None:
                catalog.create_namespace_if_not_exists(self.table.rsplit(".", 1)[0])
                schema, _ = read_footer(files[0].uri, self.so)
                with catalog.create_table_transaction(self.table, schema=schema) as tx:
                    tx.add_files(uris, snapshot_properties=props)
            else:
                with table.transaction() as tx:
                    if replacing:
                        tx.delete(AlwaysTrue(), snapshot_properties=props)
                    if uris:
                        tx.add_files(uris, snapshot_properties=props)
            table = catalog.load_table(self.table)
        except ScoringError:
            raise
        except Exception as exc:  # pyiceberg and its catalogs (SQL, REST, Glue...) raise many kinds
            raise StorageError(
                f"committing {len(files)} prediction file(s) to the Iceberg table {self.table}: {exc}"
            ) from exc
        snapshot = table.current_snapshot()
        version = snapshot.snapshot_id if snapshot is not None else None
        rows = sum(f.rows for f in todo)
        return {
            "format": self.name,
            "table": self.table,
            "version": version,
            "files": len(todo),
            "rows": rows,
        }


def _plain(uri: str) -> str:
    """A data file's path as scoring names it (local files without ``file://``)."""
    return uri.removeprefix("file://")
