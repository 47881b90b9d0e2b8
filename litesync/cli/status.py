"""``litesync status``: what the running agents publish."""

from __future__ import annotations

import argparse
import os
import time

from .common import EXIT_FAILURE, EXIT_OK, Subparsers, global_options, load

STATUS_FRESH = 1.0  # how long `litesync status` waits for a running agent's fresh status


def run(args: argparse.Namespace) -> int:
    import json

    from ..status import healthy, read_statuses

    paths = [os.path.abspath(p) for p in args.dbs] if args.dbs else [d.path for d in load(args, None, []).dbs]
    statuses = read_statuses(paths, fresh=STATUS_FRESH)
    if args.json:
        print(json.dumps({"dbs": statuses}, indent=2))
    else:
        now = time.time()
        for st in statuses:
            print(_format_status(st, now))
    return EXIT_OK if all(healthy(st) for st in statuses) else EXIT_FAILURE


def _ago(t: float | None, now: float) -> str:
    if not t:
        return "never"
    from ..progress import format_duration

    return f"{format_duration(max(0.0, now - t))} ago"


def _format_status(st: dict, now: float) -> str:
    """Return the text `litesync status` prints for one database."""
    from ..progress import format_duration, format_size, plural

    lines = []
    if not st["running"]:
        if st["published"]:
            head = (f"no agent running (last status {_ago(st.get('updated_at'), now)}, from pid {st.get('pid')}, "
                    f"state {st.get('state')}; stale)")
        else:
            head = "no agent running (no status published)"
    elif not st["published"]:
        head = "agent running, no status published yet" + (f" ({st['error']})" if st.get("error") else "")
    else:
        head = f"{st.get('state')}, agent pid {st.get('pid')} up {format_duration(now - st['started_at'])}"
        if st["stale"]:
            head += f"; status not updated for {format_duration(st['age_seconds'])} (stale)"
    lines.append(f"{st['db']}: {head}")
    if st["published"]:
        lines.append(f"  generation {st.get('generation') or '-'}, "
                     f"last snapshot {_ago(st.get('last_snapshot_at'), now)}, "
                     f"spool {format_size(st.get('spool_bytes'))} ({plural(st.get('spool_objects', 0), 'object')})")
        if st.get("seals"):
            lines.append(f"  write lock held {plural(int(st['seals']), 'time')}, {st['seal_seconds']:.3f}s in all, "
                         f"longest {st['max_seal_seconds'] * 1000:.1f} ms")
        if st.get("error"):
            lines.append(f"  error: {st['error']}")
    for r in st.get("replicas", []):
        lines.append(f"  {r['name']:<10} {r['state']:<9}  lag {r['lag_seconds']:.1f}s, {format_size(r['lag_bytes'])}; "
                     f"shipped {plural(r['uploaded_objects'], 'object')}, {format_size(r['uploaded_bytes'])}; "
                     f"generation {r.get('generation') or '-'}  -> {r.get('destination')}")
        if r.get("last_error"):
            lines.append(f"  {'':<10} last error: {r['last_error']}")
        for unsound in r.get("unsound_objects") or ():
            lines.append(f"  {'':<10} unsound object, left alone: {unsound}")
        last = (r.get("validation") or {}).get("last")
        if last:
            verdict = "ok" if last["ok"] else f"FAILED: {last['message']}"
            lines.append(f"  {'':<10} validation {_ago(last['at'], now)}: {verdict}")
    return "\n".join(lines)



def add_parser(sub: Subparsers) -> None:
    """Add the command's parser to ``sub``."""
    st = sub.add_parser("status", help="what the running agent reports: state, lag, generation, spool",
                        description="For each database (those given, or every configured one) and each of its "
                                    "replicas: state, lag, generation, last snapshot, spool size, as the "
                                    "running agent publishes them. Exit 0 when an agent runs for every "
                                    "database and no replica failed, else 1.")
    st.add_argument("dbs", nargs="*", metavar="DB", help="database paths (default: every configured database)")
    global_options(st)
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=run)
