"""Secrets: ``${VAR}`` expansion from the environment, and encryption keys from key files
and the environment."""

from __future__ import annotations

import logging
import os
import re
import stat
from typing import Mapping

from ..errors import ConfigError
from ..replica.crypt import load_keys

log = logging.getLogger("litesync.config")

# Encryption keys for replicas named on the command line (configured replicas have their own keys).
KEY_ENV = "LITESYNC_ENCRYPTION_KEY"
KEY_FILE_ENV = "LITESYNC_ENCRYPTION_KEY_FILE"

_REFERENCE = re.compile(r"\$\$|\$\{([^}]*)\}|\$\{")
_VARIABLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Return text with ``${VAR}`` and ``${VAR:-default}`` replaced; ``$$`` is a literal ``$``."""
    env = os.environ if environ is None else environ

    def substitute(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        body = m.group(1)
        if body is None:
            raise ConfigError("unterminated '${' (write '$${' for a literal '${')")
        var = _VARIABLE.fullmatch(body)
        if var is None:
            raise ConfigError(f"invalid variable reference: {m.group(0)!r}")
        name, default = var.groups()
        value = env.get(name)
        if default is not None and not value:  # like the shell: unset or empty takes the default
            return default
        if value is None:
            raise ConfigError(f"environment variable not set: {name!r}")
        return value

    return _REFERENCE.sub(substitute, text)





def read_key_file(path: str) -> list[bytes]:
    """Return the keys in a key file (one or more, see ``load_keys``); warn when every user may read it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
            mode = os.fstat(f.fileno()).st_mode
    except UnicodeDecodeError:
        raise ConfigError(f"encryption key file is not text: {path!r}") from None
    except OSError as e:
        raise ConfigError(f"cannot read encryption key file: {path!r} ({e.strerror})") from None
    if mode & stat.S_IROTH:
        log.warning("encryption key file is readable by every user: %s (run chmod 600 %s)", path, path)
    try:
        return load_keys(text)
    except ConfigError as e:
        raise ConfigError(f"encryption key file {path!r}: {e}") from None


def keys_from_env(environ: Mapping[str, str] | None = None) -> tuple[bytes, ...] | None:
    """Return the keys $LITESYNC_ENCRYPTION_KEY or $LITESYNC_ENCRYPTION_KEY_FILE gives; None when both are unset.

    A variable that is set must hold a key: set but empty is an error, never "no encryption".
    """
    env = os.environ if environ is None else environ
    text, path = env.get(KEY_ENV), env.get(KEY_FILE_ENV)
    if text is not None and path is not None:
        raise ConfigError(f"set ${KEY_ENV} or ${KEY_FILE_ENV}, not both")
    if text is not None:
        try:
            return tuple(load_keys(text))
        except ConfigError as e:
            raise ConfigError(f"${KEY_ENV}: {e}") from None
    if path is not None:
        return tuple(read_key_file(os.path.expanduser(path)))
    return None
