"""The report page's charts, as inline SVG: a timeline with one lane per worker and one bar per
shard coloured by stage, throughput over time, and time by stage."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any

from scoring.jobrecord import Run
from scoring.record import WORK_TIMES, ShardRecord

COLORS = {
    "setup_s": "#b07aa1",
    "wait_s": "#bab0ac",
    "read_s": "#4e79a7",
    "preprocess_s": "#f28e2b",
    "infer_s": "#59a14f",
    "write_s": "#e15759",
    "other": "#e8e8e8",
}


def esc(value: Any) -> str:
    return html.escape(str(value))


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def legend() -> str:
    names = {"setup_s": "worker setup", "wait_s": "waiting for the session", "read_s": "read"}
    names |= {"preprocess_s": "preprocess"}
    names |= {"infer_s": "inference", "write_s": "write", "other": "other"}
    return (
        "<div class='legend'>"
        + "".join(f"<span><i style='background:{COLORS[k]}'></i>{names[k]}</span>" for k in COLORS)
        + "</div>"
    )


def _span(recs: Sequence[ShardRecord], runs: Sequence[Run] = ()) -> tuple[float, float]:
    """From the first run's start (or the first worker's setup) to the last shard's end."""
    starts = [r.started_at - r.setup_s for r in recs] + [run.started_at for run in runs]
    t0 = min(starts)
    t1 = max([(r.finished_at or r.started_at) for r in recs] + [run.ended_at for run in runs])
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


def workers(recs: Sequence[ShardRecord]) -> dict[tuple[str, str], str]:
    """(node, actor) -> "worker N", numbered in the order they started their first shard."""
    names: dict[tuple[str, str], str] = {}
    for r in sorted(recs, key=lambda r: r.started_at):
        names.setdefault((r.node, r.actors), f"worker {len(names) + 1}")
    return names


def timeline(recs: Sequence[ShardRecord], runs: Sequence[Run]) -> str:
    t0, t1 = _span(recs, runs)
    names = workers(recs)
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
            f"<text x='4' y='{y + lane_h / 2 + 4}'><title>{esc(f'node {node}, actor {actor}')}</title>"
            f"{esc(names[(node, actor)])} "
            f"<tspan style='fill:#999'>{esc(short(node.split('/')[0], 15))}</tspan></text>"
        )
        for i, row in enumerate(rows):
            for r in row:
                body.append(_shard_bar(r, t0, t1, label_w, width, y + i * (bar + gap), bar))
        y += lane_h + 6
    axis = _ticks(t1 - t0, width, label_w, 0, y)
    marks = []
    for i, run in enumerate(runs, 1):  # where each run began: the gaps between runs are theirs
        x = label_w + width * (run.started_at - t0) / (t1 - t0)
        title = f"run {i} ({run.status}) started {when(run.started_at)}"
        marks.append(
            f"<g><title>{esc(title)}</title><line x1='{x:.1f}' x2='{x:.1f}' y1='2' y2='{y}' "
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
        f"<g><title>{esc(title)}</title>{''.join(parts)}"
        f"<rect x='{x:.1f}' y='{y}' width='{w:.1f}' height='{h}' fill='none'{outline}/></g>"
    )


def short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def throughput(recs: Sequence[ShardRecord], runs: Sequence[Run], buckets: int = 40) -> str:
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


def stages(recs: Sequence[ShardRecord]) -> str:
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
        f"<tr><td>{esc(s[:-2])}</td><td class='n'>{v:.2f} s</td>"
        f"<td class='n'>{100 * v / total:.1f}%</td></tr>"
        for s, v in sums.items()
    )
    return (
        f"<svg width='1110' height='30'>{''.join(bar)}</svg>"
        f"<table style='max-width:420px'><tr><th>stage</th><th class='n'>summed over shards</th>"
        f"<th class='n'>share</th></tr>{rows}</table>"
    )
