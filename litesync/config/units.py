"""Scalar values of the configuration (pure): durations, sizes, rates, booleans, names,
endpoints; each converter raises ``ConfigError`` naming the value."""

from __future__ import annotations

import os
import re
from decimal import Decimal, InvalidOperation
from typing import Callable, Sequence, TypeVar
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..replica.registry import BACKENDS
from ..segment import check_db_id
from .model import MAX_PART_SIZE, MIN_PART_SIZE

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

# Decimal units are powers of 1000 and binary units powers of 1024, as the names say.
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")


def parse_duration(text: str) -> float:
    """Return the seconds in a duration such as "500ms", "10s", "5m", "1h30m" or "2d"."""
    s = text.strip()
    if _NUMBER.fullmatch(s):
        raise ConfigError(f"duration needs a unit: {text!r}")
    if not s:
        raise ConfigError(f"invalid duration: {text!r} (units: ms, s, m, h, d)")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ConfigError(f"invalid duration: {text!r} (units: ms, s, m, h, d)")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return total


def parse_timeout(text: str) -> float:
    """Return the seconds of a total deadline ("30m", "2h"), infinity for "none"."""
    if text.strip().lower() == "none":
        return float("inf")
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ConfigError(f"must be greater than zero (or none): {text!r}")
    return seconds


def parse_size(text: str | int) -> int:
    """Return the bytes in a size such as "512", "64KB" (10^3) or "64MiB" (2^20)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"invalid size: {text!r}")
        return text
    m = _SIZE.fullmatch(str(text).strip())
    unit = _SIZE_UNITS.get(m.group(2).lower()) if m else None
    if m is None or not unit:
        raise ConfigError(f"invalid size: {text!r} (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    try:
        size = Decimal(m.group(1)) * unit
    except InvalidOperation:  # pragma: no cover - the pattern only lets decimals through
        raise ConfigError(f"invalid size: {text!r}") from None
    if size != size.to_integral_value():
        raise ConfigError(f"size is not a whole number of bytes: {text!r}")
    return int(size)


def parse_bandwidth(text: str) -> int:
    """Return the bytes per second in a rate such as "5MB/s" or "512KiB/s" (greater than zero)."""
    s = str(text).strip()
    if not s.lower().endswith("/s"):
        raise ConfigError(f"bandwidth needs a '/s': {text!r} (a size per second: 5MB/s, 512KiB/s)")
    try:
        rate = parse_size(s[:-2])
    except ConfigError:
        raise ConfigError(f"invalid bandwidth: {text!r} (a size per second: 5MB/s, 512KiB/s)") from None
    if rate <= 0:
        raise ConfigError(f"must be greater than zero: {text!r}")
    return rate


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise ConfigError(f"expected true or false: {text!r}")
    return value == "true"


def _integer(minimum: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        if not re.fullmatch(r"[+-]?\d+", text.strip()):
            raise ConfigError(f"expected an integer: {text!r}")
        value = int(text)
        if value < minimum:
            raise ConfigError(f"must be at least {minimum}: {text!r}")
        return value

    return convert


def _choice(options: Sequence[str]) -> Callable[[str], str]:
    def convert(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ConfigError(f"invalid value: {text!r} (expected {_one_of(options)})")
        return value

    return convert


N = TypeVar("N", int, float)


def _positive(parse: Callable[[str], N]) -> Callable[[str], N]:
    """Return ``parse`` refusing zero (a duration or size that must be more than nothing)."""
    def convert(text: str) -> N:
        value = parse(text)
        if value <= 0:
            raise ConfigError(f"must be greater than zero: {text!r}")
        return value

    return convert


_positive_duration = _positive(parse_duration)


def _compaction(text: str) -> tuple[float, ...]:
    if text.strip().lower() == "off":
        return ()
    levels = tuple(_positive_duration(part.strip()) for part in text.split(","))
    if any(b <= a for a, b in zip(levels, levels[1:])):
        raise ConfigError(f"compaction windows must increase: {text!r}")
    return levels


_positive_size = _positive(parse_size)


def _part_size(text: str) -> int:
    size = parse_size(text)
    if not MIN_PART_SIZE <= size <= MAX_PART_SIZE:
        raise ConfigError(f"must be between 5MiB and 5GiB: {text!r}")
    return size


def split_addr(text: str) -> tuple[str, int]:
    """Return (host, port) of "host:port", "[ipv6]:port" or ":port" (all interfaces)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not re.fullmatch(r"\d{1,5}", port) or not 0 < int(port) < 65536:
        raise ConfigError(f"expected host:port with a port from 1 to 65535: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"write an IPv6 address in brackets, [::1]:9090: {text!r}")
    return host, int(port)


def _addr(text: str) -> str:
    split_addr(text)
    return text.strip()


def _replica_type(text: str) -> str:
    if text not in BACKENDS:
        raise ConfigError(f"unknown replica type: {text!r} (expected {_one_of(tuple(BACKENDS))})")
    return text


def _replica_name(text: str) -> str:
    # The name becomes a file name in the database's state directory.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        raise ConfigError(f"invalid replica name: {text!r} (letters, digits, '.', '_', '-')")
    return text


def _bucket(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        raise ConfigError(f"invalid bucket name: {text!r}")
    return text


_LOOPBACK = re.compile(r"(localhost|127(\.\d+){3}|\[::1\])(:\d+)?(/.*)?")


def _endpoint(text: str) -> str:
    if "://" not in text and re.fullmatch(r"[A-Za-z0-9.\[\]:-]+(/.*)?", text):
        # A host without a scheme, as Litestream takes it: https, but http on the loopback.
        text = ("http://" if _LOOPBACK.fullmatch(text) else "https://") + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"endpoint must be an http:// or https:// URL: {text!r}")
    if "@" in parts.netloc:  # the endpoint is shown in logs, status and metrics: never echo it
        raise ConfigError("endpoint must not contain credentials (give them as keys or in the environment)")
    return text


def _pattern(text: str) -> str:
    if "/" in text:
        raise ConfigError(f"pattern matches file names, not paths: {text!r}")
    return text


def _key_prefix(text: str) -> str:
    return text.strip("/")


def _db_id(text: str) -> str:
    try:
        return check_db_id(text)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _abspath(path: str, base: str | None) -> str:
    if not path:
        raise ConfigError("empty path")
    return os.path.normpath(os.path.join(base or os.getcwd(), os.path.expanduser(path)))


def _one_of(options: Sequence[str]) -> str:
    return ", ".join(options[:-1]) + " or " + options[-1] if len(options) > 1 else options[0]
