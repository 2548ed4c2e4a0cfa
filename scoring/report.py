"""``scoring report`` and the end-of-job summary: what OUT says about its job, finished or
running (from the plan and the markers so far), as text; ``page`` renders it as HTML.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scoring import storage
from scoring.errors import StorageError
from scoring.fence import driver_state
from scoring.folder import ERRORS, PLAN, JobFolder, part
from scoring.jobrecord import JobRecord, Totals
from scoring.record import WORK_TIMES, ShardRecord

EXAMPLES = 3


@dataclasses.dataclass
class Report:
    out: str
    job: JobRecord  # _job.json, or what the plan and markers say while it is absent
    records: list[ShardRecord]
    rejected: list[dict[str, Any]]  # per stage and error kind: rows, examples


def load_report(out: str, storage_options: dict[str, Any] | None = None) -> Report:
    """What OUT says about its job, finished or running."""
    so = storage_options or {}
    output = JobFolder(out, so, run_id="")
    records = sorted(output.markers().values(), key=lambda r: r.index)
    job_uri = storage.join(out, "_job.json")
    if storage.exists(job_uri, so):
        job = JobRecord.from_json(json.loads(storage.read_bytes(job_uri, so)))
    elif records or storage.exists(storage.join(out, PLAN), so):
        plan = output.read_plan()
        job = _driver(output)
        job.totals = totals_of(records)
        if plan is not None:
            job.totals.shards_planned, job.totals.rows_planned = len(plan.shards), plan.rows
    else:
        raise StorageError(f"{out} holds no job (no _job.json, no plan, no markers); check the URI")
    return Report(out, job, records, _rejected(output, records))


def _driver(output: JobFolder) -> JobRecord:
    """Whether the run writing OUT (no ``_job.json`` yet) is alive: ``running``, or ``stopped``
    with why, from its claim (host, pid, heartbeat)."""
    holder = output.fence.holder()
    if holder is None:
        return JobRecord(
            "stopped",
            error="no run holds this folder and there is no _job.json: its driver stopped before "
            "writing the summary (killed?). Run the job again with --mode resume to finish it",
        )
    state = driver_state(holder)
    driver = {k: holder.get(k) for k in ("host", "pid", "started_at", "heartbeat_at")} | {"state": state}
    if state == "alive":
        return JobRecord("running", driver=driver)
    beat = time.time() - float(holder.get("heartbeat_at") or holder.get("started_at") or 0)
    return JobRecord(
        "stopped",
        driver=driver,
        error=f"its driver (pid {holder.get('pid')} on {holder.get('host')}) is gone: last heard of "
        f"{beat:,.0f} s ago. Run the job again with --mode resume to finish it",
    )


def totals_of(records: Sequence[ShardRecord]) -> Totals:
    return Totals(
        rows=sum(r.rows for r in records),
        rows_failed=sum(r.rows_failed for r in records),
        shards=len(records),
        shards_complete=sum(r.status in ("succeeded", "partial") for r in records),
    )


def _rejected(output: JobFolder, records: Sequence[ShardRecord]) -> list[dict[str, Any]]:
    """Rejected rows grouped by stage and error kind, with a few example rows each, from each
    settled shard's own errors file (so a running job shows them too)."""
    parts = []
    for r in records:
        if r.rows_failed:
            data = storage.read_bytes(output.join(ERRORS, part(r.index, ".parquet")), output.storage_options)
            parts.append(pq.read_table(pa.BufferReader(data)))
    if not parts:
        return []
    table = pa.concat_tables(parts)
    counts = table.group_by(["stage", "error"]).aggregate([("message", "count")]).to_pylist()
    groups = []
    for g in sorted(counts, key=lambda g: -g["message_count"]):
        mask = pc.and_(pc.equal(table["stage"], g["stage"]), pc.equal(table["error"], g["error"]))
        examples = table.filter(mask).slice(0, EXAMPLES).to_pylist()
        groups.append(
            {"stage": g["stage"], "error": g["error"], "rows": g["message_count"], "examples": examples}
        )
    return groups


def summary(job: JobRecord, records: Sequence[ShardRecord]) -> str:
    """Totals, time per stage, and a per-shard table (at most 20 rows, slowest first)."""
    totals = job.totals
    lines = [
        f"status: {job.status}" + (f" ({job.error})" if job.status == "stopped" else ""),
        f"rows: {totals.rows:,} scored or rejected, {totals.rows_failed:,} rejected, "
        f"{totals.shards} shard(s)",
    ]
    source, committed = job.input, job.committed
    if source.get("version") is not None:
        lines.append(f"input: {source['format']} table {source['table']} at version {source['version']}")
    if committed:
        lines.append(
            f"committed: {committed['files']} file(s), {committed['rows']:,} row(s) to the "
            f"{committed['format']} table {committed['table']} (version {committed['version']})"
        )
    runs = job.runs
    if totals.wall_s is not None:
        over = f" over {len(runs)} runs" if len(runs) > 1 else ""
        lines.append(f"wall: {totals.wall_s:.2f}s{over}, {totals.rows_per_s or 0:,.0f} rows/s end to end")
    if len(runs) > 1:
        for i, run in enumerate(runs, 1):
            lines.append(
                f"  run {i}: {run.status}, {run.rows_scored:,} rows in {run.wall_s:.2f}s, "
                f"{run.rows_per_s:,.0f} rows/s"
            )
    elif runs and runs[-1].startup_s is not None:
        lines[-1] += f" ({runs[-1].startup_s:.2f}s before the first shard started)"
    if records:
        stage_sum = {s: sum(getattr(r, s) for r in records) for s in WORK_TIMES}
        busy = sum(stage_sum.values()) or 1.0
        lines.append(
            "time in workers: "
            + ", ".join(f"{s[:-2]} {v:.2f}s ({100 * v / busy:.0f}%)" for s, v in stage_sum.items())
        )
        lines.append(
            f"{'shard':<48} {'rows':>8} {'bad':>5} {'wall_s':>7} {'read':>6} "
            f"{'prep':>6} {'infer':>6} {'write':>6} {'wait':>6} {'rows/s':>9} device"
        )
        for r in sorted(records, key=lambda r: -r.wall_s)[:20]:
            name = r.shard if len(r.shard) <= 48 else "..." + r.shard[-45:]
            lines.append(
                f"{name:<48} {r.rows:>8} {r.rows_failed:>5} {r.wall_s:>7.2f} "
                + " ".join(f"{getattr(r, s):>6.2f}" for s in WORK_TIMES)
                + f" {r.wait_s:>6.2f} {r.rows_per_s:>9,.0f} {r.device}"
            )
        if len(records) > 20:
            lines.append(f"... {len(records) - 20} more in _shards.parquet")
    return "\n".join(lines)
