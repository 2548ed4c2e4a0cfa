"""Storage that fails, for real: a TCP proxy in front of the loopback S3 server that stalls or
refuses mid-job, and a disk that fills (a small tmpfs). The CLI runs in its own process, as a
user runs it; afterwards, what a user checks: the exit code and the one-line error, every row
exactly once after at most one resume, and ``predictions/`` readable throughout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml
from support import RUNNERS, TcpProxy, features_job, options, run_to_end, start_run, upload

from scoring.demo import make_mlp, write_tables

pytestmark = pytest.mark.slow

FILES, ROWS = 10, 20_000
# Tight storage timeouts, as a user would set them for a store that must answer fast: a stalled
# call fails within seconds instead of the defaults' minute or so.
FAST = {"config_kwargs": {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 1}}}


@pytest.fixture(scope="module")
def bucket(s3: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tables and a model heavy enough (~0.3 s a shard) to fault a job halfway."""
    endpoint, fs = s3
    local = tmp_path_factory.mktemp("faulty")
    make_mlp(local / "mlp.onnx", (64, 256, 256, 10))
    write_tables(local / "tables", files=FILES, rows=ROWS, features=64)
    upload(fs, local / "tables", "data/faulty")
    return {"model": str(local / "mlp.onnx"), "endpoint": endpoint, "fs": fs}


def config(
    tmp_path: Path,
    bucket: dict[str, Any],
    proxy: TcpProxy,
    out: str,
    runner: str,
    data: str = "s3://data/faulty/",
) -> Path:
    cfg = features_job(data, bucket["model"], keep=["id"], actors=2, runner=runner)
    cfg["input"]["rows_per_shard"] = ROWS  # a shard per file
    cfg["output"] = {"uri": out}
    cfg["compute"]["batch_size"] = 4096
    cfg["errors"] = {"max_rejected_rows": 10 * ROWS}
    cfg["storage_options"] = options(proxy.endpoint) | FAST
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def started(
    tmp_path: Path, bucket: dict[str, Any], proxy: TcpProxy, out: str, runner: str
) -> tuple[Path, subprocess.Popen[str]]:
    """A job through ``proxy`` into ``out``, two shards settled: halfway, ready for a fault."""
    path = config(tmp_path, bucket, proxy, out, runner)
    proc = start_run(path)
    wait_for_markers(bucket["fs"], out, 2, proc)
    return path, proc


def resume(path: Path) -> subprocess.CompletedProcess[str]:
    # What a fault left is resumed on the local runner whichever ran it: a Ray start less.
    return run_to_end(path, "--mode", "resume", "--runner", "local")


def markers(fs: Any, out: str) -> int:
    prefix = out.removeprefix("s3://") + "/_progress"
    fs.invalidate_cache()
    return len(fs.ls(prefix)) if fs.exists(prefix) else 0


def wait_for_markers(fs: Any, out: str, n: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.time() + 120
    while markers(fs, out) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no shard settled"
        time.sleep(0.1)


def exactly_once(fs: Any, out: str) -> None:
    """Every input row once in ``predictions/``, read as one dataset."""
    table = pads.dataset(
        out.removeprefix("s3://") + "/predictions", filesystem=fs, format="parquet"
    ).to_table()
    np.testing.assert_array_equal(np.sort(table.column("id").to_numpy()), np.arange(FILES * ROWS))
    job = json.loads(fs.cat_file(out.removeprefix("s3://") + "/_job.json"))
    assert job["status"] == "succeeded" and job["totals"]["shards_complete"] == FILES


@RUNNERS
def test_sigterm_stops_a_job_on_a_stalled_store_within_10_s(
    tmp_path: Path, bucket: dict[str, Any], runner: str
) -> None:
    fs, out = bucket["fs"], f"s3://results/stall-{runner}"
    proxy = TcpProxy(bucket["endpoint"])
    try:
        path, proc = started(tmp_path, bucket, proxy, out, runner)
        proxy.set("stall")  # reads, writes and the claim's heartbeat get no answer from now on
        time.sleep(1.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 10, err
        assert proc.returncode == 130, err
        assert "interrupted" in err and "--mode resume" in err
        assert "Traceback" not in err
        proxy.set("pass")
        assert resume(path).returncode == 0
    finally:
        proxy.close()
    exactly_once(fs, out)


# The last steps of a job, each as the request that begins it once the shard's marker landed.
END_STEPS = {
    "revoke": b"POST /results?delete",  # the claim's _run.json removed
    "listing": b"HEAD /results/%s/_progress",  # the shards settled, listed
    "summary": b"PUT /results/%s/_shards.parquet",  # the first summary file
}


@pytest.mark.parametrize(
    "runner, steps",
    [pytest.param("local", tuple(END_STEPS), id="local-every-step")]
    # Ray's: the revoke, with its actors alive, and the summary, after they stopped and before
    # Ray is shut down; the listing runs between the two in the same state as the summary.
    + [pytest.param("ray", (step,), id=f"ray-{step}") for step in ("revoke", "summary")],
)
def test_ctrl_c_stops_the_end_of_a_job_within_10_s_on_a_store_that_stalls(
    tmp_path: Path, bucket: dict[str, Any], runner: str, steps: tuple[str, ...]
) -> None:
    """Every shard scored, then the store stalls at one of the steps that end a job (the claim's
    revoke, the final listing, the summary): Ctrl-C still stops it within 10 s, and resume
    writes what it could not; every row is in predictions/ once. On the local runner one job per
    step, at once; Ray's one at a time (three Ray starts at once on 2 cores take 84 s)."""
    jobs = {}
    for step in steps:
        request = END_STEPS[step]
        name = f"end-{runner}-{step}"
        proxy = TcpProxy(bucket["endpoint"])
        marker = f"PUT /results/{name}/_progress/part-000000.json".encode()
        proxy.stall_at(marker, request.replace(b"%s", name.encode()))
        folder = tmp_path / step
        folder.mkdir()
        path = config(
            folder, bucket, proxy, f"s3://results/{name}", runner, "s3://data/faulty/part-000.parquet"
        )
        jobs[step] = (name, proxy, path, start_run(path))
    try:
        deadline = time.monotonic() + 120
        for step, (_, proxy, _, proc) in jobs.items():
            while proxy.stalled_at is None:
                assert proc.poll() is None and time.monotonic() < deadline, (step, proc.communicate())
                time.sleep(0.05)
        time.sleep(1.0)  # each step waits on its store
        stopped = {}
        for step, (_, _, _, proc) in jobs.items():
            proc.send_signal(signal.SIGINT)
            stopped[step] = time.monotonic()
        errs = {}
        for step, (*_, proc) in jobs.items():
            errs[step] = proc.communicate(timeout=60)[1]
            stopped[step] = time.monotonic() - stopped[step]
        for step, (_, proxy, path, proc) in jobs.items():
            err = errs[step]
            assert stopped[step] < 10, (step, err)
            assert proc.returncode == 130, (step, err)
            assert "interrupted" in err and "--mode resume" in err and "Traceback" not in err, err
            proxy.set("pass")
            if runner == "local":  # what a step left is the same whichever runner scored the shard
                resumed = resume(path)
                assert resumed.returncode == 0, resumed.stderr
                assert "scoring 0 of 1 shard(s)" in resumed.stdout
    finally:
        for _, proxy, _, proc in jobs.values():
            proxy.close()
            if proc.poll() is None:
                proc.kill()
    for name, *_ in jobs.values():
        found = pads.dataset(f"results/{name}/predictions", filesystem=bucket["fs"], format="parquet")
        np.testing.assert_array_equal(np.sort(found.to_table().column("id").to_numpy()), np.arange(ROWS))


def test_an_outage_mid_job_is_not_a_takeover_and_resume_finishes(
    tmp_path: Path, bucket: dict[str, Any]
) -> None:
    """Local runner only: an outage meets the same storage calls in a Ray actor, and stopping
    Ray workers stuck on a store is the stall test's."""
    fs, out = bucket["fs"], "s3://results/outage"
    proxy = TcpProxy(bucket["endpoint"])
    try:
        path, proc = started(tmp_path, bucket, proxy, out, "local")
        proxy.set("refuse")  # the endpoint is down: connections refused
        time.sleep(4)
        proxy.set("pass")
        stdout, err = proc.communicate(timeout=300)
        assert "taken over" not in err + stdout and "Traceback" not in err
        assert proc.returncode in (0, 1), err  # 1: the outage failed more rows than allowed
        job = json.loads(fs.cat_file(out.removeprefix("s3://") + "/_job.json"))  # written once back
        shards = pq.read_table(fs.open(out.removeprefix("s3://") + "/_shards.parquet")).to_pylist()
        failed = [s for s in shards if s["status"] == "failed"]
        assert failed and job["totals"]["shards_complete"] == FILES - len(failed)
        if proc.returncode == 1:
            assert f"{FILES - len(failed)} of {FILES} shards complete; run again with --mode resume" in err
        # A write the store made but never answered (the connection reset) left its marker: done.
        fs.invalidate_cache()
        settled = [json.loads(fs.cat_file(p)) for p in fs.ls(out.removeprefix("s3://") + "/_progress")]
        todo = FILES - sum(m["status"] == "succeeded" for m in settled)
        assert 0 < todo <= len(failed)
        resumed = resume(path)
        assert resumed.returncode == 0, resumed.stderr
        assert f"scoring {todo} of {FILES} shard(s)" in resumed.stdout  # the failed ones
    finally:
        proxy.close()
    exactly_once(fs, out)


def test_uploads_send_their_body_without_waiting_for_100_continue(bucket: dict[str, Any]) -> None:
    """botocore has every PUT wait for "100 Continue"; a connection dropped in that wait left
    aiohttp waiting forever (no connect or read timeout covers it): a shard, then the job, hung
    after an outage. Our uploads go in one round trip."""
    from scoring import storage

    proxy = TcpProxy(bucket["endpoint"])
    try:
        data = os.urandom(2_000_000)
        storage.write_bytes_atomic("s3://results/expect/part.bin", data, options(proxy.endpoint))
        assert bucket["fs"].cat_file("results/expect/part.bin") == data
        assert b"PUT /results/expect/part.bin" in proxy.sent
        assert b"100-continue" not in proxy.sent.lower()
    finally:
        proxy.close()


def test_a_full_disk_fails_the_job_with_the_resume_hint(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        model = make_mlp(tmp_path / "m.onnx", (64, 8))
        write_tables(tmp_path / "data", files=6, rows=ROWS, features=64)
        # Keeping the 64 features makes each shard's predictions ~4.5 MB: the disk fills on the
        # second shard.
        cfg = features_job(tmp_path / "data", model, keep=["id", "features"], actors=1, runner="local")
        cfg["compute"]["shards_in_flight"] = 1
        cfg["input"]["rows_per_shard"] = ROWS
        cfg["output"] = {"uri": str(disk / "out")}
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(cfg))
        proc = run_to_end(path)
        assert proc.returncode == 1, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and "No space left on device" in errors[0]
        assert "shards complete; run again with --mode resume to finish" in proc.stderr
        assert "Traceback" not in proc.stderr
        job = json.loads((disk / "out" / "_job.json").read_text())
        assert job["status"] == "failed" and 0 < job["totals"]["shards_complete"] < 6
        done = pads.dataset(disk / "out" / "predictions", format="parquet").to_table()  # readable
        assert done.num_rows == job["totals"]["shards_complete"] * ROWS
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        resumed = resume(path)
        assert resumed.returncode == 0, resumed.stderr
        ids = pads.dataset(disk / "out" / "predictions", format="parquet").to_table().column("id").to_numpy()
        np.testing.assert_array_equal(np.sort(ids), np.arange(6 * ROWS))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_wrong_address_is_refused_within_seconds(tmp_path: Path) -> None:
    from support import free_port

    model = make_mlp(tmp_path / "m.onnx", (8, 4))
    write_tables(tmp_path / "d", files=1, rows=10, features=8)
    cfg = features_job(tmp_path / "d", model) | {"output": {"uri": str(tmp_path / "o")}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for address, expected in (
        (f"127.0.0.1:{free_port()}", "no Ray cluster answers there"),
        ("http://127.0.0.1:8265", "is a dashboard (Job API) address"),
    ):
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "scoring", "run", str(path), "--address", address],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        )
        assert time.monotonic() - t0 < 30
        assert (
            proc.returncode == 2 and f"Error: --address {address}" in proc.stderr and expected in proc.stderr
        )
        assert not (tmp_path / "o").exists()
