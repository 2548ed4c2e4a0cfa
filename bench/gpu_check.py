"""``make gpu-check``: on a machine with an NVIDIA GPU, score a table job and an image job on GPU.

Checks that the sessions really ran on the CUDA provider (``_job.json`` providers, ``_shards``
device), that GPU predictions agree with a CPU run of the same shards, and prints throughput
against ONNX Runtime alone on the same GPU: (a) ORT on preloaded arrays, (b) the single-process
loop timed inside, (c) ``scoring run`` with one worker per GPU (the job's own wall time, minus
``ray.init`` for the Ray runner), both runners; images are decoded on the workers' CPUs.

``--cpu`` runs the same steps on CPU (fallback allowed), to check the script itself on a machine
without a GPU; its figures say nothing about GPUs. Exit 0 when every check passes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
import loop  # noqa: E402

import bench  # noqa: E402
from scoring.demo import make_cnn, make_mlp, write_images, write_tables  # noqa: E402

ROOT = bench.ROOT / "gpu-check"


def providers(cpu: bool) -> list[str]:
    return ["CPUExecutionProvider"] if cpu else ["CUDAExecutionProvider", "CPUExecutionProvider"]


def ort_alone(model: str, feed: str, x: np.ndarray, step: int, cpu: bool) -> float:
    sess = ort.InferenceSession(model, providers=providers(cpu))
    sess.run(None, {feed: x[:step]})  # warm-up (CUDA kernels, arena)
    t0 = time.perf_counter()
    for _ in range(3):
        for i in range(0, len(x), step):
            sess.run(None, {feed: x[i : i + step]})
    return 3 * len(x) / (time.perf_counter() - t0)


def inside(fn: object, *args: object) -> float:
    """(b): the loop in this process, timed inside."""
    t0 = time.perf_counter()
    n = fn(*args)  # type: ignore[operator]
    return n / (time.perf_counter() - t0)


def scoring(cfg: dict, runner: str, n: int, reps: int) -> float:
    """(c): the job's own rate (its wall time minus ray.init), median of ``reps``."""
    rates = []
    for _ in range(reps):
        run = bench.timed(bench.scoring_argv(cfg, runner), Path(cfg["output"]["uri"]) / "_job.json")
        rates.append(n / (run.totals["wall_s"] - run.totals.get("ray_init_s", 0.0)))
    return statistics.median(rates)


def check_run(out: Path, cpu: bool) -> list[str]:
    """What is wrong with a finished GPU run, if anything."""
    job = json.loads((out / "_job.json").read_text())
    shards = pq.read_table(out / "_shards.parquet").to_pylist()
    problems = []
    if job["status"] != "succeeded":
        problems.append(f"{out}: job {job['status']}: {job['error']}")
    if not cpu and "CUDAExecutionProvider" not in job["providers"]:
        problems.append(f"{out}: sessions ran on {job['providers']}, not CUDA")
    devices = {s["device"] for s in shards}
    if not cpu and not all(d.startswith("cuda:") for d in devices):
        problems.append(f"{out}: shard devices {sorted(devices)}")
    print(f"    {out.name}: providers {job['providers']}, devices {sorted(devices)}")
    return problems


def predictions(out: Path) -> np.ndarray:
    table = pq.read_table(out / "predictions").sort_by([("shard", "ascending"), ("row", "ascending")])
    return np.stack(table.column("probs").to_numpy(zero_copy_only=False))


def agree(gpu_cfg: dict, name: str) -> list[str]:
    """Score the same shards on CPU and compare (GPU kernels differ in the last bits)."""
    cfg = json.loads(json.dumps(gpu_cfg))
    cfg["output"]["uri"] = str(ROOT / f"{name}-cpu")
    cfg["compute"] = {k: v for k, v in cfg["compute"].items() if k not in ("actors", "gpus_per_actor")}
    bench.timed(bench.scoring_argv(cfg, "local"))
    gpu, cpu = predictions(Path(gpu_cfg["output"]["uri"])), predictions(Path(cfg["output"]["uri"]))
    if gpu.shape != cpu.shape:
        return [f"{name}: GPU predictions {gpu.shape} vs CPU {cpu.shape}"]
    worst = float(np.max(np.abs(gpu - cpu)))
    print(f"    GPU vs CPU predictions: max |diff| {worst:.2e} over {gpu.size:,} values")
    return [] if np.allclose(gpu, cpu, rtol=1e-3, atol=1e-4) else [f"{name}: GPU and CPU disagree ({worst})"]


def workload(kind: str, cpu: bool, reps: int, gpus: int) -> list[str]:
    compute = {"gpus_per_actor": 0 if cpu else 1, "actors": gpus}
    if kind == "tables":
        data = ROOT / "tables"
        if not data.exists():
            write_tables(data, files=8, rows=250_000, features=64)
        files = sorted(str(p) for p in data.glob("*.parquet"))
        model = make_mlp(ROOT / "mlp.onnx", (64, 256, 256, 10))
        x = np.concatenate(
            [pq.read_table(f).column("features").combine_chunks().flatten().to_numpy() for f in files]
        )
        a = ort_alone(model, "x", x.reshape(-1, 64), 8192, cpu)
        b = inside(loop.tables, model, ROOT / "loop", files, providers(cpu))
        n, unit = 8 * 250_000, "rows"
        make = lambda out: bench.tables_job(str(data), model, str(out), keep=(), batch_size=8192, **compute)  # noqa: E731
    else:
        data = ROOT / "images"
        if not data.exists():
            write_images(data, count=4000, per_folder=500)
        files = sorted(str(p) for p in data.rglob("*.jpg"))
        model = make_cnn(ROOT / "cnn.onnx", size=224, classes=10)
        x = np.stack([loop.preprocess(Path(f).read_bytes()) for f in files[:512]])
        a = ort_alone(model, "image", x, 64, cpu)
        b = inside(loop.images, model, ROOT / "loop", files, providers(cpu))
        n, unit = len(files), "img"
        make = lambda out: bench.images_job(str(data), model, str(out), 250, **compute)  # noqa: E731
    problems = []
    print(f"\n== {'CPU (--cpu: a check of the script, not of a GPU)' if cpu else 'GPU'} {kind} ==")
    print(f"(a) ORT alone, preloaded arrays      {a:>12,.0f} {unit}/s")
    print(f"(b) single-process loop, inside      {b:>12,.0f} {unit}/s   b/a = {b / a:.2f}")
    for runner in ("ray", "local"):
        cfg = make(ROOT / f"{kind}-{runner}")
        cfg["model"]["allow_cpu_fallback"] = cpu
        c = scoring(cfg, runner, n, reps)
        label = f"(c) scoring, {runner} runner, job"
        print(f"{label:<37}{c:>12,.0f} {unit}/s   c/a = {c / a:.2f}   c/b = {c / b:.2f}")
        problems += check_run(Path(cfg["output"]["uri"]), cpu)
    return problems + agree(cfg, kind)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="check the script itself without a GPU")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    available = ort.get_available_providers()
    if not args.cpu and "CUDAExecutionProvider" not in available:
        print(
            f"onnxruntime {ort.__version__} here has no CUDA provider ({available}). On a GPU machine: "
            "pip uninstall -y onnxruntime && pip install -e '.[gpu]' (onnxruntime-gpu; its "
            "[cuda,cudnn] extras bring the CUDA 12 and cuDNN 9 libraries). Or run with --cpu "
            "to check this script without a GPU.",
            file=sys.stderr,
        )
        return 2
    from scoring.pool import local_gpus

    gpus = 1 if args.cpu else max(1, local_gpus())  # with --cpu: one 1-CPU worker, the plumbing only
    print(f"onnxruntime {ort.__version__}, providers {available}; {gpus} worker(s)")
    ROOT.mkdir(parents=True, exist_ok=True)
    problems = workload("tables", args.cpu, args.reps, gpus) + workload("images", args.cpu, args.reps, gpus)
    for p in problems:
        print(f"FAIL {p}")
    print("gpu-check: " + ("FAILED" if problems else "all checks passed"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
