"""Ray: joining or starting a cluster, and sizing the actor pool so the job cannot deadlock.

Ray Data's documented pattern hangs when the actors hold every CPU slot and the tasks the
pipeline still needs (reads, image decodes) are never scheduled (ray-project/ray#44687). The
plan here is checked against the cluster's resources before anything starts: table shards are
read inside the actors (no other task is needed), and image jobs keep ``compute.decode_cpus``
free for decode tasks.
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
    decode_cpus: float  # CPUs held back for decode tasks (0 for tables)


def connect(address: str | None) -> bool:
    """Join ``address`` (or ``RAY_ADDRESS``), or start Ray locally. True if this call started it."""
    import ray

    if ray.is_initialized():
        configure_data()
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
    configure_data()
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


def configure_data() -> None:
    """Ray Data settings for this driver: our own progress lines instead of Ray's."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # the job prints one line per shard instead
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # It would only repeat, once per job, that we turned the bars off on purpose.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def plan_pool(cfg: ComputeConfig, resources: dict[str, float], images: bool) -> Pool:
    """Size the actor pool for ``resources`` (``ray.cluster_resources()``).

    Raises ``ConfigError`` when the request cannot be scheduled: the job would wait forever.
    """
    cpus = float(resources.get("CPU", 0))
    gpus = float(resources.get("GPU", 0))
    decode = cfg.decode_cpus if images else 0.0
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
            actors = int((cpus - decode) / cfg.cpus_per_actor + 1e-9)
        actors = max(actors, 1)
    need_cpu = actors * cfg.cpus_per_actor + decode
    if need_cpu > cpus + 1e-9:
        extra = f" + {decode:g} for image decoding" if decode else ""
        raise ConfigError(
            f"compute.actors={actors} x compute.cpus_per_actor={cfg.cpus_per_actor:g}{extra} needs "
            f"{need_cpu:g} CPUs but the cluster has {cpus:g}: the job would wait forever. Lower "
            "compute.actors or compute.cpus_per_actor (fractions are allowed)."
        )
    if actors * cfg.gpus_per_actor > gpus + 1e-9:
        raise ConfigError(
            f"compute.actors={actors} x compute.gpus_per_actor={cfg.gpus_per_actor:g} "
            f"needs {actors * cfg.gpus_per_actor:g} GPUs but the cluster has {gpus:g}; "
            "lower compute.actors or compute.gpus_per_actor"
        )
    return Pool(actors, cfg.cpus_per_actor, cfg.gpus_per_actor, decode)
