"""Dispatch: which worker scores which shard, and when. Nothing else differs between runners.

A runner has ``workers`` workers, each taking up to ``slots`` shards at once, and three methods:

- ``start()``: build the workers (sessions built and warmed up);
- ``submit(worker, shard) -> Future[ShardRecord]``: the future raises ``ScoringError`` (stop the
  job), ``sink.Fenced`` (the run lost OUT) or ``WorkerDied`` (its process died: ``replace``);
- ``stop()``: stop every worker now; shards in flight are abandoned, uncommitted.

``RayRunner`` holds one Ray actor per worker (a cluster, GPUs, several nodes). ``LocalRunner``
holds the workers in this process, shards in threads: ONNX Runtime, pyarrow and Pillow release
the GIL, so threads keep every core busy without Ray's start-up (README "Runners").

- ``replace(worker, handle)``: a fresh worker in place of one whose process died.

Example, a runner that scores one shard at a time in the calling thread::

    class InlineRunner:
        workers, slots = 1, 1
        def start(self): self.worker = Worker(spec, Placement("here", "inline"))
        def submit(self, worker, shard):
            f = Future(); f.set_result(self.worker.score(shard)); return f
        def replace(self, worker, handle): raise AssertionError("it cannot die alone")
        def stop(self): pass
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from scoring.cluster import Pool
from scoring.errors import ScoringError
from scoring.record import ShardRecord
from scoring.shard import Shard
from scoring.worker import JobSpec, Placement, Worker

POLL_S = 0.2  # how often the dispatch loop looks at signals while it waits for shards
# A worker process that dies (killed, out of memory, a crash in native code) is replaced and its
# shards run again from the start, up to this many times each; then the shard is failed.
SHARD_ATTEMPTS = 3


class WorkerDied(Exception):
    """The worker process died while it held the shard, and retrying did not help. ``handle``
    is the worker that died, for a runner that can ``replace`` it."""

    def __init__(self, message: str, worker: int, handle: Any) -> None:
        super().__init__(message)
        self.worker, self.handle = worker, handle


class Runner(Protocol):
    workers: int
    slots: int

    def start(self) -> None: ...

    def submit(self, worker: int, shard: Shard) -> concurrent.futures.Future[ShardRecord]: ...

    def replace(self, worker: int, handle: Any) -> None: ...

    def stop(self) -> None: ...


def dispatch(
    runner: Runner,
    shards: Sequence[Shard],
    settle: Callable[[Shard, concurrent.futures.Future[ShardRecord]], None],
    tick: Callable[[], bool],
    echo: Callable[[str], None],
) -> bool:
    """Keep every worker's slots full until every shard is settled; ``settle`` is called with each
    shard and its finished future (it may raise to stop the job). A shard whose worker died is
    run again on a fresh one, up to ``SHARD_ATTEMPTS`` times. ``tick`` is called every
    ``POLL_S`` (progress, signals); returns False when it said to stop first."""
    todo = collections.deque(shards)
    running: dict[concurrent.futures.Future[ShardRecord], tuple[int, Shard]] = {}
    free = [runner.slots] * runner.workers
    attempts: collections.Counter[int] = collections.Counter()
    while todo or running:
        while todo and max(free) > 0:
            w = free.index(max(free))  # the least busy worker: one shard each before a second
            shard = todo.popleft()
            running[runner.submit(w, shard)] = (w, shard)
            free[w] -= 1
        done, _ = concurrent.futures.wait(running, timeout=POLL_S, return_when="FIRST_COMPLETED")
        for future in sorted(done, key=lambda f: running[f][1].index):
            w, shard = running.pop(future)
            free[w] += 1
            died = future.exception()
            if isinstance(died, WorkerDied):
                runner.replace(died.worker, died.handle)
                attempts[shard.index] += 1
                if attempts[shard.index] < SHARD_ATTEMPTS:
                    echo(f"  {shard.id}: {died}; scoring it again")
                    todo.appendleft(shard)
                    continue
            settle(shard, future)
        if tick():
            return False
    return True


class LocalRunner:
    """Workers in this process; each worker's shards run in ``slots`` threads. GPU workers take
    the machine's GPUs in turn (a fraction of one: several workers share it)."""

    def __init__(self, spec: JobSpec, pool: Pool) -> None:
        self.spec, self.workers, self.slots = spec, pool.actors, spec.config.compute.shards_in_flight
        self.threads = max(1, int(pool.cpus_per_actor))
        self.gpus_per_worker = pool.gpus_per_actor
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.members: list[Worker] = []

    def _placement(self, i: int, node: str) -> Placement:
        if not self.gpus_per_worker:
            return Placement(node, f"local-{i}", self.threads)
        gpu = int(i * self.gpus_per_worker)
        return Placement(node, f"local-{i}", self.threads, (gpu,), device_id=gpu)

    def start(self) -> None:
        node = f"{socket.gethostname()}/local"
        self.members = [Worker(self.spec, self._placement(i, node)) for i in range(self.workers)]
        self.pool = concurrent.futures.ThreadPoolExecutor(self.workers * self.slots, "scoring-worker")

    def submit(self, worker: int, shard: Shard) -> concurrent.futures.Future[ShardRecord]:
        assert self.pool is not None, "start() first"
        return self.pool.submit(self.members[worker].score, shard)

    def replace(self, worker: int, handle: Any) -> None:
        raise AssertionError("threads of this process do not die alone")

    def stop(self) -> None:
        # Running shards stop at their next chunk: the job revokes its claim on OUT first.
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


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
        if not gpu_ids:
            # Since Ray 2.60, actors with num_gpus=0 can see every GPU of their node: hide them.
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        ctx = ray.get_runtime_context()
        # IP and node id: several nodes can share a machine (and an IP).
        node = f"{ray.util.get_node_ip_address()}/{ctx.get_node_id()[:8]}"
        self.worker = Worker(spec, Placement(node, ctx.get_actor_id() or "", threads, tuple(gpu_ids)))

    def score(self, shard: Shard) -> ShardRecord:
        if self.worker is None:
            raise self.error or RuntimeError("the worker was not built")
        return self.worker.score(shard)


class RayRunner:
    """One Ray actor per worker, ``slots`` calls at once each (a threaded actor)."""

    def __init__(self, spec: JobSpec, pool: Pool) -> None:
        self.spec, self.pool = spec, pool
        self.workers, self.slots = pool.actors, spec.config.compute.shards_in_flight
        self.actors: list[Any] = []

    def _actor(self) -> Any:
        import ray

        threads = max(1, int(self.pool.cpus_per_actor))
        cls = ray.remote(ShardActor).options(
            num_cpus=self.pool.cpus_per_actor,
            num_gpus=self.pool.gpus_per_actor or None,
            max_concurrency=self.slots,
            # Not Ray's restarts and task retries: ``dispatch`` replaces a dead worker and runs its
            # shards again, and stopping a job kills actors without retries being announced.
            max_restarts=0,
            max_task_retries=0,
        )
        return cls.remote(self.spec, threads)

    def start(self) -> None:
        self.actors = [self._actor() for _ in range(self.workers)]

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
        """A fresh actor in place of ``handle``, which died for good (once, however many of its
        shards report it)."""
        import ray

        if self.actors[worker] is handle:
            ray.kill(handle, no_restart=True)
            self.actors[worker] = self._actor()

    def stop(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


def _from_ray(exc: BaseException, worker: int, actor: Any) -> BaseException:
    """The error a shard's Ray task ended with, as ``dispatch`` expects it."""
    from ray.exceptions import RayActorError, RayTaskError

    from scoring import sink

    cause = _cause(exc, (ScoringError, sink.Fenced))
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


RUNNERS: dict[str, type[LocalRunner] | type[RayRunner]] = {"local": LocalRunner, "ray": RayRunner}
