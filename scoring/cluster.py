"""Ray: joining or starting a cluster, and sizing the worker pool so the job cannot deadlock.

Ray Data's documented pattern hangs when the actors hold every CPU slot and the tasks the
pipeline still needs (reads, image decodes) are never scheduled (ray-project/ray#44687). Here a
worker reads, decodes and writes its shards itself, so no other task is needed, and the pool is
checked against the cluster's resources (or this machine's, before a local Ray starts).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
from typing import Any

from scoring.config import ComputeConfig
from scoring.errors import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Pool:
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float


def starts_locally(address: str | None) -> bool:
    """Whether ``connect(address)`` would start a Ray of its own on this machine."""
    import ray

    return not ray.is_initialized() and not (address or os.environ.get("RAY_ADDRESS"))


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


def nodes(runner: str) -> list[dict[str, float]]:
    """The CPUs and GPUs of each node a runner can place workers on: the Ray cluster's alive
    nodes, or this machine."""
    if runner == "ray":
        import ray

        return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    return [{"CPU": local_cpus(), "GPU": float(local_gpus())}]


def connect(address: str | None) -> bool:
    """Join ``address`` (or ``RAY_ADDRESS``), or start Ray locally. True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Ray's own lines (the token-authentication notice, workers' logs) only when debugging: the
    # job reports what matters itself, and a worker's errors reach the driver as exceptions.
    debug = os.environ.get("SCORING_DEBUG") == "1"
    kwargs: dict[str, Any] = {
        "logging_level": logging.INFO if debug else logging.ERROR,
        "log_to_driver": debug,
    }
    if address:
        if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
            import scoring

            # Workers of an existing cluster may not have this package: ship it with the job.
            # (A job sent by `scoring submit` already ships it; Ray refuses to ship it twice.)
            kwargs["runtime_env"] = {"py_modules": [os.path.dirname(scoring.__file__)]}
        ray.init(address=address, **kwargs)
    else:
        # "local": a new Ray of our own, even if a `ray start` cluster runs on this machine
        # (address=None would join it, and any --address semantics would be lost).
        ray.init(address="local", include_dashboard=False, **kwargs)
    return True


def shutdown() -> None:
    """``ray.shutdown()`` for a Ray this process started, a second faster.

    Ray stops its processes one at a time with SIGTERM and up to a second's grace each; the
    autoscaler monitor of a local cluster uses all of it (measured: 1.0 of 1.4 s). It holds no
    state worth a grace period, so it is killed first.
    """
    import ray

    try:
        from ray._private import ray_constants
        from ray._private.worker import _global_node as node

        monitors: list[Any] = node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []) if node else []
        for info in monitors:
            info.process.kill()
            info.process.wait(timeout=5)
    except Exception:  # a private API: if it moved, shut down the slow way
        log.debug("could not stop Ray's monitor early", exc_info=True)
    ray.shutdown()


def plan_pool(cfg: ComputeConfig, nodes: list[dict[str, float]], where: str = "the cluster") -> Pool:
    """Size the worker pool for ``nodes`` (each node's CPUs and GPUs: the Ray cluster's alive
    nodes, or this machine).

    ``compute.cpus_per_actor: auto`` is 1 for CPU workers, and for GPU workers the CPUs of a GPU
    node divided among the workers its GPUs hold (they decode images and feed the GPU). Raises
    ``ConfigError`` when the request cannot be scheduled: the job would wait forever.
    """
    cpus = sum(float(n.get("CPU", 0)) for n in nodes)
    gpus = sum(float(n.get("GPU", 0)) for n in nodes)
    gpa = cfg.gpus_per_actor
    if gpa > 0 and gpus == 0:
        raise ConfigError(
            f"compute.gpus_per_actor is {gpa:g} but {where} has no "
            "GPUs; set compute.gpus_per_actor: 0 to score on CPU, or join a GPU cluster"
        )
    cpa = _cpus_per_actor(cfg, nodes)
    capacity = sum(_fits(n, cpa, gpa) for n in nodes)  # workers the nodes can host, node by node
    actors = cfg.actors or max(capacity, 1)
    if actors * cpa > cpus + 1e-9:
        raise ConfigError(
            f"compute.actors={actors} x compute.cpus_per_actor={cpa:g} needs "
            f"{actors * cpa:g} CPUs but {where} has {cpus:g}: the job would wait forever. Lower "
            "compute.actors or compute.cpus_per_actor (fractions are allowed)."
        )
    if actors * gpa > gpus + 1e-9:
        raise ConfigError(
            f"compute.actors={actors} x compute.gpus_per_actor={gpa:g} "
            f"needs {actors * gpa:g} GPUs but {where} has {gpus:g}; "
            "lower compute.actors or compute.gpus_per_actor"
        )
    if actors > capacity:
        shapes = ", ".join(f"{n.get('CPU', 0):g} CPU / {n.get('GPU', 0):g} GPU" for n in nodes)
        raise ConfigError(
            f"compute.actors={actors} workers of {cpa:g} CPU / {gpa:g} GPU each: {where} has the "
            f"CPUs and GPUs in all, but its nodes ({shapes}) can host only {capacity} such workers, "
            "each on one node: the job would wait forever. Lower compute.actors, or "
            "compute.cpus_per_actor / gpus_per_actor so that workers fit the nodes."
        )
    return Pool(actors, cpa, gpa)


def _cpus_per_actor(cfg: ComputeConfig, nodes: list[dict[str, float]]) -> float:
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
