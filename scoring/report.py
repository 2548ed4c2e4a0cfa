"""``scoring report`` and the end-of-job summary: totals, per-shard timing, an HTML page."""

from __future__ import annotations

import html as html_lib
import json
from collections.abc import Sequence
from typing import Any

from scoring import sink, storage
from scoring.record import ShardRecord

STAGES = ("read_s", "preprocess_s", "infer_s", "write_s")
COLORS = {"read_s": "#4e79a7", "preprocess_s": "#f28e2b", "infer_s": "#59a14f", "write_s": "#e15759"}


def load_report(
    out: str, storage_options: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[ShardRecord]]:
    """The job record (``{"status": "running"}`` while ``_job.json`` is absent) and shard records."""
    so = storage_options or {}
    records = sorted(sink.Output(out, so, run_id="").markers().values(), key=lambda r: r.index)
    job_uri = storage.join(out, "_job.json")
    if storage.exists(job_uri, so):
        job = json.loads(storage.read_bytes(job_uri, so))
    elif records:
        job = {"status": "running", "totals": _totals(records)}
    else:
        from scoring.errors import StorageError

        raise StorageError(f"{out} holds no job (no _job.json and no _progress/). Check the URI.")
    return job, records


def _totals(records: Sequence[ShardRecord]) -> dict[str, Any]:
    rows = sum(r.rows for r in records)
    return {"rows": rows, "rows_failed": sum(r.rows_failed for r in records), "shards": len(records)}


def summary(job: dict[str, Any], records: Sequence[ShardRecord]) -> str:
    """Totals, time per stage, and a per-shard table (at most 20 rows, slowest first)."""
    totals = job.get("totals") or _totals(records)
    lines = [
        f"status: {job['status']}",
        f"rows: {totals['rows']:,} scored or rejected, "
        f"{totals['rows_failed']:,} rejected, {totals['shards']} shard(s)",
    ]
    if "wall_s" in totals:
        lines.append(
            f"wall: {totals['wall_s']:.2f}s ({totals['ready_s']:.2f}s before the first shard started), "
            f"{totals['rows_per_s']:,.0f} rows/s end to end"
        )
    if records:
        stage_sum = {s: sum(getattr(r, s) for r in records) for s in STAGES}
        busy = sum(stage_sum.values()) or 1.0
        lines.append(
            "time in actors and tasks: "
            + ", ".join(f"{s[:-2]} {v:.2f}s ({100 * v / busy:.0f}%)" for s, v in stage_sum.items())
        )
        lines.append(
            f"{'shard':<48} {'rows':>8} {'bad':>5} {'wall_s':>7} {'read':>6} "
            f"{'prep':>6} {'infer':>6} {'write':>6} {'wait':>6} {'rows/s':>9} device"
        )
        for r in sorted(records, key=lambda r: -r.wall_s)[:20]:
            name = r.shard if len(r.shard) <= 48 else "..." + r.shard[-45:]
            lines.append(
                f"{name:<48} {r.rows:>8} {r.rows_failed:>5} {r.wall_s:>7.2f} "
                + " ".join(f"{getattr(r, s):>6.2f}" for s in STAGES)
                + f" {r.wait_s:>6.2f} {r.rows_per_s:>9,.0f} {r.device}"
            )
        if len(records) > 20:
            lines.append(f"... {len(records) - 20} more in _shards.parquet")
    return "\n".join(lines)


def write_html(path: str, job: dict[str, Any], records: Sequence[ShardRecord]) -> None:
    """A self-contained page: the summary, and one stacked bar of stage times per shard."""
    recs = sorted(records, key=lambda r: r.index)
    longest = max((r.wall_s for r in recs), default=1.0) or 1.0
    width, bar = 800, 14
    svg = [
        f'<svg width="{width + 20}" height="{len(recs) * (bar + 4) + 30}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, r in enumerate(recs):
        x, y = 0.0, i * (bar + 4)
        for stage in STAGES:
            w = width * getattr(r, stage) / longest
            svg.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar}" fill="{COLORS[stage]}">'
                f"<title>{html_lib.escape(r.shard)} {stage} {getattr(r, stage):.3f}s</title></rect>"
            )
            x += w
    svg.append("</svg>")
    legend = " ".join(f'<span style="color:{c}">&#9632; {s[:-2]}</span>' for s, c in COLORS.items())
    page = (
        f"<!doctype html><meta charset='utf-8'><title>scoring report</title>"
        f"<h1>scoring job: {html_lib.escape(job['status'])}</h1>"
        f"<pre>{html_lib.escape(summary(job, records))}</pre><h2>per-shard time by stage</h2>"
        f"<p>{legend}</p>{''.join(svg)}"
    )
    with open(path, "w") as f:
        f.write(page)
