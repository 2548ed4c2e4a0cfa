"""The local runner: the workers are threads of this process, no Ray.

Each worker holds one ONNX Runtime session; its shards run in ``slots`` threads (ONNX Runtime,
pyarrow and Pillow release the GIL, so threads keep every core busy without Ray's start-up). GPU
workers take the machine's GPUs in turn (a fraction of one: several workers share it).
"""

from __future__ import annotations

import concurrent.futures
import socket
from collections.abc import Callable
from typing import Any

from scoring.pool import NodeType, Pool, this_machine
from scoring.record import ShardRecord
from scoring.runners import Workers
from scoring.shard import Shard
from scoring.spec import JobSpec
from scoring.threads import DaemonPool
from scoring.worker import Placement, Worker

STOP_GRACE_S = 2.0  # shards in flight, to reach their next chunk and stop


class LocalRunner:
    name = "local"
    where = "this machine"

    def __init__(self, address: str | None) -> None:
        self.address = address  # nothing to join: a local run ignores it

    def check(self) -> None:
        pass

    def nodes_before_start(self) -> list[dict[str, float]] | None:
        return this_machine()

    def start(self, echo: Callable[[str], None]) -> None:
        pass

    def nodes(self) -> list[dict[str, float]]:
        return this_machine()

    def launchable(self) -> list[NodeType] | None:
        return None

    def workers(self, spec: JobSpec, pool: Pool) -> Workers:
        return LocalWorkers(spec, pool)

    def close(self) -> None:
        pass


class LocalWorkers:
    """Workers in this process, each worker's shards in ``slots`` threads."""

    def __init__(self, spec: JobSpec, pool: Pool) -> None:
        self.spec, self.workers, self.slots = spec, pool.workers, spec.config.compute.shards_in_flight
        self.threads = max(1, int(pool.cpus_per_worker))
        self.gpus_per_worker = pool.gpus_per_worker
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
        if self.pool is None:
            raise RuntimeError("start() first")
        return self.pool.submit(self.members[worker].score, shard)

    def replace(self, worker: int, handle: Any) -> None:
        raise AssertionError("threads of this process do not die alone")

    def stop(self) -> None:
        # Running shards stop at their next chunk (the job revoked its claim on OUT first): wait
        # for that, so no session is torn down while it runs. One stuck on a store that stopped
        # answering is abandoned with the process after STOP_GRACE_S.
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True, timeout=STOP_GRACE_S)
