"""What a person sees: the live progress on a terminal and in a log, and the report page."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from support import Terminal, features_job, write_parquet

from scoring.demo import make_mlp, write_tables

pytestmark = pytest.mark.slow


def job_with_bad_rows(tmp_path: Path) -> Path:
    """4 shards for 2 workers: one with null rows, one corrupt file, two clean."""
    model = make_mlp(tmp_path / "m.onnx", (8, 64, 4))
    write_tables(tmp_path / "d", files=2, rows=20_000, features=8)
    x = np.ones((1_000, 8), np.float32)
    rows = [None if i % 100 == 0 else list(r) for i, r in enumerate(x)]
    write_parquet(
        tmp_path / "d" / "part-002.parquet",
        {"id": np.arange(1_000), "features": pa.array(rows, pa.list_(pa.float32(), 8))},
    )
    (tmp_path / "d" / "part-003.parquet").write_bytes(b"PAR1 not parquet at all PAR1")
    cfg = {
        **features_job(tmp_path / "d", model, keep=["id"], actors=2),
        "output": {"uri": str(tmp_path / "o")},
    }
    cfg["compute"]["runner"] = "local"
    cfg["input"]["rows_per_shard"] = 16_000  # a shard per file: none is under a sixteenth of that
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_terminal_gets_one_live_bar_and_no_ray_noise(tmp_path: Path) -> None:
    path = job_with_bad_rows(tmp_path)
    term = Terminal([sys.executable, "-m", "scoring", "run", str(path), "--runner", "ray"])
    code, text = term.wait(timeout=120), term.text
    assert code == 0, text
    assert "100%  41,001/41,001 rows  4/4 shards" in text, text  # the unreadable file: 1 row, unknown before
    assert "rows/s  ETA 0:00:00" in text and "11 rejected, 1 failed" in text
    assert "part-003.parquet: failed: read (part-003.parquet the whole file): " in text  # its own line
    assert "[1/4]" not in text  # no per-shard lines under the bar
    for noise in ("Token authentication", "core_worker", "(raylet)", "ShardActor pid="):
        assert noise not in text


def test_a_log_gets_a_line_per_shard_and_summaries(tmp_path: Path) -> None:
    path = job_with_bad_rows(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "scoring", "run", str(path)], capture_output=True, text=True, timeout=300
    )  # the local runner: Ray's noise is the terminal test's subject
    assert proc.returncode == 0, proc.stderr
    shard_lines = [line for line in proc.stdout.splitlines() if re.match(r"  \[\d/4\] ", line)]
    assert len(shard_lines) == 4 and any("failed" in line for line in shard_lines)
    assert "Token authentication" not in proc.stderr + proc.stdout

    from scoring.config_file import load_config
    from scoring.job import run_job
    from scoring.progress import Lines

    lines: list[str] = []
    cfg = load_config(path, overrides=["output.mode=overwrite"], environ={})
    run_job(cfg, progress=Lines(lines.append, every_s=0))  # a summary at every tick
    summaries = [line for line in lines if line.startswith("progress: ")]
    assert summaries and re.match(
        r"progress: \d/4 shards, [\d,]+/41,001 rows \(\d+%\), [\d,]+ rows/s(, ETA \d:\d\d:\d\d)?, "
        r"\d+ rejected, \d failed shard\(s\)",
        summaries[-1],
    ), summaries[-1]


def test_the_report_page_shows_workers_shards_stages_and_rejections(tmp_path: Path) -> None:
    path = job_with_bad_rows(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "scoring", "run", str(path)], capture_output=True, check=True, timeout=300
    )
    out, page_path = tmp_path / "o", tmp_path / "report.html"
    proc = subprocess.run(
        [sys.executable, "-m", "scoring", "report", str(out), "--html", str(page_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    page = page_path.read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page  # self-contained
    shards = [t for t in re.findall(r"<g><title>([^<]*)</title>", page) if " rows, " in t]
    assert len(shards) == 4 and all("part-00" in s for s in shards)
    assert "worker 1" in page and "worker 2" in page and "worker 3" not in page  # a lane per worker
    assert "actor local-0" in page and "actor local-1" in page  # their ids, on hover
    assert "<h2>Throughput over time <span" in page
    for heading in ("Timeline", "Time by stage", "Rejected rows", "Slowest shards", "Config"):
        assert f"<h2>{heading}</h2>" in page
    rejected = page[page.index("<h2>Rejected rows</h2>") : page.index("<h2>Slowest shards</h2>")]
    assert "preprocess" in rejected and "NullValue" in rejected and "row 100:" in rejected
    assert "read" in rejected and "(file)" in rejected
    assert "CPUExecutionProvider" in page and "batch_size: 256" in page  # the config, as YAML

    # While a job runs (no _job.json yet, its driver alive: here, this process) the page says so
    # and counts against the plan.
    for name in ("_job.json", "_shards.parquet", "_errors.parquet"):
        (out / name).unlink()
    from scoring.fence import process_start

    me = os.getpid()
    claim = {"run_id": "r", "host": socket.gethostname(), "pid": me, "process_start": process_start(me)}
    (out / "_run.json").write_text(json.dumps(claim))
    next(iter(sorted((out / "_progress").iterdir()))).unlink()
    subprocess.run(
        [sys.executable, "-m", "scoring", "report", str(out), "--html", str(page_path)], check=True
    )
    page = page_path.read_text()
    assert ">running</span>" in page and "<b>2 / 4</b>" in page  # 3 settled, 1 of them failed


def test_the_report_of_a_resumed_job_counts_every_run(tmp_path: Path) -> None:
    from scoring.config_file import load_config
    from scoring.job import run_job
    from scoring.page import render
    from scoring.report import load_report, summary

    model = make_mlp(tmp_path / "m.onnx", (8, 16, 4))
    write_tables(tmp_path / "d", files=4, rows=2_000, features=8)
    cfg = features_job(tmp_path / "d", model, keep=["id"], actors=1, runner="local")
    cfg["input"]["rows_per_shard"] = 2_000  # a shard per file
    cfg["output"] = {"uri": str(tmp_path / "o")}
    first = run_job(load_config(data=cfg, environ={}), echo=lambda _: None)
    for n in (1, 3):  # as if the first run had died before these two shards
        (tmp_path / "o" / "_progress" / f"part-00000{n}.json").unlink()
    cfg["output"]["mode"] = "resume"
    second = run_job(load_config(data=cfg, environ={}), echo=lambda _: None)
    assert second.ok and second.job["job_id"] == first.job["job_id"] != second.job["run_id"]
    runs = second.job["runs"]
    assert [(r["run_id"], r["shards"], r["rows_scored"]) for r in runs] == [
        (first.job["run_id"], 2, 4_000),  # its two shards that stayed settled
        (second.job["run_id"], 2, 4_000),
    ]
    totals = second.job["totals"]
    assert totals["runs"] == 2 and totals["rows_scored_now"] == 4_000
    assert totals["wall_s"] == pytest.approx(sum(r["wall_s"] for r in runs))
    assert totals["rows_per_s"] == pytest.approx(8_000 / totals["wall_s"])  # not the last run's rate
    for r in runs:  # start-up: the run's first shard's start minus the run's start
        assert 0 < r["startup_s"] < r["wall_s"]
    report = load_report(str(tmp_path / "o"))
    text = summary(report.job, report.records)
    assert "over 2 runs" in text and "run 1: succeeded, 4,000 rows" in text and "run 2: succeeded" in text
    page = render(report)
    assert "<h2>Runs</h2>" in page and ">run 1</text>" in page and ">run 2</text>" in page
    assert "wall time (2 runs)" in page and "null" not in page.split("<h2>Config</h2>")[1]
    assert "[batch, 8]" in page and "worker setup" in page
    shards = pq.read_table(tmp_path / "o" / "_shards.parquet").to_pylist()
    assert sum(s["setup_s"] > 0 for s in shards) == 2  # one worker per run: its first shard
    assert all(s["preprocess_s"] < s["wall_s"] for s in shards)
