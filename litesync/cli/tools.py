"""``litesync check``, ``keygen``, ``databases`` and ``version``."""

from __future__ import annotations

import argparse
import os

from .. import __version__
from ..errors import LitesyncError
from .common import EXIT_FAILURE, EXIT_OK, Subparsers, global_options, is_url, load


def cmd_check(args: argparse.Namespace) -> int:
    from ..replica import open_replica
    from ..replica.check import check_replica

    positional = list(args.args)
    db = positional.pop(0) if positional and not is_url(positional[0]) else None
    if positional:
        from ..config import command_line_replica

        replicas = [command_line_replica(u) for u in positional]
    else:
        replicas = load(args, db, []).replicas
    failed = 0
    for rc in replicas:
        try:
            client = open_replica(rc)
            try:
                seconds = check_replica(client, rc.db_id)
            finally:
                client.close()
            print(f"ok      {rc.name}: list, write, read back, delete ({seconds * 1000:.0f} ms)")
        except LitesyncError as e:
            failed += 1
            print(f"FAILED  {rc.name}: {e}")
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_databases(args: argparse.Namespace) -> int:
    """List the configured databases (and directories) with their replicas."""
    cfg = load(args, None, [])
    rows = [("path", "replicas")]
    rows += [(d.path, ", ".join(f"{r.name} ({r.destination})" for r in d.replicas)) for d in cfg.dbs]
    rows += [(os.path.join(w.path, ("**/" if w.recursive else "") + w.pattern),
              ", ".join(f"{r.name} ({r.destination}/...)" for r in w.template.replicas)) for w in cfg.dirs]
    width = max(len(path) for path, _ in rows)
    for path, replicas in rows:
        print(f"{path.ljust(width)}  {replicas}")
    return EXIT_OK


def cmd_keygen(_args: argparse.Namespace) -> int:
    from ..replica.crypt import generate_key

    print(generate_key())
    return EXIT_OK


def version_text() -> str:
    import apsw

    return f"litesync {__version__} (SQLite {apsw.sqlite_lib_version()} via apsw {apsw.apsw_version()})"


def cmd_version(_args: argparse.Namespace) -> int:
    print(version_text())
    return EXIT_OK



def add_parser(sub: Subparsers) -> None:
    """Add the parsers of check, keygen, databases and version to ``sub``."""
    c = sub.add_parser("check", help="test each replica: credentials, bucket, write/read/delete",
                       description="For each replica (of DB, of the config, or the URLs given): list, write a "
                                   "probe object, read it back, delete it.")
    global_options(c)
    c.add_argument("args", nargs="*", metavar="DB|URL", help="a configured database, or replica URLs")
    c.set_defaults(func=cmd_check)

    k = sub.add_parser("keygen", help="print a new encryption key",
                       description="Print a new random encryption key (64 hex digits) for encryption-key.")
    k.set_defaults(func=cmd_keygen)

    db = sub.add_parser("databases", help="list the configured databases and their replicas",
                        description="List the databases of the config file (and its dir: entries) with their "
                                    "replicas, as Litestream's `databases` does.")
    global_options(db)
    db.set_defaults(func=cmd_databases)

    v = sub.add_parser("version", help="print the version")
    for name in ("keygen", "version"):
        global_options(sub.choices[name], config=False)
    v.set_defaults(func=cmd_version)
