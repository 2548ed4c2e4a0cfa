"""Ray itself: checking an address, joining a cluster or starting one here, the node types its
autoscaler can launch, shutting down what this process started. Used by the Ray runner and by
``scoring.predict``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any

from scoring.errors import ConfigError
from scoring.pool import MAX_LAUNCHED, NodeType

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 5  # a cluster's GCS answers a TCP connection at once, or not at all


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


def check_address(address: str | None) -> None:
    """Refuse within seconds an address where no Ray cluster answers (``ConfigError``, exit 2,
    naming it): ``ray.init`` would retry its GCS connection for minutes."""
    address = address or os.environ.get("RAY_ADDRESS") or ""
    if address in ("", "local"):
        return
    origin = None  # the file `--address auto` reads: `ray start` leaves it, and it outlives the cluster
    if address == "auto":
        address, origin = _current_cluster()
        if not address:
            raise ConfigError(
                "--address auto: no Ray cluster was started on this machine with `ray start`; give "
                "its address, or leave --address out to start Ray here"
            )
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
        if origin:
            raise ConfigError(
                f"--address auto: {origin} names {address}, where no Ray cluster answers (a cluster "
                "that stopped leaves it behind); start one with `ray start --head`, give its address, "
                "or leave --address out to start Ray here"
            ) from exc
        raise ConfigError(
            f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); check the "
            "address (and RAY_ADDRESS), or leave --address out to start Ray on this machine"
        ) from exc


def _current_cluster() -> tuple[str, str]:
    """The address `ray start` left for ``ray.init(address="auto")`` ("" if none), and its file."""
    from ray._common.utils import get_ray_address_file

    path = get_ray_address_file(None)
    try:
        with open(path) as f:
            return f.read().strip(), path
    except OSError:
        return "", path


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
        start_local(**kwargs)
    return True


def start_local(**kwargs: Any) -> None:
    """A new Ray of our own on this machine, reachable from it only: the GCS, the raylet, the
    agents and the workers listen on 127.0.0.1 (docs/runners.md, "Ray on this machine").

    ``address="local"``: a new Ray even if a `ray start` cluster runs here (``None`` would join
    it), and never the address a stopped one left in ``ray_current_cluster``. Ray 2.60 turns
    ``_node_ip_address="127.0.0.1"`` into the machine's address (``resolve_ip_for_localhost``)
    unless it treats the machine as a laptop, as it does on macOS (``ENABLE_RAY_CLUSTER`` False:
    "use loopback [...] to prevent bothersome firewall popups"); then every process it starts
    binds loopback. Only while this Ray starts: a driver joining a cluster registered under the
    machine's address must not take 127.0.0.1 for its own.
    """
    import ray
    from ray._private import ray_constants

    was = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", **kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = was


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
