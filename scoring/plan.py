"""The plan: every shard of a job, fixed before the first one is scored (``OUT/_plan.parquet``).

A shard is the unit of input, progress, timing and resume; the job's format cuts the listed
files into shards (``scoring.formats``): a Parquet file, a row range of a big one
(``URI#rows=START-STOP``), small files packed together (``FIRST_FILE+N``), up to
``input.files_per_shard`` image files (``FOLDER[START:STOP]``), a tar.

The plan keeps each shard's files with their sizes and versions (modification time or ETag), the
model's sha256 and the config keys that change predictions or shards. A shard keeps its index,
and so its output file names, for the life of the output folder. ``resume`` follows the plan:
new input files become new shards; a changed model, key or file, or a vanished file, is refused.
No I/O here: the caller lists, reads and writes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from scoring import registry
from scoring.config import Config
from scoring.errors import PlanChanged
from scoring.formats import Format
from scoring.shard import FileInfo, Shard, Source

# Config keys whose change would change predictions or how the input is cut into shards: these,
# and every postprocessor's section.
PLAN_KEYS = (
    "input.uri",
    "input.format",
    "input.columns",
    "input.keep",
    "input.files_per_shard",
    "input.rows_per_shard",
    "input.image_column",
    "input.image",
    "input.text",
    "input.audio",
    "input.constants",
    "output.outputs",
)
UNSET: Any = ()  # a key an older plan did not record: as if it had its empty value


def plan_key_names() -> list[str]:
    return [*PLAN_KEYS, *(f"output.{key}" for key in registry.POSTPROCESSORS)]


@dataclasses.dataclass
class Plan:
    shards: list[Shard]
    model_sha256: str
    keys: dict[str, Any]
    created_at: float
    # What was listed when it is more than files (a table at a version: ``Format.source``),
    # pinned for resume; None for folders.
    source: Source | None = None
    job_id: str = ""  # the run that made the plan (``_job.json``'s job_id)
    replace: bool = False  # made by --mode overwrite: the first commit to a table output replaces it

    @property
    def rows(self) -> int:
        """The rows the plan knows of (grouped files and tars are counted once scored)."""
        return sum(s.rows or 0 for s in self.shards)


def plan_keys(cfg: Config) -> dict[str, Any]:
    """The values of the plan's keys in ``cfg``, as plain JSON data."""
    data = cfg.model_dump(mode="json")
    out = {}
    for key in plan_key_names():
        section, name = key.split(".")
        value = data[section].get(name)
        if value is not None or name in data[section]:
            out[key] = value
    return out


# -- making a plan ---------------------------------------------------------------------------


def make_plan(
    cfg: Config,
    model_sha256: str,
    fmt: Format,
    files: Sequence[FileInfo],
    job_id: str = "",
    first_index: int = 0,
) -> Plan:
    """A new plan of ``files``, its shards numbered from ``first_index`` (past the files that a
    table output still holds)."""
    shards = fmt.plan(files, first_index, 0)
    replace = cfg.output.mode == "overwrite"
    return Plan(shards, model_sha256, plan_keys(cfg), time.time(), fmt.source(), job_id, replace)


# -- resume ----------------------------------------------------------------------------------


def extend(
    old: Plan, cfg: Config, model_sha256: str, fmt: Format, files: Sequence[FileInfo]
) -> tuple[Plan, list[Shard]]:
    """The plan to resume: ``old`` with shards for input files added since, and those new shards.

    Raises ``PlanChanged`` (exit 2) naming what changed: the model, a config key in
    ``PLAN_KEYS``, an input file's size or version, or a planned file that is gone.
    """
    fix = "Use --mode overwrite to start the job again, or another output.uri."
    if old.model_sha256 != model_sha256:
        raise PlanChanged(
            f"cannot resume: the model changed since the plan was made (sha256 "
            f"{old.model_sha256[:12]}… then, {model_sha256[:12]}… now). {fix}"
        )
    keys = plan_keys(cfg)
    for key in plan_key_names():
        was = old.keys.get(key, UNSET)
        if was is UNSET and keys.get(key) in (None, {}, []):
            continue  # a key added since that plan was made, left at its empty value
        if was != keys.get(key):
            raise PlanChanged(
                f"cannot resume: config key '{key}' changed since the plan was made "
                f"({json.dumps(old.keys.get(key))} then, {json.dumps(keys.get(key))} now). {fix}"
            )
    source = fmt.source()
    now = {f.uri: f for f in files}
    planned = set()
    for shard in old.shards:
        for uri, size, version in zip(shard.files, shard.sizes, shard.versions):
            planned.add(uri)
            f = now.get(uri)
            if f is None and source is not None:
                raise PlanChanged(
                    f"cannot resume: data file {uri} of the plan (shard {shard.id}, {_at(old.source)}) is "
                    f"not in {_at(source)}: a newer version removed or rewrote it (a delete, an update, "
                    "an overwrite, a compaction), so its rows may be scored already from the old file. "
                    f"Resume at the planned version (leave input.version out), or: {fix}"
                )
            if f is None:
                raise PlanChanged(
                    f"cannot resume: input file {uri} was in the plan (shard {shard.id}) but is gone. "
                    f"Put it back, or: {fix}"
                )
            if (f.size, f.version) != (size, version):
                raise PlanChanged(
                    f"cannot resume: input file {uri} changed since the plan was made (size {size}, "
                    f"{version} then; size {f.size}, {f.version} now). Its rows may already be scored "
                    f"from the old content. {fix}"
                )
    added = [f for f in files if f.uri not in planned]
    if not added:
        return dataclasses.replace(old, source=source or old.source), []
    first = max((s.index for s in old.shards), default=-1) + 1
    new = fmt.plan(added, first, sum(len(s.files) for s in old.shards))
    return dataclasses.replace(old, shards=old.shards + new, source=source or old.source), new


def _at(source: Source | None) -> str:
    """A table at its version, for messages."""
    return source.describe() if source is not None else "the input"


# -- _plan.parquet ---------------------------------------------------------------------------

PLAN_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("shard", pa.string()),
        ("format", pa.string()),
        ("files", pa.list_(pa.string())),
        ("sizes", pa.list_(pa.int64())),
        ("versions", pa.list_(pa.string())),
        ("rows", pa.int64()),
        ("row_start", pa.int64()),
        ("row_stop", pa.int64()),
        ("row_groups", pa.list_(pa.int64())),
        ("rows_estimate", pa.int64()),
    ]
)
META_KEY = b"scoring.plan"


def to_table(plan: Plan) -> pa.Table:
    cols: dict[str, list[Any]] = {name: [] for name in PLAN_SCHEMA.names}
    for s in plan.shards:
        for name, value in (
            ("index", s.index),
            ("shard", s.id),
            ("format", s.format),
            ("files", list(s.files)),
            ("sizes", list(s.sizes)),
            ("versions", list(s.versions)),
            ("rows", s.rows),
            ("row_start", s.row_start),
            ("row_stop", s.row_stop),
            ("row_groups", list(s.row_groups)),
            ("rows_estimate", s.rows_estimate),
        ):
            cols[name].append(value)
    meta = {"model_sha256": plan.model_sha256, "keys": plan.keys, "created_at": plan.created_at}
    source = plan.source.to_json() if plan.source is not None else None
    meta |= {"source": source, "job_id": plan.job_id, "replace": plan.replace}
    schema = PLAN_SCHEMA.with_metadata({META_KEY: json.dumps(meta).encode()})
    return pa.table(cols, schema=schema)


def from_table(table: pa.Table) -> Plan:
    meta = json.loads((table.schema.metadata or {})[META_KEY])
    shards = [
        Shard(
            r["index"],
            r["shard"],
            r.get("format") or r.get("kind") or "",  # "kind": plans of scoring before 0.2
            tuple(r["files"]),
            tuple(r["sizes"]),
            tuple(r["versions"]),
            r["rows"],
            r["row_start"],
            r["row_stop"],
            tuple(r["row_groups"] or ()),
            r.get("rows_estimate"),
        )
        for r in table.to_pylist()
    ]
    return Plan(
        shards,
        meta["model_sha256"],
        meta["keys"],
        meta["created_at"],
        Source.from_json(meta.get("source")),
        meta.get("job_id", ""),
        bool(meta.get("replace")),
    )
