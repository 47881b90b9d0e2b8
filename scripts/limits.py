#!/usr/bin/env python3
"""Measure the physical limits a restore and the agent run into on this machine.

    python scripts/limits.py [--mb 300] [--repeat 3] [--workdir DIR]

Prints, for a text+JSON database of --mb megabytes (scripts/measure_core.make_db), the
throughput of each piece of work a restore does, one at a time, on one core:

  write new file   writing that many bytes to a new file in 1 MiB pwrites (page cache;
                   the figure includes the kernel's block allocation), then fsync
  read file        reading the database back (page cache)
  zstd -1 compress / decompress   litesync's level, 1 MiB batches as the writers use
  sha256 per page  the page hash of dbhash.py, over every page
  integrity_check  PRAGMA integrity_check of the database (apsw, immutable)

Each figure is the median of --repeat runs, in MB/s of database bytes. A restore needs
decompress + hash + write + integrity_check; the agent needs read + hash + compress.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import apsw  # noqa: E402
import zstandard  # noqa: E402

from litesync.dbhash import page_hash  # noqa: E402
from measure_core import make_db  # noqa: E402

CHUNK = 1 << 20


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` calls of fn."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=300, help="database size in MB (default 300)")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is printed (default 3)")
    p.add_argument("--workdir", help="where to put the files (default: a new temp directory)")
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="limits-", dir=args.workdir)
    db = os.path.join(work, "db.db")
    print(f"building a {args.mb} MB text+JSON database in {work}", file=sys.stderr)
    make_db(db, args.mb)
    with open(db, "rb") as f:
        data = f.read()
    size = len(data)
    page_size = apsw.Connection(db).execute("PRAGMA page_size").fetchall()[0][0]
    out = os.path.join(work, "out.db")

    def write_new() -> None:
        if os.path.exists(out):
            os.unlink(out)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            for off in range(0, size, CHUNK):
                os.pwrite(fd, view[off:off + CHUNK], off)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_back() -> None:
        with open(db, "rb", buffering=0) as f:
            while f.read(CHUNK):
                pass

    compressor = zstandard.ZstdCompressor(level=1, write_checksum=True)
    compressed = b""

    def compress() -> None:
        nonlocal compressed
        chunks = []
        z = compressor.compressobj()
        view = memoryview(data)
        for off in range(0, size, CHUNK):
            chunks.append(z.compress(view[off:off + CHUNK]))
        chunks.append(z.flush())
        compressed = b"".join(chunks)

    def decompress() -> None:
        d = zstandard.ZstdDecompressor().decompressobj()
        for off in range(0, len(compressed), CHUNK):
            d.decompress(compressed[off:off + CHUNK])

    def hash_pages() -> None:
        view = memoryview(data)
        for i in range(size // page_size):
            page_hash(i + 1, view[i * page_size:(i + 1) * page_size])

    def integrity() -> None:
        conn = apsw.Connection(f"file:{db}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        try:
            conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()

    rows = [("write new file + fsync", write_new), ("read file (page cache)", read_back),
            ("zstd -1 compress", compress), ("zstd decompress", decompress),
            ("sha256 per page", hash_pages), ("integrity_check", integrity)]
    print(f"{'work':<26} {'MB/s':>8}   ({size / 1e6:.0f} MB, page size {page_size}, median of {args.repeat})")
    for label, fn in rows:
        seconds = timed(fn, args.repeat)
        print(f"{label:<26} {size / 1e6 / seconds:8.0f}")
        if fn is compress:
            print(f"{'  compression ratio':<26} {size / len(compressed):8.2f}")
    for path in (db, out):
        if os.path.exists(path):
            os.unlink(path)
    os.rmdir(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
