#!/usr/bin/env python3
"""Run the litesync CLI with tracemalloc on, and append what Python holds to a file every
``$MEMPROBE_EVERY`` seconds (default 60): the traced total, the number of objects the
garbage collector tracks, the 12 source lines holding the most, and the 6 tracebacks whose
holdings grew the most since report ``$MEMPROBE_BASE`` (default 2: the first comes while the
agent may still be starting). ``$MEMPROBE_FRAMES`` frames per traceback (default 10). For soaks:

    python scripts/soak.py --agent-wrapper scripts/memprobe.py --agent-env MEMPROBE_OUT=/tmp/mem.txt ...

tracemalloc slows allocation-heavy code and counts only Python's allocations (not the
allocator's own retention): compare its totals with the process's RSS.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import tracemalloc


def report(out: str, n: int, t0: float, base: tracemalloc.Snapshot | None) -> tracemalloc.Snapshot:
    gc.collect()
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"== report {n} at {time.monotonic() - t0:.0f}s: traced {current / 2**20:.1f} MiB (peak "
             f"{peak / 2**20:.1f}), gc objects {len(gc.get_objects())}, garbage {len(gc.garbage)}"]
    lines += [f"  {s}" for s in snap.statistics("lineno")[:12]]
    if base is not None:
        lines.append("  -- grew most since the first report:")
        for d in snap.compare_to(base, "traceback")[:6]:
            lines.append(f"  {d.size_diff / 2**20:+.2f} MiB, {d.count_diff:+d} blocks")
            lines += [f"      {frame}" for frame in d.traceback.format()[-16:]]
    with open(out, "a") as f:
        f.write("\n".join(lines) + "\n")
    return snap


def probe(out: str, every: float, base_at: int) -> None:
    t0, base, n = time.monotonic(), None, 0
    while True:
        time.sleep(every)
        n += 1
        try:
            snap = report(out, n, t0, base)
            if n == base_at:
                base = snap
        except Exception as e:  # the agent goes on without its probe
            with open(out, "a") as f:
                f.write(f"== report {n}: {type(e).__name__}: {e}\n")


def main() -> int:
    tracemalloc.start(int(os.environ.get("MEMPROBE_FRAMES", "10")))
    out = os.environ.get("MEMPROBE_OUT", "memprobe.txt")
    every = float(os.environ.get("MEMPROBE_EVERY", "60"))
    base_at = int(os.environ.get("MEMPROBE_BASE", "2"))
    threading.Thread(target=probe, args=(out, every, base_at), name="memprobe", daemon=True).start()
    from litesync.cli import main as cli

    return cli()


if __name__ == "__main__":
    sys.exit(main())
