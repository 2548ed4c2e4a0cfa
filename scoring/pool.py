"""Sizing the worker pool so the job cannot deadlock: how many workers, with how many CPUs and
GPUs each, on the nodes a runner has (and those an autoscaler can add).

Ray Data's documented pattern hangs when the workers hold every CPU slot and the tasks the
pipeline still needs (reads, image decodes) are never scheduled (ray-project/ray#44687). Here a
worker reads, decodes and writes its shards itself, so no other task is needed, and the pool is
checked against the cluster's resources (or this machine's, before a local Ray starts).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess

from scoring.config import ComputeConfig
from scoring.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class NodeType:
    """A kind of node the cluster's autoscaler can launch, up to ``max_workers`` of them."""

    resources: dict[str, float]
    max_workers: int


MAX_LAUNCHED = 64  # workers counted per node type whose max_workers is unbounded (-1) or huge


@dataclasses.dataclass(frozen=True)
class Pool:
    """The workers a job asks for (``compute.actors``), and what each reserves."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float


def local_cpus() -> float:
    """This machine's CPUs as Ray counts them: those this process may run on, within a cgroup
    (container) quota, whole. Without importing Ray (the local runner never does)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
            quota, period = f.read().split()
        if quota != "max":
            cpus = min(cpus, int(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return float(max(cpus, 1))


def local_gpus() -> int:
    """This machine's NVIDIA GPUs: those ``CUDA_VISIBLE_DEVICES`` names, else ``nvidia-smi -L``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return (
        sum(line.startswith("GPU ") for line in listing.stdout.splitlines()) if listing.returncode == 0 else 0
    )


def this_machine() -> list[dict[str, float]]:
    """This machine as one node: its CPUs and GPUs."""
    return [{"CPU": local_cpus(), "GPU": float(local_gpus())}]


def plan_pool(
    cfg: ComputeConfig,
    nodes: list[dict[str, float]],
    where: str = "the cluster",
    launchable: list[NodeType] | None = None,
) -> Pool:
    """Size the worker pool for ``nodes`` (each node's CPUs and GPUs: the Ray cluster's alive
    nodes, or this machine) and, on a cluster, the node types its autoscaler can ``launch``.

    ``compute.cpus_per_actor: auto`` is 1 for CPU workers, and for GPU workers the CPUs of a GPU
    node divided among the workers its GPUs hold (they decode images and feed the GPU). By
    default, as many workers as the nodes (and those the autoscaler may add) can host.

    This machine (``launchable`` None) is fixed: a request it cannot host is a ``ConfigError``.
    A cluster is elastic — workers start as nodes come, and dispatch never waits for one that is
    not placed — so only a worker that no node and no launchable node type could ever host is
    refused.
    """
    shapes = nodes + [t.resources for t in launchable or []]
    gpa = cfg.gpus_per_actor
    if gpa > 0 and not any(float(n.get("GPU", 0)) for n in shapes):
        raise ConfigError(
            f"compute.gpus_per_actor is {gpa:g} but {where} has no GPUs"
            + (" and its autoscaler launches none" if launchable else "")
            + "; set compute.gpus_per_actor: 0 to score on CPU, or join a GPU cluster"
        )
    cpa = _cpus_per_worker(cfg, shapes)
    capacity = sum(_fits(n, cpa, gpa) for n in nodes)  # workers the nodes can host, node by node
    if launchable is None:
        workers = cfg.actors or max(capacity, 1)
        _fixed(workers, cpa, gpa, nodes, capacity, where)
        return Pool(workers, cpa, gpa)
    if not any(_fits(n, cpa, gpa) for n in shapes):
        types = (
            "; its autoscaler launches " + _describe([t.resources for t in launchable]) if launchable else ""
        )
        raise ConfigError(
            f"a worker of {cpa:g} CPU / {gpa:g} GPU fits no node of {where} ({_describe(nodes)}){types}: "
            "it could never be placed. Lower compute.cpus_per_actor or compute.gpus_per_actor"
        )
    more = sum(_fits(t.resources, cpa, gpa) * min(t.max_workers, MAX_LAUNCHED) for t in launchable)
    return Pool(cfg.actors or max(capacity + more, 1), cpa, gpa)


def _fixed(
    workers: int, cpa: float, gpa: float, nodes: list[dict[str, float]], capacity: int, where: str
) -> None:
    """Raises ``ConfigError`` when ``actors`` workers do not fit ``nodes``: the job would wait."""
    cpus = sum(float(n.get("CPU", 0)) for n in nodes)
    gpus = sum(float(n.get("GPU", 0)) for n in nodes)
    if workers * cpa > cpus + 1e-9:
        raise ConfigError(
            f"compute.actors={workers} x compute.cpus_per_actor={cpa:g} needs "
            f"{workers * cpa:g} CPUs but {where} has {cpus:g}: the job would wait forever. Lower "
            "compute.actors or compute.cpus_per_actor (fractions are allowed)."
        )
    if workers * gpa > gpus + 1e-9:
        raise ConfigError(
            f"compute.actors={workers} x compute.gpus_per_actor={gpa:g} "
            f"needs {workers * gpa:g} GPUs but {where} has {gpus:g}; "
            "lower compute.actors or compute.gpus_per_actor"
        )
    if workers > capacity:
        raise ConfigError(
            f"compute.actors={workers} workers of {cpa:g} CPU / {gpa:g} GPU each: {where} has the "
            f"CPUs and GPUs in all, but its nodes ({_describe(nodes)}) can host only {capacity} such "
            "workers, each on one node: the job would wait forever. Lower compute.actors, or "
            "compute.cpus_per_actor / gpus_per_actor so that workers fit the nodes."
        )


def _describe(shapes: list[dict[str, float]]) -> str:
    return ", ".join(f"{n.get('CPU', 0):g} CPU / {n.get('GPU', 0):g} GPU" for n in shapes) or "none"


def _cpus_per_worker(cfg: ComputeConfig, nodes: list[dict[str, float]]) -> float:
    if cfg.cpus_per_actor != "auto":
        return float(cfg.cpus_per_actor)
    if not cfg.gpus_per_actor:
        return 1.0
    shares = [
        float(n.get("CPU", 0)) // (float(n["GPU"]) // cfg.gpus_per_actor)
        for n in nodes
        if float(n.get("GPU", 0)) >= cfg.gpus_per_actor
    ]
    return max(min(shares, default=1.0), 1.0)


def _fits(node: dict[str, float], cpa: float, gpa: float) -> int:
    by_cpu = int(float(node.get("CPU", 0)) / cpa + 1e-9)
    return min(by_cpu, int(float(node.get("GPU", 0)) / gpa + 1e-9)) if gpa else by_cpu
