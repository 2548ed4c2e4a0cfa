"""Clusters: GPU actors on Ray's logical GPUs, several nodes, and `scoring submit` to a real head.

This machine has no GPU and its onnxruntime has no CUDA provider, which is exactly the case of
CUDA libraries that fail to load: a GPU actor must refuse, or fall back only when allowed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
import yaml
from support import LOOPBACK, features_job, free_port, read_predictions

from scoring.demo import make_mlp, write_tables

pytestmark = pytest.mark.cluster


def table_job(
    tmp_path: Path, files: int = 4, rows: int = 500, hidden: int = 16, **compute: Any
) -> dict[str, Any]:
    model = make_mlp(tmp_path / "m.onnx", (8, hidden, hidden, 4))
    write_tables(tmp_path / "data", files=files, rows=rows, features=8)
    job = {
        **features_job(tmp_path / "data", model),
        "output": {"uri": str(tmp_path / "out")},
        "compute": {"runner": "ray", **compute},
    }
    job["input"]["rows_per_shard"] = rows  # a shard per file
    return job


def progress(out: str | Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "_progress").glob("*.json"))]


def assert_matches_direct_run(cfg: dict[str, Any], out: str | Path) -> None:
    source = pq.read_table(cfg["input"]["uri"])
    x = np.stack(source.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
    sess = ort.InferenceSession(cfg["model"]["uri"], providers=["CPUExecutionProvider"])
    (expected,) = sess.run(None, {"x": x})
    preds = read_predictions(out)
    assert preds.num_rows == len(x)
    got = np.stack(preds.column("probs").to_numpy(zero_copy_only=False))
    # Shards sort as the files do and rows within them: the same order as the source table.
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_gpu_actor_whose_session_lands_on_cpu_fails_with_what_to_install(run_job, tmp_path: Path) -> None:
    result = run_job(table_job(tmp_path, actors=2, gpus_per_actor=0.5, cpus_per_actor=0.5))
    assert not result.ok
    error = result.job["error"]
    assert error.startswith("ProviderError: the actor holds GPU [")
    assert "got ['CPUExecutionProvider']" in error and "onnxruntime-gpu" in error
    assert "model.allow_cpu_fallback: true" in error
    job = json.loads((Path(result.out) / "_job.json").read_text())
    assert job["status"] == "failed" and job["totals"]["rows"] == 0
    assert not list((Path(result.out) / "predictions").glob("*.parquet"))


def test_allowed_cpu_fallback_is_recorded_and_gpus_are_pinned(run_job, tmp_path: Path) -> None:
    cfg = table_job(tmp_path, actors=2, gpus_per_actor=1, cpus_per_actor=0.5)
    cfg["model"]["allow_cpu_fallback"] = True
    result = run_job(cfg)
    assert result.ok, result.job["error"]
    assert_matches_direct_run(cfg, result.out)
    job = json.loads((Path(result.out) / "_job.json").read_text())
    assert job["cpu_fallback"] and "CUDAExecutionProvider" in job["cpu_fallback"][0]
    shards = pq.read_table(Path(result.out) / "_shards.parquet").to_pylist()
    assert {s["device"] for s in shards} == {"cpu-fallback"}
    # Each actor holds one of the two logical GPUs and sees only it, as device 0 would be.
    seen = {(r["actors"], tuple(r["gpu_ids"]), r["cuda_visible_devices"]) for r in progress(result.out)}
    for _, gpu_ids, visible in seen:
        assert len(gpu_ids) == 1 and visible == str(gpu_ids[0])
    by_actor = {actor: gpu_ids for actor, gpu_ids, _ in seen}
    assert len(set(by_actor.values())) == len(by_actor)  # no two actors share a whole GPU


def test_cpu_actors_on_a_gpu_node_see_no_gpu(run_job, tmp_path: Path) -> None:
    result = run_job(table_job(tmp_path, actors=2))  # the session's Ray has 2 logical GPUs
    assert result.ok, result.job["error"]
    records = progress(result.out)
    assert {(tuple(r["gpu_ids"]), r["cuda_visible_devices"], r["device"]) for r in records} == {
        ((), "", "cpu")
    }


def test_a_worker_no_node_could_host_is_refused_before_scoring(run_job, tmp_path: Path) -> None:
    from scoring.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"a worker of 0.5 CPU / 3 GPU fits no node of the cluster \(2 CPU / 2 GPU\)"
    ):
        run_job(table_job(tmp_path, actors=1, gpus_per_actor=3, cpus_per_actor=0.5))
    assert not list((tmp_path / "out").iterdir())  # the write probe came and went, nothing else


# -- several nodes -------------------------------------------------------------------------------


def scoring_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scoring", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **LOOPBACK, **(env or {})},
        timeout=timeout,
    )


@pytest.fixture
def three_nodes() -> Any:
    """A head with no CPUs and two worker nodes (1 CPU and 1 logical GPU each) on 127.0.0.1."""
    from ray.cluster_utils import Cluster

    head = {"num_cpus": 0, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def test_actors_spread_over_nodes_and_a_lost_node_costs_time_not_the_job(
    three_nodes: Any, tmp_path: Path
) -> None:
    """One worker per node; a node removed mid-job: the shards its worker held go to the worker
    that remains (its replacement can never be placed, and is never waited for)."""
    cfg = table_job(tmp_path, files=16, rows=20_000, hidden=256, actors=2, cpus_per_actor=1, gpus_per_actor=1)
    cfg["model"]["allow_cpu_fallback"] = True
    cfg["compute"]["shards_in_flight"] = 1
    cfg["input"]["keep"] = ["id"]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = Path(cfg["output"]["uri"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "scoring", "run", str(path), "--address", three_nodes.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **LOOPBACK},
    )
    deadline = time.time() + 120
    while len({r["node"] for r in progress(out)}) < 2 if out.exists() else True:  # both at work
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    ids = {n.node_id[:8] for n in three_nodes.worker_nodes}
    three_nodes.remove_node(
        next(iter(three_nodes.worker_nodes))
    )  # its raylet and its worker process go, as a preempted node's do
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "its worker process died" in stdout and "scoring it again" in stdout
    preds = read_predictions(out)
    assert sorted(preds.column("id").to_pylist()) == list(range(16 * 20_000))  # each row once
    shards = pq.read_table(out / "_shards.parquet").to_pylist()
    nodes = {s["node"].split("/")[1] for s in shards}
    # Both nodes scored (nodes share this machine's IP: the node id after the slash tells them
    # apart); the lost one only before it went.
    assert nodes == ids and len(ids) == 2
    assert all(r["gpu_ids"] == [0] and r["cuda_visible_devices"] == "0" for r in progress(out))


# -- scoring submit ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`ray start --head` with its dashboard (the Job API) on 127.0.0.1, stopped afterwards.

    Started from this interpreter's environment, as a user starts it from an activated venv.
    Every port is a free one: the dashboard agent's default (52365) may be held by another
    Ray on this machine, and the Job API then answers "No available agent" forever.
    """
    log = tmp_path_factory.mktemp("head") / "head.log"
    port, dash = free_port(), free_port()
    env = {**os.environ, **LOOPBACK, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    ray = str(Path(sys.executable).parent / "ray")
    cmd = [ray, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1"]
    cmd += ["--dashboard-host=127.0.0.1"]
    cmd += [f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={free_port()}"]
    cmd += ["--num-cpus=2", "--disable-usage-stats", "--block"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while not _job_api_up(address):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray start --head did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        # A head stopped this way leaves its address where ray.init() looks for a cluster to
        # join: the next ray.init() on this machine would wait for a dead one.
        current = Path("/tmp/ray/ray_current_cluster")
        if current.exists() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()


def _job_api_up(address: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{address}/api/version", timeout=2):
            return True
    except OSError as exc:  # 401 (a token is required) also means it is up
        return getattr(exc, "code", None) == 401


TOKEN = {"RAY_AUTH_MODE": "token"}  # Ray 2.60's `ray start` enables token auth by default


def test_submit_runs_the_job_on_the_cluster_with_the_users_runtime_env_and_follows_it(
    ray_head: str, tmp_path: Path
) -> None:
    cfg = table_job(tmp_path)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env_file = tmp_path / "runtime_env.yaml"  # Ray's format: env_vars here; pip:, conda: ... alike
    env_file.write_text(yaml.safe_dump({"env_vars": {"SCORING_ERRORS__MAX_REJECTED_ROWS": "5"}}))
    json_env = json.dumps({"env_vars": {"SCORING_ERRORS__MAX_REJECTED_ROWS": "7"}})
    proc = scoring_cli(
        "submit",
        str(path),
        "--address",
        ray_head,
        "--set",
        "compute.batch_size=64",
        "--runtime-env",
        str(env_file),
        "--runtime-env-json",
        json_env,
        env=TOKEN,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id = proc.stdout.split("submitted job ", 1)[1].split()[0]
    assert f"job {job_id}: SUCCEEDED" in proc.stdout
    assert "status: succeeded" in proc.stdout  # the job's own log, followed
    assert_matches_direct_run(cfg, cfg["output"]["uri"])
    job = json.loads((Path(cfg["output"]["uri"]) / "_job.json").read_text())
    assert job["config"]["compute"]["batch_size"] == 64  # --set reached the job
    # The job saw the user's environment (the JSON's keys win over the file's) and scoring's package.
    assert job["config"]["errors"]["max_rejected_rows"] == 7

    proc = scoring_cli(
        "submit", str(path), "--address", ray_head, "--runtime-env-json", '{"working_dir": "."}', env=TOKEN
    )
    assert (
        proc.returncode == 2
        and "sets working_dir, which scoring submit uses to ship the config" in proc.stderr
    )
    proc = scoring_cli("submit", str(path), "--address", ray_head, "--runtime-env-json", "{pip: x", env=TOKEN)
    assert proc.returncode == 2 and "--runtime-env-json is not valid JSON" in proc.stderr


def test_submit_exits_1_when_the_job_fails_and_0_without_waiting(
    ray_head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = table_job(tmp_path)
    cfg["model"]["uri"] = str(tmp_path / "missing.onnx")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = scoring_cli("submit", str(path), "--address", ray_head, env=TOKEN)
    assert proc.returncode == 1
    assert "missing.onnx" in proc.stdout and ": FAILED" in proc.stdout

    proc = scoring_cli("submit", str(path), "--address", ray_head, "--no-wait", env=TOKEN)
    assert proc.returncode == 0 and "submitted job " in proc.stdout and "FAILED" not in proc.stdout
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    _wait_all_jobs(ray_head)


def test_submit_without_the_token_or_to_nothing_says_what_to_do(ray_head: str, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(table_job(tmp_path)))
    proc = scoring_cli("submit", str(path), "--address", ray_head, env={"RAY_AUTH_MODE": "disabled"})
    assert proc.returncode == 2
    assert "RAY_AUTH_MODE=token" in proc.stderr and ray_head in proc.stderr
    nothing = f"http://127.0.0.1:{free_port()}"
    proc = scoring_cli("submit", str(path), "--address", nothing, env=TOKEN)
    assert proc.returncode == 2
    assert f"cannot submit to {nothing}" in proc.stderr and "http://HEAD:8265" in proc.stderr


def _wait_all_jobs(address: str) -> None:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.time() + 120
    while any(not j.status.is_terminal() for j in client.list_jobs()) and time.time() < deadline:
        time.sleep(1)


def test_the_pool_is_fitted_node_by_node_and_gpu_workers_get_their_share_of_cpus() -> None:
    from scoring.config import ComputeConfig
    from scoring.errors import ConfigError
    from scoring.pool import plan_pool

    gpu_node, cpu_node = {"CPU": 16.0, "GPU": 2.0}, {"CPU": 64.0}
    pool = plan_pool(ComputeConfig(gpus_per_actor=1), [gpu_node, cpu_node])
    assert (pool.workers, pool.cpus_per_worker) == (2, 8.0)  # each GPU worker: half its node's CPUs
    assert plan_pool(ComputeConfig(gpus_per_actor=0.5), [gpu_node]).cpus_per_worker == 4.0
    assert plan_pool(ComputeConfig(), [cpu_node, {"CPU": 2.0}]).workers == 66  # CPU workers: 1 CPU each
    # Four CPUs in all, but no node holds the 2 CPUs one worker asks for.
    with pytest.raises(ConfigError, match=r"its nodes \(1 CPU / 0 GPU, .*\) can host only 0 such workers"):
        plan_pool(ComputeConfig(actors=2, cpus_per_actor=2), [{"CPU": 1.0}] * 4)
    with pytest.raises(ConfigError, match=r"compute.gpus_per_actor is 1 but this machine has no GPUs"):
        plan_pool(ComputeConfig(gpus_per_actor=1), [{"CPU": 2.0, "GPU": 0.0}], "this machine")


# -- an autoscaling cluster ---------------------------------------------------------------------


def fake_cloud(address: str) -> dict[str, Any]:
    """Ray's fake cloud: 1-CPU worker nodes, up to 2, launched as processes of this machine. The
    2.60 wheel lacks the provider's example.yaml: the whole config is here (the autoscaler
    checks it against its schema)."""
    node = {"resources": {"CPU": 1, "object_store_memory": 100 << 20}, "node_config": {}}
    empty: dict[str, Any] = {k: [] for k in ("initialization_commands", "setup_commands")}
    empty |= {k: [] for k in ("head_setup_commands", "worker_setup_commands", "head_start_ray_commands")}
    empty |= {k: [] for k in ("worker_start_ray_commands", "cluster_synced_files", "rsync_exclude")}
    return {
        "cluster_name": "fake_multinode",
        "max_workers": 2,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": address,  # else its nodes join HOST:6379, whatever cluster that is
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "ray.worker.cpu": node | {"min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,
        "docker": {},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        "rsync_filter": [],
        **empty,
    }


def processes_of(temp_dir: str) -> list[Any]:
    """Every process of a cluster started with ``--temp-dir temp_dir``: named in its command line,
    or writing its logs there (Ray's workers rename themselves), and their children."""
    import psutil

    found: dict[int, Any] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            files = [f.path for f in p.open_files()]
            if temp_dir in " ".join(p.info["cmdline"] or []) or any(f.startswith(temp_dir) for f in files):
                found[p.pid] = p
                found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            pass
    found.pop(os.getpid(), None)
    return list(found.values())


@pytest.fixture(scope="module")
def autoscaling_head(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A head with no CPUs and Ray's fake-cloud autoscaler; stopped by the PIDs of its own
    processes (those holding its temp dir), never by name: other tests' Ray keeps running."""
    import psutil

    port, temp_dir = free_port(), f"/tmp/ray-as-{os.getpid()}"  # short: socket paths are limited
    address = f"127.0.0.1:{port}"
    config = tmp_path_factory.mktemp("autoscaler") / "cluster.yaml"
    config.write_text(yaml.safe_dump(fake_cloud(address)))
    env = {**os.environ, **LOOPBACK, **TOKEN, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--num-cpus=0", f"--port={port}"]
    cmd += ["--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}", f"--autoscaling-config={config}"]
    cmd += ["--include-dashboard=false", "--disable-usage-stats", f"--object-store-memory={100 << 20}"]
    for flag in ("ray-client-server", "dashboard-agent-listen", "dashboard-agent-grpc", "runtime-env-agent"):
        cmd.append(f"--{flag}-port={free_port()}")
    cmd.append(f"--metrics-export-port={free_port()}")
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
        yield address
    finally:
        for _ in range(3):
            procs = processes_of(temp_dir)
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(procs, timeout=10)
        assert not processes_of(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_an_autoscaling_cluster_with_no_cpus_yet_runs_the_job(autoscaling_head: str, tmp_path: Path) -> None:
    cfg = table_job(tmp_path, files=4, rows=500)
    del cfg["compute"]["runner"]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = scoring_cli(
        "run", str(path), "--address", autoscaling_head, "--set", "compute.actors=2", env=TOKEN
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0 of 2 worker(s) ready" in proc.stdout  # the job waits for nodes, not refused
    assert_matches_direct_run(cfg, cfg["output"]["uri"])
    nodes = {s["node"] for s in pq.read_table(Path(cfg["output"]["uri"]) / "_shards.parquet").to_pylist()}
    # Scored on nodes the fake cloud launched (their ids are fff…f0000N), not on the head.
    assert nodes and all(n.split("/")[1] == "ffffffff" for n in nodes), nodes

    cfg["compute"]["gpus_per_actor"] = 1
    path.write_text(yaml.safe_dump(cfg))
    proc = scoring_cli("run", str(path), "--address", autoscaling_head, "--mode", "overwrite", env=TOKEN)
    assert proc.returncode == 2
    assert "the cluster has no GPUs and its autoscaler launches none" in proc.stderr


# -- the Ray a job starts on this machine --------------------------------------------------------

LISTENING = """
import json, time, psutil
from scoring.runners.ray import RayRunner
runner = RayRunner(None)
t0 = time.monotonic()
runner.start(lambda _: None)
took = time.monotonic() - t0
me = psutil.Process()
seen = []
for p in [me, *me.children(recursive=True)]:
    try:
        seen += [(c.laddr.ip, p.name()) for c in p.net_connections("inet") if c.status == "LISTEN"]
    except psutil.Error:
        pass
runner.close()
print(json.dumps({"took": took, "listening": seen}))
"""


def test_the_ray_a_job_starts_listens_on_loopback_only_and_ignores_a_stale_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Ray runner's own Ray, started under a ray_current_cluster that names a dead address (as
    a stopped `ray start` leaves it): it starts without waiting for that address, and every
    socket its processes listen on is on 127.0.0.1. `--address auto` refuses the dead one."""
    import tempfile

    from scoring.cluster import check_address
    from scoring.errors import ConfigError

    temp = tempfile.mkdtemp(prefix="st-", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        (Path(temp) / "ray").mkdir()
        (Path(temp) / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", *LOOPBACK)}
        env["RAY_TMPDIR"] = temp
        proc = subprocess.run(
            [sys.executable, "-c", LISTENING], capture_output=True, text=True, env=env, timeout=240
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        found = json.loads(proc.stdout.splitlines()[-1])
        assert found["took"] < 60  # Ray waits minutes for a dead address it was sent to
        assert {"gcs_server", "raylet"} <= {name for _, name in found["listening"]}, found
        assert {ip for ip, _ in found["listening"]} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, found

        monkeypatch.setenv("RAY_TMPDIR", temp)
        t0 = time.monotonic()
        with pytest.raises(
            ConfigError, match="ray_current_cluster names 127.0.0.1:.* no Ray cluster answers"
        ):
            check_address("auto")
        assert time.monotonic() - t0 < 10
        monkeypatch.setenv("RAY_TMPDIR", str(Path(temp) / "none"))
        with pytest.raises(ConfigError, match="no Ray cluster was started on this machine"):
            check_address("auto")
    finally:
        shutil.rmtree(temp, ignore_errors=True)
