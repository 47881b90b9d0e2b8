"""The command line: parse, call the library, print. Exit codes: 0 ok, 1 runtime failure,
2 usage or configuration error. One module per command, each with its parser
(``add_parser``) and what it runs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from ..errors import LitesyncError
from . import listings, replicate, restore, status, tools, verify
from .common import EXIT_FAILURE, EXIT_USAGE, ArgumentError, Parser, setup_logging
from .tools import version_text

__all__ = ["ArgumentError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="litesync", description="Streaming replication for SQLite databases in WAL mode.")
    p.add_argument("--config", help="config file (default: $LITESYNC_CONFIG, ./litesync.yml, /etc/litesync.yml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=version_text())
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    replicate.add_parser(sub)
    restore.add_parser(sub)
    listings.add_parser(sub)
    tools.add_parser(sub)
    status.add_parser(sub)
    verify.add_parser(sub)
    return p


def _from_litestream(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Return ``argv`` with Litestream's flags read as litesync's (see litestream.py): Go's
    single-dash long flags (``-timestamp T``) as ``--timestamp T``, each with a warning; a
    flag without effect dropped with a warning, a refused one a usage error."""
    from .. import litestream

    longs = {opt for p in [parser, *_subparsers(parser).values()] for a in p._actions
             for opt in a.option_strings if opt.startswith("--")}
    argv, rewritten = litestream.go_style_flags(argv, longs)
    for flag in rewritten:
        print(f"litesync: warning: {flag} is Litestream's spelling; litesync's is -{flag}", file=sys.stderr)
    out: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
            continue
        name, has_value = arg.lstrip("-").partition("=")[0], "=" in arg
        rule = litestream.FLAGS.get(name) if arg.startswith("-") and f"--{name}" not in longs else None
        if isinstance(rule, litestream.Refused):
            command = next((a for a in argv if a in _subparsers(parser)), None)
            raise ArgumentError(f"Litestream's {arg.partition('=')[0]} is not supported: {rule.instead}",
                                f"litesync {command}" if command else "litesync")
        if isinstance(rule, litestream.Ignored):
            print(f"litesync: warning: {arg.partition('=')[0]} has no effect: {rule.why}", file=sys.stderr)
            skip_value = not has_value
            continue
        out.append(arg)
    return out


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Return the parser of each command (argparse keeps them in its private subparsers action)."""
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(_from_litestream(parser, list(sys.argv[1:] if argv is None else argv)))
        if extra:  # argparse names the top-level command for these; name the subcommand
            prog = f"litesync {args.command}" if getattr(args, "command", None) else "litesync"
            raise ArgumentError(f"unrecognized arguments: {' '.join(extra)}", prog)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        if not logging.getLogger().handlers:
            setup_logging(None, args.verbose)
        return args.func(args)
    except ArgumentError as e:
        print(f"{e.prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except LitesyncError as e:
        print(f"litesync: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        # The reader went away (| head): the rest of the output has nowhere to go. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except OSError as e:
        # The environment (a full disk, permissions) refused what litesync does not expect
        # to fail: one line naming the file; the traceback with -v.
        logging.getLogger("litesync").debug("%s", e, exc_info=True)
        where = f"{e.filename}: " if e.filename else ""
        print(f"litesync: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
