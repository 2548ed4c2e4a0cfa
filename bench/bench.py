"""``make bench``: scoring's throughput as ratios against plain ONNX Runtime loops, in one run.

For tables (MLP 64-256-256-10 over fixed_size_list<float32>[64] in 16 files) and images
(224x224 JPEGs, a small CNN): (a) ORT alone on preloaded arrays, (b) a single-process streaming
loop, (c) ``scoring run`` as a user runs it. Prints medians over ``--reps`` runs, c/b, start-up
overhead beyond ``ray.init`` and the peak RSS of the whole process tree; tables also at 4x data.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from scoring.demo import make_cnn, make_mlp, write_images, write_tables

ROOT = Path(os.environ.get("BENCH_DIR", "bench-data")).resolve()
THREADS = os.cpu_count() or 2


def session(model: str, threads: int = THREADS, providers: list[str] | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model, opts, providers=providers or ["CPUExecutionProvider"])


def ort_alone_tables(
    model: str, files: list[str], providers: list[str] | None = None, threads: int = THREADS
) -> float:
    columns = [pq.read_table(f).column("features").combine_chunks() for f in files[:4]]
    x = np.concatenate([c.flatten().to_numpy().reshape(-1, 64) for c in columns])
    sess = session(model, threads, providers)
    sess.run(None, {"x": x[:4096]})  # warm-up (CUDA kernels, arena)
    t0 = time.perf_counter()
    for i in range(0, len(x), 4096):
        sess.run(None, {"x": x[i : i + 4096]})
    return len(x) / (time.perf_counter() - t0)


def loop_tables(model: str, files: list[str], out: Path, providers: list[str] | None = None) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    sess, rows = session(model, providers=providers), 0
    for i, f in enumerate(files):
        t = pq.read_table(f)
        x = t.column("features").combine_chunks().flatten().to_numpy().reshape(-1, 64)
        probs = np.concatenate([sess.run(None, {"x": x[j : j + 4096]})[0] for j in range(0, len(x), 4096)])
        flat = pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), 10)
        pq.write_table(pa.table({"id": t.column("id"), "probs": flat}), out / f"{i}.parquet")
        rows += len(x)
    return rows / (time.perf_counter() - t0)


def preprocess(data: bytes) -> np.ndarray:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
    x = np.asarray(img, dtype=np.float32) * (1 / 255.0)
    return ((x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).astype(np.float32).transpose(2, 0, 1)


def ort_alone_images(model: str, files: list[str], providers: list[str] | None = None) -> float:
    x = np.stack([preprocess(Path(f).read_bytes()) for f in files[:512]])
    sess = session(model, providers=providers)
    sess.run(None, {"image": x[:64]})  # warm-up
    t0 = time.perf_counter()
    for _ in range(4):
        for i in range(0, len(x), 64):
            sess.run(None, {"image": x[i : i + 64]})
    return 4 * len(x) / (time.perf_counter() - t0)


def loop_images(
    model: str, files: list[str], out: Path, per_shard: int = 1000, providers: list[str] | None = None
) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    sess = session(model, providers=providers)
    t0 = time.perf_counter()
    for s in range(0, len(files), per_shard):
        chunk = files[s : s + per_shard]
        probs = []
        for i in range(0, len(chunk), 64):
            x = np.stack([preprocess(Path(f).read_bytes()) for f in chunk[i : i + 64]])
            probs.append(sess.run(None, {"image": x})[0])
        p = np.concatenate(probs)
        pq.write_table(
            pa.table(
                {
                    "path": chunk,
                    "probs": pa.FixedSizeListArray.from_arrays(pa.array(p.reshape(-1)), p.shape[1]),
                }
            ),
            out / f"{s}.parquet",
        )
    return len(files) / (time.perf_counter() - t0)


def scoring_run(config: dict, rows: int) -> dict:
    """Run ``scoring run`` in a subprocess; rows/s, overhead, peak RSS of the process tree and
    how busy the machine's CPUs were while shards were scored (every process, an S3 server's
    included).

    The overhead (to the first prediction file) is measured for local outputs only.
    """
    from scoring import storage

    uri, so = config["output"]["uri"], config.get("storage_options", {})
    out = Path(uri) if "://" not in uri else None
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
    path = ROOT / f"{uri.rstrip('/').rsplit('/', 1)[-1]}.yaml"
    path.write_text(yaml.safe_dump(config))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "scoring", "run", str(path), "--mode", "overwrite"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peak, first = 0, None
    root = psutil.Process(proc.pid)
    samples = [_cpu_sample()]
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        if first is None and out is not None and any((out / "predictions").glob("*.parquet")):
            first = time.perf_counter() - t0
        time.sleep(0.1)
        samples.append(_cpu_sample())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"scoring run failed with exit {proc.returncode}: {path}")
    totals = json.loads(storage.read_bytes(storage.join(uri, "_job.json"), so))["totals"]
    table = pq.read_table(pa.BufferReader(storage.read_bytes(storage.join(uri, "_shards.parquet"), so)))
    shards = table.select(["started_at", "finished_at", "wall_s"]).to_pylist()
    start = min(r["started_at"] for r in shards).timestamp()
    end = max(r["finished_at"] for r in shards).timestamp()
    during = [s for s in samples if start <= s[0] <= end] or samples
    busy = (during[-1][1] - during[0][1]) / max(during[-1][2] - during[0][2], 1e-9)
    after_init = wall - totals["ray_init_s"]
    overhead = float("nan")
    if out is not None:
        # The first shard written took its own scoring time: the work itself, not overhead.
        first_shard_s = min(shards, key=lambda r: r["finished_at"])["wall_s"]
        overhead = (first or wall) - totals["ray_init_s"] - first_shard_s
    return {
        "command_rows_s": rows / wall,
        "job_rows_s": rows / (totals["wall_s"] - totals["ray_init_s"]),
        "after_init_rows_s": rows / after_init,
        "ray_init_s": totals["ray_init_s"],
        "overhead_s": overhead,
        "peak_gb": peak / 1e9,
        "wall_s": wall,
        "busy": busy,
    }


def _cpu_sample() -> tuple[float, float, float]:
    """(time, CPU-seconds busy, CPU-seconds in all) of the whole machine so far."""
    t = psutil.cpu_times()
    return time.time(), sum(t) - t.idle - t.iowait, sum(t)


def loop_command(model: str, files: list[str], out: Path) -> float:
    """The streaming loop as a user runs it: a fresh Python process, imports included."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--loop-tables", model, str(out), *files], check=True)
    return sum(pq.read_metadata(f).num_rows for f in files) / (time.perf_counter() - t0)


def med(values: list[float]) -> float:
    return statistics.median(values)


def tables_job(data: str, model: str, out: str, keep: tuple[str, ...] = ("id",), **compute: Any) -> dict:
    """The config of a tables job over ``features`` (fixed_size_list<float32>[64])."""
    return {
        "model": {"uri": model},
        "input": {"uri": data, "format": "parquet", "columns": {"x": "features"}, "keep": list(keep)},
        "output": {"uri": out},
        "compute": {"batch_size": 4096, **compute},
    }


def images_job(data: str, model: str, out: str, files_per_shard: int, **compute: Any) -> dict:
    """The config of an image-folder job with ImageNet normalisation."""
    return {
        "model": {"uri": model},
        "input": {
            "uri": data,
            "format": "images",
            "files_per_shard": files_per_shard,
            "image": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        },
        "output": {"uri": out},
        "compute": {"batch_size": 64, **compute},
    }


def tables(reps: int, scale: int) -> None:
    rows_per_file = 250_000 * scale
    data = ROOT / f"tables-x{scale}"
    if not data.exists():
        write_tables(data, files=16, rows=rows_per_file, features=64)
    files = sorted(str(p) for p in data.glob("*.parquet"))
    rows = 16 * rows_per_file
    model = make_mlp(ROOT / "mlp.onnx", (64, 256, 256, 10))
    a = ort_alone_tables(model, files)
    b = [loop_tables(model, files, ROOT / "loop-out") for _ in range(reps)]
    b_cmd = [loop_command(model, files, ROOT / "loop-out") for _ in range(reps)]
    cfg = tables_job(str(data), model, str(ROOT / "scoring-out"))
    c = [scoring_run(cfg, rows) for _ in range(reps)]
    report(f"tables, {rows:,} rows x 64 float32 in 16 files", "rows", a, b, c, b_cmd)


def images(reps: int) -> None:
    data = ROOT / "images"
    if not data.exists():
        write_images(data, count=8000, per_folder=1000)
    files = sorted(str(p) for p in data.rglob("*.jpg"))
    model = make_cnn(ROOT / "cnn.onnx", size=224, classes=10)
    a = ort_alone_images(model, files)
    b = [loop_images(model, files, ROOT / "loop-img-out") for _ in range(reps)]
    cfg = images_job(str(data), model, str(ROOT / "scoring-img-out"), files_per_shard=500)
    c = [scoring_run(cfg, len(files)) for _ in range(reps)]
    report(f"images, {len(files):,} JPEGs 224x224, small CNN", "img", a, b, c)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The relay's link: one S3 connection in a cloud region, roughly (see bench/relay.py).
LINK_MBPS, LINK_LATENCY_S = 150, 0.02


def s3_vs_local(reps: int) -> None:
    """The same tables job from and to a loopback S3 server (moto, its own process) and local disk;
    then from S3 behind a relay that adds a network's bandwidth and latency, with one and with two
    shards in flight per actor."""
    import s3fs

    data = ROOT / "tables-x1"
    if not data.exists():
        write_tables(data, files=16, rows=250_000, features=64)
    files = sorted(data.glob("*.parquet"))[:8]
    rows = 8 * 250_000
    model = make_mlp(ROOT / "mlp.onnx", (64, 256, 256, 10))
    port, relay_port = _free_port(), _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    relay = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("relay.py")), str(relay_port), str(port)]
        + [str(LINK_MBPS), str(LINK_LATENCY_S)]
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        keys = {"key": "bench", "secret": "bench"}
        for _ in range(100):
            try:
                fs = s3fs.S3FileSystem(endpoint_url=endpoint, **keys)
                fs.mkdir("bench")
                break
            except Exception:
                time.sleep(0.2)
        for f in files:
            fs.put(str(f), f"bench/tables/{f.name}")
        fs.put(model, "bench/mlp.onnx")
        local_data = ROOT / "tables-x1-8"
        if not local_data.exists():
            local_data.mkdir()
            for f in files:
                os.link(f, local_data / f.name)
        local = tables_job(str(local_data), model, str(ROOT / "s3-local-out"))
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
    for key, label in (
        ("job_rows_s", "job minus ray.init"),
        ("after_init_rows_s", "command minus ray.init"),
    ):
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


def report(
    title: str, unit: str, a: float, b: list[float], c: list[dict], b_cmd: list[float] | None = None
) -> None:
    bm = med(b)
    print(f"\n== {title} (median of {len(b)}) ==")
    print(f"(a)  ORT alone, preloaded arrays        {a:>12,.0f} {unit}/s")
    print(f"(b)  single-process loop, timed inside  {bm:>12,.0f} {unit}/s")
    if b_cmd:
        print(f"(b') the loop as a command (python ...) {med(b_cmd):>12,.0f} {unit}/s")
    for key, label in (
        ("job_rows_s", "job minus ray.init"),
        ("after_init_rows_s", "command minus ray.init"),
        ("command_rows_s", "whole command"),
    ):
        v = med([r[key] for r in c])
        vs_cmd = f"   c/b' = {v / med(b_cmd):.2f}" if b_cmd else ""
        print(f"(c)  scoring run, {label:<22}{v:>12,.0f} {unit}/s   c/b = {v / bm:.2f}{vs_cmd}")
    print(
        f"     ray.init {med([r['ray_init_s'] for r in c]):.2f}s; overhead beyond ray.init to the first "
        f"prediction file (first shard's own time taken out) {med([r['overhead_s'] for r in c]):.2f}s; "
        f"peak RSS of the process tree {med([r['peak_gb'] for r in c]):.2f} GB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", choices=["tables", "images", "s3"], default=None)
    parser.add_argument("--no-4x", action="store_true", help="skip the tables run at 4x data")
    parser.add_argument("--loop-tables", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop_tables:  # MODEL OUT FILE...: one run of (b) in this fresh process
        model, out, *files = args.loop_tables
        loop_tables(model, files, Path(out))
        return
    ROOT.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "tables"):
        tables(args.reps, 1)
        if not args.no_4x:
            tables(max(1, args.reps - 2), 4)
    if args.only in (None, "images"):
        images(args.reps)
    if args.only in (None, "s3"):
        s3_vs_local(args.reps)


if __name__ == "__main__":
    main()
