"""``make gpu-check``: on a machine with an NVIDIA GPU, score a table job and an image job on GPU.

Checks that the sessions really ran on the CUDA provider (``_job.json`` providers, ``_shards``
device), that GPU predictions agree with a CPU run of the same shards, and prints throughput
against ONNX Runtime alone on the same GPU: (a) ORT on preloaded arrays, (b) the single-process
streaming loop, (c) ``scoring run`` with one actor per GPU, image decoding on CPU tasks.

``--cpu`` runs the same steps on CPU (fallback allowed), to check the script itself on a machine
without a GPU; its figures say nothing about GPUs. Exit 0 when every check passes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
import bench  # noqa: E402
from scoring.demo import make_cnn, make_mlp, write_images, write_tables  # noqa: E402

ROOT = Path(os.environ.get("BENCH_DIR", "bench-data")).resolve() / "gpu-check"


def providers(cpu: bool) -> list[str]:
    return ["CPUExecutionProvider"] if cpu else ["CUDAExecutionProvider", "CPUExecutionProvider"]


def kind(cpu: bool) -> str:
    return "CPU (--cpu: a check of the script, not of a GPU)" if cpu else "GPU"


def gpu_compute(cpu: bool, gpus: int) -> dict:
    """One actor per GPU (with --cpu: one CPU actor)."""
    return {"gpus_per_actor": 0 if cpu else 1, "actors": gpus}


def predictions(out: Path) -> np.ndarray:
    table = pq.read_table(out / "predictions").sort_by([("shard", "ascending"), ("row", "ascending")])
    return np.stack(table.column("probs").to_numpy(zero_copy_only=False))


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
    return problems


def agree(gpu_out: Path, cfg: dict, name: str) -> list[str]:
    """Score the same shards on CPU and compare (GPU kernels differ in the last bits)."""
    cpu_cfg = json.loads(json.dumps(cfg))
    cpu_cfg["output"]["uri"] = str(ROOT / f"{name}-cpu-out")
    cpu_cfg["compute"] = {**cpu_cfg["compute"], "gpus_per_actor": 0}
    cpu_cfg["compute"].pop("actors", None)
    bench.scoring_run(cpu_cfg, 1)
    gpu, cpu = predictions(gpu_out), predictions(Path(cpu_cfg["output"]["uri"]))
    if gpu.shape != cpu.shape:
        return [f"{name}: GPU predictions {gpu.shape} vs CPU {cpu.shape}"]
    worst = float(np.max(np.abs(gpu - cpu)))
    print(f"    GPU vs CPU predictions: max |diff| {worst:.2e} over {gpu.size:,} values")
    return [] if np.allclose(gpu, cpu, rtol=1e-3, atol=1e-4) else [f"{name}: GPU and CPU disagree ({worst})"]


def tables(cpu: bool, reps: int, gpus: int) -> list[str]:
    data = ROOT / "tables"
    if not data.exists():
        write_tables(data, files=8, rows=250_000, features=64)
    files = sorted(str(p) for p in data.glob("*.parquet"))
    model = make_mlp(ROOT / "mlp.onnx", (64, 256, 256, 10))
    a = bench.ort_alone_tables(model, files, providers=providers(cpu))
    b = [bench.loop_tables(model, files, ROOT / "loop-out", providers=providers(cpu)) for _ in range(reps)]
    cfg = bench.tables_job(
        str(data), model, str(ROOT / "tables-out"), keep=(), batch_size=8192, **gpu_compute(cpu, gpus)
    )
    cfg["model"]["allow_cpu_fallback"] = cpu
    c = [bench.scoring_run(cfg, 8 * 250_000) for _ in range(reps)]
    bench.report(f"{kind(cpu)} tables, 2,000,000 rows x 64 float32, MLP", "rows", a, b, c)
    return check_run(ROOT / "tables-out", cpu) + agree(ROOT / "tables-out", cfg, "tables")


def images(cpu: bool, reps: int, gpus: int) -> list[str]:
    data = ROOT / "images"
    if not data.exists():
        write_images(data, count=4000, per_folder=500)
    files = sorted(str(p) for p in data.rglob("*.jpg"))
    model = make_cnn(ROOT / "cnn.onnx", size=224, classes=10)
    a = bench.ort_alone_images(model, files, providers=providers(cpu))
    out = ROOT / "loop-img-out"
    b = [bench.loop_images(model, files, out, providers=providers(cpu)) for _ in range(reps)]
    cfg = bench.images_job(str(data), model, str(ROOT / "images-out"), 250, **gpu_compute(cpu, gpus))
    cfg["model"]["allow_cpu_fallback"] = cpu
    c = [bench.scoring_run(cfg, len(files)) for _ in range(reps)]
    bench.report(f"{kind(cpu)} images, 4,000 JPEGs 224x224, small CNN, decode on CPU tasks", "img", a, b, c)
    return check_run(ROOT / "images-out", cpu) + agree(ROOT / "images-out", cfg, "images")


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
    gpus = 1  # with --cpu: one 1-CPU actor, the check of the plumbing only
    if not args.cpu:
        import ray  # only to count the GPUs Ray will see, the way the job will

        ray.init(address="local", include_dashboard=False, logging_level=logging.ERROR)
        gpus = max(1, int(ray.cluster_resources().get("GPU", 0)))
        ray.shutdown()
        print(f"onnxruntime {ort.__version__}, providers {available}; {gpus} GPU(s), one actor each")
    ROOT.mkdir(parents=True, exist_ok=True)
    problems = tables(args.cpu, args.reps, gpus) + images(args.cpu, args.reps, gpus)
    for p in problems:
        print(f"FAIL {p}")
    print("gpu-check: " + ("FAILED" if problems else "all checks passed"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
