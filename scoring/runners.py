"""Dispatch: which worker scores which shard, and when. Nothing else differs between runners.

A runner has ``workers`` workers, each taking up to ``slots`` shards at once, and these methods:

- ``start()``: ask for the workers (a Ray actor is placed when a node can host it: now, later,
  or never);
- ``ready() -> [worker]``: the workers that can take shards now (sessions built and warmed up);
- ``submit(worker, shard) -> Future[ShardRecord]``: the future raises ``ScoringError`` (stop the
  job), ``sink.Fenced`` (the run lost OUT) or ``WorkerDied`` (its process or node died);
- ``replace(worker, handle)``: ask for a fresh worker in place of one that died;
- ``waiting() -> str``: what the workers not ready wait for, for messages;
- ``stop()``: stop every worker now; shards in flight are abandoned, uncommitted.

Workers are elastic: ``dispatch`` starts on the first worker ready and hands shards only to
ready workers, so a worker still waiting for a node — a replacement for one on a lost node, or
one the autoscaler has yet to launch — never holds a shard back.

``RayRunner`` holds one Ray actor per worker (a cluster, GPUs, several nodes). ``LocalRunner``
holds the workers in this process, shards in threads: ONNX Runtime, pyarrow and Pillow release
the GIL, so threads keep every core busy without Ray's start-up (README "Runners").

Example, a runner that scores one shard at a time in the calling thread::

    class InlineRunner:
        workers, slots = 1, 1
        def start(self): self.worker = Worker(spec, Placement("here", "inline"))
        def ready(self): return [0]
        def submit(self, worker, shard):
            f = Future(); f.set_result(self.worker.score(shard)); return f
        def replace(self, worker, handle): raise AssertionError("it cannot die alone")
        def waiting(self): return ""
        def stop(self): pass
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from scoring.cluster import Pool
from scoring.errors import JobFailed, ScoringError
from scoring.progress import Lines
from scoring.record import ShardRecord
from scoring.shard import Shard
from scoring.threads import DaemonPool
from scoring.worker import JobSpec, Placement, Worker

POLL_S = 0.2  # how often the dispatch loop looks at signals while it waits for shards
# A worker process that dies (killed, out of memory, a crash in native code, its node lost) is
# replaced and its shards run again from the start, up to this many times each; then the shard
# is failed.
SHARD_ATTEMPTS = 3
STOP_GRACE_S = 2.0  # the local runner's shards in flight, to reach their next chunk and stop


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

    def ready(self) -> list[int]: ...

    def submit(self, worker: int, shard: Shard) -> concurrent.futures.Future[ShardRecord]: ...

    def replace(self, worker: int, handle: Any) -> None: ...

    def waiting(self) -> str: ...

    def stop(self) -> None: ...


def dispatch(
    runner: Runner,
    shards: Sequence[Shard],
    settle: Callable[[Shard, concurrent.futures.Future[ShardRecord]], None],
    tick: Callable[[], bool],
    progress: Lines,
    placement_timeout_s: float = float("inf"),
) -> bool:
    """Keep the slots of every ready worker full until every shard is settled; ``settle`` is
    called with each shard and its finished future (it may raise to stop the job). A shard whose
    worker died goes back to the queue for any ready worker, up to ``SHARD_ATTEMPTS`` times, and
    a replacement is asked for (never waited for). ``tick`` is called every ``POLL_S``
    (progress, signals); returns False when it said to stop first. Raises ``JobFailed`` when no
    worker has been ready for ``placement_timeout_s`` while shards wait."""
    todo = collections.deque(shards)
    running: dict[concurrent.futures.Future[ShardRecord], tuple[int, Shard]] = {}
    busy: collections.Counter[int] = collections.Counter()
    attempts: collections.Counter[int] = collections.Counter()
    announced, last_ready = -1, time.monotonic()
    while todo or running:
        ready = runner.ready()
        if len(ready) != announced and (todo or announced < 0):
            progress.ready(len(ready), runner.workers)
            announced = len(ready)
        if ready or running:
            last_ready = time.monotonic()
        elif time.monotonic() - last_ready > placement_timeout_s:
            raise JobFailed(
                f"no worker was ready for {placement_timeout_s:g} s (compute.placement_timeout_s) while "
                f"{len(todo)} shard(s) waited: {runner.waiting()}. Check that the cluster has, or can "
                "launch, nodes with the CPUs and GPUs a worker asks for"
            )
        while todo and ready:
            w = min(ready, key=lambda i: busy[i])  # the least busy: one shard each before a second
            if busy[w] >= runner.slots:
                break
            shard = todo.popleft()
            running[runner.submit(w, shard)] = (w, shard)
            busy[w] += 1
        done, _ = concurrent.futures.wait(running, timeout=POLL_S, return_when="FIRST_COMPLETED")
        for future in sorted(done, key=lambda f: running[f][1].index):
            w, shard = running.pop(future)
            busy[w] -= 1
            died = future.exception()
            if isinstance(died, WorkerDied):
                runner.replace(died.worker, died.handle)
                attempts[shard.index] += 1
                if attempts[shard.index] < SHARD_ATTEMPTS:
                    progress.message(f"  {shard.id}: {died}; scoring it again")
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
        self.pool: DaemonPool | None = None
        self.members: list[Worker] = []

    def _placement(self, i: int, node: str) -> Placement:
        if not self.gpus_per_worker:
            return Placement(node, f"local-{i}", self.threads)
        gpu = int(i * self.gpus_per_worker)
        return Placement(node, f"local-{i}", self.threads, (gpu,), device_id=gpu)

    def start(self) -> None:
        node = f"{socket.gethostname()}/local"
        self.members = [Worker(self.spec, self._placement(i, node)) for i in range(self.workers)]
        self.pool = DaemonPool(self.workers * self.slots, "scoring-worker")

    def ready(self) -> list[int]:
        return list(range(len(self.members)))

    def waiting(self) -> str:
        return ""

    def submit(self, worker: int, shard: Shard) -> concurrent.futures.Future[ShardRecord]:
        assert self.pool is not None, "start() first"
        return self.pool.submit(self.members[worker].score, shard)

    def replace(self, worker: int, handle: Any) -> None:
        raise AssertionError("threads of this process do not die alone")

    def stop(self) -> None:
        # Running shards stop at their next chunk (the job revoked its claim on OUT first): wait
        # for that, so no session is torn down while it runs. One stuck on a store that stopped
        # answering is abandoned with the process after STOP_GRACE_S.
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True, timeout=STOP_GRACE_S)


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

    def ready(self) -> bool:
        """Answers once the actor is placed and built (or failed to build: ``score`` says why)."""
        return True

    def score(self, shard: Shard) -> ShardRecord:
        if self.worker is None:
            raise self.error or RuntimeError("the worker was not built")
        return self.worker.score(shard)


class RayRunner:
    """One Ray actor per worker, ``slots`` calls at once each (a threaded actor); a worker is
    ready once its actor answers (placed, session built)."""

    def __init__(self, spec: JobSpec, pool: Pool) -> None:
        self.spec, self.pool = spec, pool
        self.workers, self.slots = pool.actors, spec.config.compute.shards_in_flight
        self.actors: list[Any] = []
        self.is_ready: list[bool] = []
        self.lock = threading.Lock()

    def _actor(self, worker: int) -> Any:
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
        return f"{n} worker(s) of {p.cpus_per_actor:g} CPU / {p.gpus_per_actor:g} GPU not placed"

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
