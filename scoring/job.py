"""The job: check everything on the driver, then stream shards through the actors with Ray Data.

Order: config -> model signature -> shard listing -> first shard's schema against the model ->
output folder (mode) -> Ray -> pool size -> stream -> summary files (``_job.json`` last).
Everything before "Ray" fails fast with exit 2 and starts no worker.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from scoring import cluster, images, sink, sources, storage
from scoring.actor import JobSpec, decode_images, scorer_for
from scoring.config import Config
from scoring.errors import InputError, JobFailed, ScoringError
from scoring.model import load_model_info
from scoring.predict import output_columns
from scoring.tensors import plan_feeds


@dataclasses.dataclass
class JobResult:
    out: str
    job: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return self.job["status"] == "succeeded"


def check(cfg: Config) -> tuple[JobSpec, list[sources.Shard]]:
    """Everything that can be checked without Ray. Raises ``ScoringError`` (exit 2 kinds)."""
    so = cfg.storage_options
    info, _ = load_model_info(cfg.model.uri, so)
    output_columns(info, cfg.output.outputs)
    shards = sources.list_shards(cfg.input, so)
    if cfg.input.format == "images":
        if len(info.inputs) != 1:
            raise InputError(
                f"an image job feeds one model input; this model has {[i.name for i in info.inputs]}"
            )
        size, layout, _ = images.resolve(cfg.input.image, info.inputs[0])
        return JobSpec(cfg, info, size, layout), shards
    first = shards[0].uri
    schema = sources.read_schema(first, so)
    plan_feeds(info, cfg.input.columns, schema, first, cfg.input.keep)
    return JobSpec(cfg, info), shards


def run_job(cfg: Config, *, address: str | None = None, echo: Callable[[str], None] = print) -> JobResult:
    """Score every shard of ``cfg.input`` and write the output layout. Returns the result;
    ``result.ok`` is False when the job failed (too many rejected rows, a failed actor)."""
    started = time.time()
    spec, shards = check(cfg)
    so, out = cfg.storage_options, cfg.output.uri
    storage.check_writable(out, so)
    t0 = time.time()
    started_ray = cluster.connect(address)
    ray_init_s = time.time() - t0
    import ray

    try:
        pool = cluster.plan_pool(cfg.compute, ray.cluster_resources(), cfg.input.format == "images")
        # Only now, with every check passed, is OUT touched (overwrite deletes the old job).
        done = sink.prepare_output(out, cfg.output.mode, so)
        uris = {s.uri for s in shards}
        records = [r for r in done if r["shard"] in uris]
        done_uris = {r["shard"] for r in records}
        todo = [s for s in shards if s.uri not in done_uris]
        t_ray = time.time()
        echo(
            f"scoring {len(todo)} shard(s) ({len(records)} already done) with {pool.actors} "
            f"actor(s) x {pool.cpus_per_actor:g} CPU / {pool.gpus_per_actor:g} GPU"
        )
        error = None
        try:
            if todo:
                error = _stream(spec, todo, pool, records, echo)
        except ScoringError as exc:
            error = str(exc)
        job = _job_record(cfg, spec, records, started, t_ray, error)
        job["totals"]["ray_init_s"] = ray_init_s
        sink.write_summary(out, records, job, so)
    finally:
        if started_ray:
            cluster.shutdown()
    return JobResult(out, job, records)


def _stream(
    spec: JobSpec,
    todo: list[sources.Shard],
    pool: cluster.Pool,
    records: list[dict[str, Any]],
    echo: Callable[[str], None],
) -> str | None:
    import ray
    from ray.data import ActorPoolStrategy

    cfg = spec.config
    items = [{"index": s.index, "uri": s.uri, "files": list(s.files), "kind": s.kind} for s in todo]
    # One block per shard, so every shard is its own unit of work for any actor.
    ds: ray.data.Dataset = ray.data.from_items(items, override_num_blocks=len(items))
    if cfg.input.format == "images":
        # Decoding runs as tasks on any CPU of the cluster, overlapping inference. Each task
        # reserves memory for a worker (~150 MiB measured) and a decoded shard (uint8, twice for
        # the encoded bytes beside it);
        # the differing reservation also keeps Ray Data from fusing this stage into the actors.
        h, w = spec.image_size or (1, 1)
        shard_bytes = 150 * 2**20 + 2 * cfg.input.files_per_shard * h * w * 3
        ds = ds.map_batches(
            decode_images,  # type: ignore[arg-type]
            batch_size=1,
            fn_kwargs={"spec": spec},
            num_cpus=pool.decode_cpus,
            memory=shard_bytes,
            batch_format="numpy",
        )
    ds = ds.map_batches(
        scorer_for(spec),
        batch_size=1,
        batch_format="numpy",
        # Several shards per actor at once, in threads: one scored while the next is fetched
        # (ShardScorer.turn keeps inference to one shard at a time).
        compute=ActorPoolStrategy(
            size=pool.actors,
            max_tasks_in_flight_per_actor=cfg.compute.shards_in_flight,
            max_concurrent_calls_per_actor=cfg.compute.shards_in_flight,
            enable_true_multi_threading=True,
        ),
        num_cpus=pool.cpus_per_actor,
        num_gpus=pool.gpus_per_actor or None,
    )
    limit = cfg.errors.max_rejected_rows
    rejected = sum(r["rows_failed"] for r in records)
    try:
        for row in ds.iter_rows():
            rec = json.loads(row["record"])
            records.append(rec)
            rejected += rec["rows_failed"]
            echo(_progress_line(rec, len(records)))
            if rejected > limit:
                return (
                    f"{rejected} rows rejected, more than errors.max_rejected_rows={limit}; "
                    f"the job stopped. See {cfg.output.uri}/_errors.parquet for the reasons."
                )
    except ray.exceptions.RayError as exc:
        cause = _scoring_cause(exc)
        if cause is None:
            raise
        raise JobFailed(f"{type(cause).__name__}: {cause}") from exc
    return None


def _scoring_cause(exc: BaseException) -> ScoringError | None:
    """The ScoringError raised inside a task or an actor's ``__init__``, if that is what failed.

    A task's error arrives as ``RayTaskError`` with ``.cause``; an actor whose ``__init__``
    raised arrives as ``ActorDiedError`` holding that ``RayTaskError`` as its first argument.
    """
    todo: list[BaseException] = [exc]
    visited: set[int] = set()
    while todo:
        err = todo.pop()
        if isinstance(err, ScoringError):
            return err
        visited.add(id(err))
        nested = [getattr(err, "cause", None), err.__cause__, *getattr(err, "args", ())]
        todo.extend(e for e in nested if isinstance(e, BaseException) and id(e) not in visited)
    return None


def _progress_line(rec: dict[str, Any], n: int) -> str:
    bad = f", {rec['rows_failed']} rejected" if rec["rows_failed"] else ""
    return (
        f"  [{n}] {rec['shard']}: {rec['status']}, {rec['rows']} rows{bad}, "
        f"{rec['wall_s']:.2f}s ({rec['rows_per_s']:,.0f} rows/s) on {rec['device']}"
    )


def _job_record(
    cfg: Config, spec: JobSpec, records: list[dict[str, Any]], started: float, t_ray: float, error: str | None
) -> dict[str, Any]:
    import onnxruntime
    import pyarrow
    import ray

    import scoring

    finished = time.time()
    rows = sum(r["rows"] for r in records)
    failed = sum(r["rows_failed"] for r in records)
    providers = sorted({p for r in records for p in r.get("providers", [])})
    fallbacks = sorted({r["fallback"] for r in records if r.get("fallback")})
    info = spec.model
    return {
        "job_id": uuid.uuid4().hex[:12],
        "status": "failed" if error else "succeeded",
        "error": error,
        "config": cfg.redacted(),
        "model": {
            "uri": info.uri,
            "sha256": info.sha256,
            "opset": info.opset,
            "inputs": [dataclasses.asdict(i) for i in info.inputs],
            "outputs": [dataclasses.asdict(o) for o in info.outputs],
        },
        "versions": {
            "scoring": scoring.__version__,
            "ray": ray.__version__,
            "onnxruntime": onnxruntime.__version__,
            "pyarrow": pyarrow.__version__,
            "python": platform.python_version(),
        },
        "providers": providers,
        "cpu_fallback": fallbacks,
        "started_at": started,
        "finished_at": finished,
        "totals": {
            "rows": rows,
            "rows_failed": failed,
            "shards": len(records),
            "wall_s": finished - started,
            "ray_ready_s": t_ray - started,
            "rows_per_s": (rows - failed) / (finished - started) if finished > started else 0.0,
        },
        "argv": sys.argv,
    }
