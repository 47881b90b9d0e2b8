"""What each replica backend accepts, declared once: the configuration reads its keys, URL
parameters, credentials, secrets and default sync interval from here, and ``open_replica``
builds a client with its factory. Adding a backend: its module, one entry here, one test
fixture (tests/conftest.py's replica clients). A key no other backend has is declared in
``options`` with the converter that parses it; the configuration reads it into
``ReplicaConfig.options`` and the factory takes it with ``cfg.option(key)``.

This module imports no backend (the factories import theirs when called) and nothing of
``litesync.config``, which reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from ..config import ReplicaConfig
    from .base import ReplicaClient

__all__ = ["Backend", "BACKENDS"]


@dataclass(frozen=True)
class Backend:
    """One replica type and what its configuration takes."""

    type: str
    #: config keys of this type, besides those of every replica (name, sync-interval, ...)
    keys: tuple[str, ...]
    #: query parameters of its URL (``s3://bucket/path?endpoint=...``), in the order messages list them
    url_params: tuple[str, ...]
    #: key pairs that are given together or not at all (an id and its secret)
    credentials: tuple[tuple[str, str], ...]
    #: config keys whose values are secrets (a world-readable file that holds them is warned about)
    secret_keys: tuple[str, ...]
    #: ``ReplicaConfig`` fields never shown (``repr``)
    secret_fields: tuple[str, ...]
    #: least time between the starts of two uploads while commits keep coming (seconds)
    default_sync_interval: float
    factory: Callable[["ReplicaConfig"], "ReplicaClient"]
    #: keys of its own (among ``keys``; no ``ReplicaConfig`` field holds them), each with the converter
    #: that parses its text, raising ``ConfigError`` that names the value; read into ``ReplicaConfig.options``
    options: Mapping[str, Callable[[str], Any]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        stray = [k for k in self.options if k not in self.keys]
        if stray:
            raise ValueError(f"backend {self.type!r}: options not among its keys: {stray}")

    @property
    def location_keys(self) -> tuple[str, ...]:
        """Keys a URL gives (its path, its bucket, its parameters): not to be given again with ``url:``."""
        return tuple(k for k in self.keys if k in ("path", "bucket") or k in self.url_params)


def _file(cfg: "ReplicaConfig") -> "ReplicaClient":
    from .file import FileReplicaClient

    return FileReplicaClient(cfg.path, name=cfg.name)


def _s3(cfg: "ReplicaConfig") -> "ReplicaClient":
    from .s3 import S3ReplicaClient

    return S3ReplicaClient(cfg)


def _b2(cfg: "ReplicaConfig") -> "ReplicaClient":
    from .b2 import B2ReplicaClient

    return B2ReplicaClient(cfg)


# Object stores charge per request: a busy database makes at most 4 uploads a second to one
# (a commit after a quiet spell goes up at once).
BACKENDS: dict[str, Backend] = {b.type: b for b in (
    Backend("file", keys=("path",), url_params=(), credentials=(), secret_keys=(), secret_fields=(),
            default_sync_interval=0.0, factory=_file),
    Backend("s3", keys=("bucket", "path", "endpoint", "region", "force-path-style", "access-key-id",
                        "secret-access-key", "part-size", "concurrency"),
            url_params=("endpoint", "region", "force-path-style"),
            credentials=(("access-key-id", "secret-access-key"),), secret_keys=("secret-access-key",),
            secret_fields=("secret_access_key",), default_sync_interval=0.25, factory=_s3),
    Backend("b2", keys=("bucket", "path", "application-key-id", "application-key", "part-size", "concurrency"),
            url_params=(), credentials=(("application-key-id", "application-key"),),
            secret_keys=("application-key",), secret_fields=("application_key",), default_sync_interval=0.25,
            factory=_b2),
)}
