"""The Ray runner: one Ray actor per worker, on a cluster it joins or a Ray it starts here.

Each actor holds one ``Worker`` in a process Ray placed, with the CPUs and GPUs it reserved, and
takes ``slots`` shards at once (a threaded actor). A worker whose process or node dies is
replaced by ``dispatch``, not by Ray's restarts, and its shards run again elsewhere.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

from scoring import cluster
from scoring.errors import ScoringError
from scoring.fence import Fenced
from scoring.pool import NodeType, Pool, this_machine
from scoring.record import ShardRecord
from scoring.runners import WorkerDied, Workers, hide_gpus
from scoring.shard import Shard
from scoring.spec import JobSpec
from scoring.worker import Placement, Worker


class RayRunner:
    name = "ray"
    where = "the cluster"

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.started = False

    def check(self) -> None:
        cluster.check_address(self.address)

    def nodes_before_start(self) -> list[dict[str, float]] | None:
        """This machine's, when Ray is to start here; None for a cluster not joined yet."""
        return this_machine() if cluster.starts_locally(self.address) else None

    def start(self, echo: Callable[[str], None]) -> None:
        echo(cluster.joining(self.address))
        self.started = cluster.connect(self.address)

    def nodes(self) -> list[dict[str, float]]:
        import ray

        return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]

    def launchable(self) -> list[NodeType] | None:
        return cluster.launchable()

    def workers(self, spec: JobSpec, pool: Pool) -> Workers:
        return RayWorkers(spec, pool)

    def close(self) -> None:
        if self.started:
            cluster.shutdown()
            self.started = False


class ShardActor:
    """The Ray actor: one ``Worker`` in a process Ray placed, with the CPUs and GPUs it reserved.

    A worker that cannot be built (no CUDA provider, a model whose outputs cannot be aligned)
    is not an actor that died: Ray would restart it and build it again. The error is kept and
    raised by every ``score`` call, which stops the job.
    """

    def __init__(self, spec: JobSpec, threads: int) -> None:
        self.worker: Worker | None = None
        self.error: ScoringError | None = None
        try:
            self._build(spec, threads)
        except ScoringError as exc:
            self.error = exc

    def _build(self, spec: JobSpec, threads: int) -> None:
        import ray

        gpu_ids = [int(g) for g in ray.get_gpu_ids()] if spec.config.compute.gpus_per_actor > 0 else []
        hide_gpus(gpu_ids)
        ctx = ray.get_runtime_context()
        # IP and node id: several nodes can share a machine (and an IP).
        node = f"{ray.util.get_node_ip_address()}/{ctx.get_node_id()[:8]}"
        self.worker = Worker(spec, Placement(node, ctx.get_actor_id() or "", threads, tuple(gpu_ids)))

    def ready(self) -> bool:
        """Answers once the actor is placed and built (or failed to build: ``score`` says why)."""
        return True

    def score(self, shard: Shard) -> ShardRecord:
        if self.worker is None:
            raise self.error or RuntimeError("the worker was not built")
        return self.worker.score(shard)


class RayWorkers:
    """One Ray actor per worker, ``slots`` calls at once each (a threaded actor); a worker is
    ready once its actor answers (placed, session built)."""

    def __init__(self, spec: JobSpec, pool: Pool) -> None:
        self.spec, self.pool = spec, pool
        self.workers, self.slots = pool.workers, spec.config.compute.shards_in_flight
        self.actors: list[Any] = []
        self.is_ready: list[bool] = []
        self.lock = threading.Lock()

    def _actor(self, worker: int) -> Any:
        import ray

        threads = max(1, int(self.pool.cpus_per_worker))
        cls = ray.remote(ShardActor).options(
            num_cpus=self.pool.cpus_per_worker,
            num_gpus=self.pool.gpus_per_worker or None,
            max_concurrency=self.slots,
            # Not Ray's restarts and task retries: ``dispatch`` replaces a dead worker and runs its
            # shards again, and stopping a job kills actors without retries being announced.
            max_restarts=0,
            max_task_retries=0,
        )
        actor: Any = cls.remote(self.spec, threads)

        def answered(f: concurrent.futures.Future[Any]) -> None:
            with self.lock:
                if worker < len(self.actors) and self.actors[worker] is actor:
                    self.is_ready[worker] = f.exception() is None
                    if f.exception() is not None:  # died before it was ready: ask for another
                        self.actors[worker] = None

        actor.ready.remote().future().add_done_callback(answered)
        return actor

    def start(self) -> None:
        with self.lock:
            self.is_ready = [False] * self.workers
            self.actors = [None] * self.workers
        for i in range(self.workers):
            actor = self._actor(i)
            with self.lock:
                self.actors[i] = actor

    def ready(self) -> list[int]:
        with self.lock:
            gone = [i for i, a in enumerate(self.actors) if a is None]
        for i in gone:
            actor = self._actor(i)
            with self.lock:
                self.actors[i] = actor
        with self.lock:
            return [i for i, ok in enumerate(self.is_ready) if ok]

    def waiting(self) -> str:
        with self.lock:
            n = sum(not ok for ok in self.is_ready)
        p = self.pool
        return f"{n} worker(s) of {p.cpus_per_worker:g} CPU / {p.gpus_per_worker:g} GPU not placed"

    def submit(self, worker: int, shard: Shard) -> concurrent.futures.Future[ShardRecord]:
        actor = self.actors[worker]
        result: concurrent.futures.Future[ShardRecord] = concurrent.futures.Future()

        def done(f: concurrent.futures.Future[Any]) -> None:
            try:
                result.set_result(f.result())
            except Exception as exc:
                result.set_exception(_from_ray(exc, worker, actor))

        actor.score.remote(shard).future().add_done_callback(done)
        return result

    def replace(self, worker: int, handle: Any) -> None:
        """Ask for a fresh actor in place of ``handle``, which died for good (once, however many
        of its shards report it). It takes shards once placed, if ever: never waited for."""
        import ray

        with self.lock:
            if self.actors[worker] is not handle:
                return
            self.is_ready[worker] = False
            self.actors[worker] = None
        ray.kill(handle, no_restart=True)
        actor = self._actor(worker)
        with self.lock:
            self.actors[worker] = actor

    def stop(self) -> None:
        import ray

        with self.lock:
            actors, self.actors, self.is_ready = self.actors, [], []
        for actor in actors:
            if actor is not None:
                ray.kill(actor, no_restart=True)


def _from_ray(exc: BaseException, worker: int, actor: Any) -> BaseException:
    """The error a shard's Ray task ended with, as ``dispatch`` expects it."""
    from ray.exceptions import RayActorError, RayTaskError

    cause = _cause(exc, (ScoringError, Fenced))
    if cause is not None:
        return cause
    if isinstance(exc, RayActorError) and not isinstance(exc, RayTaskError):
        # Ray's message runs to a dozen lines (causes, OOM advice); its first says what happened.
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        return WorkerDied(f"its worker process died ({first})", worker, actor)
    return exc


def _cause(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The error of one of ``kinds`` raised inside a task or an actor's ``__init__``, if any.

    A task's error arrives as ``RayTaskError`` with ``.cause``; an actor whose ``__init__``
    raised arrives as ``ActorDiedError`` holding that ``RayTaskError`` as its first argument.
    """
    todo: list[BaseException] = [exc]
    visited: set[int] = set()
    while todo:
        err = todo.pop()
        wrapped = getattr(err, "cause", None)  # Ray's RayTaskError(X) is an X too: take the X inside
        if isinstance(err, kinds) and not isinstance(wrapped, kinds):
            return err
        visited.add(id(err))
        nested = [getattr(err, "cause", None), err.__cause__, *getattr(err, "args", ())]
        todo.extend(e for e in nested if isinstance(e, BaseException) and id(e) not in visited)
    return None
