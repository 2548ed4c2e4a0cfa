"""``make bench``: scoring against a plain ONNX Runtime loop and against Daft, timed in one run.

Every contender runs as a whole command (Python start-up and imports included) at two data
sizes, interleaved rep by rep so drift hits them all alike:

- the loop (``bench/loop.py``): one process, ORT on every core, one file at a time;
- Daft 0.7.26, native runner (``bench/peer_daft.py``, in ``.venv-peers``, built here if missing);
- Ray Data, as Ray's batch-inference guide writes it (``bench/peer_raydata.py``);
- ``scoring run --runner local`` and ``scoring run`` (the Ray runner).

For each: the median wall time at each size, the steady state (the marginal rate between the
two sizes), the fixed overhead (the intercept), and the peak RSS of the whole process tree.
Tables: 1M and 4M rows (MLP 64-256-256-10, 250k-row files); images: 2,000 and 8,000 JPEGs
(224x224, a small CNN). ``--only tables`` also times the same rows as a Delta table, and the
planning of a 20,000-file one (``bench/tables.py``). ``--only s3`` times the tables job from and
to a loopback S3 server against local disk. ``--only models`` decodes real detectors' and a
segmenter's outputs (``bench/models.py``, ``bench/segmenter.py``). ``--only audio``: a VAD over
1,000 sound files and the peak memory of an hour-long one (``bench/audio.py``). Quote medians and
ratios, never one absolute time.
"""

from __future__ import annotations

import argparse
import dataclasses
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
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import yaml

from scoring.demo import make_cnn, make_mlp, write_images, write_tables

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("BENCH_DIR", "bench-data")).resolve()
PEERS = Path(os.environ.get("PEERS_VENV", HERE.parent / ".venv-peers"))
DAFT = "daft==0.7.26"
THREADS = os.cpu_count() or 2
FILE_ROWS = 250_000
SIZES = {"tables": (1_000_000, 4_000_000), "images": (2_000, 8_000)}
UNIT = {"tables": "rows", "images": "img"}
TOTALS = ("ray_init_s", "ready_s", "wall_s")  # from scoring's _job.json


class Failed(Exception):
    """A contender's command exited with an error (or a signal)."""


@dataclasses.dataclass
class Timed:
    wall_s: float
    peak_gb: float
    totals: dict[str, Any] = dataclasses.field(default_factory=dict)  # scoring's _job.json totals


def timed(argv: list[str], job_json: Path | None = None) -> Timed:
    """Run ``argv``; its wall time and the peak RSS of its whole process tree (Ray's included)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise Failed(f"{' '.join(argv[:3])} … exit {proc.returncode}: {proc.stderr.read()[-1500:]}")
    totals = json.loads(job_json.read_text())["totals"] if job_json else {}
    return Timed(wall, peak / 1e9, totals)


def peers_python() -> str | None:
    """Python of ``.venv-peers`` with Daft, made here the first time; None if it cannot be."""
    python = PEERS / "bin" / "python"
    if not python.exists():
        print(f"building {PEERS} with {DAFT} (Daft pins pyarrow<26 and ray<2.58: it needs its own venv)")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
            pkgs = [DAFT, "onnxruntime", "pillow", "numpy"]
            subprocess.run([str(python), "-m", "pip", "install", "-q", *pkgs], check=True)
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"Daft left out: could not build {PEERS} ({exc})")
            shutil.rmtree(PEERS, ignore_errors=True)
            return None
    return str(python)


# -- data and configs --------------------------------------------------------------------------


def tables_data() -> tuple[str, dict[int, Path]]:
    """The MLP and a folder of 250k-row files per size (the small one hard-links the big one's)."""
    model = make_mlp(ROOT / "mlp.onnx", (64, 256, 256, 10))
    small, big = SIZES["tables"]
    folders = {n: ROOT / f"tables-{n // 1_000_000}m" for n in (small, big)}
    if not folders[big].exists():
        write_tables(folders[big], files=big // FILE_ROWS, rows=FILE_ROWS, features=64)
    _link_first(folders[big], folders[small], small // FILE_ROWS, "*.parquet")
    return model, folders


def images_data() -> tuple[str, dict[int, Path]]:
    model = make_cnn(ROOT / "cnn.onnx", size=224, classes=10)
    small, big = SIZES["images"]
    folders = {n: ROOT / f"images-{n // 1000}k" for n in (small, big)}
    if not folders[big].exists():
        write_images(folders[big], count=big, per_folder=1000)
    _link_first(folders[big], folders[small], small, "*/*.jpg")
    return model, folders


def _link_first(src: Path, dst: Path, count: int, pattern: str) -> None:
    if dst.exists():
        return
    for f in sorted(src.glob(pattern))[:count]:
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(f, target)


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


def scoring_argv(config: dict, runner: str) -> list[str]:
    """``scoring run`` of ``config`` (written beside the data, named after its output)."""
    path = ROOT / f"{config['output']['uri'].rstrip('/').rsplit('/', 1)[-1]}.yaml"
    path.write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "scoring", "run", str(path), "--mode", "overwrite", "--runner", runner]


# -- one workload --------------------------------------------------------------------------------


def contenders(kind: str, model: str, folders: dict[int, Path], peers: str | None) -> dict[str, Any]:
    """name -> (size -> (argv, _job.json or None, output folder))."""
    out = ROOT / "out"

    def loop(n: int) -> tuple[list[str], None, Path]:
        pattern = "*.parquet" if kind == "tables" else "*/*.jpg"
        files = [str(p) for p in sorted(folders[n].glob(pattern))]
        return (
            [sys.executable, str(HERE / "loop.py"), kind, model, str(out / "loop"), *files],
            None,
            out / "loop",
        )

    def daft(n: int) -> tuple[list[str], None, Path]:
        argv = [str(peers), str(HERE / "peer_daft.py"), kind, model, str(folders[n]), str(out / "daft")]
        return argv, None, out / "daft"

    def raydata(n: int) -> tuple[list[str], None, Path]:
        argv = [
            sys.executable,
            str(HERE / "peer_raydata.py"),
            kind,
            model,
            str(folders[n]),
            str(out / "raydata"),
        ]
        return argv, None, out / "raydata"

    def scoring(runner: str) -> Any:
        def argv(n: int) -> tuple[list[str], Path, Path]:
            target = out / f"scoring-{runner}"
            if kind == "tables":
                cfg = tables_job(str(folders[n]), model, str(target))
            else:
                cfg = images_job(str(folders[n]), model, str(target), files_per_shard=250)
            return scoring_argv(cfg, runner), target / "_job.json", target

        return argv

    found = {
        "loop": loop,
        "daft": daft,
        "ray data": raydata,
        "scoring local": scoring("local"),
        "scoring ray": scoring("ray"),
    }
    return found if peers else {k: v for k, v in found.items() if k != "daft"}


def measure(kind: str, reps: int, peers: str | None) -> dict[str, dict[int, list[Timed]]]:
    model, folders = tables_data() if kind == "tables" else images_data()
    runs = contenders(kind, model, folders, peers)
    results: dict[str, dict[int, list[Timed]]] = {name: {n: [] for n in SIZES[kind]} for name in runs}
    last_ok = set(runs)  # whose latest output (the big size's) is whole, to compare predictions
    for rep in range(reps):
        for n in SIZES[kind]:
            for name, make in runs.items():
                argv, job, target = make(n)
                shutil.rmtree(target, ignore_errors=True)
                try:
                    results[name][n].append(timed(argv, job))
                    last_ok.add(name)
                except Failed as exc:
                    last_ok.discard(name)
                    if name.startswith("scoring"):
                        raise
                    # A peer's crash is the peer's: reported, left out of its medians.
                    print(f"  rep {rep + 1} {n:>9,} {name:<14} FAILED ({exc})", flush=True)
                    continue
                print(f"  rep {rep + 1} {n:>9,} {name:<14} {results[name][n][-1].wall_s:6.2f}s", flush=True)
    complete = [name for name, by_size in results.items() if all(by_size.values())]
    check_predictions(kind, ROOT / "out", [name for name in runs if name in last_ok])
    return {name: results[name] for name in complete}


def check_predictions(kind: str, out: Path, names: list[str]) -> None:
    """Every contender computed the same thing (the big size's outputs are what is left)."""
    key = "id" if kind == "tables" else "path"
    tables = {}
    for name in names:
        folder = out / name.replace("scoring ", "scoring-").replace("ray data", "raydata")
        folder = folder / "predictions" if (folder / "predictions").exists() else folder
        table = pads.dataset(folder, format="parquet").to_table(columns=[key, "probs"])
        keys = [str(k).removeprefix("file://") for k in table.column(key).to_pylist()]
        order = np.argsort(keys)
        tables[name] = (
            np.array(keys)[order],
            np.stack(table.column("probs").to_numpy(zero_copy_only=False))[order],
        )
    base_keys, base = tables["loop"]
    for name, (keys, probs) in tables.items():
        assert (keys == base_keys).all(), f"{name} scored other rows than the loop"
        diff = float(np.abs(probs - base).max())
        assert diff < 1e-3, f"{name}'s predictions differ from the loop's by {diff}"
    print(f"  predictions of {', '.join(names)} agree with the loop's (max |diff| < 1e-3)")


def report(
    kind: str, results: dict[str, dict[int, list[Timed]]], reps: int, ceiling: float
) -> dict[str, dict[str, float]]:
    small, big = SIZES[kind]
    unit = UNIT[kind]
    print(f"\n== {kind}: whole commands at {small:,} and {big:,} {unit} (median of {reps}) ==")
    print(
        f"{'contender':<15}{'t small':>9}{'t big':>9}{'steady ' + unit + '/s':>17}{'fixed s':>9}"
        f"{'peak GB small/big':>19}{'steady/loop':>13}{'t small/daft':>14}{'of ceiling':>12}"
    )
    rows: dict[str, dict[str, float]] = {}
    for name, by_size in results.items():
        ts, tb = (statistics.median(r.wall_s for r in by_size[n]) for n in (small, big))
        steady = (big - small) / (tb - ts) if tb > ts else float("inf")
        peaks = [statistics.median(r.peak_gb for r in by_size[n]) for n in (small, big)]
        rows[name] = {
            "small": ts,
            "big": tb,
            "steady": steady,
            "fixed": ts - small / steady,
            "peak": peaks[1],
        }
        rows[name]["peak_small"] = peaks[0]
    for name, r in rows.items():
        vs_daft = f"{r['small'] / rows['daft']['small']:.2f}" if "daft" in rows else "-"
        vs_loop = r["steady"] / rows["loop"]["steady"]
        r["of_ceiling"] = r["steady"] / ceiling
        print(
            f"{name:<15}{r['small']:>8.2f}s{r['big']:>8.2f}s{r['steady']:>17,.0f}{r['fixed']:>9.2f}"
            f"{r['peak_small']:>10.2f} / {r['peak']:.2f}{vs_loop:>13.2f}{vs_daft:>14}{r['of_ceiling']:>12.2f}"
        )
    for name in ("scoring local", "scoring ray"):
        totals = [r.totals for r in results[name][small]]
        init, ready, wall = (statistics.median(t.get(k, 0.0) for t in totals) for k in TOTALS)
        print(
            f"{name}: at {small:,} {unit}, ray.init {init:.2f}s, checks + plan + start-up before "
            f"dispatch {ready:.2f}s, job wall {wall:.2f}s"
        )
    return rows


def targets(kind: str, rows: dict[str, dict[str, float]]) -> None:
    loop, local, ray = rows["loop"], rows["scoring local"], rows["scoring ray"]
    steady_local = 1.3 if kind == "tables" else 1.4
    steady_ray = 1.5 if kind == "tables" else 1.4
    checks = [
        (
            f"local: steady >= 0.95 of the machine's ceiling ({local['of_ceiling']:.2f})",
            local["of_ceiling"] >= 0.95,
        ),
        (f"ray: steady >= 0.9 of the machine's ceiling ({ray['of_ceiling']:.2f})", ray["of_ceiling"] >= 0.9),
    ]
    if "ray data" in rows:
        for line in ("steady", "small", "big", "peak"):
            better = (
                ray[line] >= rows["ray data"][line]
                if line == "steady"
                else ray[line] <= rows["ray data"][line]
            )
            checks.append(
                (f"ray ahead of Ray Data on {line} ({ray[line]:.2f} vs {rows['ray data'][line]:.2f})", better)
            )
    checks += [
        (
            f"local: fixed overhead <= loop's + 1 s ({local['fixed']:.2f} vs {loop['fixed']:.2f})",
            local["fixed"] <= loop["fixed"] + 1,
        ),
        (
            f"local: steady >= {steady_local}x loop ({local['steady'] / loop['steady']:.2f}x)",
            local["steady"] >= steady_local * loop["steady"],
        ),
        (
            f"ray: fixed overhead <= loop's + 4 s ({ray['fixed']:.2f} vs {loop['fixed']:.2f})",
            ray["fixed"] <= loop["fixed"] + 4,
        ),
        (
            f"ray: steady >= {steady_ray}x loop ({ray['steady'] / loop['steady']:.2f}x)",
            ray["steady"] >= steady_ray * loop["steady"],
        ),
    ]
    for name in ("scoring local", "scoring ray"):
        r = rows[name]
        checks.append(
            (
                f"{name}: peak memory flat from 1x to 4x ({r['peak_small']:.2f} -> {r['peak']:.2f} GB)",
                r["peak"] <= 1.1 * r["peak_small"],
            )
        )
    if "daft" in rows and kind == "tables":
        checks.append(
            (
                f"local: whole command at 1M rows no slower than Daft's ({local['small']:.2f} vs "
                f"{rows['daft']['small']:.2f} s)",
                local["small"] <= rows["daft"]["small"],
            )
        )
    for text, ok in checks:
        print(f"  {'met ' if ok else 'MISS'} {text}")


def ort_alone(kind: str) -> float:
    """The ceiling: ORT alone on preloaded arrays, every core."""
    model, folders = tables_data() if kind == "tables" else images_data()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    if kind == "tables":
        files = sorted(folders[SIZES[kind][0]].glob("*.parquet"))
        x = np.concatenate(
            [
                pq.read_table(f).column("features").combine_chunks().flatten().to_numpy().reshape(-1, 64)
                for f in files
            ]
        )
        step, feed = 4096, "x"
    else:
        sys.path.insert(0, str(HERE))
        from loop import preprocess

        files = sorted(folders[SIZES[kind][0]].glob("*/*.jpg"))[:512]
        x = np.stack([preprocess(f.read_bytes()) for f in files])
        step, feed = 64, "image"
    sess.run(None, {feed: x[:step]})
    t0 = time.perf_counter()
    for i in range(0, len(x), step):
        sess.run(None, {feed: x[i : i + step]})
    return len(x) / (time.perf_counter() - t0)


def job_ceiling(kind: str) -> tuple[float, float]:
    """The machine's ceiling for the whole job: one shard read, scored and written on one core (ORT
    on one thread), times the cores — what a perfect scheduler of this work could reach — and the
    same shard work run by every core at once (a process each), which is what the cores give
    together when they share the machine's caches and memory (or a host, in a VM)."""
    from multiprocessing import get_context

    with get_context("spawn").Pool(1) as one:
        alone = one.apply(shard_work, (kind,))
    with get_context("spawn").Pool(THREADS) as every:
        together = sum(every.starmap(shard_work, [(kind,)] * THREADS))
    return alone * THREADS, together


def shard_work(kind: str) -> float:
    """Rows (or images) per second of one shard's read, ORT on one thread and write: the best of 3."""
    model, folders = tables_data() if kind == "tables" else images_data()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    best = float("inf")
    for i in range(3):  # the best of three: the ceiling, not a typical run
        t0 = time.perf_counter()
        if kind == "tables":
            f = sorted(folders[SIZES[kind][0]].glob("*.parquet"))[0]
            t = pq.read_table(f, use_threads=False)
            x = t.column("features").combine_chunks().flatten().to_numpy().reshape(-1, 64)
            probs = np.concatenate(
                [sess.run(None, {"x": x[j : j + 4096]})[0] for j in range(0, len(x), 4096)]
            )
            table = pa.table({"id": t.column("id"), "probs": _fixed(probs)})
            n = len(x)
        else:
            sys.path.insert(0, str(HERE))
            from loop import preprocess

            files = sorted(folders[SIZES[kind][0]].glob("*/*.jpg"))[:250]
            batches = [
                np.stack([preprocess(f.read_bytes()) for f in files[j : j + 64]]) for j in range(0, 250, 64)
            ]
            probs = np.concatenate([sess.run(None, {"image": b})[0] for b in batches])
            table = pa.table({"path": [str(f) for f in files], "probs": _fixed(probs)})
            n = len(files)
        pq.write_table(table, ROOT / f"ceiling-{os.getpid()}-{i}.parquet")
        best = min(best, time.perf_counter() - t0)
    for f in ROOT.glob(f"ceiling-{os.getpid()}-*.parquet"):
        f.unlink()
    return n / best


def _fixed(x: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--only",
        choices=[
            "tables",
            "images",
            "s3",
            "small",
            "webdataset",
            "text",
            "photos",
            "faults",
            "models",
            "audio",
        ],
        default=None,
    )
    parser.add_argument("--no-daft", action="store_true", help="leave Daft out (no .venv-peers)")
    args = parser.parse_args()
    ROOT.mkdir(parents=True, exist_ok=True)
    quick = ("s3", "small", "webdataset", "text", "faults", "models", "audio")
    peers = None if args.no_daft or args.only in quick else peers_python()
    for kind in ("tables", "images"):
        if args.only in (None, kind):
            alone, (ceiling, together) = ort_alone(kind), job_ceiling(kind)
            print(f"\n{kind}: ORT alone on preloaded arrays, {THREADS} threads: {alone:,.0f} {UNIT[kind]}/s")
            print(
                f"{kind}: the machine's ceiling for the whole job (read + ORT + write of a shard on one "
                f"core, x {THREADS}): {ceiling:,.0f} {UNIT[kind]}/s; the same work on every core at once: "
                f"{together:,.0f} ({together / ceiling:.2f} of it)"
            )
            rows = report(kind, measure(kind, args.reps, peers), args.reps, ceiling)
            targets(kind, rows)
        if kind == "tables" and args.only in (None, "tables"):
            from tables import lakehouse

            lakehouse(args.reps)
    if args.only in (None, "small"):
        from formats import small_files

        small_files(args.reps)
    if args.only in (None, "webdataset"):
        from formats import webdataset

        webdataset(args.reps)
    if args.only in (None, "photos"):
        from photos import photos

        photos(args.reps, peers)
    if args.only in (None, "text"):
        from text import text_vs_loop

        text_vs_loop(args.reps)
    if args.only in (None, "audio"):
        from audio import audio_vs_loop

        audio_vs_loop(args.reps)
    if args.only in (None, "faults"):
        from faults import faults

        faults(args.reps)
    if args.only in (None, "s3"):
        from s3 import s3_vs_local

        s3_vs_local(args.reps)
    if args.only in (None, "models"):
        from models import models

        models(args.reps)


if __name__ == "__main__":
    main()
