"""Shared fixtures: one local Ray session for the whole run, a job runner, an S3 server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from support import KEYS, free_port

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def ray_session() -> Any:
    """A real local Ray with 2 CPUs (what CI has) and 2 logical GPUs for placement tests."""
    import ray

    from scoring.cluster import start_local

    if not ray.is_initialized():
        start_local(num_cpus=2, num_gpus=2, logging_level="WARNING")  # on 127.0.0.1, as a job's Ray
    yield ray
    ray.shutdown()


@pytest.fixture
def run_job(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Run a job from a config dict; ``output.uri`` defaults to tmp_path/out, the runner to the
    local one (formats, types and outputs are the same on both; what only Ray does is tested
    with ``compute.runner: ray``, which starts the session's Ray)."""
    from scoring.config_file import load_config
    from scoring.job import run_job as run

    def go(data: dict[str, Any], **kw: Any) -> Any:
        data.setdefault("output", {}).setdefault("uri", str(tmp_path / "out"))
        compute = data.setdefault("compute", {})
        compute.setdefault("actors", 1)
        if compute.setdefault("runner", "local") == "ray":
            request.getfixturevalue("ray_session")
        kw.setdefault("echo", lambda _: None)
        return run(load_config(data=data, environ={}), **kw)

    return go


@pytest.fixture(scope="session")
def s3() -> Any:
    """A moto S3 server on a free loopback port; yields (endpoint, s3fs filesystem)."""
    import s3fs
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, **KEYS)
    for bucket in ("models", "data", "results"):
        fs.mkdir(bucket)
    yield endpoint, fs
    server.stop()
