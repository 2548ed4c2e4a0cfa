"""Faults, for real: the CLI in its own process, stopped by Ctrl-C on a terminal, SIGTERM,
SIGKILL of the driver or of a worker process, the rejected-rows limit, input that changed.

After each, what a user checks: every input row exactly once (predictions or errors), and
``OUT/predictions/`` readable as a dataset by pyarrow and by Ray Data.
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
import psutil
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml
from support import Terminal, features_job, run_to_end, start_run

from scoring.demo import make_mlp, write_tables

pytestmark = pytest.mark.slow

FILES, ROWS = 8, 40_000


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """8 files of 40k rows and an MLP heavy enough (~0.4 s a shard) to stop a job halfway."""
    root = tmp_path_factory.mktemp("faults")
    model = make_mlp(root / "mlp.onnx", (64, 512, 512, 10))
    write_tables(root / "data", files=FILES, rows=ROWS, features=64)
    return {"model": model, "data": root / "data"}


def config(tmp_path: Path, data: dict[str, Any], runner: str = "ray", **extra: Any) -> Path:
    cfg = features_job(data["data"], data["model"], keep=["id"], actors=2, batch_size=4096, runner=runner)
    cfg["output"] = {"uri": str(tmp_path / "out")}
    cfg["input"]["rows_per_shard"] = ROWS  # a shard per file
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# The Ray variants are about the fault; what they leave is resumed on the local runner (the same
# markers and plan, a Ray start less).
RESUME_HERE = ("--runner", "local")


def markers(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "_progress").glob("*.json")) if (out / "_progress").exists() else []


def wait_for(condition: Any, timeout: float = 120, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def assert_readable(out: Path, running: bool = False) -> pa.Table:
    """``predictions/`` as pyarrow and Ray Data read it: complete files only, the same rows (while
    a job runs, each reader sees whole shards, perhaps a different number of them)."""
    import ray

    table = pads.dataset(out / "predictions", format="parquet").to_table()
    visible = [p.name for p in (out / "predictions").iterdir() if not p.name.startswith((".", "_"))]
    assert all(name.startswith("part-") and name.endswith(".parquet") for name in visible), visible
    if visible:
        count = ray.data.read_parquet(str(out / "predictions")).count()
        assert count % ROWS == 0 if running else count == table.num_rows
    return table


def assert_exactly_once(out: Path) -> None:
    table = assert_readable(out)
    ids = np.sort(table.column("id").to_numpy())
    np.testing.assert_array_equal(ids, np.arange(FILES * ROWS))
    job = json.loads((out / "_job.json").read_text())
    assert job["status"] == "succeeded" and job["totals"]["rows"] == FILES * ROWS


def assert_summary_matches_markers(out: Path) -> dict[str, Any]:
    """``_shards.parquet`` lists exactly the shards with a marker; totals add up and are >= 0."""
    job = json.loads((out / "_job.json").read_text())
    shards = pq.read_table(out / "_shards.parquet").to_pylist()
    settled = markers(out)
    assert len(shards) == len(settled) == job["totals"]["shards"]
    assert (
        sorted(f"part-{int(s['shard'].rsplit('-', 1)[1].split('.')[0]):06d}.json" for s in shards) == settled
    )
    totals = job["totals"]
    assert totals["rows"] == sum(s["rows"] for s in shards) >= 0
    assert totals["rows_per_s"] >= 0 and totals["rows_failed"] >= 0
    return job


@pytest.fixture(scope="module", autouse=True)
def _ray_data(ray_session: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Ray Data reads the predictions in the test process (the jobs run Ray of their own); its
    first read in a process takes seconds, so it is made here, not while a job runs."""
    folder = tmp_path_factory.mktemp("warm")
    pq.write_table(pa.table({"x": [1]}), folder / "x.parquet")
    assert ray_session.data.read_parquet(str(folder)).count() == 1


@pytest.mark.parametrize("runner", ["ray", "local"])
def test_ctrl_c_on_a_terminal_stops_in_seconds_and_resume_finishes(
    tmp_path: Path, data: dict, runner: str
) -> None:
    path = config(tmp_path, data, runner)
    out = tmp_path / "out"
    term = Terminal([sys.executable, "-m", "scoring", "run", str(path)])
    deadline = time.time() + 120
    while len(markers(out)) < 2 and time.time() < deadline:
        term.read()
        time.sleep(0.05)
    assert len(markers(out)) >= 2, term.text
    term.type(b"\x03")  # Ctrl-C: the terminal sends SIGINT to the whole foreground group
    typed = time.time()
    status = term.wait(timeout=30)
    text = term.text
    assert status == 130, text
    assert time.time() - typed < 15
    job = assert_summary_matches_markers(out)
    done = job["totals"]["shards_complete"]
    assert job["status"] == "interrupted" and 2 <= done < FILES
    assert f"interrupted: {done} of {FILES} shards complete; run again with --mode resume to finish" in text
    assert "Aborted!" not in text and "Traceback" not in text
    assert len(assert_readable(out)) == done * ROWS  # only settled shards' files are visible

    proc = run_to_end(path, "--mode", "resume", *RESUME_HERE)
    assert proc.returncode == 0, proc.stderr
    assert f"scoring {FILES - done} of {FILES} shard(s)" in proc.stdout
    assert_exactly_once(out)


def test_predictions_are_readable_while_the_job_runs_and_sigterm_stops_it(tmp_path: Path, data: dict) -> None:
    path = config(tmp_path, data, "local", compute={"actors": 1, "shards_in_flight": 1})  # a commit at a time
    out = tmp_path / "out"
    proc = start_run(path)
    wait_for(lambda: (out / "predictions").exists(), what="the job to start")
    reads, seen = 0, set()
    while len(markers(out)) < 4 and proc.poll() is None:
        # Shards are being written all along (hidden files); every read sees complete files only.
        rows = len(assert_readable(out, running=True))
        assert rows % ROWS == 0
        seen.add(rows // ROWS)
        reads += 1
    assert reads >= 3 and len(seen - {0}) >= 2, (reads, seen)  # read between commits, several times
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "run again with --mode resume to finish" in stderr
    assert json.loads((out / "_job.json").read_text())["status"] == "interrupted"
    assert_summary_matches_markers(out)
    assert_readable(out)


@pytest.mark.parametrize("runner", ["ray", "local"])
def test_driver_killed_its_workers_stop_and_resume_finishes(tmp_path: Path, data: dict, runner: str) -> None:
    path = config(tmp_path, data, runner)
    out = tmp_path / "out"
    proc = start_run(path)
    wait_for(lambda: len(markers(out)) >= 2, what="two shards")
    tree = psutil.Process(proc.pid).children(recursive=True)
    workers = [p for p in tree if "ShardActor" in " ".join(p.cmdline())]
    assert len(workers) == (2 if runner == "ray" else 0)  # the local runner's are threads of the driver
    proc.kill()  # SIGKILL: no handler runs, no summary is written
    proc.wait()
    killed = time.time()
    # Workers of a dead driver stop at their next chunk: they do not rely on Ray noticing.
    psutil.wait_procs(workers, timeout=15)
    assert not [w for w in workers if w.is_running()]
    stopped_after = time.time() - killed
    settled = markers(out)
    time.sleep(1)
    assert markers(out) == settled and stopped_after < 15
    assert not (out / "_job.json").exists()
    assert len(assert_readable(out)) <= len(settled) * ROWS  # complete files only, nothing half-written
    report = subprocess.run(
        [sys.executable, "-m", "scoring", "report", str(out)], capture_output=True, text=True, timeout=60
    )
    assert report.returncode == 0, report.stderr
    assert f"status: stopped (its driver (pid {proc.pid} on " in report.stdout  # not "running"
    assert "is gone" in report.stdout and "--mode resume" in report.stdout

    proc2 = run_to_end(path, "--mode", "resume", *RESUME_HERE)
    assert proc2.returncode == 0, proc2.stderr
    assert not [p for p in os.listdir(out / "predictions") if p.startswith(".")]  # leftovers swept
    assert_exactly_once(out)


def test_a_worker_killed_mid_shard_is_replaced_and_no_row_is_doubled(tmp_path: Path, data: dict) -> None:
    path = config(tmp_path, data)
    out = tmp_path / "out"
    proc = start_run(path)

    def mid_shard() -> bool:  # a shard has started writing its predictions, and is not settled
        temps = [p.name for p in (out / "predictions").glob(".part-*.tmp")] if out.exists() else []
        return bool(temps) and len(markers(out)) >= 1

    wait_for(mid_shard, what="a shard in the middle of being written")
    tree = psutil.Process(proc.pid).children(recursive=True)
    victim = next(p for p in tree if "ShardActor" in " ".join(p.cmdline()))
    victim.kill()
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "its worker process died" in stdout and "scoring it again" in stdout
    assert_exactly_once(out)
    shards = pq.read_table(out / "_shards.parquet").to_pylist()
    assert len(shards) == FILES and {s["status"] for s in shards} == {"succeeded"}


def test_the_rejected_rows_limit_stops_a_job_with_shards_in_flight(tmp_path: Path, data: dict) -> None:
    # Every shard of this input has 10 bad rows: the first settled shard trips the limit while
    # the other worker and the second slot of each still hold shards.
    bad = tmp_path / "bad"
    bad.mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):
        x = rng.standard_normal((50_000, 64)).astype(np.float32)
        rows = [None if r % 5000 == 0 else list(v) for r, v in enumerate(x)]
        ids = np.arange(i * 50_000, (i + 1) * 50_000)
        pq.write_table(
            pa.table({"id": ids, "features": pa.array(rows, pa.list_(pa.float32(), 64))}),
            bad / f"part-{i:03d}.parquet",
        )
    path = config(
        tmp_path,
        {**data, "data": bad},
        "local",
        errors={"max_rejected_rows": 5},
        input={"rows_per_shard": 50_000},
    )
    out = tmp_path / "out"
    proc = run_to_end(path)
    assert proc.returncode == 1
    assert "more than errors.max_rejected_rows=5" in proc.stderr
    job = assert_summary_matches_markers(out)
    assert job["status"] == "failed" and job["totals"]["rows_failed"] == 10 * job["totals"]["shards"]
    errors = pq.read_table(out / "_errors.parquet")
    assert errors.num_rows == job["totals"]["rows_failed"]
    assert set(errors.column("error").to_pylist()) == {"NullValue"}
    table = assert_readable(out)
    assert table.num_rows == job["totals"]["rows"] - job["totals"]["rows_failed"]
    ids = table.column("id").to_numpy()
    assert len(np.unique(ids)) == len(ids)  # no row twice
    settled = {int(m[len("part-") : -len(".json")]) for m in markers(out)}
    assert set(np.unique(ids // 50_000).tolist()) <= settled  # nothing of a shard in flight is visible


def test_input_added_changed_or_removed_between_runs(tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "m.onnx", (8, 4))
    data = tmp_path / "data"
    write_tables(data, files=3, rows=100, features=8)
    cfg = features_job(data, model, keep=["id"], actors=1, runner="local")
    cfg["input"]["rows_per_shard"] = 100  # a shard per file
    cfg["output"] = {"uri": str(tmp_path / "out")}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert run_to_end(path).returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in (out / "predictions").iterdir()}

    # A file whose name sorts first: a new shard with the next index; no shard changes name.
    x = np.ones((7, 8), np.float32)
    pq.write_table(
        pa.table(
            {"id": np.arange(1000, 1007), "features": pa.FixedSizeListArray.from_arrays(x.reshape(-1), 8)}
        ),
        data / "part-000-early.parquet",
    )
    proc = run_to_end(path, "--mode", "resume")
    assert proc.returncode == 0, proc.stderr
    assert f"1 new shard(s) for input files added since the plan was made: {data}/part-000-early.parquet" in (
        proc.stdout
    )
    after = {p.name: p.stat().st_mtime_ns for p in (out / "predictions").iterdir()}
    assert {k: after[k] for k in before} == before  # the shards already done were kept as they were
    assert sorted(after) == [f"part-00000{i}.parquet" for i in range(4)]
    preds = pq.read_table(out / "predictions").to_pylist()
    assert sorted(r["id"] for r in preds) == list(range(300)) + list(range(1000, 1007))
    early = [r for r in preds if r["id"] >= 1000]
    assert {r["shard"] for r in early} == {str(data / "part-000-early.parquet")}

    (data / "part-001.parquet").write_bytes((data / "part-002.parquet").read_bytes())  # content changed
    proc = run_to_end(path, "--mode", "resume")
    assert proc.returncode == 2
    assert f"input file {data}/part-001.parquet changed since the plan was made" in proc.stderr
    assert "--mode overwrite" in proc.stderr

    (data / "part-001.parquet").unlink()
    proc = run_to_end(path, "--mode", "resume")
    assert proc.returncode == 2
    assert (
        f"input file {data}/part-001.parquet was in the plan (shard {data}/part-001.parquet) but is gone"
        in (proc.stderr)
    )

    proc = run_to_end(path, "--mode", "resume", "--set", "input.keep=[]")
    assert proc.returncode == 2
    assert "config key 'input.keep' changed since the plan was made ([\"id\"] then, [] now)" in proc.stderr
    make_mlp(tmp_path / "m.onnx", (8, 4), seed=7)
    proc = run_to_end(path, "--mode", "resume")
    assert proc.returncode == 2 and "the model changed since the plan was made" in proc.stderr
