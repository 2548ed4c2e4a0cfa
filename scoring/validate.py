"""``scoring validate``: every check a job makes before it starts, then the first rows of the
first shard scored in this process, so a model that cannot be used is caught before a job runs.

Nothing is written. A model whose outputs cannot be matched with rows, or that fails on every
row it is given, is a ``ModelError`` (exit 2) naming the output and the fix.
"""

from __future__ import annotations

import dataclasses
import itertools

import pyarrow as pa

from scoring import plan, sources
from scoring.config import Config
from scoring.errors import ModelError, ModelFailure
from scoring.model import local_model_path
from scoring.scorer import Scorer
from scoring.session import build_session

PREVIEW_ROWS = 8


@dataclasses.dataclass
class Preview:
    files: int
    shards: int
    rows: int
    inputs: list[str]
    predictions: pa.Table  # the first rows' prediction columns
    rejected: list[str]  # why some of those rows were rejected


def validate(cfg: Config) -> Preview:
    """Check ``cfg`` as ``run`` does, then score the first ``PREVIEW_ROWS`` rows here (CPU)."""
    from scoring.job import check
    from scoring.tensors import feed_columns
    from scoring.worker import decode_batch

    spec, kind, files = check(cfg)
    job_plan = plan.make_plan(cfg, spec.model.sha256, kind, files)
    so = cfg.storage_options
    path = local_model_path(spec.model.uri, spec.model.sha256, so)
    session = build_session(path, spec.model, cfg.model, threads=1, gpu_ids=[])  # CPU: no GPU held
    shard = job_plan.shards[0]
    try:
        scorer = Scorer(spec, session)
        if kind == "image_files":
            offset, uris = 0, list(shard.files[:PREVIEW_ROWS])
            _, blobs = next(sources.image_files(dataclasses.replace(shard, files=tuple(uris)), so))
            batch, ok_rows, bad = decode_batch(spec, blobs, uris)
            scored = scorer.score_images(batch, ok_rows)
            keep = pa.table({"path": pa.array(uris, pa.string())})
        else:
            column = [cfg.input.image_column] if kind == "image_parquet" else []
            needed = column + feed_columns(spec.model, cfg.input.columns) + list(cfg.input.keep)
            reader = sources.open_parquet(shard, needed, so)
            first = reader.first_row
            offset, chunk = next(iter(reader.chunks(PREVIEW_ROWS)), (first, None))
            reader.close()
            if chunk is None:
                raise ModelError(f"{shard.id} has no rows to score")
            keep = chunk.select(cfg.input.keep) if cfg.input.keep else None
            if kind == "image_parquet":
                blobs = chunk.column(cfg.input.image_column).to_pylist()
                where = [f"{shard.id} row {offset + i}" for i in range(len(blobs))]
                batch, ok_rows, bad = decode_batch(spec, blobs, where)
                scored = scorer.score_images(batch, ok_rows)
            else:
                scored = scorer.score_table(chunk, scorer.plan(reader.schema, shard.id))
                bad = None
    except ModelFailure as exc:
        raise ModelError(f"the model cannot score these rows: {exc}") from exc
    rejected = [f"row {start}: {r.stage}: {r.message}" for start, _, r in scored.rejected.ranges]
    if bad is not None:
        rejected = [f"row {start}: {r.stage}: {r.message}" for start, _, r in bad.ranges] + rejected
    if len(scored.rows) == 0 and scored.rejected.by_stage().get("infer"):
        raise ModelError(
            "the model failed on every one of the first rows: " + "; ".join(itertools.islice(rejected, 3))
        )
    return Preview(
        files=len(files),
        shards=len(job_plan.shards),
        rows=job_plan.rows,
        inputs=[i.describe() for i in spec.model.inputs],
        predictions=scorer.predictions(shard.id, offset, scored, keep),
        rejected=rejected,
    )


def format_preview(p: Preview) -> str:
    lines = [
        f"ok: {p.shards} shard(s) from {p.files} input file(s), {p.rows:,} rows planned",
        "model inputs: " + ", ".join(p.inputs),
        f"the first {PREVIEW_ROWS} rows of the first shard, scored here: "
        f"{p.predictions.num_rows} scored, {len(p.rejected)} rejected",
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
