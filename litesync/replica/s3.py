"""A replica in any S3-compatible store (AWS, Backblaze B2's S3 endpoint, MinIO, R2), on boto3."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Iterator
from urllib.parse import urlparse

from ..errors import ObjectNotFoundError, ReplicaError, ReplicaSetupError, TransientReplicaError
from .base import CONNECT_TIMEOUT, LARGE_READ_TIMEOUT, LARGE_WRITE, READ_TIMEOUT, ObjectInfo, ReplicaClient
from .resume import Download, ObjectChangedError, ResumingReader, RetriesRequests

if TYPE_CHECKING:
    from botocore.client import BaseClient

    from ..config import ReplicaConfig

DEFAULT_PART_SIZE = 16 << 20
DEFAULT_CONCURRENCY = 4
_TRANSIENT_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown",
                    "RequestTimeout", "RequestTimeTooSkewed", "Throttling", "ThrottlingException",
                    "TooManyRequests", "429"}
_FATAL_MESSAGES = {
    "InvalidAccessKeyId": "access denied: unknown access key id (check access-key-id)",
    "SignatureDoesNotMatch": "access denied: signature mismatch (check secret-access-key)",
    "AccessDenied": "access denied (check the key's permissions on the bucket)",
    "403": "access denied (check access-key-id/secret-access-key)",
    "InvalidToken": "access denied: invalid session token",
    "ExpiredToken": "access denied: expired session token",
}


# boto3 clients are thread-safe, and making one takes a tenth of a second and megabytes:
# the replicas of a thousand databases in one store (a `dir:` entry) share one client per
# set of settings, closed when the last of them closes.
_clients: dict[tuple, list[Any]] = {}  # settings -> [client, users]
_clients_lock = threading.Lock()
# Every session shares one loader of botocore's data files: a session of its own loads the
# endpoint and S3 model files again (measured: 15 MiB of RSS for each new session's first
# client, 1 MiB with the loader shared), and an agent makes two clients per store (normal
# and large writes), again whenever the last replica of a store closes and another opens.
# Each client still has its own session, so credentials are looked up afresh.
_loader: Any = None


def _new_client(**kwargs: Any) -> Any:
    """An S3 client of a new session that shares the process's data loader; call with
    _clients_lock held."""
    global _loader
    import boto3
    import botocore.session

    core = botocore.session.get_session()
    if _loader is None:
        _loader = core.get_component("data_loader")
    else:
        core.register_component("data_loader", _loader)
    return boto3.session.Session(botocore_session=core).client("s3", **kwargs)


def _shared_client(settings: tuple, make) -> Any:  # noqa: ANN001
    with _clients_lock:
        entry = _clients.get(settings)
        if entry is None:
            entry = _clients[settings] = [make(), 0]
        entry[1] += 1
        return entry[0]


def _release_client(settings: tuple) -> None:
    with _clients_lock:
        entry = _clients.get(settings)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _clients[settings]
            entry[0].close()


class S3ReplicaClient(RetriesRequests, ReplicaClient):
    """Objects are keys ``PATH/KEY`` in one bucket."""

    def __init__(self, cfg: "ReplicaConfig", *, session=None) -> None:  # noqa: ANN001
        self.bucket = cfg.bucket
        self.prefix = (cfg.path or "").strip("/")
        host = f" at {urlparse(cfg.endpoint).netloc}" if cfg.endpoint else ""
        self.name = f"{cfg.name} (s3://{self.bucket}/{self.prefix}{host})"
        self.part_size = cfg.part_size or DEFAULT_PART_SIZE
        self.concurrency = cfg.concurrency or DEFAULT_CONCURRENCY
        self._boto_cfg = dict(
            region_name=cfg.region or os.environ.get("AWS_REGION") or "us-east-1",
            # B2's S3 endpoint (and others) reject the newer x-amz-checksum trailers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path" if cfg.force_path_style else "auto"},
            connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
            # No retries in botocore: each would wait its own timeout again. Reads retry and
            # resume in .resume; the agent's loops retry its uploads with backoff.
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=max(10, self.concurrency * 2),
        )
        self._client_kw = {}
        if cfg.access_key_id:
            self._client_kw = {"aws_access_key_id": cfg.access_key_id, "aws_secret_access_key": cfg.secret_access_key}
        self._endpoint = cfg.endpoint
        # A session given (tests) makes clients of this replica's own.
        self._session = session
        self._held: list[tuple] = []  # the settings of the shared clients this replica uses
        self._s3 = self._make_client(READ_TIMEOUT)
        self._s3_large: BaseClient | None = None  # made at the first large write

    def _make_client(self, read_timeout: float):  # noqa: ANN202
        from botocore.config import Config as BotoConfig

        cfg = BotoConfig(**{**self._boto_cfg, "read_timeout": read_timeout})
        if self._session is not None:
            return self._session.client("s3", endpoint_url=self._endpoint, config=cfg, **self._client_kw)
        settings = (self._endpoint, read_timeout, repr(sorted(self._boto_cfg.items())),
                    tuple(sorted(self._client_kw.items())))
        self._held.append(settings)
        return _shared_client(settings, lambda: _new_client(endpoint_url=self._endpoint, config=cfg,
                                                            **self._client_kw))

    def _large(self):  # noqa: ANN202
        """The client for large writes (LARGE_READ_TIMEOUT), made at the first one."""
        if self._s3_large is None:
            self._s3_large = self._make_client(LARGE_READ_TIMEOUT)
        return self._s3_large

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, e: Exception, what: str) -> ReplicaError:
        from botocore.exceptions import (ClientError, ConnectionError as BotoConnectionError,
                                         HTTPClientError, NoCredentialsError)

        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = str(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code == "NoSuchBucket":
                return ReplicaSetupError(self.name, f"bucket does not exist: {self.bucket!r}")
            if code in _FATAL_MESSAGES or status == "403":
                return ReplicaSetupError(self.name, _FATAL_MESSAGES.get(code, _FATAL_MESSAGES["403"]))
            if code in _TRANSIENT_CODES or status in _TRANSIENT_CODES or status.startswith("5"):
                return TransientReplicaError(self.name, f"{what}: {code or status} (will retry)")
            return ReplicaError(self.name, f"{what}: {code or status}")
        if isinstance(e, NoCredentialsError):
            return ReplicaSetupError(self.name,
                                     "no credentials (set access-key-id/secret-access-key or AWS_ACCESS_KEY_ID)")
        if isinstance(e, (BotoConnectionError, HTTPClientError)):
            return TransientReplicaError(self.name, f"{what}: {type(e).__name__}")
        return ReplicaError(self.name, f"{what}: {type(e).__name__}")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.retrier().call(lambda: self._list(prefix), f"list {prefix!r}")

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        full = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        out = []
        try:
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    out.append(ObjectInfo(obj["Key"][strip:], obj["Size"]))
        except Exception as e:
            raise self._error(e, f"list {prefix!r}") from None
        out.sort(key=lambda o: o.key)
        return iter(out)

    def open(self, key: str) -> BinaryIO:
        return ResumingReader(lambda offset, version: self._get(key, offset, version), key, self.name,
                              self.retrier())  # type: ignore[return-value]

    def _get(self, key: str, offset: int, version: str | None) -> Download:
        """GET ``key`` from byte ``offset``; with ``version`` (an ETag), only that version of it."""
        from botocore.exceptions import ClientError

        kw = {}
        if offset:
            kw["Range"] = f"bytes={offset}-"
        if version is not None:
            kw["IfMatch"] = version
        try:
            resp = self._s3.get_object(Bucket=self.bucket, Key=self._key(key), **kw)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                raise ObjectNotFoundError(self.name, key) from None
            if code in ("PreconditionFailed", "412"):
                raise ObjectChangedError(self.name, f"read {key!r}: the object changed while it was read (it was "
                                                    f"ETag {version}); not resumed from byte {offset}") from None
            raise self._error(e, f"read {key!r}") from None
        except Exception as e:
            raise self._error(e, f"read {key!r}") from None
        etag = resp.get("ETag", "")
        size = resp["ContentLength"]
        if "ContentRange" in resp:  # "bytes FIRST-LAST/TOTAL"
            size = int(resp["ContentRange"].rsplit("/", 1)[1])
        if version is not None and etag != version:
            resp["Body"].close()
            raise ObjectChangedError(self.name, f"read {key!r}: the object changed while it was read (ETag "
                                                f"{version}, now {etag}); not resumed from byte {offset}")
        return Download(resp["Body"], etag, size)

    def write(self, key: str, src: BinaryIO, size: int) -> None:
        try:
            if size < self.part_size:
                client = self._s3 if size <= LARGE_WRITE else self._large()
                client.put_object(Bucket=self.bucket, Key=self._key(key), Body=src.read(), ContentLength=size)
                return
            from boto3.s3.transfer import TransferConfig

            tc = TransferConfig(multipart_threshold=self.part_size, multipart_chunksize=self.part_size,
                                max_concurrency=self.concurrency, use_threads=self.concurrency > 1)
            # upload_fileobj aborts the multipart upload itself when a part fails.
            self._large().upload_fileobj(src, self.bucket, self._key(key), Config=tc)
        except ReplicaError:
            raise
        except Exception as e:
            raise self._error(e, f"write {key!r}") from None

    def delete(self, keys: Iterable[str]) -> None:
        batch = [self._key(k) for k in keys]
        for i in range(0, len(batch), 1000):
            chunk = batch[i:i + 1000]
            try:
                resp = self._s3.delete_objects(Bucket=self.bucket,
                                               Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})
            except Exception as e:
                raise self._error(e, f"delete {len(chunk)} objects") from None
            errors = [err for err in resp.get("Errors", []) if err.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                raise ReplicaError(self.name, f"delete {first.get('Key')!r}: {first.get('Code')}")

    def close(self) -> None:
        if self._session is not None:
            self._s3.close()
            if self._s3_large is not None:
                self._s3_large.close()
        for settings in self._held:
            _release_client(settings)
        self._held = []
