"""``scoring submit``: send a job to a Ray cluster through its Job API and follow it.

The runtime environment ships this package (``py_modules``) and the config (``working_dir``).
A cluster whose Python lacks the dependencies gets them from the user's own runtime env, in
Ray's format (``pip:``, ``conda:``, ``container:``, ``env_vars:`` ...), merged with ours.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from scoring.errors import ConfigError

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def load_runtime_env(path: str | None, text: str | None) -> dict[str, Any]:
    """The user's runtime env from ``--runtime-env FILE`` (YAML or JSON) and/or
    ``--runtime-env-json``; the JSON's keys win. Raises ``ConfigError`` naming what is wrong."""
    import yaml

    env: dict[str, Any] = {}
    if path:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"--runtime-env {path}: cannot read it as YAML or JSON ({exc})") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"--runtime-env {path}: expected a mapping (pip:, env_vars:, ...), found {loaded!r}"
            )
        env.update(loaded)
    if text:
        try:
            loaded = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--runtime-env-json is not valid JSON ({exc}): {text!r}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"--runtime-env-json: expected a JSON object, found {text!r}")
        env.update(loaded)
    return env


def merge_runtime_env(user: Mapping[str, Any], workdir: str, package: str) -> dict[str, Any]:
    """Ray's runtime env for the job: the user's, with this package added to ``py_modules`` and
    the config's folder as ``working_dir`` (which ``submit`` needs for itself)."""
    if "working_dir" in user:
        raise ConfigError(
            "the runtime env sets working_dir, which scoring submit uses to ship the config; ship "
            "your files with py_modules instead, or use `ray job submit --working-dir … -- python "
            "jobs/score.py --config job.yaml`"
        )
    merged = dict(user)
    merged["py_modules"] = [*user.get("py_modules", []), package]
    merged["working_dir"] = workdir
    return merged


def submit_job(
    config: str,
    address: str,
    sets: Sequence[str],
    *,
    wait: bool,
    runtime_env: Mapping[str, Any] | None = None,
    echo: Callable[[str], None] = print,
    poll_s: float = 1.0,
    agent_wait_s: float = 60.0,
) -> int:
    """Submit ``config`` to ``address``; return the exit status (0 succeeded, 1 otherwise)."""
    try:
        from ray.exceptions import AuthenticationError
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:
        raise ConfigError(
            f"scoring submit needs Ray's job client: pip install 'ray[default]' ({exc})"
        ) from exc

    import scoring

    workdir = tempfile.mkdtemp(prefix="scoring-submit-")
    shutil.copy(config, os.path.join(workdir, "job.yaml"))
    overrides = " ".join(f"--set {shlex.quote(s)}" for s in sets)
    entrypoint = f"python -m scoring run job.yaml {overrides}".strip()
    try:
        client = JobSubmissionClient(address)
        env = merge_runtime_env(runtime_env or {}, workdir, os.path.dirname(scoring.__file__))
        deadline = time.monotonic() + agent_wait_s
        while True:
            try:
                job_id = client.submit_job(entrypoint=entrypoint, runtime_env=env)
                break
            except RuntimeError as exc:
                # A head that has just started answers 500 "No available agent to submit job,
                # please try again later" until its job agent registers (seconds).
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(poll_s)
    except AuthenticationError as exc:
        raise ConfigError(
            f"cannot submit to {address}: the cluster requires a token ({_first_line(exc)}). "
            "Set RAY_AUTH_MODE=token and make the cluster's token readable here: "
            "~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (`ray get-auth-token` on the head)"
        ) from exc
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"cannot submit to {address}: {_first_line(exc)}. Is the address the Job API "
            "(http://HEAD:8265) of a running cluster?"
        ) from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    echo(f"submitted job {job_id} to {address}")
    if not wait:
        return 0
    shown = 0
    while True:
        status = str(client.get_job_status(job_id).value)
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            echo(logs[shown:].rstrip("\n"))
            shown = len(logs)
        if status in TERMINAL:
            echo(f"job {job_id}: {status}")
            return 0 if status == "SUCCEEDED" else 1
        time.sleep(poll_s)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
