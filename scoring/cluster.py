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
    """This machine's CPUs as Ray counts them (cgroup limits included)."""
    try:
        from ray._private.utils import get_num_cpus

        return float(get_num_cpus())
    except Exception:  # a private API: if it moved, count as Python does
        return float(os.cpu_count() or 1)


def resources(runner: str) -> dict[str, float]:
    """The CPUs and GPUs a runner can place workers on: the Ray cluster's, or this machine's."""
    if runner == "ray":
        import ray

        return dict(ray.cluster_resources())
    return {"CPU": local_cpus()}


def connect(address: str | None) -> bool:
    """Join ``address`` (or ``RAY_ADDRESS``), or start Ray locally. True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
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


def plan_pool(cfg: ComputeConfig, resources: dict[str, float]) -> Pool:
    """Size the worker pool for ``resources`` (``ray.cluster_resources()``, or this machine's).

    Raises ``ConfigError`` when the request cannot be scheduled: the job would wait forever.
    """
    cpus = float(resources.get("CPU", 0))
    gpus = float(resources.get("GPU", 0))
    if cfg.gpus_per_actor > 0 and gpus == 0:
        raise ConfigError(
            f"compute.gpus_per_actor is {cfg.gpus_per_actor} but the cluster has no "
            "GPUs; set compute.gpus_per_actor: 0 to score on CPU, or join a GPU cluster"
        )
    actors = cfg.actors
    if actors is None:
        if cfg.gpus_per_actor > 0:
            actors = int(gpus / cfg.gpus_per_actor + 1e-9)
        else:
            actors = int(cpus / cfg.cpus_per_actor + 1e-9)
        actors = max(actors, 1)
    need_cpu = actors * cfg.cpus_per_actor
    if need_cpu > cpus + 1e-9:
        raise ConfigError(
            f"compute.actors={actors} x compute.cpus_per_actor={cfg.cpus_per_actor:g} needs "
            f"{need_cpu:g} CPUs but the cluster has {cpus:g}: the job would wait forever. Lower "
            "compute.actors or compute.cpus_per_actor (fractions are allowed)."
        )
    if actors * cfg.gpus_per_actor > gpus + 1e-9:
        raise ConfigError(
            f"compute.actors={actors} x compute.gpus_per_actor={cfg.gpus_per_actor:g} "
            f"needs {actors * cfg.gpus_per_actor:g} GPUs but the cluster has {gpus:g}; "
            "lower compute.actors or compute.gpus_per_actor"
        )
    return Pool(actors, cfg.cpus_per_actor, cfg.gpus_per_actor)
