"""Output formats: what a job's predictions become. One seam, one module each.

Every job keeps the same layout under OUT (``scoring.folder``): a shard's predictions are
committed with its marker, shard by shard, readable at every moment. An ``Output`` is built from
the output section (``output.*``, its class the output's ``Options``) and ``storage_options`` on
the driver, travels to the workers, and says what happens to the predictions:

- ``writer(uri) -> ShardWriter``: where a shard's rows go while it is scored (``uri``: its file
  under ``predictions/``). ``ShardWriter``: ``write(table)`` each chunk's rows, ``commit() ->
  [Written]`` once the shard settles (what became visible, recorded in its marker), ``abort()``
  (drop what was written; a no-op once committed). ``ParquetFile`` (outputs/parquet.py) writes
  one Parquet file: what every output here uses;
- ``versioned``: whether ``predictions/`` outlives a job — files a table holds are never removed
  by ``--mode overwrite`` or a resume (only this plan's unsettled shards are), and a new plan
  numbers its shards past the plan before, so a file name is never reused while a table version
  may read it;
- ``check()``: before OUT is touched — the library installed, the catalog reachable. Raises
  ``ScoringError`` (exit 2);
- ``commit(files, job, replace) -> dict | None``: when a run completes the job, put every
  ``Written`` file that the table does not hold yet into it in one transaction (``replace``: the
  table's other files out, in the same one), with ``job``'s metadata; what was committed, for
  ``_job.json`` (None when nothing was). Raises ``StorageError`` (a conflict, a store down): the
  run fails and the next resume commits.

Registered in ``scoring.registry.OUTPUTS``, imported when used. Example, an output that lists
each job's files in a manifest::

    class Manifest:
        name, versioned, Options = "manifest", False, OutputConfig
        def __init__(self, cfg, storage_options): self.cfg, self.so = cfg, storage_options
        def writer(self, uri): return ParquetFile(uri, self.so)
        def check(self): pass
        def commit(self, files, job, replace):
            text = "\\n".join(f.uri for f in files).encode()
            storage.write_bytes_atomic(storage.join(self.cfg.uri, "_manifest.txt"), text, self.so)
            return {"files": len(files)}
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import pyarrow as pa

from scoring import registry
from scoring.config import OutputConfig


@dataclasses.dataclass(frozen=True)
class Written:
    """A file a shard's writer made visible, as a table commit takes it."""

    uri: str
    name: str  # its path under predictions/
    size: int
    rows: int
    modified_ms: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Written:
        return cls(**data)


class ShardWriter(Protocol):
    def write(self, table: pa.Table) -> None: ...

    def commit(self) -> list[Written]: ...

    def abort(self) -> None: ...


class Output(Protocol):
    name: ClassVar[str]
    versioned: ClassVar[bool]
    Options: ClassVar[type[OutputConfig]]

    def writer(self, uri: str) -> ShardWriter: ...

    def check(self) -> None: ...

    def commit(
        self, files: Sequence[Written], job: dict[str, Any], replace: bool
    ) -> dict[str, Any] | None: ...


def get(cfg: OutputConfig, storage_options: dict[str, Any]) -> Output:
    return registry.load(registry.OUTPUTS[cfg.format])(cfg, storage_options)  # type: ignore[no-any-return]


def text_columns(schema: pa.Schema) -> list[str]:
    """The columns worth dictionary encoding: text. On float predictions dictionary encoding
    costs about as much as the rest of the write together and then falls back to plain anyway."""
    return [
        f.name
        for f in schema
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_dictionary(f.type)
    ]


def table_bytes(table: pa.Table) -> bytes:
    """``table`` as the bytes of one Parquet file."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, use_dictionary=text_columns(table.schema))
    return buf.getvalue()


def properties(job: dict[str, Any]) -> dict[str, str]:
    """What a commit says of what it holds: the job, the model, the input read (a table's
    version), as flat string properties."""
    source = job.get("input") or {}
    out = {
        "scoring.job-id": str(job.get("job_id", "")),
        "scoring.model-sha256": str(job.get("model_sha256", "")),
    }
    out["scoring.input"] = str(source.get("table") or job.get("input_uri", ""))
    if source.get("version") is not None:
        out["scoring.input-format"] = str(source.get("format"))
        out["scoring.input-version"] = str(source.get("version"))
    return out
