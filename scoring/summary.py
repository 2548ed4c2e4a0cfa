"""Building the job's record (``jobrecord.JobRecord``, ``_job.json``) at the end of a run: what
ran, on what, how it ended, with totals — secrets redacted.

Written last by every run (``folder.JobFolder.write_summary``); ``scoring report`` and the report
page read it back.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
import time
from typing import Any

from scoring import plan, redact
from scoring.jobrecord import JobRecord, Run, Totals
from scoring.record import ShardRecord
from scoring.spec import JobSpec


def job_record(
    spec: JobSpec,
    job_plan: plan.Plan,
    records: list[ShardRecord],
    scored: int,
    started: float,
    t_ready: float,
    status: str,
    error: str | None,
    runs: list[dict[str, Any]] | None = None,
    committed: dict[str, Any] | None = None,
    ray_init_s: float = 0.0,
) -> JobRecord:
    """The record of a run that ended with ``status`` (and ``error``), over all of its plan's
    ``records`` (this run's and those it resumed) and all of its ``runs`` (the ones before this
    one: each run's figures, and totals over them all)."""
    import onnxruntime
    import pyarrow

    import scoring

    cfg, info = spec.config, spec.model
    source = (
        job_plan.source.to_json() if job_plan.source else {"format": cfg.input.format, "uri": cfg.input.uri}
    )
    finished = time.time()
    rows = sum(r.rows for r in records)
    failed = sum(r.rows_failed for r in records)
    wall = finished - started
    this = {"run_id": spec.run_id, "started_at": started, "ended_at": finished, "status": status}
    every = [_run(r, records) for r in [*(runs or []), this]]
    wall_all = sum(r.wall_s for r in every)
    scored_all = sum(r.rows - r.rows_failed for r in records)
    versions = {
        "scoring": scoring.__version__,
        "onnxruntime": onnxruntime.__version__,
        "pyarrow": pyarrow.__version__,
        "python": platform.python_version(),
    }
    if "ray" in sys.modules:  # the local runner never imports it
        versions["ray"] = sys.modules["ray"].__version__
    return JobRecord(
        job_id=every[0].run_id,  # the first run's: the job keeps it through resumes
        run_id=spec.run_id,
        status=status,
        error=redact.text(error, redact.config_values(cfg)) if error else error,
        config=redact.config(cfg.model_dump(mode="json")),
        model={
            "uri": redact.text(info.uri),
            "sha256": info.sha256,
            "opset": info.opset,
            "inputs": [dataclasses.asdict(i) for i in info.inputs],
            "outputs": [dataclasses.asdict(o) for o in info.outputs],
        },
        input={k: redact.text(v) if isinstance(v, str) else v for k, v in source.items()},
        output={"format": cfg.output.format, "committed": committed},
        versions=versions,
        providers=sorted({p for r in records for p in r.providers}),
        cpu_fallback=sorted({r.fallback for r in records if r.fallback}),
        started_at=started,
        finished_at=finished,
        totals=Totals(
            rows=rows,
            rows_failed=failed,
            shards=len(records),
            shards_complete=sum(r.status in ("succeeded", "partial") for r in records),
            shards_planned=len(job_plan.shards),
            rows_planned=job_plan.rows,
            runs=len(every),
            wall_s=wall_all,  # every run's, added: a resumed job's rate is not one run's
            rows_per_s=scored_all / wall_all if wall_all > 0 else 0.0,
            run_wall_s=wall,  # this run's
            ready_s=t_ready - started,  # checks, plan, Ray (if any): until the first shard went out
            rows_scored_now=scored,
            ray_init_s=ray_init_s,
        ),
        runs=every,
        argv=redact.argv(sys.argv, redact.config_values(cfg)),
    )


def _run(run: dict[str, Any], records: list[ShardRecord]) -> Run:
    """One run's figures, from its shards: rows scored, wall time, rate, and its start-up (its
    first shard's start minus the run's)."""
    mine = [r for r in records if r.run_id == run["run_id"]]
    wall = max(float(run["ended_at"]) - float(run["started_at"]), 0.0)
    scored = sum(r.rows - r.rows_failed for r in mine)
    first = min((r.started_at for r in mine), default=None)
    return Run(
        run_id=run["run_id"],
        started_at=float(run["started_at"]),
        ended_at=float(run["ended_at"]),
        status=run["status"],
        shards=len(mine),
        rows_scored=scored,
        wall_s=wall,
        rows_per_s=scored / wall if wall > 0 else 0.0,
        startup_s=first - float(run["started_at"]) if first is not None else None,
    )


def resume_hint(job: JobRecord) -> str:
    """How to finish a job that did not: the shards complete, and ``--mode resume``."""
    planned = "?" if job.totals.shards_planned is None else job.totals.shards_planned
    return (
        f"{job.totals.shards_complete} of {planned} shards complete; run again with --mode resume to finish"
    )
