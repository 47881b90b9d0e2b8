"""``litesync verify``: restore each replica to a temporary file and compare it with the live database."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from ..errors import LitesyncError, UsageError
from .common import EXIT_FAILURE, EXIT_OK, Subparsers, global_options, is_url, load, setup_logging

if TYPE_CHECKING:
    from ..config import ReplicaConfig


def run(args: argparse.Namespace) -> int:
    from ..agent import state_dir_for
    from ..progress import terminal_printer
    from ..replica import open_replica
    from ..status import wait_replica
    from ..verify import verify_replica

    positional = list(args.args)
    db = positional.pop(0) if not is_url(positional[0]) else None
    if db is None:
        from ..config import parse_replica_url

        replicas, db_path, db_id = [parse_replica_url(u) for u in positional], None, None
    else:
        cfg = load(args, db, positional)
        setup_logging(cfg.logging, args.verbose)
        replicas, db_path, db_id = list(cfg.dbs[0].replicas), cfg.dbs[0].path, cfg.dbs[0].id
    if args.replica:
        replicas = [rc for rc in replicas if rc.name == args.replica]
        if not replicas:
            raise UsageError(f"--replica: no replica named {args.replica!r}")
    work_dir = state_dir_for(db_path) if db_path and os.path.isdir(state_dir_for(db_path)) else None
    failed = 0
    for rc in replicas:
        def wait(since: float, rc: ReplicaConfig = rc) -> bool:
            assert db_path is not None
            return wait_replica(db_path, rc.name, since, args.timeout, destination=rc.destination)

        try:
            client = open_replica(rc)
            try:
                v = verify_replica(client, db_path, work_dir=work_dir, wait=wait if db_path else None,
                                   progress=terminal_printer(), db_id=db_id)
            finally:
                client.close()
            print(f"ok      {rc.name}: {v.describe()}")
        except UsageError:
            raise
        except LitesyncError as e:
            failed += 1
            print(f"FAILED  {rc.name}: {e}")
    return EXIT_FAILURE if failed else EXIT_OK



def add_parser(sub: Subparsers) -> None:
    """Add the command's parser to ``sub``."""
    vf = sub.add_parser("verify", help="restore a replica to a temporary file and compare it with the database",
                        description="Restore each replica of DB (or the replica URLs given) to a temporary file, "
                                    "run integrity_check, and compare its checksum with the live database at the "
                                    "same position. Exit 0 only when every replica matches.")
    vf.add_argument("args", nargs="+", metavar="DB|URL", help="a database (its replicas, or the URLs that follow "
                                                             "it), or replica URLs alone (no live comparison)")
    global_options(vf)
    vf.add_argument("--replica", metavar="NAME", help="verify only this replica of DB")
    vf.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                    help="how long to wait for a running agent to ship the live state (default 60)")
    vf.set_defaults(func=run)
