"""Output formats: what a job's prediction files become once the job is complete. One seam, one
module each.

Every job writes the same layout under OUT (``scoring.sink``): a Parquet file per shard under
``predictions/``, committed shard by shard, readable at every moment. An ``Output`` is built
from ``output.*`` and ``storage_options`` on the driver, and says what happens to those files:

- ``tabled``: whether ``predictions/`` outlives a job — files a table holds are never removed by
  ``--mode overwrite`` or a resume (only this plan's unsettled shards are), and a new plan numbers
  its shards past them, so a file name is never reused while a table version may read it;
- ``check()``: before OUT is touched — the library installed, the catalog reachable. Raises
  ``ScoringError`` (exit 2);
- ``commit(files, job, replace) -> dict | None``: when a run completes the job, put every
  ``Written`` file that the table does not hold yet into it in one transaction (``replace``: the
  table's other files out, in the same one), with ``job``'s metadata; what was committed, for
  ``_job.json`` (None when nothing was). Raises ``StorageError`` (a conflict, a store down): the
  run fails and the next resume commits.

Registered by name, imported when used; ``output.format`` names one. Example, an output that
lists each job's files in a manifest::

    class Manifest:
        name, tabled = "manifest", False
        def __init__(self, cfg, storage_options): self.cfg, self.so = cfg, storage_options
        def check(self): pass
        def commit(self, files, job, replace):
            text = "\\n".join(f.uri for f in files).encode()
            storage.write_bytes_atomic(storage.join(self.cfg.uri, "_manifest.txt"), text, self.so)
            return {"files": len(files)}
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

from scoring.config import OutputConfig

# Output format name -> "module:Class".
OUTPUTS = {
    "parquet": "scoring.outputs.parquet:Files",
    "delta": "scoring.outputs.delta:Delta",
    "iceberg": "scoring.outputs.iceberg:Iceberg",
}


@dataclasses.dataclass(frozen=True)
class Written:
    """One shard's predictions file, as a table commit takes it."""

    uri: str
    name: str  # its path under predictions/
    size: int
    rows: int
    modified_ms: int


class Output(Protocol):
    name: ClassVar[str]
    tabled: ClassVar[bool]

    def check(self) -> None: ...

    def commit(
        self, files: Sequence[Written], job: dict[str, Any], replace: bool
    ) -> dict[str, Any] | None: ...


def get(cfg: OutputConfig, storage_options: dict[str, Any]) -> Output:
    module, cls = OUTPUTS[cfg.format].split(":")
    return getattr(importlib.import_module(module), cls)(cfg, storage_options)  # type: ignore[no-any-return]


def no_catalog(cfg: OutputConfig, why: str) -> None:
    """Refuse ``output.table`` and ``output.catalog`` (``ConfigError``) for an output without them."""
    if cfg.table is not None or cfg.catalog is not None:
        from scoring.errors import ConfigError

        raise ConfigError(
            f"config keys 'output.table' and 'output.catalog' are for output.format iceberg; {why}"
        )


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
