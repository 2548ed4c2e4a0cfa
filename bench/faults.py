"""``make bench`` (``--only faults``): one predictor process killed mid-job, side by side.

The tables bench's 4M rows on Ray, twice per contender and rep: once undisturbed, once with one
predictor actor's process killed (SIGKILL) when 40 % of the undisturbed time has passed — Ray
Data's ``MapWorker`` (Ray Data restarts actors and retries their tasks: ``max_restarts=-1``) and
scoring's ``ShardActor`` (the driver replaces it and scores its shards again). Printed: the exit
code, the time the fault cost (median), and what a user checks after: every row exactly once.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.dataset as pads

from bench import HERE, ROOT, SIZES, scoring_argv, tables_data, tables_job

WORKERS = {"ray data": "ray::MapWorker", "scoring ray": "ray::ShardActor"}


def argv_of(name: str, model: str, data: Path, out: Path) -> list[str]:
    if name == "ray data":
        return [sys.executable, str(HERE / "peer_raydata.py"), "tables", model, str(data), str(out)]
    return scoring_argv(tables_job(str(data), model, str(out)), "ray")


def one(argv: list[str], kill_after: float | None, worker: str) -> tuple[float, int, bool]:
    """Wall time and exit code of ``argv``; with ``kill_after``, one ``worker`` process killed
    then (whether one was found)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = False
    while proc.poll() is None:
        if kill_after is not None and not killed and time.perf_counter() - t0 >= kill_after:
            victims = [p for p in _tree(proc.pid) if _named(p, worker)]
            if victims:
                os.kill(victims[0].pid, signal.SIGKILL)
                killed = True
        time.sleep(0.05)
    return time.perf_counter() - t0, proc.returncode, killed


def _tree(pid: int) -> list[psutil.Process]:
    """The command's processes: the Ray it started (``ray.init``) is below it, workers included."""
    try:
        mine = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    return mine


def _named(p: psutil.Process, prefix: str) -> bool:
    try:
        return any(part.startswith(prefix) for part in p.cmdline()[:1]) or p.name().startswith(prefix)
    except psutil.Error:
        return False


def rows_once(out: Path, expected: int) -> tuple[int, int, int]:
    """(rows, ids seen more than once, ids missing) of a contender's output."""
    folder = out / "predictions" if (out / "predictions").exists() else out
    ids = pads.dataset(folder, format="parquet").to_table(columns=["id"]).column("id").to_numpy()
    counts = np.bincount(ids, minlength=expected)
    return len(ids), int((counts > 1).sum()), int((counts == 0).sum())


def faults(reps: int) -> None:
    model, folders = tables_data()
    n = SIZES["tables"][1]
    data, out = folders[n], ROOT / "out"
    results: dict[str, dict[str, list]] = {name: {"clean": [], "fault": [], "checks": []} for name in WORKERS}
    for rep in range(reps):
        for name, worker in WORKERS.items():
            target = out / f"fault-{name.replace(' ', '')}"
            subprocess.run(["rm", "-rf", str(target)], check=True)
            wall, code, _ = one(argv_of(name, model, data, target), None, worker)
            results[name]["clean"].append(wall)
            subprocess.run(["rm", "-rf", str(target)], check=True)
            after = 0.4 * statistics.median(results[name]["clean"])
            wall, code, killed = one(argv_of(name, model, data, target), after, worker)
            seen = rows_once(target, n) if code == 0 else (0, 0, n)
            results[name]["fault"].append(wall)
            results[name]["checks"].append((code, killed, *seen))
            print(
                f"  rep {rep + 1} {name:<12} clean {results[name]['clean'][-1]:6.2f}s, with a worker killed "
                f"{wall:6.2f}s (exit {code}, killed: {killed}, rows {seen[0]:,}, doubled {seen[1]:,}, "
                f"missing {seen[2]:,})",
                flush=True,
            )
    print(f"\n== faults: {n:,} rows on Ray, one predictor process killed at 40 % (median of {reps}) ==")
    print(f"{'contender':<14}{'clean':>8}{'killed':>9}{'lost':>8}  exit, rows, doubled, missing (each rep)")
    for name, r in results.items():
        clean, fault = statistics.median(r["clean"]), statistics.median(r["fault"])
        checks = "; ".join(f"{c[0]}, {c[2]:,}, {c[3]:,}, {c[4]:,}" for c in r["checks"])
        print(f"{name:<14}{clean:>7.2f}s{fault:>8.2f}s{fault - clean:>7.2f}s  {checks}")
    for name, r in results.items():
        once = all(c[0] == 0 and c[2] == n and c[3] == 0 and c[4] == 0 for c in r["checks"])
        print(f"  {'met ' if once else 'MISS'} {name}: every row exactly once after a worker was killed")
