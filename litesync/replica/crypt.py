"""A replica wrapper that encrypts every object with AES-256-GCM in streamed chunks.

The format is described byte by byte in docs/ENCRYPTION.md. In short: a header, then the
plaintext cut into chunks of ``chunk_size`` bytes, each sealed on its own with a nonce
derived from the header's random nonce base and the chunk's index. Every chunk's
associated data binds the header, the chunk index, whether it is the last chunk, and the
object's key, so a reader detects tampering, reordering, truncation, extension, and an
object copied under another name, while holding only one chunk in memory.

Version 2 objects (written since 2026-12) are sealed with a key of their own: HKDF-SHA256
of the configured key, a random salt in the header and the id of the database the object
belongs to (in the header too, in the clear), so an object cannot be read as another
database's, and the nonce budget no longer spans every object under one key. Version 1
objects (sealed with the configured key itself) still read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
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
from .streams import ChunkedReader, read_full

MAGIC = ENCRYPTED_MAGIC
VERSION = 2  # written; version 1 still reads
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
HEADER_SIZE = _HEADER.size  # of version 1; version 2 adds a salt and the database id
SALT_SIZE = 16
_V2_TAIL = struct.Struct("<16sH")  # salt, database id length; then the id (UTF-8)
MAX_DB_ID = 1024
KEY_ID_OFFSET = 16
_OBJECT_KEY_INFO = b"litesync object key v2\x00"  # HKDF info: this, then the database id
# chunk index, last-chunk flag: the fixed part of each chunk's associated data.
_CHUNK_AD = struct.Struct("<QB")
_KEY_ID_CONTEXT = b"litesync key id"


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = KEY_SIZE) -> bytes:
    """Return ``length`` bytes of HKDF-SHA256 (RFC 5869) of ``ikm`` with ``salt`` and ``info``."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
    return out[:length]


def object_key(key: bytes, salt: bytes, db_id: str) -> bytes:
    """Return the key that seals one version 2 object: HKDF-SHA256 of the configured ``key``,
    the object's random ``salt`` and the id of the database it belongs to."""
    return hkdf_sha256(key, salt, _OBJECT_KEY_INFO + db_id.encode("utf-8"))


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


def header_size(db_id: str | None) -> int:
    """Return the size of the header of an object of database ``db_id`` (None: version 1)."""
    if db_id is None:
        return HEADER_SIZE
    return HEADER_SIZE + _V2_TAIL.size + len(db_id.encode("utf-8"))


def ciphertext_size(size: int, chunk_size: int = DEFAULT_CHUNK_SIZE, db_id: str | None = "") -> int:
    """Return the stored size of an object of ``size`` plaintext bytes (of database ``db_id``)."""
    return header_size(db_id) + size + TAG_SIZE * chunk_count(size, chunk_size)


def plaintext_size(stored: int, chunk_size: int = DEFAULT_CHUNK_SIZE, db_id: str | None = "") -> int:
    """Return the plaintext size of a stored object of ``stored`` bytes (0 if too short to be one).

    Exact for every size ``ciphertext_size`` produces with the same ``db_id`` (the header's
    length depends on it); for another database's object, or a damaged one, only an
    estimate, and reading a damaged one fails.
    """
    body = stored - header_size(db_id)
    if body <= TAG_SIZE:
        return 0
    return max(0, body - TAG_SIZE * -(-body // (chunk_size + TAG_SIZE)))


@dataclass(frozen=True)
class Header:
    """The header in front of every encrypted object. ``salt`` and ``db_id`` are None in
    version 1 (sealed with the configured key itself); ``db_id`` may be "" in version 2 for
    an object of no database (a probe)."""

    key_id: bytes
    nonce_base: bytes
    chunk_size: int
    salt: bytes | None = None
    db_id: str | None = None

    @property
    def version(self) -> int:
        return 1 if self.salt is None else 2

    def to_bytes(self) -> bytes:
        """Return the header's bytes: 36 in version 1, 54 and the id's in version 2."""
        self.validate()
        fixed = _HEADER.pack(MAGIC, self.version, bytes(3), self.chunk_size, self.key_id, self.nonce_base)
        if self.salt is None:
            return fixed
        raw = (self.db_id or "").encode("utf-8")
        return fixed + _V2_TAIL.pack(self.salt, len(raw)) + raw

    @staticmethod
    def size_after(head: bytes) -> int:
        """Given the first HEADER_SIZE bytes of a header, return how many bytes of it follow
        before its variable part is known (0 for version 1, the salt and id length for 2)."""
        return _V2_TAIL.size if len(head) == HEADER_SIZE and head[8] == 2 else 0

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        """Parse and validate a whole header; raise ValueError naming the bad field."""
        if data[:len(MAGIC)] != MAGIC[:len(data)]:
            raise ValueError(f"not an encrypted litesync object: magic {data[:len(MAGIC)]!r}, expected {MAGIC!r}")
        if len(data) < HEADER_SIZE:
            raise ValueError(f"truncated: header has {len(data)} of {HEADER_SIZE} bytes")
        _magic, version, reserved, chunk_size, kid, nonce_base = _HEADER.unpack_from(data)
        if version not in (1, 2):
            raise ValueError(f"unsupported encryption format version: {version} (this litesync reads 1 and 2)")
        if reserved != bytes(3):
            raise ValueError(f"reserved header bytes are not zero: {reserved.hex()}")
        salt = db_id = None
        end = HEADER_SIZE
        if version == 2:
            if len(data) < HEADER_SIZE + _V2_TAIL.size:
                raise ValueError(f"truncated: header has {len(data)} of {HEADER_SIZE + _V2_TAIL.size} bytes")
            salt, n = _V2_TAIL.unpack_from(data, HEADER_SIZE)
            if n > MAX_DB_ID:
                raise ValueError(f"invalid database id length: {n}")
            end = HEADER_SIZE + _V2_TAIL.size + n
            if len(data) < end:
                raise ValueError(f"truncated: header has {len(data)} of {end} bytes")
            try:
                db_id = data[HEADER_SIZE + _V2_TAIL.size:end].decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("invalid database id: not UTF-8") from None
        if len(data) != end:
            raise ValueError(f"header is {len(data)} bytes, expected {end}")
        h = cls(kid, nonce_base, chunk_size, salt, db_id)
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
        if self.salt is not None and len(self.salt) != SALT_SIZE:
            raise ValueError(f"invalid salt length: {len(self.salt)}")
        if (self.salt is None) != (self.db_id is None):
            raise ValueError("a version 2 header has both a salt and a database id, version 1 neither")
        if self.db_id is not None and len(self.db_id.encode("utf-8")) > MAX_DB_ID:
            raise ValueError(f"database id is longer than {MAX_DB_ID} bytes")


def _nonce(base: bytes, index: int) -> bytes:
    # The index XORed into the base read as a 96-bit big-endian integer: unique per chunk.
    return (int.from_bytes(base, "big") ^ index).to_bytes(NONCE_SIZE, "big")


def _associated_data(header: bytes, index: int, last: bool, name: bytes) -> bytes:
    # Only the name has a variable length, and it comes last: the encoding is unambiguous.
    return header + _CHUNK_AD.pack(index, 1 if last else 0) + name


class _EncryptingReader(ChunkedReader):
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
        self._index = -1  # the header comes first
        self.error: Exception | None = None

    def _read_plain(self, n: int) -> bytes:
        data = read_full(self._src, n)
        if len(data) < n:
            done = self._size - self._left + len(data)
            self.error = ValueError(f"{self._key}: expected {self._size} bytes from source, got {done}")
            raise self.error
        return data

    def _chunk(self) -> bytes | None:
        """The header, then each chunk sealed; None when every chunk is out."""
        if self._index < 0:
            self._index = 0
            return self._header_bytes
        if self._index >= self._chunks:
            return None
        n = min(self._left, self._header.chunk_size)
        plain = self._read_plain(n) if n else b""
        self._left -= n
        last = self._index == self._chunks - 1
        ad = _associated_data(self._header_bytes, self._index, last, self._name)
        sealed = self._aead.encrypt(_nonce(self._header.nonce_base, self._index), plain, ad)
        self._index += 1
        return sealed


class _DecryptingReader(ChunkedReader):
    """The plaintext of one stored object, authenticated one chunk at a time.

    No byte of a chunk is returned before the chunk's tag is verified. The header is read
    on the first ``read`` so that a broken connection surfaces there, where callers treat it
    as a transient read failure.
    """

    def __init__(self, f: BinaryIO, key: str, keys: dict[bytes, bytes], aeads: dict[bytes, AESGCM]) -> None:
        super().__init__()
        self._f = f
        self._key = key
        self._name = key.encode("utf-8")
        self._keys = keys
        self._aeads = aeads
        self._header: Header | None = None
        self._header_bytes = b""
        self._aead: AESGCM | None = None
        self._carry = b""
        self._index = 0
        self._done = False

    def _corrupt(self, reason: str) -> CorruptObjectError:
        return CorruptObjectError(self._key, reason)

    def _read_stored(self, n: int) -> bytes:
        """Return up to ``n`` stored bytes, fewer only at the end of the object."""
        carry, self._carry = self._carry, b""
        return carry + read_full(self._f, n - len(carry)) if carry else read_full(self._f, n)

    def _read_header(self) -> None:
        data = self._read_stored(HEADER_SIZE)
        more = Header.size_after(data)
        if more:
            data += self._read_stored(more)
            if len(data) == HEADER_SIZE + more:
                data += self._read_stored(struct.unpack_from("<H", data, HEADER_SIZE + SALT_SIZE)[0])
        try:
            h = self._header = Header.from_bytes(data)
        except ValueError as e:
            raise self._corrupt(str(e)) from None
        if h.key_id not in self._keys:
            known = ", ".join(k.hex() for k in self._keys)
            raise self._corrupt(f"encrypted with key id {h.key_id.hex()}, which is not among the "
                                f"configured keys ({known}): wrong key, or tampered")
        if h.salt is None:
            self._aead = self._aeads[h.key_id]
        else:
            # A changed id or salt derives another key: the first chunk then fails authentication.
            self._aead = _aesgcm(object_key(self._keys[h.key_id], h.salt, h.db_id or ""))
        self._header_bytes = data

    def _chunk(self) -> bytes | None:
        """The next chunk decrypted; None after the last one."""
        if self._done:
            return None
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
        return plain

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

    def __init__(self, inner: ReplicaClient, keys: list[bytes], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 db_id: str | None = None) -> None:
        if not keys:
            raise ValueError("no encryption key given")
        if db_id is not None and len(db_id.encode("utf-8")) > MAX_DB_ID:
            raise ValueError(f"database id is longer than {MAX_DB_ID} bytes")
        self._aeads: dict[bytes, AESGCM] = {}
        self._keys: dict[bytes, bytes] = {}
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
            self._keys[kid] = k
            self._aeads[kid] = _aesgcm(k)
        Header(bytes(KEY_ID_SIZE), bytes(NONCE_SIZE), chunk_size).validate()
        self.inner = inner
        self.name = inner.name
        self.chunk_size = chunk_size
        self.key_id = key_id(keys[0])
        self.db_id = db_id or ""  # written into the objects and their key; "" for no database

    @property
    def key_ids(self) -> list[bytes]:
        """Return the ids of the keys that decrypt, the encrypting key first."""
        return list(self._aeads)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Sizes assume this client's chunk size, which every litesync writer uses.
        # Exact for this database's objects (the header's length depends on the id).
        return iter([ObjectInfo(o.key, plaintext_size(o.size, self.chunk_size, self.db_id))
                     for o in self.inner.list(prefix)])

    def open(self, key: str) -> BinaryIO:
        return _DecryptingReader(self.inner.open(key), key, self._keys, self._aeads)  # type: ignore[return-value]

    def write(self, key: str, src: BinaryIO, size: int) -> None:
        salt = os.urandom(SALT_SIZE)
        header = Header(self.key_id, os.urandom(NONCE_SIZE), self.chunk_size, salt, self.db_id)
        aead = _aesgcm(object_key(self._keys[self.key_id], salt, self.db_id))
        reader = _EncryptingReader(src, size, aead, header, key)
        try:
            self.inner.write(key, reader, ciphertext_size(size, self.chunk_size, self.db_id))  # type: ignore[arg-type]
        except Exception:
            if reader.error is not None:
                raise reader.error from None
            raise
        if reader.error is not None:
            raise reader.error

    def delete(self, keys: Iterable[str]) -> None:
        self.inner.delete(keys)

    def set_retry(self, policy) -> None:  # noqa: ANN001
        self.inner.set_retry(policy)

    def set_deadline(self, deadline) -> None:  # noqa: ANN001
        self.inner.set_deadline(deadline)

    def close(self) -> None:
        self.inner.close()


def check_encryption(client: ReplicaClient) -> str | None:
    """List the replica; raise ReplicaError when its newest generation is stored otherwise than
    ``client`` would read it (encrypted or not, with a key ``client`` holds). Return the key
    of the object looked at, None when the replica holds none (or it went meanwhile).

    Looks at one object, the smallest of the newest generation: that is the history an agent
    continues, and mixing plaintext and encrypted objects in it would break every restore.
    """
    enc = client if isinstance(client, EncryptedClient) else None
    raw = enc.inner if enc is not None else client
    named = [(n, o) for o in raw.list(layout.GENERATIONS + "/") if (n := layout.parse_key(o.key)) is not None]
    if not named:
        return None
    newest = max(n.generation for n, _ in named)
    key = min((o for n, o in named if n.generation == newest), key=lambda o: (o.size, o.key)).key
    try:
        with raw.open(key) as f:
            head = f.read(HEADER_SIZE)
    except ObjectNotFoundError:  # retention removed it since the listing; the next start looks again
        return None
    if enc is None:
        if head.startswith(MAGIC):
            raise ReplicaError(client.name, f"{key}: {NO_KEY}")
        return key
    if not head.startswith(MAGIC):
        raise ReplicaError(client.name, f"{key}: object is not encrypted; an encrypted replica needs a place "
                                        f"of its own (give it a new path, or remove its encryption key)")
    kid = head[KEY_ID_OFFSET:KEY_ID_OFFSET + KEY_ID_SIZE]
    if len(kid) == KEY_ID_SIZE and kid not in enc.key_ids:
        known = ", ".join(k.hex() for k in enc.key_ids)
        raise ReplicaError(client.name, f"{key}: encrypted with key id {kid.hex()}, which is not among the "
                                        f"configured keys ({known}): add that key to decryption-keys")
    return key
