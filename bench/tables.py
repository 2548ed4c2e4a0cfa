"""``make bench`` (``--only tables``, after the Parquet folders): the same rows as a Delta table.

- throughput: the tables bench's 1M and 4M rows as Delta tables (the same 250k-row files, hard
  linked, made tables by ``deltalake.convert_to_deltalake``), against the Parquet folders, on
  the local runner: the steady state of each (the marginal rate between the sizes) and the ratio;
- planning: a Delta table of 20,000 files of 100 rows (the small-files bench's, converted):
  ``job.check`` and the plan, in this process (median), against the same files as a folder.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from formats import run, small_data

from bench import ROOT, SIZES, scoring_argv, tables_data, tables_job


def as_delta(folder: Path, name: str) -> Path:
    """``folder``'s Parquet files, hard linked into a Delta table of their own (made once)."""
    from deltalake import convert_to_deltalake

    target = ROOT / name
    if not (target / "_delta_log").exists():
        print(f"making {name}: {folder.name}'s files as a Delta table (once)", flush=True)
        target.mkdir(exist_ok=True)
        for f in sorted(folder.glob("*.parquet")):
            if not (target / f.name).exists():
                os.link(f, target / f.name)
        convert_to_deltalake(str(target))
    return target


def delta_vs_parquet(reps: int) -> None:
    model, folders = tables_data()
    small, big = SIZES["tables"]
    tables = {n: as_delta(folders[n], f"delta-{n // 1_000_000}m") for n in (small, big)}
    walls: dict[str, dict[int, list[float]]] = {
        "parquet folder": {small: [], big: []},
        "delta table": {small: [], big: []},
    }
    out = ROOT / "out"
    for rep in range(reps):
        for n in (small, big):
            for name in walls:
                target = out / f"lake-{name.split()[0]}"
                source = folders[n] if name == "parquet folder" else tables[n]
                cfg = tables_job(str(source), model, str(target))
                cfg["input"]["format"] = "parquet" if name == "parquet folder" else "delta"
                walls[name][n].append(run(scoring_argv(cfg, "local"), target)["wall"])
                print(f"  rep {rep + 1} {n:>9,} {name:<15} {walls[name][n][-1]:6.2f}s", flush=True)
    print(f"\n== tables as a Delta table: local runner, {small:,} and {big:,} rows (median of {reps}) ==")
    steady = {}
    for name, by_size in walls.items():
        ts, tb = (statistics.median(by_size[n]) for n in (small, big))
        steady[name] = (big - small) / (tb - ts) if tb > ts else float("inf")
        print(f"{name:<16} {ts:6.2f}s {tb:6.2f}s  steady {steady[name]:10,.0f} rows/s")
    ratio = steady["delta table"] / steady["parquet folder"]
    print(f"  {'met ' if ratio >= 0.95 else 'MISS'} delta table >= 0.95x the Parquet folder ({ratio:.2f}x)")


def planning(reps: int) -> None:
    from scoring import plan
    from scoring.config_file import load_config
    from scoring.job import check

    model, many, _ = small_data()
    table = as_delta(many, "delta-20kfiles")
    times: dict[str, list[float]] = {"delta table": [], "parquet folder": []}
    for _ in range(reps):
        for name, source in (("delta table", table), ("parquet folder", many)):
            cfg = tables_job(str(source), model, str(ROOT / "out" / "planning"))
            cfg["input"]["format"] = "delta" if name == "delta table" else "parquet"
            config = load_config(data=cfg, environ={})
            t0 = time.perf_counter()
            spec, files = check(config)
            shards = plan.make_plan(config, spec.model.sha256, spec.format, files).shards
            times[name].append(time.perf_counter() - t0)
    print(f"\n== planning 20,000 files of 100 rows: checks and the plan, in-process (median of {reps}) ==")
    for name, ts in times.items():
        print(f"{name:<16} {statistics.median(ts):6.2f}s")
    took = statistics.median(times["delta table"])
    print(
        f"  {'met ' if took <= 2 else 'MISS'} a 20,000-file Delta table planned in <= 2 s "
        f"({took:.2f} s, {len(shards)} shards)"
    )


def lakehouse(reps: int) -> None:
    delta_vs_parquet(reps)
    planning(reps)
