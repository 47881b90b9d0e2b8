"""Replica URLs (``file:///dir``, ``s3://bucket/prefix?endpoint=..``, ``b2://bucket/prefix``)
to replica configs."""

from __future__ import annotations

import os
from typing import Collection, Sequence
from urllib.parse import parse_qsl, unquote, urlsplit

from .. import litestream
from ..errors import ConfigError
from ..replica.registry import BACKENDS
from .model import ReplicaConfig
from .units import _abspath, _bool, _bucket, _endpoint, _key_prefix, _one_of


def parse_replica_url(url: str, *, base: str | None = None) -> ReplicaConfig:
    """Return the replica a URL or directory path names (relative paths start at base, else the cwd).

    Accepts ``file:///dir``, a plain path, ``s3://bucket/prefix?endpoint=..&region=..&force-path-style=..``
    and ``b2://bucket/prefix``. The replica is named after its type.
    """
    if not url:
        raise ConfigError("empty replica URL")
    if "://" not in url:
        return ReplicaConfig("file", "file", _abspath(url, base), url=url)
    parts = urlsplit(url)
    scheme = parts.scheme
    backend = BACKENDS.get(scheme)
    if backend is None:
        raise ConfigError(f"unsupported replica URL scheme: {scheme!r} in {url!r}")
    if "@" in parts.netloc:  # the URL is printed in logs; do not echo what may be a secret
        raise ConfigError("replica URL must not contain credentials (give them as keys or in the environment)")
    shown = f"{scheme}://{parts.netloc}{parts.path}"
    if parts.fragment:
        raise ConfigError(f"unexpected '#' in replica URL: {url!r}")
    params = _url_params(parts.query, backend.url_params, shown)
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ConfigError(f"file URL needs an absolute path (file:///dir): {url!r}")
        return ReplicaConfig("file", "file", os.path.normpath(unquote(parts.path)), url=url)
    if not parts.netloc:
        raise ConfigError(f"replica URL has no bucket: {url!r}")
    force = params.get("force-path-style")
    endpoint = params.get("endpoint")
    options = tuple((k, convert(params[k])) for k, convert in backend.options.items() if params.get(k))
    return ReplicaConfig(
        scheme, scheme, _key_prefix(unquote(parts.path)), url=url, bucket=_bucket(parts.netloc),
        endpoint=_endpoint(endpoint) if endpoint else None, region=params.get("region") or None,
        force_path_style=_bool(force) if force else None, options=options)


def _url_params(query: str, allowed: Sequence[str], shown: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        rule = litestream.URL_PARAMS.get(key)
        if isinstance(rule, litestream.Refused):
            raise ConfigError(f"Litestream's query parameter {key!r} is not supported: {rule.instead}")
        if isinstance(rule, litestream.Alias) and rule.to in allowed:
            key = rule.to
        if key not in allowed:
            expected = f" (expected {_one_of(allowed)})" if allowed else ""
            raise ConfigError(f"unknown query parameter {key!r} in {shown!r}{expected}")
        if key in params:
            raise ConfigError(f"query parameter given twice: {key!r} in {shown!r}")
        params[key] = value
    return params


def _destination_key(rc: ReplicaConfig) -> tuple[str | None, ...]:
    if rc.type == "file":
        return ("file", rc.path)
    return (rc.type, (rc.endpoint or "").rstrip("/"), rc.bucket, rc.path)


def _default_name(rtype: str, taken: Collection[str]) -> str:
    name, n = rtype, 1
    while name in taken:
        n += 1
        name = f"{rtype}-{n}"
    return name
