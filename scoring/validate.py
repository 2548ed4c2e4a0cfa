"""``scoring validate``: every check a job makes before it starts, then the first rows of the
input scored in this process, so a model that cannot be used is caught before a job runs.

Nothing is written. Empty files and shards are looked past to the first rows there are. A model
whose outputs cannot be matched with rows, or that fails on every row it is given, or first rows
none of which can be scored, is a ``ModelError`` (exit 2) naming the reason and the fix.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import pyarrow as pa

from scoring import plan
from scoring.config import Config
from scoring.errors import ModelError, ModelFailure, RowError
from scoring.exported import local_model
from scoring.formats import Chunk
from scoring.record import Reason, Rejections
from scoring.scorer import Scored
from scoring.session import build_session
from scoring.shard import Shard, Source
from scoring.spec import JobSpec, check

PREVIEW_ROWS = 8
SHARDS_LOOKED_AT = 64  # past this many shards without a row, validate gives up


@dataclasses.dataclass
class Preview:
    files: int
    shards: int
    rows: int
    inputs: list[str]
    predictions: pa.Table  # the first rows' prediction columns
    rejected: list[str]  # why some of those rows were rejected
    notes: list[str] = dataclasses.field(default_factory=list)  # the preprocessor's (token counts)
    source: Source | None = None  # a table at its version (``Format.source``)


def validate(cfg: Config) -> Preview:
    """Check ``cfg`` as ``run`` does, then score the first ``PREVIEW_ROWS`` rows here (CPU)."""
    spec, files = check(cfg)
    job_plan = plan.make_plan(cfg, spec.model.sha256, spec.format, files)
    path = local_model(spec.model, cfg.storage_options)
    session = build_session(path, spec.model, cfg.model, threads=1, gpu_ids=[])  # CPU: no GPU held
    shard, chunk = _first_rows(spec, job_plan.shards)
    try:
        scorer = spec.scorer(session)
        prepared = spec.preprocessor.prepare(chunk.data, chunk.skip, None)
        scored = scorer.run(prepared.groups)
    except ModelFailure as exc:
        raise ModelError(f"the model cannot score these rows: {exc}") from exc
    rejected = Rejections()
    for part in (chunk.rejected, chunk.locate(prepared.rejected), chunk.locate(scored.rejected)):
        rejected.extend(part)
    lines = [
        f"{file} {f'row {start}' if start >= 0 else '(file)'}: {r.stage}: {r.error}: {r.message}"
        for file, start, _, r in rejected.ranges
    ]
    if len(scored.rows) == 0:
        what = "failed in ONNX Runtime" if scored.rejected.by_stage().get("infer") else "were rejected"
        raise ModelError(
            f"none of the first rows can be scored: they {what}: "
            + "; ".join(itertools.islice(lines, 3))
            + ". Fix the config (input.columns, input.image_column, input.image) or the model first"
        )
    return Preview(
        files=len(files),
        shards=len(job_plan.shards),
        rows=job_plan.rows,
        inputs=[i.describe() for i in spec.model.inputs],
        predictions=spec.predictions(shard.id, chunk, scored),
        rejected=lines,
        notes=[
            *spec.format.notes(shard),
            *spec.preprocessor.notes(chunk.data),
            *_raw_size(scored, list(scorer.outputs)),
        ],
        source=job_plan.source,
    )


# Raw outputs past this many bytes a row are worth decoding: a detector's maps are 0.1-2 MB.
RAW_BYTES_HINT = 64 * 1024


def _raw_size(scored: Scored, raw: list[str]) -> list[str]:
    """How many bytes a row of raw outputs takes, and past ``RAW_BYTES_HINT`` what to do."""
    columns = [a for f, a in zip(scored.fields, scored.columns) if f.name in raw]
    if not columns or not len(scored.rows):
        return []
    per_row = sum(a.nbytes for a in columns) / len(scored.rows)
    line = f"raw outputs: {per_row:,.0f} bytes a row ({', '.join(raw)})"
    if per_row <= RAW_BYTES_HINT:
        return [line]
    return [
        f"{line}: {per_row * 1e6 / 2**30:,.1f} GiB a million rows. Decode them with output.detections, "
        "output.mask or output.function, or keep fewer with output.outputs"
    ]


def _first_rows(spec: JobSpec, shards: list[Shard]) -> tuple[Shard, Chunk]:
    """The first ``PREVIEW_ROWS`` rows of the input, past empty files and unreadable ones (whose
    rejections come along). Raises ``ModelError`` when the first shards hold no row."""
    looked: list[Chunk] = []
    for shard in shards[:SHARDS_LOOKED_AT]:
        for chunk in _read(spec, shard):
            looked.append(chunk)
            if len(chunk):
                head = chunk.head(PREVIEW_ROWS)
                head.rejected = Rejections()
                for seen in looked:
                    head.rejected.extend(seen.rejected)
                return shard, head
    reasons = [r.message for c in looked for _, _, _, r in c.rejected.ranges][:3]
    why = f" ({'; '.join(reasons)})" if reasons else ""
    raise ModelError(
        f"the first {min(len(shards), SHARDS_LOOKED_AT)} shard(s) hold no row to score{why}; check input.uri"
    )


def _read(spec: JobSpec, shard: Shard) -> Iterator[Chunk]:
    """The shard's chunks; an unreadable shard is one chunk of no row, its rows rejected."""
    try:
        yield from spec.format.read(shard, spec.schema, PREVIEW_ROWS, None)
    except RowError as exc:
        rejected = Rejections()
        rejected.add(exc.row_start, exc.row_stop, Reason(exc.stage, exc.error, exc.message), shard.uri)
        yield Chunk.of_file(spec.schema.empty_table(), shard.uri, 0, rejected=rejected)


def format_preview(p: Preview) -> str:
    lines = [f"ok: {p.shards} shard(s) from {p.files} input file(s), {p.rows:,} rows planned"]
    if p.source:
        s = p.source
        deletes = (
            f"deletes applied: {s.rows_deleted:,} row(s) of {s.files_with_deletes} file(s)"
            if s.rows_deleted
            else "no deletes to apply"
        )
        lines.append(f"{s.describe()}: {s.files} live data file(s), {s.rows:,} live row(s); {deletes}")
    lines += [
        "model inputs: " + ", ".join(p.inputs),
        f"the first {PREVIEW_ROWS} rows of the input, scored here: "
        f"{p.predictions.num_rows} scored, {len(p.rejected)} rejected",
        *p.notes,
        "prediction columns:",
    ]
    for field in p.predictions.schema:
        shape = (field.metadata or {}).get(b"shape")
        lines.append(f"  {field.name:<24} {field.type}" + (f"  shape {shape.decode()}" if shape else ""))
    if p.predictions.num_rows:
        first = p.predictions.slice(0, 1).to_pylist()[0]
        lines.append("first row: " + ", ".join(f"{k}={_short(v)}" for k, v in first.items()))
    lines += [f"rejected {r}" for r in p.rejected[:5]]
    return "\n".join(lines)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
