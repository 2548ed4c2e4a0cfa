"""The job's record, ``_job.json``: what ran, on what, how it ended, with totals — secrets redacted.

Written last by every run (``sink.Output.write_summary``); ``scoring report`` and the report page
read it back.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
import time
from typing import Any

from scoring import plan, secrets
from scoring.record import ShardRecord
from scoring.worker import JobSpec


def job_record(
    spec: JobSpec,
    job_plan: plan.Plan,
    records: list[ShardRecord],
    scored: int,
    started: float,
    t_ready: float,
    status: str,
    error: str | None,
) -> dict[str, Any]:
    """The record of a run that ended with ``status`` (and ``error``), over all of its plan's
    ``records`` (this run's and those it resumed)."""
    import onnxruntime
    import pyarrow

    import scoring

    cfg, info = spec.config, spec.model
    finished = time.time()
    rows = sum(r.rows for r in records)
    failed = sum(r.rows_failed for r in records)
    wall = finished - started
    versions = {
        "scoring": scoring.__version__,
        "onnxruntime": onnxruntime.__version__,
        "pyarrow": pyarrow.__version__,
        "python": platform.python_version(),
    }
    if "ray" in sys.modules:  # the local runner never imports it
        versions["ray"] = sys.modules["ray"].__version__
    return {
        "job_id": spec.run_id,
        "status": status,
        "error": secrets.text(error, secrets.values(cfg.storage_options)) if error else error,
        "config": secrets.config(cfg.model_dump(mode="json")),
        "model": {
            "uri": secrets.text(info.uri),
            "sha256": info.sha256,
            "opset": info.opset,
            "inputs": [dataclasses.asdict(i) for i in info.inputs],
            "outputs": [dataclasses.asdict(o) for o in info.outputs],
        },
        "versions": versions,
        "providers": sorted({p for r in records for p in r.providers}),
        "cpu_fallback": sorted({r.fallback for r in records if r.fallback}),
        "started_at": started,
        "finished_at": finished,
        "totals": {
            "rows": rows,
            "rows_failed": failed,
            "shards": len(records),
            "shards_complete": sum(r.status in ("succeeded", "partial") for r in records),
            "shards_planned": len(job_plan.shards),
            "rows_planned": job_plan.rows,
            "wall_s": wall,
            "ready_s": t_ready - started,  # checks, plan, Ray (if any): until the first shard went out
            "rows_scored_now": scored,
            "rows_per_s": scored / wall if wall > 0 else 0.0,  # this run's rows over its wall time
        },
        "argv": secrets.argv(sys.argv, secrets.values(cfg.storage_options)),
    }


def resume_hint(job: dict[str, Any]) -> str:
    """How to finish a job that did not: the shards complete, and ``--mode resume``."""
    totals = job.get("totals") or {}
    done, planned = totals.get("shards_complete", 0), totals.get("shards_planned", "?")
    return f"{done} of {planned} shards complete; run again with --mode resume to finish"
