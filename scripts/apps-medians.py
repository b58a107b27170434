#!/usr/bin/env python3
"""Medians with their range of `godwit bench --preset apps` results.

    scripts/apps-medians.py results.json [more results.json ...]

One line per cell (in the order the cells first appear): median [min-max]
over its successful runs of total time, VMM and client-observed downtime,
network faults, the WWS and the faults' share of it, the load before /
during / after (or the build's wall time and slowdown), pages sent with
their data, and the failed
requests of every run. Only the standard library.
"""

import json
import statistics
import sys


def get(r, path):
    v = r
    for k in path:
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def med(rs, path, digits=0):
    xs = [x for x in (get(r, path) for r in rs) if x is not None]
    if not xs:
        return "-"
    f = f"{{:.{digits}f}}"
    m = statistics.median(xs)
    if len(xs) == 1:
        return f.format(m)
    return f"{f.format(m)} [{f.format(min(xs))}-{f.format(max(xs))}]"


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cells = {}
    for f in sys.argv[1:]:
        with open(f) as fh:
            for r in json.load(fh)["runs"]:
                cells.setdefault(r["cell"], []).append(r)
    for cell, rs in cells.items():
        ok = [r for r in rs if r.get("ok")]
        for r in ok:
            rep = r.get("report") or {}
            # Pages that crossed the link with their data (zero pages and
            # free pages cross as headers or not at all).
            if rep:
                r["pages_sent"] = sum(
                    rep.get(k) or 0 for k in ["pages_precopy", "pages_stop_copy", "pages_demand", "pages_pushed"]
                )
        failed = [get(r, ["failed_requests"]) for r in rs]
        parts = [
            f"total {med(ok, ['report', 'total_ms'])} ms",
            f"downtime {med(ok, ['report', 'downtime_ms'], 1)} ms (VMM)",
            f"{med(ok, ['client', 'downtime_client_ms'])} ms (client)",
            f"network faults {med(ok, ['report', 'network_faults'])}",
            f"pages sent {med(ok, ['pages_sent'])}",
            f"WWS {med(ok, ['wws', 'dirty-mib'])} MiB",
            f"faults {med(ok, ['faults_pct_of_wws'], 1)} % of WWS",
        ]
        if cell.startswith("build"):
            parts.append(f"build {med(ok, ['build', 'wall_s'], 1)} s")
            parts.append(f"slowdown {med(ok, ['build', 'slowdown_pct'], 1)} %")
        else:
            parts.append(
                "load "
                + " / ".join(med(ok, ["client", k]) for k in ["rps_before", "rps_during", "rps_after"])
            )
        parts.append(f"failed {[f if f is not None else 'run failed' for f in failed]}")
        print(f"{cell}: " + ", ".join(parts) + f" ({len(ok)}/{len(rs)} ok)")


if __name__ == "__main__":
    main()
