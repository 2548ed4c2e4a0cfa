"""``make bench`` (``--only small`` / ``--only webdataset``): inputs as pipelines leave them.

- small: 2,000,000 rows as 20,000 Parquet files of 100 rows against the same rows in 8 files,
  ``scoring run --runner local`` on both: the whole command's time (median), the ratio, the files
  under ``OUT/predictions/``, and how long after the command started the first shard started.
- webdataset: the bench's JPEGs as WebDataset tars (250 samples each) against the same JPEGs in
  a folder (250 files a shard), local runner, at 2,000 and 8,000 images: the steady state of each
  and their ratio.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from bench import ROOT, SIZES, images_data, images_job, scoring_argv, tables_data, tables_job

SMALL_FILES, SMALL_ROWS = 20_000, 100
TAR_SAMPLES = 250


def run(argv: list[str], out: Path) -> dict[str, float]:
    """A whole command: its wall time, and when its first shard started after the command did."""
    t0 = time.time()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} … exit {proc.returncode}: {proc.stderr[-1500:]}")
    started = pq.read_table(out / "_shards.parquet").column("started_at").to_pylist()
    return {"wall": wall, "first": min(s.timestamp() for s in started) - t0}


# -- small files -------------------------------------------------------------------------------


def small_data() -> tuple[str, Path, Path]:
    """The MLP, 20,000 files of 100 rows, and the same rows in 8 files (hard links to the tables
    bench's 250k-row files)."""
    model, folders = tables_data()
    few = folders[SIZES["tables"][1]]  # 16 files of 250k: the first 8 are 2M rows
    eight = ROOT / "tables-2m-8files"
    if not eight.exists():
        eight.mkdir()
        for f in sorted(few.glob("*.parquet"))[:8]:
            os.link(f, eight / f.name)
    many = ROOT / "tables-2m-20kfiles"
    if not many.exists():
        print(f"writing {SMALL_FILES:,} files of {SMALL_ROWS} rows (once)", flush=True)
        tmp = ROOT / "tables-2m-20kfiles.tmp"
        tmp.mkdir(exist_ok=True)
        i = 0
        for f in sorted(eight.glob("*.parquet")):
            table = pq.read_table(f)
            for start in range(0, table.num_rows, SMALL_ROWS):
                pq.write_table(table.slice(start, SMALL_ROWS), tmp / f"part-{i:05d}.parquet")
                i += 1
        tmp.rename(many)
    return model, many, eight


def small_files(reps: int) -> None:
    model, many, eight = small_data()
    out = ROOT / "out"
    runs: dict[str, list[dict[str, float]]] = {"20,000 files": [], "8 files": []}
    for rep in range(reps):
        for name, data in (("20,000 files", many), ("8 files", eight)):
            target = out / f"small-{name.split()[0].replace(',', '')}"
            argv = scoring_argv(tables_job(str(data), model, str(target)), "local")
            runs[name].append(run(argv, target))
            print(f"  rep {rep + 1} {name:<13} {runs[name][-1]['wall']:6.2f}s", flush=True)
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("wall", "first")} for n, rs in runs.items()}
    files = len(list((out / "small-20000" / "predictions").iterdir()))
    ratio = med["20,000 files"]["wall"] / med["8 files"]["wall"]
    print(f"\n== small files: 2,000,000 rows, local runner (median of {reps}) ==")
    for name, m in med.items():
        print(f"{name:<14} whole command {m['wall']:6.2f}s, first shard {m['first']:.2f}s after the command")
    print(f"20,000 files / 8 files: {ratio:.2f}x the time; {files} files under OUT/predictions/")
    for text, ok in (
        (f"wall <= 3x the 8 files' ({ratio:.2f}x)", ratio <= 3),
        (f"<= 40 files under OUT/predictions/ ({files})", files <= 40),
        (
            f"first shard <= 2 s after the command ({med['20,000 files']['first']:.2f} s)",
            med["20,000 files"]["first"] <= 2,
        ),
    ):
        print(f"  {'met ' if ok else 'MISS'} {text}")


# -- webdataset ----------------------------------------------------------------------------------


def tars(folder: Path) -> Path:
    """``folder``'s JPEGs as tars of ``TAR_SAMPLES`` samples (key = the file's name), beside it."""
    target = folder.with_name(folder.name + "-wds")
    if target.exists():
        return target
    tmp = target.with_name(target.name + ".tmp")
    tmp.mkdir(exist_ok=True)
    files = sorted(folder.glob("*/*.jpg"))
    for n, start in enumerate(range(0, len(files), TAR_SAMPLES)):
        with tarfile.open(tmp / f"shard-{n:06d}.tar", "w") as tar:
            for f in files[start : start + TAR_SAMPLES]:
                tar.add(f, arcname=f"{f.parent.name}/{f.name}")
    tmp.rename(target)
    return target


def webdataset(reps: int) -> None:
    model, folders = images_data()
    out = ROOT / "out"
    small, big = SIZES["images"]
    walls: dict[str, dict[int, list[float]]] = {
        "image folder": {small: [], big: []},
        "webdataset": {small: [], big: []},
    }
    for rep in range(reps):
        for n in (small, big):
            for name in walls:
                target = out / f"wds-{name.split()[0]}"
                if name == "webdataset":
                    cfg = images_job(str(tars(folders[n])), model, str(target), files_per_shard=TAR_SAMPLES)
                    cfg["input"]["format"] = "webdataset"
                else:
                    cfg = images_job(str(folders[n]), model, str(target), files_per_shard=TAR_SAMPLES)
                walls[name][n].append(run(scoring_argv(cfg, "local"), target)["wall"])
                print(f"  rep {rep + 1} {n:>6,} {name:<13} {walls[name][n][-1]:6.2f}s", flush=True)
    steady = {}
    print(f"\n== webdataset: the same JPEGs, local runner, {small:,} and {big:,} (median of {reps}) ==")
    for name, by_size in walls.items():
        ts, tb = (statistics.median(by_size[n]) for n in (small, big))
        steady[name] = (big - small) / (tb - ts) if tb > ts else float("inf")
        print(f"{name:<14} {ts:6.2f}s {tb:6.2f}s  steady {steady[name]:8,.0f} img/s")
    ratio = steady["webdataset"] / steady["image folder"]
    print(f"  {'met ' if ratio >= 0.95 else 'MISS'} webdataset >= 0.95x the image folder ({ratio:.2f}x)")


if __name__ == "__main__":
    (small_files if sys.argv[1] == "small" else webdataset)(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
