"""A replica in Backblaze B2 through its native API (b2sdk)."""

from __future__ import annotations

import functools
import os
import tempfile
import threading
import time
from typing import IO, TYPE_CHECKING, BinaryIO, Callable, Iterable, Iterator

from ..errors import LitesyncError, ObjectNotFoundError, ReplicaError, ReplicaSetupError, TransientReplicaError
from .base import CONNECT_TIMEOUT, LARGE_READ_TIMEOUT, LARGE_WRITE, READ_TIMEOUT, ObjectInfo, ReplicaClient
from .resume import Retrier, RetriesRequests

if TYPE_CHECKING:
    from ..config import ReplicaConfig

DEFAULT_PART_SIZE = 100 << 20
_SPOOL_IN_MEMORY = 8 << 20
# b2sdk tries an upload this many times, each with a new upload URL (B2's way to move off a
# busy or failed pod); the shipper and restores retry beyond that on their own.
UPLOAD_ATTEMPTS = 2
CONNECT_ATTEMPTS = 3  # authorizing and finding the bucket, when the client is made


def new_api(realm: str = "production", key_id: str = "", key: str = ""):  # noqa: ANN201
    """An authorized b2sdk B2Api whose every request is bounded like an S3 one."""
    from b2sdk.v2 import InMemoryAccountInfo

    api = _bounded_api_class()(InMemoryAccountInfo())
    api.services.upload_manager.MAX_UPLOAD_ATTEMPTS = UPLOAD_ATTEMPTS
    api.authorize_account(realm, key_id, key)
    return api


@functools.cache
def _bounded_api_class() -> type:
    """B2Api over an HTTP layer with litesync's timeouts and a single try per request.

    b2sdk's own defaults wait 46 s to connect and, for every JSON API call (listing,
    deleting, asking for an upload URL), 20 minutes for the answer, trying up to five
    times (a download twenty): a store that accepts connections and never answers would
    hold the shipper or a restore for hours while the status stayed green. b2sdk documents
    these class attributes as outside its interface; tests/test_b2_network.py holds them to
    account over a real socket."""
    from b2sdk.v2 import B2Api, B2Http, B2Session

    class BoundedHttp(B2Http):
        # requests waits this long to connect and, while it sends a body, for each send:
        # a large upload's body gets its long timeout there too (per thread: b2sdk sends
        # parts from several threads through one of these).
        CONNECTION_TIMEOUT = property(lambda self: getattr(_request_timeouts, "connect", CONNECT_TIMEOUT))

        def request(self, method, url, headers, data=None, try_count=1, params=None, *,  # noqa: ANN001, ANN202
                    stream: bool = False, _timeout: float | None = None):
            read = _read_timeout(url, headers)
            _request_timeouts.connect = CONNECT_TIMEOUT if read == READ_TIMEOUT else read
            # One try: the shipper's loop and a restore's retrier decide what comes next.
            return super().request(method, url, headers, data, 1, params, stream=stream, _timeout=read)

    class BoundedSession(B2Session):
        B2HTTP_CLASS = staticmethod(BoundedHttp)

    class BoundedApi(B2Api):
        SESSION_CLASS = staticmethod(BoundedSession)

    return BoundedApi


_request_timeouts = threading.local()


def _read_timeout(url: str, headers: dict[str, str]) -> float:
    """How long a request waits for each answer from the store: longer for an upload larger
    than LARGE_WRITE, whose answer comes once the store has every byte, and for finishing a
    large file, which the store assembles from its parts first."""
    upload = "/b2_upload_file" in url or "/b2_upload_part" in url
    size = int(headers.get("Content-Length") or 0)
    if (upload and size > LARGE_WRITE) or "/b2_finish_large_file" in url:
        return LARGE_READ_TIMEOUT
    return READ_TIMEOUT


class B2ReplicaClient(RetriesRequests, ReplicaClient):
    """Objects are files ``PATH/KEY`` in one bucket; every version is removed on delete."""

    def __init__(self, cfg: "ReplicaConfig", *, api=None) -> None:  # noqa: ANN001
        self.prefix = (cfg.path or "").strip("/")
        self.name = f"{cfg.name} (b2://{cfg.bucket}/{self.prefix})"
        self.part_size = cfg.part_size or DEFAULT_PART_SIZE
        # Authorizing and finding the bucket talk to the store: a blip then is tried again
        # (b2sdk's requests here are tried once, see _bounded_api_class).
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                self._connect(cfg, api)
                break
            except TransientReplicaError:
                if attempt == CONNECT_ATTEMPTS - 1:
                    raise
                time.sleep(2 ** attempt)
        self.bucket_name = cfg.bucket

    def _connect(self, cfg: "ReplicaConfig", api) -> None:  # noqa: ANN001
        try:
            if api is None:
                key_id = cfg.application_key_id or os.environ.get("B2_APPLICATION_KEY_ID")
                key = cfg.application_key or os.environ.get("B2_APPLICATION_KEY")
                if not key_id or not key:
                    missing = "application-key-id" if not key_id else "application-key"
                    raise ReplicaError(self.name, f"{missing} is not set (config or B2_APPLICATION_KEY_ID/"
                                                  f"B2_APPLICATION_KEY)")
                api = new_api("production", key_id, key)
            self._api = api
            self._bucket = api.get_bucket_by_name(cfg.bucket)
        except ReplicaError:
            raise
        except Exception as e:
            raise self._error(e, "connect") from None


    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, e: Exception, what: str) -> ReplicaError:
        from b2sdk.v2 import exception as x

        if isinstance(e, x.NonExistentBucket):
            return ReplicaSetupError(self.name, "bucket does not exist or is not visible to this key")
        if isinstance(e, (x.InvalidAuthToken, x.Unauthorized, x.AccessDenied, x.MissingAccountData)):
            return ReplicaSetupError(self.name, "access denied (check application-key-id/application-key)")
        if isinstance(e, (x.B2ConnectionError, x.B2RequestTimeout, x.ServiceError, x.TooManyRequests)):
            return TransientReplicaError(self.name, f"{what}: {type(e).__name__} (will retry)")
        if isinstance(e, x.MaxRetriesExceeded) and e.exception_info_list:
            # b2sdk tried the upload (or a part) several times, each failure one a retry may cure.
            last = e.exception_info_list[-1]
            return TransientReplicaError(self.name, f"{what}: {type(last).__name__} at each of b2sdk's {e.limit} "
                                                    "tries (will retry)")
        if isinstance(e, x.AlreadyFailed):  # another part of the same large file failed so
            return TransientReplicaError(self.name, f"{what}: another part failed (will retry)")
        if isinstance(e, x.B2Error) and e.should_retry_http():
            return TransientReplicaError(self.name, f"{what}: {type(e).__name__} (will retry)")
        return ReplicaError(self.name, f"{what}: {type(e).__name__}")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.retrier().call(lambda: self._list(prefix), f"list {prefix!r}")

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        full = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        folder = full.rsplit("/", 1)[0] if "/" in full else ""
        out = []
        try:
            for fv, _ in self._bucket.ls(folder, recursive=True):
                if fv.file_name.startswith(full):
                    out.append(ObjectInfo(fv.file_name[strip:], fv.size))
        except Exception as e:
            raise self._error(e, f"list {prefix!r}") from None
        out.sort(key=lambda o: o.key)
        return iter(out)

    def open(self, key: str) -> BinaryIO:
        # b2sdk downloads into a writable file; spill to disk past a few MB to bound memory.
        buf = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)
        retrier = self.retrier()
        try:
            downloaded, version = retrier.call(lambda: self._request(key, None, 0), f"read {key!r}")
            while True:
                offset = buf.tell()
                try:
                    self._save(downloaded, _Checked(buf, retrier, lambda: self._where(key, buf, version[1])),
                               key, version[1])
                    break
                except LitesyncError as e:
                    if buf.tell() > offset:
                        retrier.progressed()
                    retrier.failed(e)
                while buf.tell() < version[1]:
                    try:
                        retrier.check(lambda: self._where(key, buf, version[1]))
                        downloaded, _ = self._request(key, version, buf.tell())
                        break
                    except LitesyncError as e:
                        retrier.failed(e)
                else:
                    break
        except BaseException:
            buf.close()
            raise
        buf.seek(0)
        return buf  # type: ignore[return-value]

    def _where(self, key: str, buf: IO[bytes], size: int) -> str:
        return f"replica {self.name}: read {key!r} at byte {buf.tell()} of {size}"

    def _request(self, key: str, version: tuple[str, int] | None, offset: int):  # noqa: ANN202
        """Start downloading ``key`` from byte ``offset``; with ``version`` (file id, size), that
        version of it only (a file id names one version, so a resumed download never splices
        two). Return (the download, its version)."""
        from b2sdk.v2 import exception as x

        try:
            if version is None:
                downloaded = self._bucket.download_file_by_name(self._key(key))
                return downloaded, (downloaded.download_version.id_, downloaded.download_version.size)
            return self._api.download_file_by_id(version[0], range_=(offset, version[1] - 1)), version
        except x.FileNotPresent:
            # Deleted (by retention or compaction) while it was read: gone, as for a reader
            # that had not begun (a restore plans again).
            raise ObjectNotFoundError(self.name, key) from None
        except Exception as e:
            raise self._error(e, f"read {key!r}") from None

    def _save(self, downloaded, buf: "_Checked", key: str, size: int) -> None:  # noqa: ANN001
        try:
            # Sequential writes (no seeking): what reached ``buf`` before a failure is a prefix.
            downloaded.save(buf, allow_seeking=False)
        except LitesyncError:
            raise  # the deadline passed
        except Exception as e:  # a reset, timeout or short body mid-object
            raise TransientReplicaError(self.name, f"read {key!r} at byte {buf.tell()} of {size}: "
                                                   f"{type(e).__name__}") from None

    def write(self, key: str, src: BinaryIO, size: int) -> None:
        try:
            if size < self.part_size:
                self._bucket.upload_bytes(src.read(), self._key(key))
            else:
                self._bucket.upload_unbound_stream(src, self._key(key), recommended_upload_part_size=self.part_size)
        except Exception as e:
            raise self._error(e, f"write {key!r}") from None

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            name = self._key(key)
            try:
                for fv in self._bucket.list_file_versions(name):
                    if fv.file_name == name:
                        self._bucket.delete_file_version(fv.id_, name)
            except Exception as e:
                raise self._error(e, f"delete {key!r}") from None


class _Checked:
    """The file a download is saved to, checking the restore's deadline at each write (a
    download that trickles stops there too)."""

    def __init__(self, buf: IO[bytes], retrier: Retrier, where: Callable[[], str]) -> None:
        self._buf = buf
        self._retrier = retrier
        self._where = where

    def write(self, data: bytes) -> int:
        self._retrier.check(self._where)
        return self._buf.write(data)

    def tell(self) -> int:
        return self._buf.tell()

    def flush(self) -> None:
        self._buf.flush()
