"""``make bench`` (``--only s3``): the tables job from and to a loopback S3 server (moto, its own
process) against local disk; then from S3 behind ``relay.py``, a relay that gives the loopback
server a network's bandwidth and latency, with one and with two shards in flight per worker.

Rates are the job's own (``_job.json`` wall minus ``ray.init``) and the whole command minus
``ray.init``; with them, how busy the machine's cores were while shards were scored (every
process, the S3 server's included) and the S3 server's own CPU time.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from bench import FILE_ROWS, HERE, ROOT, THREADS, scoring_argv, tables_data, tables_job
from scoring import storage

# The relay's link: one S3 connection in a cloud region, roughly (see bench/relay.py).
LINK_MBPS, LINK_LATENCY_S = 150, 0.02
FILES = 8


def scoring_run(config: dict, rows: int) -> dict[str, float]:
    """``scoring run`` (Ray runner) in a subprocess: its rates, and how busy the cores were
    between the first shard's start and the last one's end."""
    uri, so = config["output"]["uri"], config.get("storage_options", {})
    argv = scoring_argv(config, "ray")
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = [_cpu_sample()]
    while proc.poll() is None:
        time.sleep(0.1)
        samples.append(_cpu_sample())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"scoring run failed with exit {proc.returncode}: {' '.join(argv)}")
    totals = json.loads(storage.read_bytes(storage.join(uri, "_job.json"), so))["totals"]
    table = pq.read_table(pa.BufferReader(storage.read_bytes(storage.join(uri, "_shards.parquet"), so)))
    shards = table.select(["started_at", "finished_at"]).to_pylist()
    start = min(r["started_at"] for r in shards).timestamp()
    end = max(r["finished_at"] for r in shards).timestamp()
    during = [s for s in samples if start <= s[0] <= end] or samples
    busy = (during[-1][1] - during[0][1]) / max(during[-1][2] - during[0][2], 1e-9)
    return {
        "job_rows_s": rows / (totals["wall_s"] - totals["ray_init_s"]),
        "after_init_rows_s": rows / (wall - totals["ray_init_s"]),
        "wall_s": wall,
        "busy": busy,
    }


def _cpu_sample() -> tuple[float, float, float]:
    """(time, CPU-seconds busy, CPU-seconds in all) of the whole machine so far."""
    t = psutil.cpu_times()
    return time.time(), sum(t) - t.idle - t.iowait, sum(t)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def med(values: list[float]) -> float:
    return statistics.median(values)


def s3_vs_local(reps: int) -> None:
    import s3fs

    model, folders = tables_data()
    files = sorted(folders[max(folders)].glob("*.parquet"))[:FILES]
    rows = FILES * FILE_ROWS
    port, relay_port = _free_port(), _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    relay = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "relay.py"),
            str(relay_port),
            str(port),
            str(LINK_MBPS),
            str(LINK_LATENCY_S),
        ]
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        keys = {"key": "bench", "secret": "bench"}
        for _ in range(100):
            try:
                fs = s3fs.S3FileSystem(endpoint_url=endpoint, **keys)
                fs.mkdir("bench")
                break
            except Exception:  # the server is still starting
                time.sleep(0.2)
        for f in files:
            fs.put(str(f), f"bench/tables/{f.name}")
        fs.put(model, "bench/mlp.onnx")
        local_data = ROOT / f"tables-s3-local-{FILES}"
        if not local_data.exists():
            local_data.mkdir()
            for f in files:
                os.link(f, local_data / f.name)
        local = tables_job(str(local_data), model, str(ROOT / "out" / "s3-local"))
        remote = tables_job("s3://bench/tables/", "s3://bench/mlp.onnx", "s3://bench/out")
        remote["storage_options"] = {"endpoint_url": endpoint, **keys}
        slow = {}
        for n in (1, 2):
            slow[n] = tables_job(
                "s3://bench/tables/", "s3://bench/mlp.onnx", f"s3://bench/slow-{n}", shards_in_flight=n
            )
            slow[n]["storage_options"] = {"endpoint_url": f"http://127.0.0.1:{relay_port}", **keys}
        lo, s3, server_cpu = [], [], []
        far: dict[int, list[dict]] = {1: [], 2: []}
        moto = psutil.Process(server.pid)
        for _ in range(reps):
            lo.append(scoring_run(local, rows))
            before = sum(moto.cpu_times()[:2])
            s3.append(scoring_run(remote, rows))
            server_cpu.append(sum(moto.cpu_times()[:2]) - before)
            for n, cfg in slow.items():
                far[n].append(scoring_run(cfg, rows))
    finally:
        for proc in (relay, server):
            proc.terminate()
            proc.wait(timeout=30)
    print(
        f"\n== tables from and to S3 (moto on 127.0.0.1) vs local disk, {rows:,} rows (median of {reps}) =="
    )
    for key, label in (("job_rows_s", "job minus ray.init"), ("after_init_rows_s", "command minus ray.init")):
        a, b = med([r[key] for r in lo]), med([r[key] for r in s3])
        print(f"{label:<24} local {a:>10,.0f} rows/s   s3 {b:>10,.0f} rows/s   s3/local = {b / a:.2f}")
    wall = med([r["wall_s"] for r in s3])
    print(
        f"the S3 server itself used {med(server_cpu):.1f} CPU-s of the s3 run's {wall:.1f} s; "
        f"the {THREADS} cores were {med([r['busy'] for r in lo]):.0%} busy in the local run, "
        f"{med([r['busy'] for r in s3]):.0%} in the s3 run, from the first shard's start to the last's end"
    )
    one, two = (med([r["job_rows_s"] for r in far[n]]) for n in (1, 2))
    print(
        f"S3 behind a {LINK_MBPS} MB/s, {LINK_LATENCY_S * 1000:.0f} ms relay, job minus ray.init: "
        f"1 shard in flight {one:,.0f} rows/s, 2 in flight {two:,.0f} rows/s ({two / one:.2f}x)"
    )
