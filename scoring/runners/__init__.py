"""Runners: where the workers run, and how shards reach them. One seam, one module each.

A ``Runner`` is built from the runner's name (``compute.runner``, ``scoring.registry.RUNNERS``)
and ``--address``, and owns execution:

- ``check()``: refuse, within seconds and before anything else, what cannot work (an address
  where no cluster answers). Raises ``ConfigError``;
- ``nodes_before_start() -> [node] | None``: the nodes' CPUs and GPUs when they are known before
  ``start`` (this machine), so a pool that cannot fit is refused before Ray starts; None for a
  cluster that is not joined yet;
- ``start(echo)`` / ``close()``: what the workers run on (Ray started or joined, and shut down if
  this runner started it);
- ``nodes()``, ``launchable()``: the nodes the workers can be placed on now, and the node types an
  autoscaler can add (None: the nodes are fixed) — ``pool.plan_pool`` sizes the pool with them;
- ``workers(spec, pool) -> Workers``: the pool of workers for ``dispatch``.

``Workers`` has ``workers`` workers, each taking up to ``slots`` shards at once, and:

- ``start()``: ask for the workers (a Ray actor is placed when a node can host it: now, later,
  or never);
- ``ready() -> [worker]``: the workers that can take shards now (sessions built and warmed up);
- ``submit(worker, shard) -> Future[ShardRecord]``: the future raises ``ScoringError`` (stop the
  job), ``fence.Fenced`` (the run lost OUT) or ``WorkerDied`` (its process or node died);
- ``replace(worker, handle)``: ask for a fresh worker in place of one that died;
- ``waiting() -> str``: what the workers not ready wait for, for messages;
- ``stop()``: stop every worker now; shards in flight are abandoned, uncommitted.

Workers are elastic: ``dispatch`` starts on the first worker ready and hands shards only to
ready workers, so a worker still waiting for a node — a replacement for one on a lost node, or
one the autoscaler has yet to launch — never holds a shard back.

``ray``: one Ray actor per worker (a cluster, GPUs, several nodes). ``local``: the workers in this
process, shards in threads: ONNX Runtime, pyarrow and Pillow release the GIL, so threads keep
every core busy without Ray's start-up (docs/runners.md). Example, a runner that scores one shard
at a time in the calling thread::

    class Inline:
        name, where = "inline", "this process"
        def __init__(self, address): pass
        def check(self): pass
        def nodes_before_start(self): return [{"CPU": 1.0, "GPU": 0.0}]
        def start(self, echo): pass
        def nodes(self): return self.nodes_before_start()
        def launchable(self): return None
        def workers(self, spec, pool): return InlineWorkers(spec)
        def close(self): pass

    class InlineWorkers:
        workers, slots = 1, 1
        def __init__(self, spec): self.spec = spec
        def start(self): self.worker = Worker(self.spec, Placement("here", "inline"))
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
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

from scoring import registry
from scoring.errors import JobFailed
from scoring.pool import NodeType, Pool
from scoring.record import ShardRecord
from scoring.shard import Shard
from scoring.spec import JobSpec

POLL_S = 0.2  # how often the dispatch loop looks at signals while it waits for shards
# A worker process that dies (killed, out of memory, a crash in native code, its node lost) is
# replaced and its shards run again from the start, up to this many times each; then the shard
# is failed.
SHARD_ATTEMPTS = 3


class WorkerDied(Exception):
    """The worker process died while it held the shard, and retrying did not help. ``handle``
    is the worker that died, for a runner that can ``replace`` it."""

    def __init__(self, message: str, worker: int, handle: Any) -> None:
        super().__init__(message)
        self.worker, self.handle = worker, handle


class Reporter(Protocol):
    """What dispatch tells the console (``progress.Lines``)."""

    def ready(self, ready: int, workers: int) -> None: ...

    def message(self, text: str) -> None: ...


class Workers(Protocol):
    workers: int
    slots: int

    def start(self) -> None: ...

    def ready(self) -> list[int]: ...

    def submit(self, worker: int, shard: Shard) -> concurrent.futures.Future[ShardRecord]: ...

    def replace(self, worker: int, handle: Any) -> None: ...

    def waiting(self) -> str: ...

    def stop(self) -> None: ...


class Runner(Protocol):
    name: ClassVar[str]
    where: ClassVar[str]

    def check(self) -> None: ...

    def nodes_before_start(self) -> list[dict[str, float]] | None: ...

    def start(self, echo: Callable[[str], None]) -> None: ...

    def nodes(self) -> list[dict[str, float]]: ...

    def launchable(self) -> list[NodeType] | None: ...

    def workers(self, spec: JobSpec, pool: Pool) -> Workers: ...

    def close(self) -> None: ...


def get(name: str, address: str | None) -> Runner:
    """The runner called ``name`` (``registry.RUNNERS``), for ``address`` (or none)."""
    return registry.load(registry.RUNNERS[name])(address)  # type: ignore[no-any-return]


def hide_gpus(gpu_ids: Sequence[int]) -> None:
    """A worker that holds no GPU sees none: since Ray 2.60 an actor with ``num_gpus=0`` can see
    every GPU of its node, and a CUDA session would take one."""
    if not gpu_ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def dispatch(
    runner: Workers,
    shards: Sequence[Shard],
    settle: Callable[[Shard, concurrent.futures.Future[ShardRecord]], None],
    tick: Callable[[], bool],
    progress: Reporter,
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
