"""What a person sees: the live progress on a terminal and in a log, and the report page."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from conftest import Terminal, features_job, write_parquet

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
        [sys.executable, "-m", "scoring", "run", str(path), "--runner", "ray"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    shard_lines = [line for line in proc.stdout.splitlines() if re.match(r"  \[\d/4\] ", line)]
    assert len(shard_lines) == 4 and any("failed" in line for line in shard_lines)
    assert "Token authentication" not in proc.stderr + proc.stdout

    from scoring.config import load_config
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
    shards = re.findall(r"<g><title>([^<]*)</title>", page)
    assert len(shards) == 4 and all("part-00" in s for s in shards)
    assert "worker 1" in page and "worker 2" in page and "worker 3" not in page  # a lane per worker
    assert "actor local-0" in page and "actor local-1" in page  # their ids, on hover
    assert "<h2>Throughput over time <span" in page
    for heading in ("Timeline", "Time by stage", "Rejected rows", "Slowest shards", "Config"):
        assert f"<h2>{heading}</h2>" in page
    rejected = page[page.index("<h2>Rejected rows</h2>") : page.index("<h2>Slowest shards</h2>")]
    assert "preprocess" in rejected and "NullValue" in rejected and "row 100:" in rejected
    assert "read" in rejected and "(file)" in rejected
    assert "CPUExecutionProvider" in page and "&quot;batch_size&quot;: 256" in page

    # While a job runs (no _job.json yet) the page says so and counts against the plan.
    for name in ("_job.json", "_shards.parquet", "_errors.parquet"):
        (out / name).unlink()
    next(iter(sorted((out / "_progress").iterdir()))).unlink()
    subprocess.run(
        [sys.executable, "-m", "scoring", "report", str(out), "--html", str(page_path)], check=True
    )
    page = page_path.read_text()
    assert ">running</span>" in page and "<b>2 / 4</b>" in page  # 3 settled, 1 of them failed
