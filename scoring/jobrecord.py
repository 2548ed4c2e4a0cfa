"""The job record, typed: what ``_job.json`` holds, as ``scoring report``, the report page and the
CLI read it. ``summary.job_record`` builds it at the end of every run; ``report`` builds a partial
one (totals from the markers, the driver's state) while a job runs or after its driver died.

``to_json`` is ``_job.json`` (and ``scoring.run(...).job``, a plain dict); ``from_json`` reads any
record written since 0.1, missing keys left at their defaults.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class Totals:
    """Summed over every run of the job, except ``run_wall_s`` and ``rows_scored_now`` (this run)."""

    rows: int = 0  # scored or rejected
    rows_failed: int = 0
    shards: int = 0  # with a record
    shards_complete: int = 0
    shards_planned: int | None = None
    rows_planned: int | None = None
    runs: int = 0
    wall_s: float | None = None  # every run's wall time, added
    rows_per_s: float | None = None
    run_wall_s: float | None = None
    ready_s: float | None = None  # this run: checks, plan, Ray, until the first shard went out
    rows_scored_now: int | None = None
    ray_init_s: float | None = None  # this run: starting or joining Ray (0 on the local runner)


@dataclasses.dataclass
class Run:
    """One run of the job (a resumed job has several)."""

    run_id: str
    started_at: float
    ended_at: float
    status: str
    shards: int = 0
    rows_scored: int = 0
    wall_s: float = 0.0
    rows_per_s: float = 0.0
    startup_s: float | None = None  # its first shard's start minus the run's


@dataclasses.dataclass
class JobRecord:
    status: str  # succeeded | failed | interrupted | running | stopped
    totals: Totals = dataclasses.field(default_factory=Totals)
    job_id: str = ""
    run_id: str = ""
    error: str | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  # secrets redacted
    model: dict[str, Any] = dataclasses.field(default_factory=dict)  # uri, sha256, opset, inputs, outputs
    input: dict[str, Any] = dataclasses.field(default_factory=dict)  # shard.Source as JSON
    output: dict[str, Any] = dataclasses.field(default_factory=dict)  # format, committed
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    providers: list[str] = dataclasses.field(default_factory=list)
    cpu_fallback: list[str] = dataclasses.field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    runs: list[Run] = dataclasses.field(default_factory=list)
    argv: list[str] = dataclasses.field(default_factory=list)
    startup: dict[str, float] = dataclasses.field(default_factory=dict)  # this run's start-up, by step
    driver: dict[str, Any] | None = None  # only while no _job.json: the claim's host, pid, state

    @property
    def committed(self) -> dict[str, Any] | None:
        return self.output.get("committed")

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.driver is None:
            del out["driver"]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        fields = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in fields}
        known["totals"] = _build(Totals, data.get("totals") or {})
        known["runs"] = [_build(Run, r) for r in data.get("runs") or []]
        return cls(**known)


def _build(cls: Any, data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
