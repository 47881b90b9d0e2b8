"""Prometheus metrics: the agent's statuses as metric families, rendered by prometheus-client
through a custom collector, and a small HTTP server for ``/metrics`` on the configured
``addr``. prometheus-client is imported with the first scrape only (it adds 0.6 MiB)."""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Callable

from .config import split_addr
from .errors import LitesyncError

if TYPE_CHECKING:
    from prometheus_client import Metric

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (name, type, help, key in a replica's status)
_REPLICA_METRICS = (
    ("litesync_replica_lag_seconds", "gauge",
     "Seconds since the oldest transaction this replica has not received was committed (0: up to date).",
     "lag_seconds"),
    ("litesync_replica_lag_bytes", "gauge", "Spool bytes this replica has not received.", "lag_bytes"),
    ("litesync_shipped_bytes_total", "counter", "Bytes uploaded to the replica by this agent.", "uploaded_bytes"),
    ("litesync_shipped_objects_total", "counter", "Objects (snapshots, segments) uploaded to the replica.",
     "uploaded_objects"),
    ("litesync_replica_errors_total", "counter", "Failed replica operations (shipping and maintenance).",
     "errors"),
    ("litesync_replica_retries_total", "counter", "Replica operations tried again after a failure.", "retries"),
    ("litesync_replica_unsound_objects", "gauge",
     "Snapshots on the replica that do not read back whole; retention leaves them alone.", "unsound_count"),
)
# (name, type, help, key in a database's status)
_DB_METRICS = (
    ("litesync_spool_bytes", "gauge", "Bytes in the local spool (copied, not yet shipped everywhere).",
     "spool_bytes"),
    ("litesync_spool_dropped_objects_total", "counter",
     "Objects dropped from the spool unshipped (past spool-max-size); a replica behind them gets a new snapshot.",
     "spool_dropped"),
    ("litesync_checkpoints_total", "counter", "WAL checkpoints run by the agent.", "checkpoints"),
    ("litesync_snapshots_total", "counter", "Snapshots written to the spool.", "snapshots"),
    ("litesync_snapshot_duration_seconds", "gauge", "How long the last snapshot took.", "snapshot_seconds"),
    ("litesync_transactions_total", "counter", "Transactions copied from the WAL to the spool.", "transactions"),
    ("litesync_seals_total", "counter", "Times the agent held the write lock (a seal).", "seals"),
    ("litesync_seal_seconds_total", "counter", "Seconds the agent held the write lock, in all.", "seal_seconds"),
    ("litesync_seal_max_seconds", "gauge", "The agent's longest hold of the write lock so far.", "max_seal_seconds"),
    ("litesync_database_errors_total", "counter",
     "Failed turns of the agent on this database (copying, checkpoints, snapshots), e.g. a full disk.", "errors"),
)
_STATES = ("pending", "completed", "failed")


def families(statuses: list[dict]) -> list[Metric]:
    """Return the metric families of every database status (as ``DbReplication.status`` builds them)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    out: list[Metric] = []

    def family(name: str, kind: str, text: str, labels: list[str],
               samples: list[tuple[list[str], float | int | bool | None]]) -> None:
        metric = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, text, labels=labels)
        for values, value in samples:
            metric.add_metric(values, float(value or 0))
        out.append(metric)

    for name, kind, text, key in _DB_METRICS:
        family(name, kind, text, ["db"], [([st["db"]], st.get(key)) for st in statuses])
    replicas = [(st["db"], r) for st in statuses for r in st.get("replicas", [])]
    for name, kind, text, key in _REPLICA_METRICS:
        family(name, kind, text, ["db", "replica"], [([db, r["name"]], r.get(key)) for db, r in replicas])
    family("litesync_replica_state", "gauge", "1 for the replica's current state: pending, completed or failed.",
           ["db", "replica", "state"],
           [([db, r["name"], s], r.get("state") == s) for db, r in replicas for s in _STATES])
    family("litesync_validations_total", "counter", "Periodic verifications of the replica, by result.",
           ["db", "replica", "result"],
           [([db, r["name"], res], (r.get("validation") or {}).get(res)) for db, r in replicas
            for res in ("ok", "failed")])
    return out


class StatusCollector:
    """A prometheus-client collector: the families of ``source()``'s statuses at each scrape."""

    def __init__(self, source: Callable[[], list[dict]]) -> None:
        self.source = source

    def collect(self) -> list[Metric]:
        return families(self.source())


def render(statuses: list[dict]) -> str:
    """Return the text exposition of ``statuses`` (through prometheus-client)."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(lambda: statuses))
    return generate_latest(registry).decode()


class MetricsServer:
    """Serves ``GET /metrics`` on ``addr`` from a thread; ``source`` returns the statuses."""

    def __init__(self, addr: str, source: Callable[[], list[dict]]) -> None:
        host, port = split_addr(addr)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                body = render(source()).encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics: %s %s", self.address_string(), format % args)

        server_class = ThreadingHTTPServer
        if ":" in host:
            class server_class(ThreadingHTTPServer):  # type: ignore[no-redef]
                address_family = socket.AF_INET6
        try:
            self.server = server_class((host, port), Handler)
        except OSError as e:
            raise LitesyncError(f"addr: cannot serve metrics on {addr!r}: {e.strerror}") from None
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> None:
        self.thread.start()
        log.info("serving metrics on http://%s:%d/metrics", *self.server.server_address[:2])

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()  # waits for serve_forever, so only when it runs
            self.thread.join(timeout=5)
        self.server.server_close()
