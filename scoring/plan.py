"""The plan: every shard of a job, fixed before the first one is scored (``OUT/_plan.parquet``).

A shard is the unit of input, progress, timing and resume:

- a Parquet file, or, when it holds more than ``input.rows_per_shard`` rows, each row range it is
  split into at row-group boundaries (id ``URI#rows=START-STOP``, STOP exclusive);
- up to ``input.files_per_shard`` image files of a folder (id ``FOLDER[START:STOP]``, positions in
  the job's file list: sorted when the plan was made, files added later appended).

The plan keeps each shard's files with their sizes and versions (modification time or ETag), the
model's sha256 and the config keys that change predictions or shards. A shard keeps its index,
and so its output file names, for the life of the output folder. ``resume`` follows the plan:
new input files become new shards; a changed model, key or file, or a vanished file, is refused.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from scoring import storage
from scoring.config import Config
from scoring.errors import PlanChanged, StorageError

PARQUET_SUFFIXES = (".parquet", ".pq")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Config keys whose change would change predictions or how the input is cut into shards.
PLAN_KEYS = (
    "input.uri",
    "input.format",
    "input.columns",
    "input.keep",
    "input.files_per_shard",
    "input.rows_per_shard",
    "input.image_column",
    "input.image",
    "output.outputs",
    "output.postprocess",
)
FOOTER_THREADS = 16  # Parquet footers are read in parallel: small reads, mostly waiting


@dataclasses.dataclass(frozen=True)
class Shard:
    """One planned shard. ``files``/``sizes``/``versions`` run in parallel."""

    index: int
    id: str
    kind: str  # "parquet" | "image_files" | "image_parquet"
    files: tuple[str, ...]
    sizes: tuple[int, ...]
    versions: tuple[str, ...]
    rows: int | None = None  # None: a Parquet file whose footer could not be read
    row_start: int | None = None  # a row range of a split file: [row_start, row_stop)
    row_stop: int | None = None
    row_groups: tuple[int, ...] = ()  # the row groups holding that range

    @property
    def uri(self) -> str:
        return self.files[0]

    @property
    def bytes(self) -> int:
        return sum(self.sizes)


@dataclasses.dataclass
class Plan:
    shards: list[Shard]
    model_sha256: str
    keys: dict[str, Any]
    created_at: float

    @property
    def rows(self) -> int:
        return sum(s.rows or 0 for s in self.shards)


def plan_keys(cfg: Config) -> dict[str, Any]:
    """The values of ``PLAN_KEYS`` in ``cfg``, as plain JSON data."""
    data = cfg.model_dump(mode="json")
    out = {}
    for key in PLAN_KEYS:
        section, name = key.split(".")
        out[key] = data[section].get(name)
    return out


# -- making a plan ---------------------------------------------------------------------------


def list_input(cfg: Config) -> tuple[str, list[storage.FileInfo]]:
    """The input's kind of shards and its files. Raises ``StorageError`` when nothing matches."""
    so, inp = cfg.storage_options, cfg.input
    if inp.format == "parquet":
        return "parquet", storage.list_files(inp.uri, so, PARQUET_SUFFIXES)
    try:
        return "image_files", storage.list_files(inp.uri, so, IMAGE_SUFFIXES)
    except StorageError:
        return "image_parquet", storage.list_files(inp.uri, so, PARQUET_SUFFIXES)


def make_plan(cfg: Config, model_sha256: str, kind: str, files: Sequence[storage.FileInfo]) -> Plan:
    return Plan(shards_for(cfg, kind, files, first_index=0), model_sha256, plan_keys(cfg), time.time())


def shards_for(cfg: Config, kind: str, files: Sequence[storage.FileInfo], first_index: int) -> list[Shard]:
    """Shards for ``files`` (one kind), numbered from ``first_index``; Parquet footers are read
    to split files with more than ``input.rows_per_shard`` rows."""
    if kind == "image_files":
        return _image_shards(cfg, files, first_index, first_position=0)
    layouts = _footers(files, cfg.storage_options)
    shards: list[Shard] = []
    for f, layout in zip(files, layouts):
        for rows, start, stop, groups in _ranges(layout, cfg.input.rows_per_shard):
            shard_id = f.uri if start is None else f"{f.uri}#rows={start}-{stop}"
            shards.append(
                Shard(
                    first_index + len(shards),
                    shard_id,
                    kind,
                    (f.uri,),
                    (f.size,),
                    (f.version,),
                    rows,
                    start,
                    stop,
                    groups,
                )
            )
    return shards


def _image_shards(
    cfg: Config, files: Sequence[storage.FileInfo], first_index: int, first_position: int
) -> list[Shard]:
    root, step = cfg.input.uri.rstrip("/"), cfg.input.files_per_shard
    shards = []
    for i, start in enumerate(range(0, len(files), step)):
        group = files[start : start + step]
        a = first_position + start
        shards.append(
            Shard(
                first_index + i,
                f"{root}[{a}:{a + len(group)}]",
                "image_files",
                tuple(f.uri for f in group),
                tuple(f.size for f in group),
                tuple(f.version for f in group),
                len(group),
            )
        )
    return shards


Layout = list[int] | None  # rows per row group; None when the footer cannot be read


def _footers(files: Sequence[storage.FileInfo], storage_options: dict[str, Any]) -> list[Layout]:
    from scoring.sources import row_groups

    def one(f: storage.FileInfo) -> Layout:
        try:
            return row_groups(f.uri, storage_options)
        except (OSError, pa.ArrowException, StorageError):
            return None  # a corrupt file is planned whole; scoring it fails the shard, not the job

    with concurrent.futures.ThreadPoolExecutor(min(FOOTER_THREADS, max(len(files), 1))) as pool:
        return list(pool.map(one, files))


Range = tuple[int | None, int | None, int | None, tuple[int, ...]]


def _ranges(layout: Layout, rows_per_shard: int) -> list[Range]:
    """``(rows, start, stop, row_groups)`` per shard of one file; start is None when it is whole."""
    if layout is None:
        return [(None, None, None, ())]
    total = sum(layout)
    if total <= rows_per_shard:
        return [(total, None, None, ())]
    out: list[Range] = []
    groups: list[int] = []
    start = count = 0
    for g, n in enumerate(layout):
        if groups and count + n > rows_per_shard:
            out.append((count, start, start + count, tuple(groups)))
            start, groups, count = start + count, [], 0
        groups.append(g)
        count += n
    if groups:
        out.append((count, start, start + count, tuple(groups)))
    if len(out) == 1:  # one row group larger than rows_per_shard: the file stays whole
        return [(total, None, None, ())]
    return out


# -- resume ----------------------------------------------------------------------------------


def extend(
    old: Plan, cfg: Config, model_sha256: str, kind: str, files: Sequence[storage.FileInfo]
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
    for key in PLAN_KEYS:
        if old.keys.get(key) != keys[key]:
            raise PlanChanged(
                f"cannot resume: config key '{key}' changed since the plan was made "
                f"({json.dumps(old.keys.get(key))} then, {json.dumps(keys[key])} now). {fix}"
            )
    now = {f.uri: f for f in files}
    planned = set()
    for shard in old.shards:
        for uri, size, version in zip(shard.files, shard.sizes, shard.versions):
            planned.add(uri)
            f = now.get(uri)
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
        return old, []
    first = max((s.index for s in old.shards), default=-1) + 1
    if kind == "image_files":
        position = sum(len(s.files) for s in old.shards)
        new = _image_shards(cfg, added, first, position)
    else:
        new = shards_for(cfg, kind, added, first)
    return Plan(old.shards + new, old.model_sha256, old.keys, old.created_at), new


# -- _plan.parquet ---------------------------------------------------------------------------

PLAN_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("shard", pa.string()),
        ("kind", pa.string()),
        ("files", pa.list_(pa.string())),
        ("sizes", pa.list_(pa.int64())),
        ("versions", pa.list_(pa.string())),
        ("rows", pa.int64()),
        ("row_start", pa.int64()),
        ("row_stop", pa.int64()),
        ("row_groups", pa.list_(pa.int64())),
    ]
)
META_KEY = b"scoring.plan"


def to_table(plan: Plan) -> pa.Table:
    cols: dict[str, list[Any]] = {name: [] for name in PLAN_SCHEMA.names}
    for s in plan.shards:
        for name, value in (
            ("index", s.index),
            ("shard", s.id),
            ("kind", s.kind),
            ("files", list(s.files)),
            ("sizes", list(s.sizes)),
            ("versions", list(s.versions)),
            ("rows", s.rows),
            ("row_start", s.row_start),
            ("row_stop", s.row_stop),
            ("row_groups", list(s.row_groups)),
        ):
            cols[name].append(value)
    meta = {"model_sha256": plan.model_sha256, "keys": plan.keys, "created_at": plan.created_at}
    schema = PLAN_SCHEMA.with_metadata({META_KEY: json.dumps(meta).encode()})
    return pa.table(cols, schema=schema)


def from_table(table: pa.Table) -> Plan:
    meta = json.loads((table.schema.metadata or {})[META_KEY])
    shards = [
        Shard(
            r["index"],
            r["shard"],
            r["kind"],
            tuple(r["files"]),
            tuple(r["sizes"]),
            tuple(r["versions"]),
            r["rows"],
            r["row_start"],
            r["row_stop"],
            tuple(r["row_groups"] or ()),
        )
        for r in table.to_pylist()
    ]
    return Plan(shards, meta["model_sha256"], meta["keys"], meta["created_at"])
