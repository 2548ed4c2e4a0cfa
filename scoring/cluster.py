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
import socket
import subprocess
import sys
from typing import Any

from scoring.config import ComputeConfig
from scoring.errors import ConfigError

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 5  # a cluster's GCS answers a TCP connection at once, or not at all


@dataclasses.dataclass(frozen=True)
class NodeType:
    """A kind of node the cluster's autoscaler can launch, up to ``max_workers`` of them."""

    resources: dict[str, float]
    max_workers: int


MAX_LAUNCHED = 64  # workers counted per node type whose max_workers is unbounded (-1) or huge


@dataclasses.dataclass(frozen=True)
class Pool:
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float


def starts_locally(address: str | None) -> bool:
    """Whether ``connect(address)`` would start a Ray of its own on this machine."""
    import ray

    return not ray.is_initialized() and not (address or os.environ.get("RAY_ADDRESS"))


def joining(address: str | None) -> str:
    """What ``connect(address)`` is about to do, said before ``import ray`` takes its second."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return "using the Ray this process started"
    address = address or os.environ.get("RAY_ADDRESS")
    return f"joining the Ray cluster at {address}" if address else "starting Ray on this machine"


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


def check_address(address: str | None) -> None:
    """Refuse within seconds an address where no Ray cluster answers (``ConfigError``, exit 2,
    naming it): ``ray.init`` would retry its GCS connection for minutes."""
    address = address or os.environ.get("RAY_ADDRESS") or ""
    if address in ("", "auto", "local"):
        return
    if address.startswith(("http://", "https://")):
        raise ConfigError(
            f"--address {address} is a dashboard (Job API) address: `scoring run` joins a cluster at "
            "its GCS address (HOST:6379) or its Ray Client address (ray://HOST:10001); `scoring "
            "submit` is the command that takes the Job API address"
        )
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address}: expected HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(
            f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); check the "
            "address (and RAY_ADDRESS), or leave --address out to start Ray on this machine"
        ) from exc


def launchable(timeout: float = 5.0) -> list[NodeType]:
    """The node types the connected cluster's autoscaler can launch; [] without one.

    Ray 2.60 has no public API for this. Two private sources, each bounded by ``timeout``: the
    cluster config in the GCS (what KubeRay and Ray's v2 autoscaler report), else the YAML of
    the running autoscaler monitor (``ray start --autoscaling-config``, read on its machine).
    Anything unexpected reads as no autoscaler: the pool is then sized by the nodes alive.
    """
    try:
        from ray.experimental.internal_kv import internal_kv_get_gcs_client

        gcs = internal_kv_get_gcs_client()
        return _reported_types(gcs, timeout) or _monitor_types(gcs, timeout)
    except Exception:  # private APIs that may move: never a reason to fail the job
        log.debug("could not read the autoscaler's node types", exc_info=True)
        return []


def _reported_types(gcs: Any, timeout: float) -> list[NodeType]:
    from ray._raylet import (  # type: ignore[attr-defined]
        GCS_AUTOSCALER_CLUSTER_CONFIG_KEY,
        GCS_AUTOSCALER_STATE_NAMESPACE,
    )
    from ray.core.generated.autoscaler_pb2 import ClusterConfig  # type: ignore[attr-defined]

    raw = gcs.internal_kv_get(
        GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode(), GCS_AUTOSCALER_STATE_NAMESPACE.encode(), timeout=timeout
    )
    groups = ClusterConfig.FromString(raw).node_group_configs if raw else []
    return [
        NodeType(
            {k: float(v) for k, v in g.resources.items()}, MAX_LAUNCHED if g.max_count < 0 else g.max_count
        )
        for g in groups
        if g.max_count != 0 and g.resources
    ]


def _monitor_types(gcs: Any, timeout: float) -> list[NodeType]:
    import json

    import psutil
    import yaml

    raw = gcs.internal_kv_get(b"__autoscaling_status", None, timeout=timeout)
    pid = json.loads(raw).get("monitor_pid") if raw else None
    if pid is None:
        return []
    args = psutil.Process(pid).cmdline()
    port = gcs.address.rsplit(":", 1)[1]
    if not any(a.startswith("--gcs-address=") and a.rsplit(":", 1)[1] == port for a in args):
        return []  # a pid reused, or another cluster's monitor
    path = next((a.split("=", 1)[1] for a in args if a.startswith("--autoscaling-config=")), None)
    if path is None:
        return []
    with open(path) as f:
        conf = yaml.safe_load(f)
    head = conf.get("head_node_type")
    return [
        NodeType({k: float(v) for k, v in t.get("resources", {}).items()}, int(t.get("max_workers", 0)))
        for name, t in conf.get("available_node_types", {}).items()
        if name != head and t.get("max_workers", 0)
    ]


def connect(address: str | None, quiet: bool = True) -> bool:
    """Join ``address`` (or ``RAY_ADDRESS``), or start Ray locally. True if this call started it.
    Ray's own lines stay out of the way when ``quiet`` (unless ``SCORING_DEBUG=1``)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Ray's own lines (the token-authentication notice, workers' logs) only when debugging: the
    # job reports what matters itself, and a worker's errors reach the driver as exceptions.
    debug = os.environ.get("SCORING_DEBUG") == "1" or not quiet
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
    cpa = _cpus_per_actor(cfg, shapes)
    capacity = sum(_fits(n, cpa, gpa) for n in nodes)  # workers the nodes can host, node by node
    if launchable is None:
        actors = cfg.actors or max(capacity, 1)
        _fixed(actors, cpa, gpa, nodes, capacity, where)
        return Pool(actors, cpa, gpa)
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
    actors: int, cpa: float, gpa: float, nodes: list[dict[str, float]], capacity: int, where: str
) -> None:
    """Raises ``ConfigError`` when ``actors`` workers do not fit ``nodes``: the job would wait."""
    cpus = sum(float(n.get("CPU", 0)) for n in nodes)
    gpus = sum(float(n.get("GPU", 0)) for n in nodes)
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
        raise ConfigError(
            f"compute.actors={actors} workers of {cpa:g} CPU / {gpa:g} GPU each: {where} has the "
            f"CPUs and GPUs in all, but its nodes ({_describe(nodes)}) can host only {capacity} such "
            "workers, each on one node: the job would wait forever. Lower compute.actors, or "
            "compute.cpus_per_actor / gpus_per_actor so that workers fit the nodes."
        )


def _describe(shapes: list[dict[str, float]]) -> str:
    return ", ".join(f"{n.get('CPU', 0):g} CPU / {n.get('GPU', 0):g} GPU" for n in shapes) or "none"


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
