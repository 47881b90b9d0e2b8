"""A replica wrapper that encrypts every object with AES-256-GCM in streamed chunks.

The format is described byte by byte in docs/ENCRYPTION.md. In short: a 36-byte header,
then the plaintext cut into chunks of ``chunk_size`` bytes, each sealed on its own with a
nonce derived from the header's random nonce base and the chunk's index. Every chunk's
associated data binds the header, the chunk index, whether it is the last chunk, and the
object's key, so a reader detects tampering, reordering, truncation, extension, and an
object copied under another name, while holding only one chunk in memory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Iterable, Iterator

if TYPE_CHECKING:  # loaded with the first encrypted replica: 7 MB an agent without one never spends
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .. import layout
from ..errors import ConfigError, CorruptObjectError, ObjectNotFoundError, ReplicaError
from ..segment import ENCRYPTED_MAGIC, NO_KEY
from .base import ObjectInfo, ReplicaClient

MAGIC = ENCRYPTED_MAGIC
VERSION = 1
KEY_SIZE = 32
KEY_ID_SIZE = 8
NONCE_SIZE = 12
TAG_SIZE = 16
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 1 << 10
# A reader allocates one chunk; the bound keeps a forged header from asking for gigabytes.
MAX_CHUNK_SIZE = 16 << 20

# magic, version, reserved (3 zero bytes), chunk size, key id, nonce base; little-endian.
_HEADER = struct.Struct("<8sB3sI8s12s")
HEADER_SIZE = _HEADER.size
KEY_ID_OFFSET = 16
# chunk index, last-chunk flag: the fixed part of each chunk's associated data.
_CHUNK_AD = struct.Struct("<QB")
_KEY_ID_CONTEXT = b"litesync key id"


def key_id(key: bytes) -> bytes:
    """Return the 8-byte id of an encryption key, as stored in the header of its objects."""
    return hashlib.sha256(_KEY_ID_CONTEXT + key).digest()[:KEY_ID_SIZE]


def load_key(text: str) -> bytes:
    """Return the 32-byte key written as 64 hex digits or standard base64; else ConfigError.

    The messages never include the text: it may be a real key with a typo.
    """
    s = text.strip()
    if not s:
        raise ConfigError("encryption key is empty")
    if len(s) == 2 * KEY_SIZE and all(c in "0123456789abcdefABCDEF" for c in s):
        return _strong(bytes.fromhex(s))
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"encryption key is neither {2 * KEY_SIZE} hex digits nor base64 "
                          f"({len(s)} characters)") from None
    if len(raw) != KEY_SIZE:
        raise ConfigError(f"encryption key must be {KEY_SIZE} bytes: base64 decodes to {len(raw)} bytes")
    return _strong(raw)


def _strong(key: bytes) -> bytes:
    """Return ``key``, or raise ConfigError for one anybody could guess: a single byte
    repeated (all zero among them), or a short pattern repeated. Use `litesync keygen`."""
    for period in (1, 2, 4, 8, 16):
        if key == key[:period] * (KEY_SIZE // period):
            raise ConfigError(f"encryption key is weak: a pattern of {period} byte{'s' if period > 1 else ''} "
                              "repeated; generate one with `litesync keygen`")
    return key


def load_keys(text: str) -> list[bytes]:
    """Return the keys in text, separated by commas or white space; lines starting with # are comments.

    A bad key is named by its position, never by its text.
    """
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    words = [w for w in re.split(r"[\s,]+", "\n".join(lines)) if w]
    if not words:
        raise ConfigError("encryption key is empty")
    keys = []
    for i, word in enumerate(words):
        try:
            keys.append(load_key(word))
        except ConfigError as e:
            raise ConfigError(f"key {i + 1}: {e}" if len(words) > 1 else str(e)) from None
    return keys


def generate_key() -> str:
    """Return a new random key as 64 hex digits."""
    return os.urandom(KEY_SIZE).hex()


def chunk_count(size: int, chunk_size: int) -> int:
    """Return how many chunks hold ``size`` plaintext bytes; an empty object has one empty chunk."""
    return max(1, -(-size // chunk_size))


def ciphertext_size(size: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Return the stored size of an object of ``size`` plaintext bytes."""
    return HEADER_SIZE + size + TAG_SIZE * chunk_count(size, chunk_size)


def plaintext_size(stored: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Return the plaintext size of a stored object of ``stored`` bytes (0 if too short to be one).

    Exact for every size ``ciphertext_size`` produces; a damaged object's figure is only an
    estimate, and reading it fails.
    """
    body = stored - HEADER_SIZE
    if body <= TAG_SIZE:
        return 0
    return max(0, body - TAG_SIZE * -(-body // (chunk_size + TAG_SIZE)))


@dataclass(frozen=True)
class Header:
    """The fixed header in front of every encrypted object."""

    key_id: bytes
    nonce_base: bytes
    chunk_size: int

    def to_bytes(self) -> bytes:
        """Return the header's 36 bytes."""
        self.validate()
        return _HEADER.pack(MAGIC, VERSION, bytes(3), self.chunk_size, self.key_id, self.nonce_base)

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        """Parse and validate a header; raise ValueError naming the bad field."""
        if data[:len(MAGIC)] != MAGIC[:len(data)]:
            raise ValueError(f"not an encrypted litesync object: magic {data[:len(MAGIC)]!r}, expected {MAGIC!r}")
        if len(data) != HEADER_SIZE:
            raise ValueError(f"truncated: header has {len(data)} of {HEADER_SIZE} bytes")
        _magic, version, reserved, chunk_size, kid, nonce_base = _HEADER.unpack(data)
        if version != VERSION:
            raise ValueError(f"unsupported encryption format version: {version} (this litesync reads {VERSION})")
        if reserved != bytes(3):
            raise ValueError(f"reserved header bytes are not zero: {reserved.hex()}")
        h = cls(kid, nonce_base, chunk_size)
        h.validate()
        return h

    def validate(self) -> None:
        """Raise ValueError naming the first field out of range."""
        if not MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"invalid chunk size: {self.chunk_size} (must be {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE})")
        if len(self.key_id) != KEY_ID_SIZE:
            raise ValueError(f"invalid key id length: {len(self.key_id)}")
        if len(self.nonce_base) != NONCE_SIZE:
            raise ValueError(f"invalid nonce base length: {len(self.nonce_base)}")


def _nonce(base: bytes, index: int) -> bytes:
    # The index XORed into the base read as a 96-bit big-endian integer: unique per chunk.
    return (int.from_bytes(base, "big") ^ index).to_bytes(NONCE_SIZE, "big")


def _associated_data(header: bytes, index: int, last: bool, name: bytes) -> bytes:
    # Only the name has a variable length, and it comes last: the encoding is unambiguous.
    return header + _CHUNK_AD.pack(index, 1 if last else 0) + name


class _EncryptingReader(io.RawIOBase):
    """The ciphertext of ``size`` bytes read from ``src``, produced one chunk at a time.

    A failure of the source is kept in ``error`` as well as raised, because inner clients
    may wrap whatever their source raises into a vaguer error of their own.
    """

    def __init__(self, src: BinaryIO, size: int, aead: AESGCM, header: Header, key: str) -> None:
        super().__init__()
        self._src = src
        self._left = size
        self._size = size
        self._aead = aead
        self._header = header
        self._header_bytes = header.to_bytes()
        self._name = key.encode("utf-8")
        self._key = key
        self._chunks = chunk_count(size, header.chunk_size)
        self._index = 0
        self._buf: memoryview = memoryview(self._header_bytes)
        self._pos = 0
        self.error: Exception | None = None

    def readable(self) -> bool:
        return True

    def _read_plain(self, n: int) -> bytes:
        parts = []
        got = 0
        while got < n:
            piece = self._src.read(n - got)
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        if got < n:
            done = self._size - self._left + got
            self.error = ValueError(f"{self._key}: expected {self._size} bytes from source, got {done}")
            raise self.error
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _next_chunk(self) -> bool:
        """Seal the next chunk into the buffer; return False when every chunk is out."""
        if self._index >= self._chunks:
            return False
        n = min(self._left, self._header.chunk_size)
        plain = self._read_plain(n) if n else b""
        self._left -= n
        last = self._index == self._chunks - 1
        ad = _associated_data(self._header_bytes, self._index, last, self._name)
        sealed = self._aead.encrypt(_nonce(self._header.nonce_base, self._index), plain, ad)
        self._index += 1
        self._buf = memoryview(sealed)
        self._pos = 0
        return True

    def read(self, n: int | None = -1) -> bytes:
        """Return ``n`` ciphertext bytes (all that is left when ``n`` is negative); fewer only at the end."""
        want = -1 if n is None or n < 0 else n
        out = []
        while want != 0:
            if self._pos >= len(self._buf) and not self._next_chunk():
                break
            avail = len(self._buf) - self._pos
            take = avail if want < 0 else min(avail, want)
            out.append(self._buf[self._pos:self._pos + take])
            self._pos += take
            if want > 0:
                want -= take
        return b"".join(out)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


class _DecryptingReader(io.RawIOBase):
    """The plaintext of one stored object, authenticated one chunk at a time.

    No byte of a chunk is returned before the chunk's tag is verified. The header is read
    on the first ``read`` so that a broken connection surfaces there, where callers treat it
    as a transient read failure.
    """

    def __init__(self, f: BinaryIO, key: str, aeads: dict[bytes, AESGCM]) -> None:
        super().__init__()
        self._f = f
        self._key = key
        self._name = key.encode("utf-8")
        self._aeads = aeads
        self._header: Header | None = None
        self._header_bytes = b""
        self._aead: AESGCM | None = None
        self._carry = b""
        self._index = 0
        self._done = False
        self._buf = memoryview(b"")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def _corrupt(self, reason: str) -> CorruptObjectError:
        return CorruptObjectError(self._key, reason)

    def _read_stored(self, n: int) -> bytes:
        """Return up to ``n`` stored bytes, fewer only at the end of the object."""
        parts = [self._carry] if self._carry else []
        got = len(self._carry)
        self._carry = b""
        while got < n:
            piece = self._f.read(n - got)
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_header(self) -> None:
        data = self._read_stored(HEADER_SIZE)
        try:
            self._header = Header.from_bytes(data)
        except ValueError as e:
            raise self._corrupt(str(e)) from None
        self._aead = self._aeads.get(self._header.key_id)
        if self._aead is None:
            known = ", ".join(k.hex() for k in self._aeads)
            raise self._corrupt(f"encrypted with key id {self._header.key_id.hex()}, which is not among the "
                                f"configured keys ({known}): wrong key, or tampered")
        self._header_bytes = data

    def _next_chunk(self) -> bool:
        """Decrypt the next chunk into the buffer; return False after the last one."""
        if self._done:
            return False
        if self._header is None:
            self._read_header()
        assert self._header is not None and self._aead is not None
        want = self._header.chunk_size + TAG_SIZE
        # One byte past the chunk tells whether it is the last: the last chunk is sealed as
        # such, so a cut at a chunk boundary or appended bytes fail authentication.
        data = self._read_stored(want + 1)
        if len(data) > want:
            sealed, self._carry, last = data[:want], data[want:], False
        else:
            sealed, last = data, True
        if len(sealed) < TAG_SIZE:
            raise self._corrupt(f"truncated: chunk {self._index} has {len(sealed)} bytes, "
                                f"less than its {TAG_SIZE}-byte tag")
        ad = _associated_data(self._header_bytes, self._index, last, self._name)
        from cryptography.exceptions import InvalidTag  # loaded already, with the key

        try:
            plain = self._aead.decrypt(_nonce(self._header.nonce_base, self._index), sealed, ad)
        except InvalidTag:
            raise self._corrupt(f"chunk {self._index} fails authentication: tampered, truncated, "
                                f"stored under another name, or wrong key") from None
        self._index += 1
        self._done = last
        self._buf = memoryview(plain)
        self._pos = 0
        return True

    def read(self, n: int | None = -1) -> bytes:
        """Return ``n`` plaintext bytes (all that is left when ``n`` is negative); fewer only at the end."""
        want = -1 if n is None or n < 0 else n
        out = []
        while want != 0:
            if self._pos >= len(self._buf) and not self._next_chunk():
                break
            avail = len(self._buf) - self._pos
            take = avail if want < 0 else min(avail, want)
            out.append(self._buf[self._pos:self._pos + take])
            self._pos += take
            if want > 0:
                want -= take
        return b"".join(out)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


def _aesgcm(key: bytes) -> "AESGCM":
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


class EncryptedClient(ReplicaClient):
    """Wraps ``inner`` so that every object is stored encrypted and authenticated.

    ``keys[0]`` encrypts new objects; every key in ``keys`` decrypts (key rotation). Object
    names, sizes and timing stay visible to the store.
    """

    def __init__(self, inner: ReplicaClient, keys: list[bytes], *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if not keys:
            raise ValueError("no encryption key given")
        self._aeads: dict[bytes, AESGCM] = {}
        seen: dict[bytes, bytes] = {}
        for i, k in enumerate(keys):
            if len(k) != KEY_SIZE:
                raise ValueError(f"encryption key {i}: must be {KEY_SIZE} bytes, got {len(k)}")
            kid = key_id(k)
            if kid in seen:
                if seen[kid] != k:
                    raise ValueError(f"encryption keys share key id {kid.hex()}")
                continue
            seen[kid] = k
            self._aeads[kid] = _aesgcm(k)
        Header(bytes(KEY_ID_SIZE), bytes(NONCE_SIZE), chunk_size).validate()
        self.inner = inner
        self.name = inner.name
        self.chunk_size = chunk_size
        self.key_id = key_id(keys[0])
        self._aead = self._aeads[self.key_id]

    @property
    def key_ids(self) -> list[bytes]:
        """Return the ids of the keys that decrypt, the encrypting key first."""
        return list(self._aeads)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Sizes assume this client's chunk size, which every litesync writer uses.
        return iter([ObjectInfo(o.key, plaintext_size(o.size, self.chunk_size)) for o in self.inner.list(prefix)])

    def open(self, key: str) -> BinaryIO:
        return _DecryptingReader(self.inner.open(key), key, self._aeads)  # type: ignore[return-value]

    def write(self, key: str, src: BinaryIO, size: int) -> None:
        header = Header(self.key_id, os.urandom(NONCE_SIZE), self.chunk_size)
        reader = _EncryptingReader(src, size, self._aead, header, key)
        try:
            self.inner.write(key, reader, ciphertext_size(size, self.chunk_size))  # type: ignore[arg-type]
        except Exception:
            if reader.error is not None:
                raise reader.error from None
            raise
        if reader.error is not None:
            raise reader.error

    def delete(self, keys: Iterable[str]) -> None:
        self.inner.delete(keys)

    def close(self) -> None:
        self.inner.close()


def check_encryption(client: ReplicaClient) -> None:
    """List the replica; raise ReplicaError when its newest generation is stored otherwise than
    ``client`` would read it (encrypted or not, with a key ``client`` holds).

    Looks at one object, the smallest of the newest generation: that is the history an agent
    continues, and mixing plaintext and encrypted objects in it would break every restore.
    """
    enc = client if isinstance(client, EncryptedClient) else None
    raw = enc.inner if enc is not None else client
    named = [(n, o) for o in raw.list(layout.GENERATIONS + "/") if (n := layout.parse_key(o.key)) is not None]
    if not named:
        return
    newest = max(n.generation for n, _ in named)
    key = min((o for n, o in named if n.generation == newest), key=lambda o: (o.size, o.key)).key
    try:
        with raw.open(key) as f:
            head = f.read(HEADER_SIZE)
    except ObjectNotFoundError:  # retention removed it since the listing; the next start looks again
        return
    if enc is None:
        if head.startswith(MAGIC):
            raise ReplicaError(client.name, f"{key}: {NO_KEY}")
        return
    if not head.startswith(MAGIC):
        raise ReplicaError(client.name, f"{key}: object is not encrypted; an encrypted replica needs a place "
                                        f"of its own (give it a new path, or remove its encryption key)")
    kid = head[KEY_ID_OFFSET:KEY_ID_OFFSET + KEY_ID_SIZE]
    if len(kid) == KEY_ID_SIZE and kid not in enc.key_ids:
        known = ", ".join(k.hex() for k in enc.key_ids)
        raise ReplicaError(client.name, f"{key}: encrypted with key id {kid.hex()}, which is not among the "
                                        f"configured keys ({known}): add that key to decryption-keys")
