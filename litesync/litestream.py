"""What litesync makes of Litestream's configuration keys, URL parameters, environment
variables and command-line flags (pure tables and small helpers).

Each is one of three things: an ``Alias`` (the same meaning under litesync's name),
``Ignored`` (accepted with a warning: it has no effect in litesync, and says why), or
``Refused`` (a configuration error that says what to write instead). README.md's
"Coming from Litestream" section is this module as a table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Union

__all__ = ["Alias", "Ignored", "Refused", "Rule", "TOP_KEYS", "DB_KEYS", "REPLICA_KEYS", "LOGGING_KEYS",
           "SECTIONS", "MOVED_TO_DB", "URL_PARAMS", "FLAGS", "bare_variable", "credentials_from_env",
           "go_style_flags"]


@dataclass(frozen=True)
class Alias:
    """Read the key as litesync's ``to``."""

    to: str


@dataclass(frozen=True)
class Ignored:
    """Accept the key with a warning: it has no effect in litesync, because ``why``."""

    why: str


@dataclass(frozen=True)
class Refused:
    """Refuse the key: ``instead`` says what to write."""

    instead: str


Rule = Union[Alias, Ignored, Refused]

_NO_GLOBAL = Refused("litesync has no global replica settings: give it on each replica")
_SSE = Refused("litesync encrypts on the client instead: encryption-key (see Encryption in the README)")

TOP_KEYS: dict[str, Rule] = {
    "shutdown-sync-timeout": Alias("shutdown-timeout"),
    "shutdown-sync-interval": Ignored("litesync retries each replica on its own backoff while it shuts down"),
    "levels": Refused("write compaction: 30s,5m,1h (litesync's windows for merging segments)"),
    "l0-retention": Refused("litesync keeps segments until retention: has passed; remove the key"),
    "l0-retention-check-interval": Refused("write retention-check-interval:"),
    "verify-compaction": Ignored("litesync checks every merged segment before it replaces its parts"),
    "mcp-addr": Refused("litesync has no MCP server; remove the key"),
    "heartbeat-url": Refused("litesync has no heartbeat; watch `litesync status` or the metrics at addr:"),
    "heartbeat-interval": Refused("litesync has no heartbeat; watch `litesync status` or the metrics at addr:"),
    "socket": Refused("litesync has no control socket; remove the key"),
    **{key: _NO_GLOBAL for key in ("access-key-id", "secret-access-key", "region", "bucket", "endpoint",
                                   "force-path-style", "sync-interval", "part-size", "concurrency",
                                   "skip-verify")},
}

# Sections whose keys litesync reads flat: ``snapshot: {interval: 1h}`` is ``snapshot-interval: 1h``.
SECTIONS: dict[str, dict[str, str]] = {
    "snapshot": {"interval": "snapshot-interval", "retention": "retention"},
    "validation": {"interval": "validation-interval"},
}

_WAKES = "litesync is woken by each commit and checkpoints on its own"
DB_KEYS: dict[str, Rule] = {
    "min-checkpoint-page-count": Alias("checkpoint-pages"),
    "max-checkpoint-page-count": Ignored(_WAKES),
    "monitor-interval": Ignored(_WAKES),
    "checkpoint-interval": Ignored(_WAKES),
    "busy-timeout": Ignored(_WAKES),
    "truncate-page-n": Ignored("litesync truncates a WAL file larger than max-wal-size (a size, not pages): "
                               "set that instead"),
    "watch": Ignored("litesync always watches a dir: entry for new and removed databases"),
    "meta-path": Refused("litesync keeps its state in .NAME-litesync/ next to the database; remove the key"),
}

# Litestream 0.3 set these on each replica; litesync has them once per database.
MOVED_TO_DB = ("retention", "retention-check-interval", "snapshot-interval", "validation-interval")

REPLICA_KEYS: dict[str, Rule] = {
    "skip-verify": Refused("litesync always verifies TLS certificates: point $AWS_CA_BUNDLE at your CA's "
                           "certificate instead"),
    "sign-payload": Ignored("litesync signs every request"),
    "require-content-md5": Ignored("litesync checks every object with its own checksums"),
    "auto-recover": Ignored("litesync starts a new generation with a snapshot whenever it cannot continue"),
    "sse-customer-algorithm": _SSE,
    "sse-customer-key": _SSE,
    "sse-customer-key-path": _SSE,
    "sse-kms-key-id": _SSE,
    "age": Refused("litesync encrypts with its own keys: encryption-key (litesync cannot read Litestream's "
                   "age-encrypted backups)"),
}

LOGGING_KEYS: dict[str, Rule] = {"type": Alias("format")}

URL_PARAMS: dict[str, Rule] = {
    "forcePathStyle": Alias("force-path-style"),
    "skipVerify": REPLICA_KEYS["skip-verify"],
    "skip-verify": REPLICA_KEYS["skip-verify"],
}

_BARE_VARIABLE = re.compile(r"(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)")


def bare_variable(text: str) -> str | None:
    """Return the name of the first ``$NAME`` (Litestream's form, which litesync does not expand) in ``text``."""
    m = _BARE_VARIABLE.search(text)
    return m.group(1) if m else None


def credentials_from_env(env: Mapping[str, str]) -> tuple[str, str] | None:
    """Return Litestream's S3 credentials (``$LITESTREAM_ACCESS_KEY_ID`` and
    ``$LITESTREAM_SECRET_ACCESS_KEY``) when both are set and the AWS ones are not."""
    key, secret = env.get("LITESTREAM_ACCESS_KEY_ID"), env.get("LITESTREAM_SECRET_ACCESS_KEY")
    if key and secret and not env.get("AWS_ACCESS_KEY_ID"):
        return key, secret
    return None


# Restore flags of Litestream that litesync does not take under the same name.
FLAGS: dict[str, Rule] = {
    "txid": Refused("litesync restores to a time: --timestamp TIME (`litesync segments` lists commit times)"),
    "parallelism": Ignored("litesync downloads four objects at once"),
    "no-expand-env": Refused("litesync expands only ${VAR}; write $$ for a literal $"),
}


def go_style_flags(argv: list[str], long_options: set[str]) -> tuple[list[str], list[str]]:
    """Return ``argv`` with Go-style single-dash long flags (``-timestamp``) written as
    litesync's (``--timestamp``), and the flags so rewritten. Arguments after ``--`` are
    left alone."""
    out: list[str] = []
    rewritten: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:], rewritten
        m = re.fullmatch(r"-([a-z][a-z0-9-]+)(=.*)?", arg)
        if m and f"--{m.group(1)}" in long_options:
            out.append(f"--{m.group(1)}{m.group(2) or ''}")
            rewritten.append(arg)
        else:
            out.append(arg)
    return out, rewritten
