"""The job: check everything on the driver, fix the plan, dispatch shards, write the summary.

Order: config -> model signature -> input listing and the first shard's schema -> pool size
(a local run: against this machine) -> output folder (mode, plan) -> a write probe -> [Ray] ->
pool size (against the cluster) -> claim OUT, write the plan -> dispatch -> revoke the claim,
stop the workers -> summary files (``_job.json`` last). Everything before the probe fails with
exit 2 and leaves no trace.

SIGINT and SIGTERM stop the job within seconds: the claim is revoked (no late commit lands),
the workers are stopped, and ``_job.json`` says ``interrupted`` with the shards settled so far.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from scoring import (
    cluster,
    embedding,
    formats,
    outcome,
    outputs,
    plan,
    postprocess,
    preprocess,
    sink,
    storage,
    summary,
)
from scoring.config import Config
from scoring.errors import ConfigError, InputError, Interrupted, JobFailed, ScoringError, StorageError
from scoring.inference import output_columns
from scoring.model import load_model_info
from scoring.progress import Lines
from scoring.record import Reason, ShardRecord
from scoring.runners import RUNNERS, WorkerDied, dispatch
from scoring.shard import FileInfo, Shard
from scoring.stopping import Stop
from scoring.worker import JobSpec, check_columns

Echo = Callable[[str], None]


@dataclasses.dataclass
class JobResult:
    out: str
    job: dict[str, Any]
    records: list[ShardRecord]

    @property
    def ok(self) -> bool:
        return self.job["status"] == "succeeded"


def check(cfg: Config) -> tuple[JobSpec, list[FileInfo]]:
    """Everything that can be checked without Ray and without touching OUT: the spec (format,
    preprocessing, the job's schema) and the input files. Raises ``ScoringError`` (exit 2 kinds)."""
    so, inp = cfg.storage_options, cfg.input
    info, _ = load_model_info(cfg.model.uri, so)
    output_columns(info, cfg.output.outputs)
    pp = postprocess.resolve(cfg.output.postprocess, info, so)
    if cfg.output.outputs == {} and pp is None and cfg.output.embedding is None:
        raise ConfigError(
            "config key 'output.outputs' is {} (no raw output) and neither output.postprocess nor "
            "output.embedding is set: the predictions would have no column. Set one of them, or "
            "leave output.outputs out"
        )
    outputs.get(cfg.output, so).check()
    fmt, files = formats.list_input(inp, so)
    columns = list(dict.fromkeys([*preprocess.needs(inp, info), *inp.kept_columns]))
    schema = fmt.schema(files, columns)
    first = files[0].uri
    pre = preprocess.resolve(cfg, info, schema, first)
    emb = embedding.resolve(cfg.output.embedding, info)
    check_columns(cfg, info, fmt.provenance, pp, emb)
    missing = [c for c in inp.kept_columns if c not in schema.names]
    if missing:
        raise InputError(f"{first}: no column {missing} listed in input.keep (columns found: {schema.names})")
    schema = pa.schema([schema.field(c) for c in columns])
    return JobSpec(cfg, info, fmt, pre, schema, pp, emb), files


def decide_plan(
    out: sink.Output, spec: JobSpec, files: list[FileInfo], echo: Echo
) -> tuple[plan.Plan, dict[int, ShardRecord]]:
    """The plan this run follows and the shards already settled, from ``output.mode`` and what
    OUT holds; reads OUT, writes nothing. Raises ``StorageError`` (mode error, OUT holds a job)
    or ``PlanChanged`` (resume, something changed)."""
    cfg, sha = spec.config, spec.model.sha256
    present = out.present()
    mode = cfg.output.mode
    if present and mode == "error":
        raise StorageError(
            f"{out.uri} already holds a job ({', '.join(present)}). Use --mode "
            "overwrite to replace it, --mode resume to finish it, or another output.uri."
        )
    old = out.read_plan() if mode == "resume" else None
    if old is None:
        if mode == "resume" and storage.exists(out.join(sink.PROGRESS), cfg.storage_options):
            raise StorageError(
                f"{out.uri} has shard markers but no _plan.parquet (written by an older version of "
                "scoring?): it cannot be resumed. Use --mode overwrite, or another output.uri."
            )
        first = out.next_index() if outputs.get(cfg.output, cfg.storage_options).tabled else 0
        return plan.make_plan(cfg, sha, spec.format, files, spec.run_id, first), {}
    job_plan, new = plan.extend(old, cfg, sha, spec.format, files)
    was, now = old.source or {}, job_plan.source or {}
    if new and was.get("version") != now.get("version"):
        files_new, rows_new = sum(len(s.files) for s in new), sum(s.rows or 0 for s in new)
        echo(
            f"{now.get('table')} moved from version {was.get('version')} to {now.get('version')}: "
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
    started_ray = False
    try:
        try:
            spec, out, job_plan, settled, runs = _prepare(cfg, address, echo)
            t0 = time.time()
            if cfg.compute.runner == "ray":
                echo(cluster.joining(address))
                started_ray = cluster.connect(address)
            ray_init_s = time.time() - t0
            stop.install()  # ray.init installs its own SIGTERM handler
        except KeyboardInterrupt:
            raise _interrupted(0, 0, nothing=True) from None
        t_ready = time.time()
        status, error, run = _score(spec, out, job_plan, settled, progress, stop)
        records = run.collect(stop)
        if status == "succeeded":
            error = outcome.nothing_scored(records)
            status = "failed" if error else status
        job = summary.job_record(
            spec, job_plan, records, run.scored, started, t_ready, status, error, runs, run.committed
        )
        job["totals"]["ray_init_s"] = ray_init_s
        try:
            _write_summary(out, records, job, stop)
        except ScoringError as exc:
            note = f"writing its summary failed: {exc}. {summary.resume_hint(job)}"
            if status == "interrupted" or stop.event.is_set():
                raise Interrupted(f"interrupted; {note}") from exc
            raise JobFailed(f"{job['error'] or 'the job ended'}; then {note}") from exc
    finally:
        stop.restore()
        if started_ray:
            cluster.shutdown()
    return JobResult(cfg.output.uri, job, records)


SUMMARY_WAITS_S = (2.0, 4.0, 8.0)  # a store that failed the job mid-way may be back for its summary


def _write_summary(out: sink.Output, records: list[ShardRecord], job: dict[str, Any], stop: Stop) -> None:
    """The summary files, tried again a few times when storage fails (not after a signal: then
    within the grace period only). Raises ``ScoringError`` when it cannot be written."""
    for wait in (*SUMMARY_WAITS_S, None):
        try:
            stop.bounded(lambda: out.write_summary(records, job), "writing the job summary")
            return
        except ScoringError:
            if wait is None or stop.deadline is not None or stop.event.wait(wait):
                raise


def _prepare(
    cfg: Config, address: str | None, echo: Echo
) -> tuple[JobSpec, sink.Output, plan.Plan, dict[int, ShardRecord], list[dict[str, Any]]]:
    """Every check, the plan, then a probe write to OUT: all before Ray starts."""
    echo(f"checking the config, the model and the input ({cfg.input.uri})")
    if cfg.compute.runner == "ray":
        cluster.check_address(address)
    cfg = _pinned(cfg)
    spec, files = check(cfg)
    if cfg.compute.runner == "local" or cluster.starts_locally(address):
        cluster.plan_pool(cfg.compute, cluster.nodes("local"), "this machine")
    run_id = uuid.uuid4().hex[:12]
    spec = dataclasses.replace(spec, run_id=run_id, driver=(socket.gethostname(), os.getpid()))
    out = sink.Output(cfg.output.uri, cfg.storage_options, run_id)
    job_plan, settled = decide_plan(out, spec, files, echo)
    runs = out.runs() if cfg.output.mode == "resume" else []  # before start_over removes _job.json
    echo(f"planned {len(job_plan.shards)} shard(s) of {len(files)} input file(s)")
    storage.check_writable(cfg.output.uri, cfg.storage_options)  # the first write: none before it
    return spec, out, job_plan, settled, runs


def _pinned(cfg: Config) -> Config:
    """A resume reads the table version its plan pinned, unless ``input.version`` names one."""
    if cfg.output.mode != "resume" or cfg.input.version is not None:
        return cfg
    old = sink.Output(cfg.output.uri, cfg.storage_options, "").read_plan()
    version = ((old.source if old is not None else None) or {}).get("version")
    if version is None:
        return cfg
    return cfg.model_copy(update={"input": cfg.input.model_copy(update={"version": version})})


def _score(
    spec: JobSpec,
    out: sink.Output,
    job_plan: plan.Plan,
    settled: dict[int, ShardRecord],
    progress: Lines,
    stop: Stop,
) -> tuple[str, str | None, _Run]:
    """Claim OUT, write the plan, dispatch the shards not settled; the claim is revoked and the
    workers stopped whatever happens. Returns the status, the error and the run's records."""
    cfg = spec.config
    runner_name = cfg.compute.runner
    where = "the cluster" if runner_name == "ray" else "this machine"
    launchable = cluster.launchable() if runner_name == "ray" else None
    pool = cluster.plan_pool(cfg.compute, cluster.nodes(runner_name), where, launchable)
    output = outputs.get(cfg.output, cfg.storage_options)
    out.claim()
    stop.dispatching = True  # from here a signal stops the job and writes its summary
    runner = RUNNERS[runner_name](spec, pool)
    run = _Run(spec, out, settled, progress, len(job_plan.shards) - len(settled))
    planned = [s.index for s in job_plan.shards] if output.tabled else None
    try:
        if cfg.output.mode == "overwrite":
            stop.bounded(lambda: out.clear(output.tabled), "clearing OUT")
        stop.bounded(lambda: out.start_over(settled, planned), "removing what an earlier run left in OUT")
        stop.bounded(lambda: out.write_plan(job_plan), "writing the plan")
        todo = [s for s in job_plan.shards if s.index not in settled]
        progress.start(
            job_plan.shards,
            list(settled.values()),
            f"scoring {len(todo)} of {len(job_plan.shards)} shard(s) with {pool.actors} worker(s) "
            f"x {pool.cpus_per_actor:g} CPU / {pool.gpus_per_actor:g} GPU ({runner_name} runner)",
        )
        runner.start()
        timeout = cfg.compute.placement_timeout_s
        if not dispatch(runner, todo, run.settle, lambda: run.tick(stop), progress, timeout):
            return "interrupted", None, run
        if output.tabled and not outcome.nothing_scored(list(run.records.values())):
            run.committed = stop.bounded(lambda: _commit(spec, out, output, job_plan, run), "committing")
    except ScoringError as exc:  # the job's own stop says why; a worker's says what it was
        if stop.event.is_set():  # a call cut short by the signal's grace period
            return "interrupted", None, run
        return "failed", str(exc) if isinstance(exc, JobFailed) else f"{type(exc).__name__}: {exc}", run
    finally:
        progress.close()
        try:  # no commit of this run lands after this: workers stop at their next chunk
            stop.bounded(out.revoke, "revoking the claim on OUT")
        except ScoringError as exc:
            progress.message(f"could not revoke the claim on {out.uri}: {exc}")
        runner.stop()
        out.sweep()  # what stopped workers left half-written
    return "succeeded", None, run


def _commit(
    spec: JobSpec, out: sink.Output, output: outputs.Output, job_plan: plan.Plan, run: _Run
) -> dict[str, Any] | None:
    """Put the job's settled prediction files that the output table lacks into it, in one
    transaction. Raises ``JobFailed`` (the files stay; the next resume commits)."""
    cfg = spec.config
    files = out.written(run.records.values())
    job: dict[str, Any] = {"job_id": job_plan.job_id or spec.run_id, "model_sha256": spec.model.sha256}
    job |= {"input": job_plan.source, "input_uri": cfg.input.uri}
    run.progress.message(f"committing {len(files)} prediction file(s) to the {output.name} table")
    try:
        return output.commit(files, job, job_plan.replace)
    except StorageError as exc:
        raise JobFailed(
            f"{exc}. Every shard is scored and its predictions file written under {out.uri}: run again "
            "with --mode resume to commit them"
        ) from exc


class _Run:
    """The driver's side of the shards of one run: their records as they settle, the rejected-row
    limit, the progress lines, the claim's heartbeat."""

    def __init__(
        self, spec: JobSpec, out: sink.Output, settled: dict[int, ShardRecord], progress: Lines, todo: int
    ) -> None:
        self.spec, self.out, self.progress = spec, out, progress
        self.records = dict(settled)
        self.watch = outcome.Watch(todo)
        self.rejected = sum(r.rows_failed for r in settled.values())
        self.scored = 0  # rows scored by this run (not by the runs it resumes)
        self.beat = time.monotonic()
        self.beating: threading.Thread | None = None
        self.committed: dict[str, Any] | None = None  # what a table output's commit took

    def settle(self, shard: Shard, future: Any) -> None:
        """Take a finished shard's outcome. Raises ``ScoringError`` to stop the job."""
        try:
            rec = future.result()
        except WorkerDied as exc:
            rec = self._died(shard, str(exc))
        except sink.Fenced as exc:
            raise JobFailed(
                f"{self.out.uri} was taken over by another run ({exc}); this run stopped. Run one job "
                "at a time on an output folder."
            ) from exc
        self.records[rec.index] = rec
        self.rejected += rec.rows_failed
        self.scored += rec.rows - rec.rows_failed
        self.progress.settled(rec)
        self.watch.settled(rec)
        limit = self.spec.config.errors.max_rejected_rows
        if self.rejected > limit:
            self.watch.check(f"more than errors.max_rejected_rows={limit} rows were rejected")
            raise JobFailed(
                f"{self.rejected} rows rejected, more than errors.max_rejected_rows={limit}, the last "
                f"{rec.first_error}; the job stopped. See {self.out.uri}/_errors.parquet for the reasons."
            )

    def tick(self, stop: Stop) -> bool:
        """Progress, the claim's heartbeat; True once a signal said to stop."""
        self.progress.tick()
        idle = self.beating is None or not self.beating.is_alive()
        if time.monotonic() - self.beat > sink.HEARTBEAT_S and idle and not stop.event.is_set():
            self.beat = time.monotonic()
            # In a thread of its own: a store that stalls must not hold up dispatch or a signal.
            self.beating = threading.Thread(target=self._heartbeat, daemon=True)
            self.beating.start()
        return stop.event.is_set()

    def _heartbeat(self) -> None:
        try:
            self.out.heartbeat()
        except ScoringError:
            pass  # an outage: the next beat tries again; report calls the driver gone only later

    def _died(self, shard: Shard, why: str) -> ShardRecord:
        """A shard whose worker process kept dying: settled as failed, by the driver."""
        rec = ShardRecord(
            index=shard.index,
            shard=shard.id,
            rows=shard.rows or 0,
            started_at=time.time(),
            run_id=self.spec.run_id,
        )
        reason = Reason("infer", "WorkerDied", f"{shard.id}: {why}")
        failed = formats.every_row(shard, self.spec.format.provenance, reason)
        try:
            with self.out.shard(shard.index, shard.id) as output:
                output.commit(rec, failed, "failed")
        except StorageError:  # OUT cannot be written either: resume scores it again
            rec.close("failed", failed)
            rec.committed = False
        return rec

    def collect(self, stop: Stop) -> list[ShardRecord]:
        """Every settled shard: those seen here, and any whose marker landed before the claim was
        revoked but whose record never reached the driver (an interrupted or stopped run). A
        shard that failed to write yet has a marker wins it back: the write landed and only the
        store's answer was lost (a connection reset mid-outage), so resume will not score it
        again and the summary must not call it failed. When OUT cannot be listed, the records
        seen here."""
        known = [i for i, r in self.records.items() if r.committed]
        try:
            found = stop.bounded(lambda: self.out.markers(skip=known), "listing the shards settled")
            self.records.update(found)
        except ScoringError as exc:
            self.progress.message(f"could not list the shards settled in {self.out.uri}: {exc}")
        return sorted(self.records.values(), key=lambda r: r.index)


def _interrupted(done: int, total: int, nothing: bool = False) -> ScoringError:
    from scoring.errors import Interrupted

    if nothing:
        return Interrupted("interrupted before any shard was scored; nothing was written")
    return Interrupted(
        f"interrupted: {done} of {total} shards complete; run again with --mode resume to finish"
    )


def interrupted_message(result: JobResult) -> str:
    totals = result.job["totals"]
    return str(_interrupted(totals["shards_complete"], totals["shards_planned"]))
