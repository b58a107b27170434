#!/usr/bin/env python3
"""Timeline plots of `godwit bench --preset apps` results, as SVG files.

    scripts/apps-timeline.py OUT_DIR results.json [more results.json ...]

For every application with a throughput series (kv, web, stream) one SVG,
OUT_DIR/timeline-<app>.svg: the application's throughput over time around
the migration, one line per mode (the first successful run of each cell),
time 0 at the start of `godwit migrate`. Each mode's phases are drawn in
its colour: the pause (from the source's pause to the destination's
resume) as a shaded band, the last page's arrival (post-copy) as a dotted
line, the migration's end as a dashed line.

Runs with self-ballooning off are left out. The phases come from the migration report's Unix times (paused_unix_ns,
resumed_unix_ns, destination.completed_unix_ns). Records that carry the
run's epoch (epoch_unix_us) are placed exactly; older ones are aligned on
the report's end (the destination's completion minus total_ms is the
migration's start), which is a few milliseconds late by the tool's own
start-up.

Only the standard library: no plotting package is needed.
"""

import json
import sys
from pathlib import Path

COLOURS = {
    "stop-and-copy": "#d62728",
    "precopy": "#1f77b4",
    "postcopy-none": "#ff7f0e",
    "postcopy-forward": "#8c564b",
    "postcopy-dual": "#2ca02c",
    "postcopy-multi-pivot": "#9467bd",
    "hybrid-dual": "#17becf",
    "precopy (qemu)": "#7f7f7f",
    "postcopy (qemu+rearm)": "#bcbd22",
    "hybrid (qemu+rearm)": "#e377c2",
}
UNITS = {"kv": "requests/s", "web": "requests/s", "stream": "Mbit/s (both directions)"}
BEFORE_S, AFTER_S = 4.0, 8.0
W, H, ML, MR, MT, MB = 960, 420, 70, 260, 40, 50


def mode_of(r):
    m = r.get("mode", "?")
    # "qemu+rearm" (older records: "qemu-rearm").
    vmm = (r.get("vmm") or "godwit").replace("qemu-rearm", "qemu+rearm")
    if vmm != "godwit":
        return f"{m} ({vmm})"
    return f"{m}-{r['prepaging']}" if r.get("prepaging") else m


def series_of(r):
    """(time ms since the run's epoch, rate) points, in order."""
    c = r.get("client") or {}
    if "series_100ms" in c and r.get("app") == "web":
        # Bucket start times; a bucket without a response is not written.
        raw = []
        for t, v in c["series_100ms"]:
            while raw and t - raw[-1][0] > 150.0:
                raw.append((raw[-1][0] + 100.0, 0.0))
            raw.append((t, v))
        return [(t + 50.0, v) for t, v in raw]
    if "series_100ms" in c:
        # Interval end times.
        return [(t - 50.0, v) for t, v in c["series_100ms"]]
    if "series_250ms" in c:
        return [(t - 125.0, v) for t, v in c["series_250ms"]]
    return []


def phases(r):
    """(pause, resume, last page, end) in s since the migration's start."""
    rep = r.get("report") or {}
    win = r.get("window_ms") or {}
    if "migrate_start" not in win:
        return None
    start = win["migrate_start"]
    end = (win.get("migrate_end", start) - start) / 1e3
    dst = rep.get("destination") or {}
    if "epoch_unix_us" in r:
        base_ns = r["epoch_unix_us"] * 1e3 + start * 1e6
    elif (dst.get("completed_unix_ns") or rep.get("resumed_unix_ns")) and rep.get("total_ms"):
        # total_ms runs to the last page: the destination's completion
        # (post-copy) or its resume (the other modes).
        last_ns = dst.get("completed_unix_ns") or rep["resumed_unix_ns"]
        base_ns = float(last_ns) - rep["total_ms"] * 1e6
    else:
        return (None, None, None, end)

    def at(ns):
        # Unix nanoseconds, as numbers or (in some reports) strings.
        return None if not ns else (float(ns) - base_ns) / 1e9

    return (
        at(rep.get("paused_unix_ns")),
        at(rep.get("resumed_unix_ns")),
        at(dst.get("completed_unix_ns")),
        end,
    )


def svg(app, runs):
    lines = []
    ymax = 1.0
    for mode, r in runs:
        start = r["window_ms"]["migrate_start"]
        pts = [((t - start) / 1e3, v) for t, v in series_of(r)]
        pts = [(t, v) for t, v in pts if -BEFORE_S <= t <= AFTER_S]
        if pts:
            ymax = max(ymax, max(v for _, v in pts))
        lines.append((mode, r, pts))
    ymax *= 1.1
    pw, ph = W - ML - MR, H - MT - MB

    def x(t):
        return ML + (t + BEFORE_S) / (BEFORE_S + AFTER_S) * pw

    def y(v):
        return MT + ph - v / ymax * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{ML}" y="22" font-size="15">{app}: throughput around the migration (time 0: godwit migrate starts)</text>',
    ]
    for i, (mode, r, _) in enumerate(lines):
        c = COLOURS.get(mode, "#444")
        p = phases(r)
        if not p:
            continue
        pause, resume, last, end = p
        if pause is not None and resume is not None:
            a, b = sorted((pause, resume))
            wpx = max(x(b) - x(a), 1.5)
            out.append(f'<rect x="{x(a):.1f}" y="{MT}" width="{wpx:.1f}" height="{ph}" fill="{c}" opacity="0.25"/>')
        if last is not None and -BEFORE_S <= last <= AFTER_S:
            out.append(f'<line x1="{x(last):.1f}" y1="{MT}" x2="{x(last):.1f}" y2="{MT + ph}" stroke="{c}" stroke-dasharray="2,3"/>')
        if -BEFORE_S <= end <= AFTER_S:
            out.append(f'<line x1="{x(end):.1f}" y1="{MT}" x2="{x(end):.1f}" y2="{MT + ph}" stroke="{c}" stroke-dasharray="6,4" opacity="0.6"/>')
    # Axes and grid.
    out.append(f'<line x1="{ML}" y1="{MT + ph}" x2="{ML + pw}" y2="{MT + ph}" stroke="black"/>')
    out.append(f'<line x1="{ML}" y1="{MT}" x2="{ML}" y2="{MT + ph}" stroke="black"/>')
    t = -BEFORE_S
    while t <= AFTER_S + 1e-9:
        out.append(f'<line x1="{x(t):.1f}" y1="{MT + ph}" x2="{x(t):.1f}" y2="{MT + ph + 5}" stroke="black"/>')
        out.append(f'<text x="{x(t):.1f}" y="{MT + ph + 18}" text-anchor="middle">{t:g}</text>')
        t += 1.0
    out.append(f'<text x="{ML + pw / 2}" y="{H - 10}" text-anchor="middle">seconds</text>')
    for k in range(6):
        v = ymax * k / 5
        out.append(f'<line x1="{ML - 5}" y1="{y(v):.1f}" x2="{ML + pw}" y2="{y(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{ML - 8}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>')
    out.append(f'<text x="16" y="{MT + ph / 2}" transform="rotate(-90 16 {MT + ph / 2})" text-anchor="middle">{UNITS.get(app, "")}</text>')
    for i, (mode, r, pts) in enumerate(lines):
        c = COLOURS.get(mode, "#444")
        if pts:
            d = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
            out.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="1.5"/>')
        ly = MT + 10 + i * 18
        out.append(f'<line x1="{ML + pw + 15}" y1="{ly}" x2="{ML + pw + 35}" y2="{ly}" stroke="{c}" stroke-width="3"/>')
        out.append(f'<text x="{ML + pw + 40}" y="{ly + 4}">{mode} (run {r.get("run", "?")})</text>')
    ly = MT + 10 + len(lines) * 18 + 10
    for text in ["band: pause → resume", "dotted: last page arrived", "dashed: migrate ended"]:
        out.append(f'<text x="{ML + pw + 15}" y="{ly}" fill="#555">{text}</text>')
        ly += 16
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    by_app = {}
    for f in sys.argv[2:]:
        for r in json.loads(Path(f).read_text())["runs"]:
            # Self-ballooning off is left out: one line per mode is enough.
            if not r.get("ok") or not series_of(r) or r.get("balloon") is False:
                continue
            cells = by_app.setdefault(r["app"], {})
            cells.setdefault(mode_of(r), r)
    order = list(COLOURS)
    for app, cells in sorted(by_app.items()):
        runs = sorted(cells.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
        path = out / f"timeline-{app}.svg"
        path.write_text(svg(app, runs))
        print(f"apps-timeline: {path} ({', '.join(m for m, _ in runs)})")


if __name__ == "__main__":
    main()
