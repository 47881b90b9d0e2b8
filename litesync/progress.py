"""Progress of long transfers (snapshots, restores): one line format, a redrawn line for a
terminal, and sparse log lines for an agent whose log may be a file."""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, TextIO

#: Seconds between progress log lines of the agent: often on a terminal, rarely in a log file.
TERMINAL_INTERVAL = 2.0
LOG_INTERVAL = 60.0


# Decimal units, as the config's sizes name them (kB = 1000 bytes).
_SIZE_UNITS = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3))


def _unit(n: float) -> tuple[str, float]:
    for unit, scale in _SIZE_UNITS:
        if n >= scale * 0.9995:  # what rounds to 1000.0 of a unit shows as 1.0 of the next
            return unit, scale
    return "B", 1.0


def _scaled(n: float, unit: str, scale: float) -> str:
    return f"{n:.0f}" if unit == "B" else f"{n / scale:.1f}"


def format_size(n: float | None) -> str:
    """Return 0 B, 999 B, 1.2 kB, 3.4 MB, 5.6 GB or 7.8 TB: the one size format of the CLI and logs."""
    unit, scale = _unit(n or 0)
    return f"{_scaled(n or 0, unit, scale)} {unit}"


def format_rate(done: int, seconds: float) -> str:
    """Return ``done`` bytes in ``seconds`` as 12.3 MB/s (``-`` when no time has passed to measure)."""
    if seconds <= 0:
        return "- B/s" if done else "0 B/s"
    return f"{format_size(done / seconds)}/s"


def plural(n: int, noun: str) -> str:
    """Return "1 generation", "2 generations", "0 objects"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def format_progress(done: int, total: int, elapsed: float) -> str:
    """Return "12.3 / 100.0 MB (12%), 45.6 MB/s, ETA 1.9s" for ``done`` of ``total`` bytes."""
    rate = done / elapsed if elapsed > 0 else 0.0
    pct = 100.0 * done / total if total else 100.0
    if done >= total:
        eta = "done"
    elif rate > 0:
        eta = f"ETA {format_duration((total - done) / rate)}"
    else:
        eta = "ETA ?"
    unit, scale = _unit(total)
    return (f"{_scaled(done, unit, scale)} / {_scaled(total, unit, scale)} {unit} ({pct:.0f}%), "
            f"{format_rate(done, elapsed)}, {eta}")


def format_duration(seconds: float) -> str:
    """Return 4.2s, 3m07s or 2h05m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def terminal_printer(stream: TextIO | None = None, *, clock: Callable[[], float] = time.monotonic,
                     every: float = 0.2) -> Callable[[int, int], None] | None:
    """Return a callback(done, total) redrawing one progress line on ``stream`` (default
    stderr), or None when ``stream`` is not a terminal: pipes and log files stay clean."""
    out = sys.stderr if stream is None else stream
    if not out.isatty():
        return None
    t0 = clock()
    last = [float("-inf")]

    def show(done: int, total: int) -> None:
        now = clock()
        if now - last[0] < every and done < total:
            return
        last[0] = now
        out.write("\r" + format_progress(done, total, now - t0).ljust(60))
        if done >= total:
            out.write("\n")
        out.flush()

    return show


def logging_to_terminal() -> bool:
    """True when a handler of the root logger writes to a terminal."""
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        isatty = getattr(stream, "isatty", None)
        if isatty is not None and isatty():
            return True
    return False


class LogProgress:
    """Logs the progress of one long transfer at most once per ``interval`` seconds; a
    transfer shorter than ``interval`` logs nothing."""

    def __init__(self, log: logging.Logger | logging.LoggerAdapter, what: str, total: int,
                 interval: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.what = what
        self.total = total
        if interval is None:
            interval = TERMINAL_INTERVAL if logging_to_terminal() else LOG_INTERVAL
        self.interval = interval
        self.clock = clock
        self.t0 = self.last = clock()

    def __call__(self, done: int) -> None:
        now = self.clock()
        if now - self.last >= self.interval and done < self.total:
            self.last = now
            self.log.info("%s: %s", self.what, format_progress(done, self.total, now - self.t0))
