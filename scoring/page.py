"""The report page (``scoring report OUT --html FILE``): one self-contained HTML file.

Inline SVG and CSS, no script, nothing fetched: a timeline with one lane per worker and one bar
per shard coloured by stage, throughput over time, time by stage, rejected rows by stage and
kind with example rows, the slowest shards, and the job's config, model, providers and versions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import yaml

from scoring import charts
from scoring.charts import esc, short, when
from scoring.jobrecord import JobRecord, Run
from scoring.record import WORK_TIMES, ShardRecord
from scoring.report import Report

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#222}
body{margin:24px auto;max-width:1180px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.muted{color:#777}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:14px 0}
.card{border:1px solid #e3e3e3;border-radius:8px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:20px}
table{border-collapse:collapse;width:100%;font-size:13px}
td,th{border-bottom:1px solid #eee;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#fafafa}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;padding:10px;overflow:auto;font-size:12px;max-height:360px}
.legend span{margin-right:14px}
.legend i{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px}
.error{background:#fdecea;border:1px solid #f5c2bd;padding:8px 12px;border-radius:6px;white-space:pre-wrap}
svg text{font:11px system-ui,sans-serif;fill:#555}
"""
STATUS_COLORS = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "interrupted": "#ef6c00",
    "stopped": "#ef6c00",
    "running": "#1565c0",
}


def write_html(path: str, report: Report) -> None:
    """Write the page for ``report`` to the local file ``path``."""
    with open(path, "w") as f:
        f.write(render(report))


def render(report: Report) -> str:
    job, recs = report.job, report.records
    status = job.status
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>scoring report</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>scoring job <span class='badge' style='background:{STATUS_COLORS.get(status, '#555')}'>"
        f"{esc(status)}</span></h1>",
        f"<div class='muted'>{esc(report.out)} · job {esc(job.job_id or '-')} · "
        f"{esc(when(job.started_at))} · report written {esc(when(time.time()))}</div>",
        _cards(job, recs),
    ]
    if job.error:
        parts.append(f"<h2>Why it stopped</h2><div class='error'>{esc(job.error)}</div>")
    if job.runs:
        parts += ["<h2>Runs</h2>", _runs(job.runs)]
    if recs:
        parts += [
            "<h2>Timeline</h2>",
            "<p class='muted'>One lane per worker, one bar per shard from its start to its commit; "
            "colours show how its time divides between stages (chunks interleave them), and a "
            "worker's setup comes before its first shard. Dashed lines mark where each run began "
            "(a resumed job has several); gaps are idle workers, long bars stragglers.</p>",
            charts.legend(),
            charts.timeline(recs, job.runs),
            "<h2>Throughput over time <span class='muted'>(rows scored per second)</span></h2>",
            charts.throughput(recs, job.runs),
            "<h2>Time by stage</h2>",
            charts.stages(recs),
        ]
    parts += ["<h2>Rejected rows</h2>", _rejections(report.rejected)]
    if recs:
        parts += ["<h2>Slowest shards</h2>", _slowest(recs)]
    parts += [
        "<h2>Job</h2>",
        _facts(job),
        "</body></html>",
    ]
    return "".join(parts)


def _cards(job: JobRecord, recs: Sequence[ShardRecord]) -> str:
    t = job.totals
    planned = t.shards_planned
    shards = f"{t.shards_complete}" + (f" / {planned}" if planned else "")
    rows_planned = t.rows_planned  # a file the plan could not read counts once it settles
    rows = f"{t.rows:,}" + (f" / {max(rows_planned, t.rows):,}" if rows_planned else "")
    cards = [
        ("shards complete", shards),
        ("rows", rows),
        ("rows rejected", f"{t.rows_failed:,}"),
        ("failed shards", str(sum(r.status == "failed" for r in recs))),
    ]
    runs = job.runs
    if t.wall_s is not None:
        over = f" ({len(runs)} runs)" if len(runs) > 1 else ""
        cards += [(f"wall time{over}", f"{t.wall_s:.1f} s"), (f"rows/s{over}", f"{t.rows_per_s or 0:,.0f}")]
    if runs and runs[-1].startup_s is not None:
        label = "start-up before the first shard" + (" (last run)" if len(runs) > 1 else "")
        cards.append((label, f"{runs[-1].startup_s:.1f} s"))
    devices = sorted({r.device for r in recs})
    if devices:
        cards.append(("devices", ", ".join(devices)))
    body = "".join(
        f"<div class='card'><span class='muted'>{esc(k)}</span><b>{esc(v)}</b></div>" for k, v in cards
    )
    return f"<div class='cards'>{body}</div>"


def _rejections(groups: list[dict[str, Any]]) -> str:
    if not groups:
        return "<p class='muted'>No row was rejected.</p>"
    rows = []
    for g in groups:
        examples = "<br>".join(
            f"{esc(short(e.get('file') or e['shard'], 60))} "
            f"row {e['row'] if e['row'] is not None else '(file)'}: "
            f"{esc(short(e['message'], 160))}"
            for e in g["examples"]
        )
        rows.append(
            f"<tr><td>{esc(g['stage'])}</td><td>{esc(g['error'])}</td><td class='n'>{g['rows']:,}</td>"
            f"<td>{examples}</td></tr>"
        )
    return (
        "<table><tr><th>stage</th><th>error</th><th class='n'>rows</th><th>examples</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _slowest(recs: Sequence[ShardRecord], n: int = 10) -> str:
    names = charts.workers(recs)
    head = "".join(
        f"<th class='n'>{h}</th>"
        for h in ("rows", "rejected", "wall s", "read", "prep", "infer", "write", "wait", "rows/s")
    )
    rows = "".join(
        f"<tr><td>{esc(short(r.shard, 70))}</td><td>{esc(r.status)}</td><td class='n'>{r.rows:,}</td>"
        f"<td class='n'>{r.rows_failed:,}</td><td class='n'>{r.wall_s:.2f}</td>"
        + "".join(f"<td class='n'>{getattr(r, s):.2f}</td>" for s in (*WORK_TIMES, "wait_s"))
        + f"<td class='n'>{r.rows_per_s:,.0f}</td><td>{esc(r.device)}</td>"
        + f"<td>{esc(names[(r.node, r.actors)])}</td></tr>"
        for r in sorted(recs, key=lambda r: -r.wall_s)[:n]
    )
    return f"<table><tr><th>shard</th><th>status</th>{head}<th>device</th><th>worker</th></tr>{rows}</table>"


def _runs(runs: Sequence[Run]) -> str:
    head = "".join(
        f"<th class='n'>{h}</th>" for h in ("shards", "rows scored", "wall s", "rows/s", "start-up s")
    )
    rows = "".join(
        f"<tr><td>run {i}</td><td>{esc(when(r.started_at))}</td><td>{esc(when(r.ended_at))}</td>"
        f"<td>{esc(r.status)}</td><td class='n'>{r.shards:,}</td>"
        f"<td class='n'>{r.rows_scored:,}</td><td class='n'>{r.wall_s:.1f}</td>"
        f"<td class='n'>{r.rows_per_s:,.0f}</td>"
        f"<td class='n'>{'-' if r.startup_s is None else format(r.startup_s, '.1f')}</td></tr>"
        for i, r in enumerate(runs, 1)
    )
    return f"<table><tr><th></th><th>started</th><th>ended</th><th>how it ended</th>{head}</tr>{rows}</table>"


def _shape(shape: Any) -> str:
    """``[batch, 16]``, as the model declares it (``?`` where a dim has no name or size)."""
    if shape is None:
        return "(unknown)"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _set(value: Any) -> Any:
    """The config without the keys left unset (None): what was set, or defaulted to a value."""
    if isinstance(value, dict):
        return {k: _set(v) for k, v in value.items() if v is not None}
    return value


def _facts(job: JobRecord) -> str:
    model = job.model
    facts = [
        ("providers", ", ".join(job.providers) or "-"),
        ("CPU fallback", "; ".join(job.cpu_fallback) or "none"),
        ("versions", ", ".join(f"{k} {v}" for k, v in job.versions.items()) or "-"),
        ("model", f"{model.get('uri', '-')} (sha256 {str(model.get('sha256', '-'))[:16]}…)"),
    ]
    rows = "".join(f"<tr><th style='width:160px'>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)
    ios = "".join(
        f"<tr><td>{esc(kind)}</td><td>{esc(t['name'])}</td><td>{esc(t['dtype'])}</td>"
        f"<td>{esc(_shape(t['shape']))}</td></tr>"
        for kind in ("inputs", "outputs")
        for t in model.get(kind, [])
    )
    config = yaml.safe_dump(_set(job.config), sort_keys=False, default_flow_style=None)
    return (
        f"<table>{rows}</table><h2>Model inputs and outputs</h2><table><tr><th></th><th>name</th>"
        f"<th>type</th><th>shape</th></tr>{ios}</table><h2>Config</h2><pre>{esc(config)}</pre>"
    )
