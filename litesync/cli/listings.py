"""``litesync generations``, ``snapshots`` and ``segments``: what a replica holds, with totals."""

from __future__ import annotations

import argparse

from .common import EXIT_OK, Subparsers, generation_arg, global_options, replicas_of


def _listing(args: argparse.Namespace, what: str) -> int:
    import json

    from .. import history, layout
    from ..progress import format_size, plural
    from ..replica import open_replica

    replicas = replicas_of(args, args.target).replicas
    generation = generation_arg(args)
    client = open_replica(replicas[0])
    try:
        cat = history.catalog(client.list(layout.GENERATIONS + "/"))
    finally:
        client.close()
    gens = [g for g in cat.generations.values() if generation is None or g.generation == generation]
    rows: list[dict] = []
    if what == "generations":
        newest = cat.newest()
        for g in gens:
            rows.append({"generation": layout.format_generation(g.generation), "start": history.format_ms(g.start_ms),
                         "end": history.format_ms(g.end_ms), "snapshots": len(g.snapshots),
                         "segments": len(g.segments), "bytes": g.size,
                         "current": newest is not None and g.generation == newest.generation})
        cols = ["generation", "start", "end", "snapshots", "segments", "bytes"]
    elif what == "snapshots":
        for g in gens:
            for snap, size in g.snapshots:
                rows.append({"generation": layout.format_generation(snap.generation), "seq": snap.seq,
                             "created": history.format_ms(snap.created_ms), "bytes": size, "key": snap.key})
        cols = ["generation", "seq", "created", "bytes"]
    else:
        for g in gens:
            for seg, size in g.segments:
                rows.append({"generation": layout.format_generation(seg.generation), "first_seq": seg.first_seq,
                             "last_seq": seg.last_seq, "last_commit": history.format_ms(seg.last_commit_ms),
                             "kind": "merged" if seg.last_seq != seg.first_seq else "tx", "bytes": size,
                             "key": seg.key})
        cols = ["generation", "first_seq", "last_seq", "last_commit", "kind", "bytes"]
    total = sum(r["bytes"] for r in rows)
    if args.json:
        print(json.dumps({"replica": client.name, what: rows, "count": len(rows), "bytes": total}, indent=2))
        return EXIT_OK
    table = [cols] + [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    print(f"total: {plural(len(rows), what[:-1])}, {format_size(total)} ({client.name})")
    return EXIT_OK


def cmd_generations(args: argparse.Namespace) -> int:
    return _listing(args, "generations")


def cmd_snapshots(args: argparse.Namespace) -> int:
    return _listing(args, "snapshots")


def cmd_segments(args: argparse.Namespace) -> int:
    return _listing(args, "segments")



def add_parser(sub: Subparsers) -> None:
    """Add the parsers of the three listings to ``sub``."""
    for name, func, text in (("generations", cmd_generations, "list generations: time range, objects, bytes"),
                             ("snapshots", cmd_snapshots, "list snapshots: sequence, time, bytes"),
                             ("segments", cmd_segments, "list segments: sequence range, last commit, bytes")):
        g = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]} (of DB's first "
                                                        f"replica, or of a replica URL), with totals.")
        g.add_argument("target", metavar="DB|URL")
        global_options(g)
        g.add_argument("--generation", metavar="GEN", help="only this generation")
        g.add_argument("--json", action="store_true", help="print JSON")
        g.set_defaults(func=func)
