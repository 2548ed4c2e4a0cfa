"""The report page (``scoring report OUT --html FILE``): one self-contained HTML file.

Inline SVG and CSS, no script, nothing fetched: a timeline with one lane per worker and one bar
per shard coloured by stage, throughput over time, time by stage, rejected rows by stage and
kind with example rows, the slowest shards, and the job's config, model, providers and versions.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any

import yaml

from scoring.record import WORK_TIMES, ShardRecord
from scoring.report import Report, totals_of

COLORS = {
    "setup_s": "#b07aa1",
    "wait_s": "#bab0ac",
    "read_s": "#4e79a7",
    "preprocess_s": "#f28e2b",
    "infer_s": "#59a14f",
    "write_s": "#e15759",
    "other": "#e8e8e8",
}
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
    status = job["status"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>scoring report</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>scoring job <span class='badge' style='background:{STATUS_COLORS.get(status, '#555')}'>"
        f"{_e(status)}</span></h1>",
        f"<div class='muted'>{_e(report.out)} · job {_e(job.get('job_id', '-'))} · "
        f"{_e(_when(job.get('started_at')))} · report written {_e(_when(time.time()))}</div>",
        _cards(job, recs),
    ]
    if job.get("error"):
        parts.append(f"<h2>Why it stopped</h2><div class='error'>{_e(job['error'])}</div>")
    if job.get("runs"):
        parts += ["<h2>Runs</h2>", _runs(job["runs"])]
    if recs:
        parts += [
            "<h2>Timeline</h2>",
            "<p class='muted'>One lane per worker, one bar per shard from its start to its commit; "
            "colours show how its time divides between stages (chunks interleave them), and a "
            "worker's setup comes before its first shard. Dashed lines mark where each run began "
            "(a resumed job has several); gaps are idle workers, long bars stragglers.</p>",
            _legend(),
            _timeline(recs, job.get("runs") or []),
            "<h2>Throughput over time <span class='muted'>(rows scored per second)</span></h2>",
            _throughput(recs, job.get("runs") or []),
            "<h2>Time by stage</h2>",
            _stages(recs),
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


def _e(value: Any) -> str:
    return html.escape(str(value))


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _cards(job: dict[str, Any], recs: Sequence[ShardRecord]) -> str:
    t = job.get("totals") or totals_of(recs)
    planned = t.get("shards_planned")
    shards = f"{t.get('shards_complete', t['shards'])}" + (f" / {planned}" if planned else "")
    rows_planned = t.get("rows_planned")  # a file the plan could not read counts once it settles
    rows = f"{t['rows']:,}" + (f" / {max(rows_planned, t['rows']):,}" if rows_planned else "")
    cards = [
        ("shards complete", shards),
        ("rows", rows),
        ("rows rejected", f"{t['rows_failed']:,}"),
        ("failed shards", str(sum(r.status == "failed" for r in recs))),
    ]
    runs = job.get("runs") or []
    if "wall_s" in t:
        over = f" ({len(runs)} runs)" if len(runs) > 1 else ""
        cards += [(f"wall time{over}", f"{t['wall_s']:.1f} s"), (f"rows/s{over}", f"{t['rows_per_s']:,.0f}")]
    if runs and runs[-1].get("startup_s") is not None:
        label = "start-up before the first shard" + (" (last run)" if len(runs) > 1 else "")
        cards.append((label, f"{runs[-1]['startup_s']:.1f} s"))
    devices = sorted({r.device for r in recs})
    if devices:
        cards.append(("devices", ", ".join(devices)))
    body = "".join(
        f"<div class='card'><span class='muted'>{_e(k)}</span><b>{_e(v)}</b></div>" for k, v in cards
    )
    return f"<div class='cards'>{body}</div>"


def _legend() -> str:
    names = {"setup_s": "worker setup", "wait_s": "waiting for the session", "read_s": "read"}
    names |= {"preprocess_s": "preprocess"}
    names |= {"infer_s": "inference", "write_s": "write", "other": "other"}
    return (
        "<div class='legend'>"
        + "".join(f"<span><i style='background:{COLORS[k]}'></i>{names[k]}</span>" for k in COLORS)
        + "</div>"
    )


def _span(recs: Sequence[ShardRecord], runs: Sequence[dict[str, Any]] = ()) -> tuple[float, float]:
    """From the first run's start (or the first worker's setup) to the last shard's end."""
    starts = [r.started_at - r.setup_s for r in recs] + [float(run["started_at"]) for run in runs]
    t0 = min(starts)
    t1 = max([(r.finished_at or r.started_at) for r in recs] + [float(run["ended_at"]) for run in runs])
    return t0, max(t1, t0 + 1e-3)


def _ticks(span: float, width: float, x0: float, y: float, height: float) -> list[str]:
    step = next(
        (s for s in (0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600) if span / s <= 10), 7200
    )
    out, t = [], 0.0
    while t <= span + 1e-9:
        x = x0 + width * t / span
        out.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{y}' y2='{y + height}' stroke='#eee'/>")
        out.append(f"<text x='{x:.1f}' y='{y + height + 14}' text-anchor='middle'>{t:g}s</text>")
        t += step
    return out


def _workers(recs: Sequence[ShardRecord]) -> dict[tuple[str, str], str]:
    """(node, actor) -> "worker N", numbered in the order they started their first shard."""
    names: dict[tuple[str, str], str] = {}
    for r in sorted(recs, key=lambda r: r.started_at):
        names.setdefault((r.node, r.actors), f"worker {len(names) + 1}")
    return names


def _timeline(recs: Sequence[ShardRecord], runs: Sequence[dict[str, Any]]) -> str:
    t0, t1 = _span(recs, runs)
    names = _workers(recs)
    lanes: dict[tuple[str, str], list[list[ShardRecord]]] = {}
    for r in sorted(recs, key=lambda r: r.started_at):
        rows = lanes.setdefault((r.node, r.actors), [])
        row = next((row for row in rows if (row[-1].finished_at or 0) <= r.started_at + 1e-6), None)
        if row is None:
            rows.append([r])
        else:
            row.append(r)
    label_w, width, bar, gap = 130, 1000, 13, 3
    y, body = 22, []  # room above the lanes for the runs' marks
    for (node, actor), rows in sorted(lanes.items(), key=lambda lane: int(names[lane[0]].split()[1])):
        lane_h = len(rows) * (bar + gap)
        body.append(
            f"<rect x='0' y='{y - 2}' width='{label_w + width + 10}' height='{lane_h + 2}' fill='#fbfbfb'/>"
        )
        body.append(
            f"<text x='4' y='{y + lane_h / 2 + 4}'><title>{_e(f'node {node}, actor {actor}')}</title>"
            f"{_e(names[(node, actor)])} "
            f"<tspan style='fill:#999'>{_e(_short(node.split('/')[0], 15))}</tspan></text>"
        )
        for i, row in enumerate(rows):
            for r in row:
                body.append(_shard_bar(r, t0, t1, label_w, width, y + i * (bar + gap), bar))
        y += lane_h + 6
    axis = _ticks(t1 - t0, width, label_w, 0, y)
    marks = []
    for i, run in enumerate(runs, 1):  # where each run began: the gaps between runs are theirs
        x = label_w + width * (float(run["started_at"]) - t0) / (t1 - t0)
        title = f"run {i} ({run.get('status')}) started {_when(run.get('started_at'))}"
        marks.append(
            f"<g><title>{_e(title)}</title><line x1='{x:.1f}' x2='{x:.1f}' y1='2' y2='{y}' "
            f"stroke='#333' stroke-dasharray='3,3'/><text x='{x + 3:.1f}' y='12'>run {i}</text></g>"
        )
    svg = "".join(axis + body + marks)
    return f"<svg width='{label_w + width + 20}' height='{y + 22}'>{svg}</svg>"


def _shard_bar(r: ShardRecord, t0: float, t1: float, x0: float, width: float, y: float, h: float) -> str:
    scale = width / (t1 - t0)
    x = x0 + (r.started_at - t0) * scale
    w = max(((r.finished_at or r.started_at) - r.started_at) * scale, 1.5)
    wall = max(r.wall_s, 1e-9)
    parts, cursor = [], x
    if r.setup_s:  # the worker's setup, before its first shard
        sw = r.setup_s * scale
        parts.append(
            f"<rect x='{x - sw:.1f}' y='{y}' width='{sw:.1f}' height='{h}' fill='{COLORS['setup_s']}'/>"
        )
    for stage in ("wait_s", *WORK_TIMES):  # setup_s comes before the bar: see _timeline
        seg = min(w * getattr(r, stage) / wall, x + w - cursor)
        if seg > 0:
            parts.append(
                f"<rect x='{cursor:.1f}' y='{y}' width='{seg:.1f}' height='{h}' fill='{COLORS[stage]}'/>"
            )
            cursor += seg
    if x + w - cursor > 0:
        rest = x + w - cursor
        parts.append(
            f"<rect x='{cursor:.1f}' y='{y}' width='{rest:.1f}' height='{h}' fill='{COLORS['other']}'/>"
        )
    edge = {"failed": "#c62828", "partial": "#ef6c00"}.get(r.status)
    outline = f" stroke='{edge}' stroke-width='2'" if edge else " stroke='#fff' stroke-width='0.5'"
    title = (
        f"{r.shard} ({r.status}): {r.rows:,} rows, {r.rows_failed:,} rejected, {r.wall_s:.2f}s — read "
        f"{r.read_s:.2f}s, preprocess {r.preprocess_s:.2f}s, inference {r.infer_s:.2f}s, write "
        f"{r.write_s:.2f}s, waiting {r.wait_s:.2f}s"
    )
    return (
        f"<g><title>{_e(title)}</title>{''.join(parts)}"
        f"<rect x='{x:.1f}' y='{y}' width='{w:.1f}' height='{h}' fill='none'{outline}/></g>"
    )


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _throughput(recs: Sequence[ShardRecord], runs: Sequence[dict[str, Any]], buckets: int = 40) -> str:
    t0, t1 = _span(recs, runs)
    size = (t1 - t0) / buckets
    rows = [0.0] * buckets
    for r in recs:
        # A shard's rows spread evenly over its own span: the rate the job was scoring at.
        start, end = r.started_at, r.finished_at or r.started_at
        scored = r.rows - r.rows_failed
        for b in range(buckets):
            lo, hi = t0 + b * size, t0 + (b + 1) * size
            overlap = max(0.0, min(hi, end) - max(lo, start))
            if overlap and end > start:
                rows[b] += scored * overlap / (end - start)
    rates = [v / size for v in rows]
    top = max(rates) or 1.0
    x0, width, height = 70, 1060, 140
    bw = width / buckets
    bars = "".join(
        f"<rect x='{x0 + i * bw:.1f}' y='{10 + height * (1 - v / top):.1f}' width='{bw - 1:.1f}' "
        f"height='{height * v / top:.1f}' fill='#59a14f'><title>{v:,.0f} rows/s</title></rect>"
        for i, v in enumerate(rates)
    )
    y_axis = "".join(
        f"<line x1='{x0}' x2='{x0 + width}' y1='{y}' y2='{y}' stroke='#eee'/>"
        f"<text x='{x0 - 6}' y='{y + 4}' text-anchor='end'>{top * f:,.0f}</text>"
        for f in (0, 0.5, 1)
        for y in [10 + height * (1 - f)]
    )
    axis = "".join(_ticks(t1 - t0, width, x0, 10 + height, 0))
    return f"<svg width='{x0 + width + 20}' height='{height + 40}'>{y_axis}{bars}{axis}</svg>"


def _stages(recs: Sequence[ShardRecord]) -> str:
    sums = {s: sum(getattr(r, s) for r in recs) for s in ("setup_s", "wait_s", *WORK_TIMES)}
    total = sum(sums.values()) or 1.0
    x, bar = 0.0, []
    for s, v in sums.items():
        w = 1100 * v / total
        bar.append(
            f"<rect x='{x:.1f}' y='0' width='{w:.1f}' height='26' fill='{COLORS[s]}'>"
            f"<title>{s[:-2]}: {v:.2f}s</title></rect>"
        )
        if w > 70:
            bar.append(
                f"<text x='{x + 6:.1f}' y='17' style='fill:#fff'>{s[:-2]} {100 * v / total:.0f}%</text>"
            )
        x += w
    rows = "".join(
        f"<tr><td>{_e(s[:-2])}</td><td class='n'>{v:.2f} s</td><td class='n'>{100 * v / total:.1f}%</td></tr>"
        for s, v in sums.items()
    )
    return (
        f"<svg width='1110' height='30'>{''.join(bar)}</svg>"
        f"<table style='max-width:420px'><tr><th>stage</th><th class='n'>summed over shards</th>"
        f"<th class='n'>share</th></tr>{rows}</table>"
    )


def _rejections(groups: list[dict[str, Any]]) -> str:
    if not groups:
        return "<p class='muted'>No row was rejected.</p>"
    rows = []
    for g in groups:
        examples = "<br>".join(
            f"{_e(_short(e.get('file') or e['shard'], 60))} "
            f"row {e['row'] if e['row'] is not None else '(file)'}: "
            f"{_e(_short(e['message'], 160))}"
            for e in g["examples"]
        )
        rows.append(
            f"<tr><td>{_e(g['stage'])}</td><td>{_e(g['error'])}</td><td class='n'>{g['rows']:,}</td>"
            f"<td>{examples}</td></tr>"
        )
    return (
        "<table><tr><th>stage</th><th>error</th><th class='n'>rows</th><th>examples</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _slowest(recs: Sequence[ShardRecord], n: int = 10) -> str:
    names = _workers(recs)
    head = "".join(
        f"<th class='n'>{h}</th>"
        for h in ("rows", "rejected", "wall s", "read", "prep", "infer", "write", "wait", "rows/s")
    )
    rows = "".join(
        f"<tr><td>{_e(_short(r.shard, 70))}</td><td>{_e(r.status)}</td><td class='n'>{r.rows:,}</td>"
        f"<td class='n'>{r.rows_failed:,}</td><td class='n'>{r.wall_s:.2f}</td>"
        + "".join(f"<td class='n'>{getattr(r, s):.2f}</td>" for s in (*WORK_TIMES, "wait_s"))
        + f"<td class='n'>{r.rows_per_s:,.0f}</td><td>{_e(r.device)}</td>"
        + f"<td>{_e(names[(r.node, r.actors)])}</td></tr>"
        for r in sorted(recs, key=lambda r: -r.wall_s)[:n]
    )
    return f"<table><tr><th>shard</th><th>status</th>{head}<th>device</th><th>worker</th></tr>{rows}</table>"


def _runs(runs: Sequence[dict[str, Any]]) -> str:
    head = "".join(
        f"<th class='n'>{h}</th>" for h in ("shards", "rows scored", "wall s", "rows/s", "start-up s")
    )
    rows = "".join(
        f"<tr><td>run {i}</td><td>{_e(_when(r.get('started_at')))}</td>"
        f"<td>{_e(_when(r.get('ended_at')))}</td>"
        f"<td>{_e(r.get('status'))}</td><td class='n'>{r.get('shards', 0):,}</td>"
        f"<td class='n'>{r.get('rows_scored', 0):,}</td><td class='n'>{r.get('wall_s', 0):.1f}</td>"
        f"<td class='n'>{r.get('rows_per_s', 0):,.0f}</td>"
        f"<td class='n'>{'-' if r.get('startup_s') is None else format(r['startup_s'], '.1f')}</td></tr>"
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


def _facts(job: dict[str, Any]) -> str:
    model = job.get("model") or {}
    facts = [
        ("providers", ", ".join(job.get("providers", [])) or "-"),
        ("CPU fallback", "; ".join(job.get("cpu_fallback", [])) or "none"),
        ("versions", ", ".join(f"{k} {v}" for k, v in (job.get("versions") or {}).items()) or "-"),
        ("model", f"{model.get('uri', '-')} (sha256 {str(model.get('sha256', '-'))[:16]}…)"),
    ]
    rows = "".join(f"<tr><th style='width:160px'>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    ios = "".join(
        f"<tr><td>{_e(kind)}</td><td>{_e(t['name'])}</td><td>{_e(t['dtype'])}</td>"
        f"<td>{_e(_shape(t['shape']))}</td></tr>"
        for kind in ("inputs", "outputs")
        for t in model.get(kind, [])
    )
    config = yaml.safe_dump(_set(job.get("config", {})), sort_keys=False, default_flow_style=None)
    return (
        f"<table>{rows}</table><h2>Model inputs and outputs</h2><table><tr><th></th><th>name</th>"
        f"<th>type</th><th>shape</th></tr>{ios}</table><h2>Config</h2><pre>{_e(config)}</pre>"
    )
