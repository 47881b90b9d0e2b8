"""EncryptedClient: round trips on every backend, tamper detection, key rotation, key parsing."""

from __future__ import annotations

import base64
import io
import os
import tracemalloc

import pytest

from litesync.errors import ConfigError, CorruptObjectError, ObjectNotFoundError
from litesync.replica.crypt import (
    DEFAULT_CHUNK_SIZE,
    MAGIC,
    TAG_SIZE,
    EncryptedClient,
    Header,
    ciphertext_size,
    generate_key,
    header_size,
    key_id,
    load_key,
    plaintext_size,
)
from litesync.replica.file import FileReplicaClient

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
MIB = 1 << 20
SEALED = DEFAULT_CHUNK_SIZE + TAG_SIZE
HEADER_SIZE = header_size("")  # of the objects these tests write: version 2, no database id


def pattern(n: int, marker: bytes = b"") -> bytes:
    """``n`` bytes of varied content, with ``marker`` repeated through it."""
    base = (marker + os.urandom(4093)) * (n // (4093 + len(marker)) + 1)
    return base[:n]


@pytest.fixture
def enc(replica_client):
    return EncryptedClient(replica_client, [KEY_A])


@pytest.fixture
def local(tmp_path):
    inner = FileReplicaClient(str(tmp_path / "replica"))
    return inner, EncryptedClient(inner, [KEY_A])


def corrupt_reason(client, key: str) -> str:
    """Read ``key`` expecting CorruptObjectError naming it; return the reason."""
    with pytest.raises(CorruptObjectError) as e:
        client.read(key)
    assert e.value.name == key
    assert str(e.value).startswith(f"{key}: ")
    assert e.value.retryable is False
    return e.value.reason


# Round trips on every backend.

@pytest.mark.parametrize("size", [0, 5, 2 * MIB, 3 * MIB + MIB // 2, 6 * MIB + 123])
def test_round_trip(enc, replica_client, size):
    data = os.urandom(size)
    enc.write("gen/obj", io.BytesIO(data), size)
    assert enc.read("gen/obj") == data
    assert [(o.key, o.size) for o in replica_client.list("gen/")] == [("gen/obj", ciphertext_size(size))]


def test_streamed_read_in_small_pieces(enc):
    data = os.urandom(3 * MIB + 777)
    enc.write_bytes("s", data)
    with enc.open("s") as f:
        pieces = []
        while True:
            p = f.read(65521)
            if not p:
                break
            assert len(p) == 65521 or len(b"".join(pieces)) + len(p) == len(data)
            pieces.append(p)
    assert b"".join(pieces) == data


def test_stored_bytes_hide_the_plaintext(enc, replica_client):
    marker = b"PLAINTEXT-MARKER-7f3a"
    data = pattern(3 * MIB + 5, marker)
    assert data.count(marker) > 500
    enc.write_bytes("m", data)
    stored = replica_client.read("m")
    assert marker not in stored
    assert stored.startswith(MAGIC)
    assert enc.read("m") == data


def test_list_reports_plaintext_sizes(enc, replica_client):
    sizes = {"l/a": 0, "l/b": 1, "l/c": MIB, "l/d": MIB + 1, "l/e": 3 * MIB + MIB // 2}
    for k, n in sizes.items():
        enc.write_bytes(k, os.urandom(n))
    assert [(o.key, o.size) for o in enc.list("l/")] == sorted(sizes.items())
    assert [o.size for o in replica_client.list("l/")] == [ciphertext_size(n) for _, n in sorted(sizes.items())]


def test_wrong_key_names_object_and_key_id(enc, replica_client):
    enc.write_bytes("w/obj", b"secret")
    other = EncryptedClient(replica_client, [KEY_B])
    reason = corrupt_reason(other, "w/obj")
    assert reason == (f"encrypted with key id {key_id(KEY_A).hex()}, which is not among the configured keys "
                      f"({key_id(KEY_B).hex()}): wrong key, or tampered")


def test_object_copied_to_another_name_fails(enc, replica_client):
    enc.write_bytes("gen/a.seg", b"contents of a")
    replica_client.write_bytes("gen/b.seg", replica_client.read("gen/a.seg"))
    assert corrupt_reason(enc, "gen/b.seg") == ("chunk 0 fails authentication: tampered, truncated, "
                                                "stored under another name, or wrong key")
    assert enc.read("gen/a.seg") == b"contents of a"


def test_missing_object_passes_through(enc):
    with pytest.raises(ObjectNotFoundError):
        enc.read("no/such")


def test_delete_passes_through(enc):
    enc.write_bytes("d/1", b"1")
    enc.write_bytes("d/2", b"2")
    enc.delete(["d/1"])
    assert [o.key for o in enc.list("d/")] == ["d/2"]


def test_restore_through_encrypted_replica(enc, tmp_path):
    import sqlite3

    from test_replica_conformance import replicated_agent

    from litesync.restore import restore

    agent = replicated_agent(tmp_path, 10)
    for name, _size in agent.spool.objects():
        path = agent.spool.path(name)
        with open(path, "rb") as f:
            enc.write(name.key, f, os.path.getsize(path))
    agent.close()
    out = str(tmp_path / "out.db")
    restore(enc, out)
    assert sqlite3.connect(out).execute("SELECT count(*) FROM t").fetchone()[0] == 10


# Tampering, on the local replica (the checks do not depend on the backend).

def stored_multi_chunk(local, key="t/obj"):
    inner, enc = local
    data = os.urandom(3 * MIB + MIB // 2)
    enc.write_bytes(key, data)
    raw = inner.read(key)
    assert len(raw) == HEADER_SIZE + 4 * TAG_SIZE + len(data)
    return inner, enc, data, raw


AUTH_FAIL = "fails authentication: tampered, truncated, stored under another name, or wrong key"


@pytest.mark.parametrize("offset, reason", [
    (0, f"not an encrypted litesync object: magic b'MSYNCENC', expected {MAGIC!r}"),
    (8, "unsupported encryption format version: 3 (this litesync reads 1 and 2)"),
    (9, "reserved header bytes are not zero: 010000"),
    (12, f"chunk 0 {AUTH_FAIL}"),  # chunk size 1048577: still in range, but authenticated
    (15, "invalid chunk size: 17825792 (must be 1024 to 16777216)"),
    (24, f"chunk 0 {AUTH_FAIL}"),  # nonce base
    (36, f"chunk 0 {AUTH_FAIL}"),  # salt: derives another key
    (HEADER_SIZE, f"chunk 0 {AUTH_FAIL}"),  # first ciphertext byte
    (HEADER_SIZE + SEALED - 1, f"chunk 0 {AUTH_FAIL}"),  # chunk 0's tag
    (HEADER_SIZE + 2 * SEALED + 12345, f"chunk 2 {AUTH_FAIL}"),
    (-1, f"chunk 3 {AUTH_FAIL}"),  # last byte of the last tag
])
def test_flipped_byte_fails(local, offset, reason):
    inner, enc, _data, raw = stored_multi_chunk(local)
    b = bytearray(raw)
    b[offset] ^= 0x01
    inner.write_bytes("t/obj", bytes(b))
    assert corrupt_reason(enc, "t/obj") == reason


def test_flipped_key_id_is_an_unknown_key(local):
    inner, enc, _data, raw = stored_multi_chunk(local)
    b = bytearray(raw)
    b[16] ^= 0x80
    inner.write_bytes("t/obj", bytes(b))
    assert corrupt_reason(enc, "t/obj").startswith(f"encrypted with key id {bytes(b[16:24]).hex()}, which is not")


@pytest.mark.parametrize("cut, reason", [
    (0, "truncated: header has 0 of 36 bytes"),
    (20, "truncated: header has 20 of 36 bytes"),
    (40, "truncated: header has 40 of 54 bytes"),
    (HEADER_SIZE, "truncated: chunk 0 has 0 bytes, less than its 16-byte tag"),
    (HEADER_SIZE + 10, "truncated: chunk 0 has 10 bytes, less than its 16-byte tag"),
    (HEADER_SIZE + SEALED, f"chunk 0 {AUTH_FAIL}"),  # cut at a chunk boundary
    (HEADER_SIZE + 3 * SEALED, f"chunk 2 {AUTH_FAIL}"),  # the whole last chunk dropped
    (HEADER_SIZE + 2 * SEALED + 100, f"chunk 2 {AUTH_FAIL}"),  # mid-chunk
    (-1, f"chunk 3 {AUTH_FAIL}"),  # one byte short
])
def test_truncated_object_fails(local, cut, reason):
    inner, enc, _data, raw = stored_multi_chunk(local)
    inner.write_bytes("t/obj", raw[:cut])
    assert corrupt_reason(enc, "t/obj") == reason


def test_truncated_read_never_returns_the_lost_tail(local):
    inner, enc, data, raw = stored_multi_chunk(local)
    inner.write_bytes("t/obj", raw[:HEADER_SIZE + 2 * SEALED])
    got = []
    with enc.open("t/obj") as f, pytest.raises(CorruptObjectError):
        while True:
            p = f.read(MIB // 4)
            if not p:
                break
            got.append(p)
    # Chunk 0 is out before the cut is found; chunk 1 (sealed as not last) never is.
    assert b"".join(got) == data[:MIB]


def test_appended_bytes_fail(local):
    inner, enc, _data, raw = stored_multi_chunk(local)
    inner.write_bytes("t/obj", raw + b"\x00")
    assert corrupt_reason(enc, "t/obj") == f"chunk 3 {AUTH_FAIL}"


def test_swapped_chunks_fail(local):
    inner, enc, _data, raw = stored_multi_chunk(local)
    h, c0, c1, rest = raw[:HEADER_SIZE], raw[HEADER_SIZE:HEADER_SIZE + SEALED], \
        raw[HEADER_SIZE + SEALED:HEADER_SIZE + 2 * SEALED], raw[HEADER_SIZE + 2 * SEALED:]
    inner.write_bytes("t/obj", h + c1 + c0 + rest)
    assert corrupt_reason(enc, "t/obj") == f"chunk 0 {AUTH_FAIL}"


def test_dropped_middle_chunk_fails(local):
    inner, enc, _data, raw = stored_multi_chunk(local)
    inner.write_bytes("t/obj", raw[:HEADER_SIZE + SEALED] + raw[HEADER_SIZE + 2 * SEALED:])
    assert corrupt_reason(enc, "t/obj") == f"chunk 1 {AUTH_FAIL}"


def test_chunk_spliced_from_another_object_fails(local):
    inner, enc, _data, raw = stored_multi_chunk(local)
    _i, _e, _d, other = stored_multi_chunk(local, "t/other")
    inner.write_bytes("t/obj", raw[:HEADER_SIZE + SEALED] + other[HEADER_SIZE + SEALED:])
    assert corrupt_reason(enc, "t/obj") == f"chunk 1 {AUTH_FAIL}"


def test_plaintext_object_is_not_mistaken_for_encrypted(local):
    inner, enc = local
    inner.write_bytes("p", b"LSYNCSEG plain segment bytes")
    assert corrupt_reason(enc, "p") == f"not an encrypted litesync object: magic b'LSYNCSEG', expected {MAGIC!r}"


def test_oversized_chunk_size_in_header_is_refused(local):
    inner, enc = local
    enc.write_bytes("o", b"x")
    raw = inner.read("o")
    inner.write_bytes("o", raw[:12] + (1 << 30).to_bytes(4, "little") + raw[16:])
    assert corrupt_reason(enc, "o") == "invalid chunk size: 1073741824 (must be 1024 to 16777216)"


# Key rotation.

def test_rotation(local):
    inner, old = local
    old.write_bytes("r/old", b"written with A")
    rotated = EncryptedClient(inner, [KEY_B, KEY_A])
    assert rotated.key_ids == [key_id(KEY_B), key_id(KEY_A)]
    assert rotated.read("r/old") == b"written with A"
    rotated.write_bytes("r/new", b"written with B")
    assert inner.read("r/new")[16:24] == key_id(KEY_B)
    assert rotated.read("r/new") == b"written with B"
    assert EncryptedClient(inner, [KEY_B]).read("r/new") == b"written with B"
    assert corrupt_reason(old, "r/new").startswith(f"encrypted with key id {key_id(KEY_B).hex()}")
    assert corrupt_reason(EncryptedClient(inner, [KEY_B]), "r/old").startswith(
        f"encrypted with key id {key_id(KEY_A).hex()}")


def test_constructor_rejects_bad_keys(local):
    inner, _enc = local
    with pytest.raises(ValueError, match="^no encryption key given$"):
        EncryptedClient(inner, [])
    with pytest.raises(ValueError, match="^encryption key 1: must be 32 bytes, got 16$"):
        EncryptedClient(inner, [KEY_A, bytes(16)])
    with pytest.raises(ValueError, match=r"^invalid chunk size: 100 \(must be 1024 to 16777216\)$"):
        EncryptedClient(inner, [KEY_A], chunk_size=100)
    assert EncryptedClient(inner, [KEY_A, KEY_A]).key_ids == [key_id(KEY_A)]


def test_key_id_is_derived_from_the_key():
    import hashlib

    assert key_id(KEY_A) == hashlib.sha256(b"litesync key id" + KEY_A).digest()[:8]


# Streaming and bounded memory.

class _Zeros(io.RawIOBase):
    """``n`` zero bytes, produced on demand; records the largest read asked for."""

    def __init__(self, n):
        self.left = n
        self.largest = 0

    def readable(self):
        return True

    def readinto(self, b):
        self.largest = max(self.largest, len(b))
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def test_write_streams_with_bounded_memory(local):
    _inner, enc = local
    size = 48 * MIB
    src = _Zeros(size)
    tracemalloc.start()
    try:
        enc.write("big", src, size)
        _cur, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        total = 0
        with enc.open("big") as f:
            while True:
                p = f.read(1 << 16)
                if not p:
                    break
                assert p.count(0) == len(p)
                total += len(p)
        _cur, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert src.largest <= DEFAULT_CHUNK_SIZE
    assert write_peak < 8 * MIB, write_peak
    assert read_peak < 8 * MIB, read_peak


class _RecordingClient(FileReplicaClient):
    """Records what ``write`` is given."""

    def write(self, key, src, size):
        self.given = (type(src), size)
        super().write(key, src, size)


def test_inner_write_gets_a_stream_and_the_exact_size(tmp_path):
    inner = _RecordingClient(str(tmp_path / "r"))
    enc = EncryptedClient(inner, [KEY_A])
    enc.write("k", io.BytesIO(bytes(2 * MIB + 3)), 2 * MIB + 3)
    kind, size = inner.given
    assert not issubclass(kind, (bytes, bytearray)) and hasattr(kind, "read")
    assert size == ciphertext_size(2 * MIB + 3) == HEADER_SIZE + 2 * MIB + 3 + 3 * TAG_SIZE
    assert os.path.getsize(tmp_path / "r" / "k") == size


def test_short_source_is_an_error_and_stores_nothing(local):
    inner, enc = local
    with pytest.raises(ValueError, match=r"^k: expected 3145728 bytes from source, got 1048676$"):
        enc.write("k", io.BytesIO(bytes(MIB + 100)), 3 * MIB)
    assert list(inner.list("")) == []


def test_size_arithmetic():
    assert ciphertext_size(0) == HEADER_SIZE + TAG_SIZE
    assert plaintext_size(HEADER_SIZE + TAG_SIZE) == 0
    assert plaintext_size(0) == 0 and plaintext_size(10) == 0
    for chunk in (1024, MIB):
        for n in [0, 1, chunk - 1, chunk, chunk + 1, 5 * chunk, 5 * chunk + 17]:
            assert plaintext_size(ciphertext_size(n, chunk), chunk) == n


def test_small_chunk_size_round_trip(local):
    inner, _enc = local
    enc = EncryptedClient(inner, [KEY_A], chunk_size=1024)
    data = os.urandom(10 * 1024 + 1)
    enc.write_bytes("c", data)
    assert enc.read("c") == data
    assert os.path.getsize(inner.root + "/c") == HEADER_SIZE + len(data) + 11 * TAG_SIZE
    # A client with another chunk size still reads it: the header carries the chunk size.
    assert EncryptedClient(inner, [KEY_A]).read("c") == data


# Keys.

def test_load_key_accepts_hex_and_base64():
    assert load_key(KEY_A.hex()) == KEY_A
    assert load_key(KEY_A.hex().upper()) == KEY_A
    assert load_key(f"  {KEY_A.hex()}\n") == KEY_A
    assert load_key(base64.b64encode(KEY_B).decode()) == KEY_B
    assert load_key(base64.b64encode(KEY_B).decode() + "\n") == KEY_B


@pytest.mark.parametrize("text, message", [
    ("", "encryption key is empty"),
    (" \n", "encryption key is empty"),
    ("correct horse battery staple", "encryption key is neither 64 hex digits nor base64 (28 characters)"),
    ("ab" * 31, "encryption key is neither 64 hex digits nor base64 (62 characters)"),
    ("ab" * 33, "encryption key is neither 64 hex digits nor base64 (66 characters)"),
    ("zz" + KEY_A.hex()[2:], "encryption key must be 32 bytes: base64 decodes to 48 bytes"),
    (base64.b64encode(bytes(range(16))).decode(), "encryption key must be 32 bytes: base64 decodes to 16 bytes"),
    (base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(),
     "encryption key is neither 64 hex digits nor base64 (44 characters)"),
    (base64.b64encode(KEY_A).decode()[:-1], "encryption key is neither 64 hex digits nor base64 (43 characters)"),
])
def test_load_key_rejects_bad_input_without_echoing_it(text, message):
    with pytest.raises(ConfigError) as e:
        load_key(text)
    assert str(e.value) == message
    if text.strip():
        assert text not in str(e.value)
        assert text[:12] not in str(e.value)


def test_generate_key():
    k1, k2 = generate_key(), generate_key()
    assert len(k1) == 64 and k1 != k2
    assert load_key(k1) == bytes.fromhex(k1)


# Stored objects against the client's encryption setting, on every backend.

def test_check_encryption(replica_client):
    from litesync.errors import ReplicaError
    from litesync.replica.crypt import check_encryption

    old_gen, new_gen = "generations/0000000000000001", "generations/0000000000000002"
    snap = "snapshots/0000000000000000-000000000000.snap"
    seg = "segments/0000000000000000-0000000000000000-000000000000.seg"
    enc_a, enc_b = EncryptedClient(replica_client, [KEY_A]), EncryptedClient(replica_client, [KEY_B])
    for client in (replica_client, enc_a, enc_b):
        check_encryption(client)  # nothing stored: anything goes
    # An old plaintext generation does not matter; the newest (encrypted with A) does.
    replica_client.write_bytes(f"{old_gen}/{snap}", b"LSYNCSNP plaintext")
    enc_a.write_bytes(f"{new_gen}/{snap}", os.urandom(5000))
    enc_a.write_bytes(f"{new_gen}/{seg}", b"small, so this one is read")
    replica_client.write_bytes("unrelated/object", b"LSYNCSEG")
    check_encryption(enc_a)
    check_encryption(EncryptedClient(replica_client, [KEY_B, KEY_A]))

    def refused(client) -> str:
        with pytest.raises(ReplicaError) as e:
            check_encryption(client)
        assert e.value.retryable is False
        return str(e.value)

    assert refused(replica_client) == (f"replica {replica_client.name}: {new_gen}/{seg}: object is encrypted, and no "
                                       f"encryption key is configured for this replica (encryption-key, or "
                                       f"$LITESYNC_ENCRYPTION_KEY)")
    assert refused(enc_b) == (f"replica {replica_client.name}: {new_gen}/{seg}: encrypted with key id "
                              f"{key_id(KEY_A).hex()}, which is not among the configured keys "
                              f"({key_id(KEY_B).hex()}): add that key to decryption-keys")
    replica_client.write_bytes(f"{new_gen}/{seg}", b"LSYNCSEG plaintext")
    assert refused(enc_a) == (f"replica {replica_client.name}: {new_gen}/{seg}: object is not encrypted; an "
                              f"encrypted replica needs a place of its own (give it a new path, or remove its "
                              f"encryption key)")


@pytest.mark.parametrize("key", ["00" * 32, "ab" * 32, "0102" * 16, "deadbeef" * 8, base64.b64encode(bytes(32)).decode()])
def test_a_guessable_key_is_refused(key):
    with pytest.raises(ConfigError) as e:
        load_key(key)
    assert str(e.value).startswith("encryption key is weak: a pattern of ")
    assert str(e.value).endswith("repeated; generate one with `litesync keygen`")


# Format 2: per-object keys bound to the database; the documented vector and recipe.

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "ENCRYPTION.md")


def doc_vector() -> dict[str, str]:
    """The known-answer table of docs/ENCRYPTION.md, as {input: value without backticks}."""
    import re

    with open(DOC) as f:
        text = f.read()
    table = text[text.index("## Known-answer vector"):text.index("## Reading a backup without litesync")]
    return {m[1]: m[2] for m in re.finditer(r"^\| ([^|]+?) \| `([^`]*)`", table, re.MULTILINE)}


def doc_code_blocks() -> list[str]:
    with open(DOC) as f:
        text = f.read()
    recipe = text[text.index("## Reading a backup without litesync"):]
    return [block.split("```", 1)[0] for block in recipe.split("```python\n")[1:]]


def test_documented_known_answer_vector_matches_the_code(tmp_path):
    from litesync.replica.crypt import _EncryptingReader, _aesgcm, hkdf_sha256, object_key

    v = doc_vector()
    key, salt, nonce = bytes.fromhex(v["configured key"]), bytes.fromhex(v["salt"]), bytes.fromhex(v["nonce base"])
    db_id, name, plain = v["database id"], v["object name"], v["plaintext"].encode()
    assert key_id(key).hex() == v["key id"]
    derived = object_key(key, salt, db_id)
    assert derived.hex() == v["object key"]
    # The HKDF written here agrees with the cryptography package's.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    info = b"litesync object key v2\x00" + db_id.encode()
    assert HKDF(hashes.SHA256(), 32, salt, info).derive(key) == hkdf_sha256(key, salt, info) == derived
    stored = bytes.fromhex(v["stored object, header"] + v["stored object, chunk 0"])
    header = Header(key_id(key), nonce, int(v["chunk size"]), salt, db_id)
    assert header.to_bytes().hex() == v["stored object, header"]
    sealed = _EncryptingReader(io.BytesIO(plain), len(plain), _aesgcm(derived), header, name).read()
    assert sealed == stored
    inner = FileReplicaClient(str(tmp_path / "r"))
    inner.write_bytes(name, stored)
    assert EncryptedClient(inner, [key]).read(name) == plain


def test_an_objects_database_id_cannot_be_changed_without_the_key(local):
    inner, _ = local
    alice = EncryptedClient(inner, [KEY_A], db_id="alice.db")
    alice.write_bytes("k", b"alice's rows")
    raw = inner.read("k")
    assert raw[54:62] == b"alice.db"
    inner.write_bytes("k", raw[:54] + b"bobby.db" + raw[62:])  # same length, another database
    assert corrupt_reason(EncryptedClient(inner, [KEY_A], db_id="bobby.db"), "k") == f"chunk 0 {AUTH_FAIL}"
    # Any client holding the key reads an object of any database (a restore then compares ids).
    inner.write_bytes("k", raw)
    assert EncryptedClient(inner, [KEY_A]).read("k") == b"alice's rows"


def test_every_object_gets_its_own_key():
    from litesync.replica.crypt import object_key

    assert object_key(KEY_A, bytes(16), "a") != object_key(KEY_A, bytes(15) + b"\x01", "a")
    assert object_key(KEY_A, bytes(16), "a") != object_key(KEY_A, bytes(16), "b")
    assert object_key(KEY_A, bytes(16), "a") != object_key(KEY_B, bytes(16), "a")


def test_format_1_objects_still_decrypt():
    fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "v1", "encrypted-replica")
    with open(os.path.join(os.path.dirname(fixtures), "encrypted.key")) as f:
        key = load_key(f.read())
    inner = FileReplicaClient(fixtures)
    keys = [o.key for o in inner.list("generations/")]
    assert keys and all(inner.read(k)[8] == 1 for k in keys)
    client = EncryptedClient(inner, [key])
    for k in keys:
        assert client.read(k)[:6] == b"LSYNCS"  # a snapshot's or a segment's magic


def test_documented_recipe_reads_a_backup_without_litesync(tmp_path):
    """The two scripts in docs/ENCRYPTION.md, run as they are, turn an encrypted snapshot
    that litesync wrote into the database it was taken of."""
    import sqlite3
    import subprocess
    import sys

    from dbcheck import content_digest
    from proc import clean_env

    decrypt, to_db = doc_code_blocks()
    (tmp_path / "decrypt.py").write_text(decrypt)
    (tmp_path / "snapshot-to-db.py").write_text(to_db)
    v = doc_vector()
    (tmp_path / "vector").write_bytes(bytes.fromhex(v["stored object, header"] + v["stored object, chunk 0"]))
    out = subprocess.run([sys.executable, str(tmp_path / "decrypt.py"), v["configured key"],
                          str(tmp_path / "vector"), v["object name"]], capture_output=True, check=True)
    assert out.stdout == v["plaintext"].encode()

    db, root = str(tmp_path / "app.db"), str(tmp_path / "replica")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t(x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(os.urandom(200).hex(),) for _ in range(3000)])
    conn.close()
    key = generate_key()
    r = subprocess.run([sys.executable, "-m", "litesync", "replicate", "--once", "--id", "tenants/app.db", db,
                        f"file://{root}"], env=clean_env({"LITESYNC_ENCRYPTION_KEY": key}),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    snap = [o.key for o in FileReplicaClient(root).list("generations/") if o.key.endswith(".snap")][0]
    with open(tmp_path / "plain.snap", "wb") as f:
        subprocess.run([sys.executable, str(tmp_path / "decrypt.py"), key, os.path.join(root, snap), snap],
                       stdout=f, check=True)
    subprocess.run([sys.executable, str(tmp_path / "snapshot-to-db.py"), str(tmp_path / "plain.snap"),
                    str(tmp_path / "out.db")], check=True)
    assert content_digest(str(tmp_path / "out.db")) == content_digest(db)
