"""The job: check everything on the driver, fix the plan, dispatch shards, write the summary.

Order: config -> model signature -> input listing and the first shard's schema -> pool size
(on the runner's nodes when they are known before it starts: this machine) -> output folder
(mode, plan) -> a write probe -> the runner starts (Ray) -> pool size (on its nodes) -> claim
OUT, write the plan -> dispatch -> revoke the claim, stop the workers -> summary files
(``_job.json`` last). Everything before the probe fails with exit 2 and leaves no trace.

SIGINT and SIGTERM stop the job within seconds: the claim is revoked (no late commit lands),
the workers are stopped, and ``_job.json`` says ``interrupted`` with the shards settled so far.
Nothing here knows which runner, format or output a job has: each is its own seam.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from typing import Any

from scoring import fence, outcome, outputs, plan, runners, storage, summary
from scoring.config import Config
from scoring.driver import Run
from scoring.errors import Interrupted, JobFailed, ScoringError, StorageError
from scoring.folder import PROGRESS, JobFolder
from scoring.jobrecord import JobRecord
from scoring.pool import plan_pool
from scoring.progress import Lines
from scoring.record import ShardRecord
from scoring.runners import Runner, dispatch
from scoring.shard import FileInfo
from scoring.spec import JobSpec, check
from scoring.stopping import Stop

Echo = Callable[[str], None]


@dataclasses.dataclass
class JobResult:
    out: str
    record: JobRecord
    records: list[ShardRecord]

    @property
    def job(self) -> dict[str, Any]:
        """``_job.json``, as a plain dict."""
        return self.record.to_json()

    @property
    def ok(self) -> bool:
        return self.record.status == "succeeded"


def decide_plan(
    out: JobFolder, spec: JobSpec, files: list[FileInfo], old: plan.Plan | None, echo: Echo
) -> tuple[plan.Plan, dict[int, ShardRecord]]:
    """The plan this run follows and the shards already settled, from ``output.mode``, what OUT
    holds and its plan (``old``); reads OUT, writes nothing. Raises ``StorageError`` (mode error,
    OUT holds a job) or ``PlanChanged`` (resume, something changed)."""
    cfg, sha = spec.config, spec.model.sha256
    present = out.present()
    mode = cfg.output.mode
    if present and mode == "error":
        raise StorageError(
            f"{out.uri} already holds a job ({', '.join(present)}). Use --mode "
            "overwrite to replace it, --mode resume to finish it, or another output.uri."
        )
    if mode != "resume" or old is None:
        if mode == "resume" and storage.exists(out.join(PROGRESS), cfg.storage_options):
            raise StorageError(
                f"{out.uri} has shard markers but no _plan.parquet (written by an older version of "
                "scoring?): it cannot be resumed. Use --mode overwrite, or another output.uri."
            )
        # A table's predictions/ outlives a job: number past every file the plan before named.
        versioned = outputs.get(cfg.output, cfg.storage_options).versioned
        first = max((s.index for s in old.shards), default=-1) + 1 if versioned and old else 0
        return plan.make_plan(cfg, sha, spec.format, files, spec.run_id, first), {}
    job_plan, new = plan.extend(old, cfg, sha, spec.format, files)
    was, now = old.source, job_plan.source
    if new and was is not None and now is not None and was.version != now.version:
        files_new, rows_new = sum(len(s.files) for s in new), sum(s.rows or 0 for s in new)
        echo(
            f"{now.table} moved from version {was.version} to {now.version}: "
            f"{files_new} new data file(s), {rows_new:,} new row(s), in {len(new)} new shard(s)"
        )
    elif new:
        last = f" … {new[-1].id}" if len(new) > 1 else ""
        echo(f"{len(new)} new shard(s) for input files added since the plan was made: {new[0].id}{last}")
    markers = out.markers()
    settled = {i: r for i, r in markers.items() if r.status in ("succeeded", "partial")}
    failed = len(markers) - len(settled)
    if failed:
        echo(f"{failed} shard(s) that failed before will be scored again")
    return job_plan, settled


def run_job(
    cfg: Config, *, address: str | None = None, echo: Echo = print, progress: Lines | None = None
) -> JobResult:
    """Score every shard of the plan and write the output layout. ``result.ok`` is False when the
    job failed (too many rejected rows, a model or provider failure, storage or a cluster that
    failed mid-job) or was interrupted. Raises ``ScoringError`` for what is wrong before the job
    starts (exit 2), ``Interrupted`` for a signal before then, and ``JobFailed`` when the summary
    itself cannot be written.

    ``echo`` takes the messages before scoring starts; ``progress`` (default: plain lines through
    ``echo``) reports the shards as they settle."""
    progress = progress or Lines(echo)
    started = time.time()
    stop = Stop()
    stop.install()
    runner = runners.get(cfg.compute.runner, address)
    try:
        try:
            spec, out, job_plan, settled, runs = _prepare(cfg, runner, echo)
            t0 = time.time()
            runner.start(echo)
            start_s = time.time() - t0
            stop.install()  # ray.init installs its own SIGTERM handler
        except KeyboardInterrupt:
            raise _interrupted(0, 0, nothing=True) from None
        t_ready = time.time()
        status, error, run = _score(spec, out, job_plan, settled, runner, progress, stop)
        records = run.collect(stop)
        if status == "succeeded":
            error = outcome.nothing_scored(records)
            status = "failed" if error else status
        job = summary.job_record(
            spec, job_plan, records, run.scored, started, t_ready, status, error, runs, run.committed, start_s
        )
        try:
            _write_summary(out, records, job, stop)
        except ScoringError as exc:
            note = f"writing its summary failed: {exc}. {summary.resume_hint(job)}"
            if status == "interrupted" or stop.event.is_set():
                raise Interrupted(f"interrupted; {note}") from exc
            raise JobFailed(f"{job.error or 'the job ended'}; then {note}") from exc
    finally:
        stop.restore()
        runner.close()
    return JobResult(cfg.output.uri, job, records)


SUMMARY_WAITS_S = (2.0, 4.0, 8.0)  # a store that failed the job mid-way may be back for its summary


def _write_summary(out: JobFolder, records: list[ShardRecord], job: JobRecord, stop: Stop) -> None:
    """The summary files, tried again a few times when storage fails (not after a signal: then
    within the grace period only). Raises ``ScoringError`` when it cannot be written."""
    for wait in (*SUMMARY_WAITS_S, None):
        try:
            stop.bounded(lambda: out.write_summary(records, job.to_json()), "writing the job summary")
            return
        except ScoringError:
            if wait is None or stop.deadline is not None or stop.event.wait(wait):
                raise


def _prepare(
    cfg: Config, runner: Runner, echo: Echo
) -> tuple[JobSpec, JobFolder, plan.Plan, dict[int, ShardRecord], list[dict[str, Any]]]:
    """Every check, the plan, then a probe write to OUT: all before Ray starts."""
    echo(f"checking the config, the model and the input ({cfg.input.uri})")
    runner.check()
    run_id = uuid.uuid4().hex[:12]
    out = JobFolder(cfg.output.uri, cfg.storage_options, run_id)
    old = out.read_plan() if cfg.output.mode != "error" else None
    pinned = old.source if old is not None and cfg.output.mode == "resume" else None
    spec, files = check(cfg, pinned)
    nodes = runner.nodes_before_start()
    if nodes is not None:
        plan_pool(cfg.compute, nodes, runner.where)
    spec = dataclasses.replace(spec, run_id=run_id, driver=fence.me())
    job_plan, settled = decide_plan(out, spec, files, old, echo)
    runs = out.runs() if cfg.output.mode == "resume" else []  # before start_over removes _job.json
    echo(f"planned {len(job_plan.shards)} shard(s) of {len(files)} input file(s)")
    storage.check_writable(cfg.output.uri, cfg.storage_options)  # the first write: none before it
    return spec, out, job_plan, settled, runs


def _score(
    spec: JobSpec,
    out: JobFolder,
    job_plan: plan.Plan,
    settled: dict[int, ShardRecord],
    runner: Runner,
    progress: Lines,
    stop: Stop,
) -> tuple[str, str | None, Run]:
    """Claim OUT, write the plan, dispatch the shards not settled; the claim is revoked and the
    workers stopped whatever happens. Returns the status, the error and the run's records."""
    cfg = spec.config
    pool = plan_pool(cfg.compute, runner.nodes(), runner.where, runner.launchable())
    output = outputs.get(cfg.output, cfg.storage_options)
    out.fence.claim()
    stop.dispatching = True  # from here a signal stops the job and writes its summary
    workers = runner.workers(spec, pool)
    run = Run(spec, out, settled, progress, len(job_plan.shards) - len(settled))
    planned = [s.index for s in job_plan.shards] if output.versioned else None
    try:
        if cfg.output.mode == "overwrite":
            stop.bounded(lambda: out.clear(output.versioned), "clearing OUT")
        stop.bounded(lambda: out.start_over(settled, planned), "removing what an earlier run left in OUT")
        stop.bounded(lambda: out.write_plan(job_plan), "writing the plan")
        todo = [s for s in job_plan.shards if s.index not in settled]
        progress.start(
            job_plan.shards,
            list(settled.values()),
            f"scoring {len(todo)} of {len(job_plan.shards)} shard(s) with {pool.workers} worker(s) "
            f"x {pool.cpus_per_worker:g} CPU / {pool.gpus_per_worker:g} GPU ({runner.name} runner)",
        )
        workers.start()
        timeout = cfg.compute.placement_timeout_s
        if not dispatch(workers, todo, run.settle, lambda: run.tick(stop), progress, timeout):
            return "interrupted", None, run
        if output.versioned and not outcome.nothing_scored(list(run.records.values())):
            run.committed = stop.bounded(lambda: _commit(spec, out, output, job_plan, run), "committing")
    except ScoringError as exc:  # the job's own stop says why; a worker's says what it was
        if stop.event.is_set():  # a call cut short by the signal's grace period
            return "interrupted", None, run
        return "failed", str(exc) if isinstance(exc, JobFailed) else f"{type(exc).__name__}: {exc}", run
    finally:
        progress.close()
        try:  # no commit of this run lands after this: workers stop at their next chunk
            stop.bounded(out.fence.revoke, "revoking the claim on OUT")
        except ScoringError as exc:
            progress.message(f"could not revoke the claim on {out.uri}: {exc}")
        workers.stop()
        out.sweep()  # what stopped workers left half-written
    return "succeeded", None, run


def _commit(
    spec: JobSpec, out: JobFolder, output: outputs.Output, job_plan: plan.Plan, run: Run
) -> dict[str, Any] | None:
    """Put the job's settled prediction files that the output table lacks into it, in one
    transaction. Raises ``JobFailed`` (the files stay; the next resume commits)."""
    cfg = spec.config
    files = out.written(run.records.values())
    source = job_plan.source.to_json() if job_plan.source is not None else None
    job: dict[str, Any] = {"job_id": job_plan.job_id or spec.run_id, "model_sha256": spec.model.sha256}
    job |= {"input": source, "input_uri": cfg.input.uri}
    run.progress.message(f"committing {len(files)} prediction file(s) to the {output.name} table")
    try:
        return output.commit(files, job, job_plan.replace)
    except StorageError as exc:
        raise JobFailed(
            f"{exc}. Every shard is scored and its predictions file written under {out.uri}: run again "
            "with --mode resume to commit them"
        ) from exc


def _interrupted(done: int, total: int, nothing: bool = False) -> ScoringError:
    if nothing:
        return Interrupted("interrupted before any shard was scored; nothing was written")
    return Interrupted(
        f"interrupted: {done} of {total} shards complete; run again with --mode resume to finish"
    )


def interrupted_message(result: JobResult) -> str:
    totals = result.record.totals
    return str(_interrupted(totals.shards_complete, totals.shards_planned or 0))
