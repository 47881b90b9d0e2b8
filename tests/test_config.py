import os
import re
import textwrap
from dataclasses import FrozenInstanceError

import pytest
import yaml

from litesync import config
from litesync.config import (Config, DbConfig, LoggingConfig, ReplicaConfig, config_from_args, expand_env,
                             find_config, load_config, parse_duration, parse_replica_url, parse_size)
from litesync.errors import ConfigError, UsageError

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "litesync.yml.example")

MINIMAL = """\
dbs:
  - path: app.db
    replicas:
      - url: file:///backups/app
"""


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """Run in tmp_path so messages name the config file as 'litesync.yml'."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(text, environ=None):
    with open("litesync.yml", "w") as f:
        f.write(textwrap.dedent(text))
    return load_config("litesync.yml", environ=environ or {})


def error(text, environ=None):
    with pytest.raises(ConfigError) as e:
        load(text, environ)
    return str(e.value)


# --- durations and sizes ------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("500ms", 0.5), ("10s", 10.0), ("5m", 300.0), ("1h", 3600.0), ("1h30m", 5400.0), ("2d", 172800.0),
    ("1.5h", 5400.0), ("0s", 0.0), ("1m30s", 90.0), ("1s500ms", 1.5), (" 4h ", 14400.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, message", [
    ("10", "duration needs a unit: '10'"),
    ("1.5", "duration needs a unit: '1.5'"),
    ("", "invalid duration: '' (units: ms, s, m, h, d)"),
    ("10x", "invalid duration: '10x' (units: ms, s, m, h, d)"),
    ("-1s", "invalid duration: '-1s' (units: ms, s, m, h, d)"),
    ("1H", "invalid duration: '1H' (units: ms, s, m, h, d)"),
    ("1h 30m", "invalid duration: '1h 30m' (units: ms, s, m, h, d)"),
    ("h", "invalid duration: 'h' (units: ms, s, m, h, d)"),
])
def test_parse_duration_rejects(text, message):
    with pytest.raises(ConfigError) as e:
        parse_duration(text)
    assert str(e.value) == message


@pytest.mark.parametrize("text, size", [
    ("512", 512), (512, 512), ("0", 0), ("512B", 512), ("64KB", 64_000), ("64MB", 64_000_000),
    ("1GB", 1_000_000_000), ("2TB", 2 * 10**12), ("64KiB", 64 * 1024), ("64MiB", 64 << 20), ("1GiB", 1 << 30),
    ("1TiB", 1 << 40), ("1.5MB", 1_500_000), ("0.5KiB", 512), ("64 MiB", 64 << 20), ("64mb", 64_000_000),
    ("1gib", 1 << 30),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text, message", [
    ("64M", "invalid size: '64M' (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"),
    ("lots", "invalid size: 'lots' (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"),
    ("-1", "invalid size: '-1' (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"),
    ("", "invalid size: '' (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"),
    ("1.5B", "size is not a whole number of bytes: '1.5B'"),
    (-1, "invalid size: -1"),
])
def test_parse_size_rejects(text, message):
    with pytest.raises(ConfigError) as e:
        parse_size(text)
    assert str(e.value) == message


# --- replica URLs -------------------------------------------------------------------------------

def test_file_url():
    rc = parse_replica_url("file:///backups/app/")
    assert (rc.type, rc.name, rc.path, rc.url) == ("file", "file", "/backups/app", "file:///backups/app/")
    assert parse_replica_url("file://localhost/b%20c").path == "/b c"


def test_plain_paths_are_file_replicas(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_replica_url("/backups/app").path == "/backups/app"
    assert parse_replica_url("backups").path == str(tmp_path / "backups")
    assert parse_replica_url("./a/../backups").path == str(tmp_path / "backups")
    assert parse_replica_url("backups", base="/srv").path == "/srv/backups"
    assert parse_replica_url("/abs", base="/srv").path == "/abs"
    assert parse_replica_url("~/bk").path == os.path.expanduser("~/bk")


def test_s3_url():
    rc = parse_replica_url("s3://mybucket/a/b/?endpoint=https://s3.example.com&region=eu-1&force-path-style=true")
    assert rc == ReplicaConfig("s3", "s3", "a/b", url=rc.url, bucket="mybucket", endpoint="https://s3.example.com",
                               region="eu-1", force_path_style=True)
    bare = parse_replica_url("S3://mybucket")
    assert (bare.type, bare.bucket, bare.path, bare.endpoint, bare.region, bare.force_path_style) == \
        ("s3", "mybucket", "", None, None, None)
    assert parse_replica_url("s3://b/p?force-path-style=false").force_path_style is False


def test_b2_url():
    rc = parse_replica_url("b2://bucket/app/db")
    assert (rc.type, rc.name, rc.bucket, rc.path) == ("b2", "b2", "bucket", "app/db")


@pytest.mark.parametrize("url, message", [
    ("ftp://x", "unsupported replica URL scheme: 'ftp' in 'ftp://x'"),
    ("gs://bucket/p", "unsupported replica URL scheme: 'gs' in 'gs://bucket/p'"),
    ("", "empty replica URL"),
    ("s3:///prefix", "replica URL has no bucket: 's3:///prefix'"),
    ("b2://", "replica URL has no bucket: 'b2://'"),
    ("s3://b/p?foo=1", "unknown query parameter 'foo' in 's3://b/p' (expected endpoint, region or force-path-style)"),
    ("s3://b/p?region=a&region=b", "query parameter given twice: 'region' in 's3://b/p'"),
    ("b2://b/p?region=x", "unknown query parameter 'region' in 'b2://b/p'"),
    ("file:///d?x=1", "unknown query parameter 'x' in 'file:///d'"),
    ("s3://b/p?force-path-style=yes", "expected true or false: 'yes'"),
    ("s3://b/p?endpoint=ftp://s3.example.com", "endpoint must be an http:// or https:// URL: 'ftp://s3.example.com'"),
    ("s3://key:secret@b/p", "replica URL must not contain credentials (give them as keys or in the environment)"),
    ("s3://b:9000/p", "invalid bucket name: 'b:9000'"),
    ("s3://b/p#frag", "unexpected '#' in replica URL: 's3://b/p#frag'"),
    ("file://backups", "file URL needs an absolute path (file:///dir): 'file://backups'"),
    ("file://", "file URL needs an absolute path (file:///dir): 'file://'"),
])
def test_bad_urls(url, message):
    with pytest.raises(ConfigError) as e:
        parse_replica_url(url)
    assert str(e.value) == message


def test_url_credentials_are_not_echoed():
    with pytest.raises(ConfigError) as e:
        parse_replica_url("s3://AKID:hunter2@b/p")
    assert "hunter2" not in str(e.value) and "AKID" not in str(e.value)


# --- environment expansion ----------------------------------------------------------------------

def test_expand_env():
    env = {"A": "x", "EMPTY": "", "B": "${A}"}
    assert expand_env("${A}/${A}", env) == "x/x"
    assert expand_env("${MISSING:-def}", env) == "def"
    assert expand_env("${EMPTY:-def}", env) == "def"
    assert expand_env("${A:-def}", env) == "x"
    assert expand_env("${EMPTY}", env) == ""
    assert expand_env("${MISSING:-}", env) == ""
    assert expand_env("${B}", env) == "${A}"  # values are not expanded again
    assert expand_env("$A and $ and $${A}", env) == "$A and $ and ${A}"


@pytest.mark.parametrize("text, message", [
    ("${NOPE}", "environment variable not set: 'NOPE'"),
    ("${A", "unterminated '${' (write '$${' for a literal '${')"),
    ("${1X}", "invalid variable reference: '${1X}'"),
    ("${A-x}", "invalid variable reference: '${A-x}'"),
    ("${}", "invalid variable reference: '${}'"),
])
def test_expand_env_rejects(text, message):
    with pytest.raises(ConfigError) as e:
        expand_env(text, {"A": "x"})
    assert str(e.value) == message


def test_expand_env_defaults_to_process_environment(monkeypatch):
    monkeypatch.setenv("LITESYNC_TEST_VAR", "yes")
    assert expand_env("${LITESYNC_TEST_VAR}") == "yes"


def test_env_expansion_in_file_before_conversion(cwd):
    cfg = load("""\
        checkpoint-pages: ${PAGES}
        dbs:
          - path: ${DATA}/app.db
            spool-max-size: ${SPOOL:-64MiB}
            replicas:
              - type: s3
                bucket: ${BUCKET}
                endpoint: ${S3_ENDPOINT:-}
                access-key-id: ${KEY_ID}
                secret-access-key: "${SECRET}"
        """, {"PAGES": "500", "DATA": "/data", "BUCKET": "bk", "KEY_ID": "id", "SECRET": "s"})
    db = cfg.dbs[0]
    assert (db.path, db.checkpoint_pages, db.spool_max_size) == ("/data/app.db", 500, 64 << 20)
    rc = db.replicas[0]
    assert (rc.bucket, rc.endpoint, rc.access_key_id, rc.secret_access_key) == ("bk", None, "id", "s")


def test_env_undefined_names_variable_field_and_line(cwd):
    assert error("""\
        dbs:
          - path: app.db
            replicas:
              - url: file:///b
              - type: s3
                bucket: b
                access-key-id: ${AWS_ACCESS_KEY_ID}
                secret-access-key: x
        """) == ("litesync.yml:7: dbs[0].replicas[1].access-key-id: "
                 "environment variable not set: 'AWS_ACCESS_KEY_ID'")


def test_env_uses_process_environment_by_default(cwd, monkeypatch):
    monkeypatch.setenv("LITESYNC_TEST_DB", "from-env.db")
    with open("litesync.yml", "w") as f:
        f.write(MINIMAL.replace("app.db", "${LITESYNC_TEST_DB}"))
    assert load_config("litesync.yml").dbs[0].path == str(cwd / "from-env.db")


def test_expanded_value_converts_with_its_field_path(cwd):
    assert error("""\
        dbs:
          - path: app.db
            checkpoint-pages: ${PAGES}
            replicas: [{url: /b}]
        """, {"PAGES": "many"}) == "litesync.yml:3: dbs[0].checkpoint-pages: expected an integer: 'many'"


# --- loading: values ----------------------------------------------------------------------------

def test_minimal_config_has_defaults(cwd):
    cfg = load(MINIMAL)
    assert cfg == Config(
        dbs=(DbConfig(str(cwd / "app.db"), (ReplicaConfig("file", "file", "/backups/app", url="file:///backups/app",
                                                          db_id=str(cwd / "app.db")),),
                      snapshot_interval=14400.0, checkpoint_pages=1000, spool_max_size=1 << 30, id=str(cwd / "app.db")),),
        logging=LoggingConfig("info", "text", "stderr"),
        source="litesync.yml")


def test_full_config(cwd):
    cfg = load("""\
        snapshot-interval: 2h
        checkpoint-pages: 2000
        spool-max-size: 256MiB
        logging: {level: DEBUG, format: json, stream: stdout}
        dbs:
          - path: /var/lib/app/app.db
            snapshot-interval: 1h
            checkpoint-pages: 1000
            spool-max-size: 1GB
            replicas:
              - url: file:///backups/app
              - type: s3
                name: offsite
                bucket: mybucket
                path: /app/
                endpoint: https://s3.us-west-004.backblazeb2.com
                region: us-west-004
                force-path-style: true
                access-key-id: ${AWS_ACCESS_KEY_ID}
                secret-access-key: ${AWS_SECRET_ACCESS_KEY}
                sync-interval: 1s
                part-size: 8MB
                concurrency: 4
                priority: 1
              - type: b2
                bucket: b
                path: app
                application-key-id: ${B2_APPLICATION_KEY_ID}
                application-key: ${B2_APPLICATION_KEY}
          - path: other.db
            replicas:
              - type: file
                path: backups/other
                sync-interval: 0s
                priority: 0
        """, {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s3secret",
              "B2_APPLICATION_KEY_ID": "kid", "B2_APPLICATION_KEY": "b2secret"})
    assert cfg.logging == LoggingConfig("debug", "json", "stdout")
    app, other = cfg.dbs
    assert (app.path, app.snapshot_interval, app.checkpoint_pages, app.spool_max_size) == \
        ("/var/lib/app/app.db", 3600.0, 1000, 10**9)
    local, s3, b2 = app.replicas
    assert local == ReplicaConfig("file", "file", "/backups/app", url="file:///backups/app", db_id=app.id)
    assert s3 == ReplicaConfig(
        "s3", "offsite", "app", bucket="mybucket", endpoint="https://s3.us-west-004.backblazeb2.com",
        region="us-west-004", force_path_style=True, access_key_id="AKID", secret_access_key="s3secret",
        sync_interval=1.0, part_size=8_000_000, concurrency=4, priority=1, db_id=app.id)
    assert b2 == ReplicaConfig("b2", "b2", "app", bucket="b", application_key_id="kid", application_key="b2secret",
                               db_id=app.id)
    # Globals are inherited; relative paths start at the config file's directory.
    assert (other.path, other.snapshot_interval, other.checkpoint_pages, other.spool_max_size) == \
        (str(cwd / "other.db"), 7200.0, 2000, 256 << 20)
    assert other.replicas == (ReplicaConfig("file", "file", str(cwd / "backups/other"), sync_interval=0.0,
                                            priority=0, db_id=other.id),)


def test_relative_paths_start_at_the_config_directory(tmp_path, monkeypatch):
    conf = tmp_path / "etc" / "litesync.yml"
    conf.parent.mkdir()
    conf.write_text("dbs: [{path: ../data/app.db, replicas: [{url: bk}, {type: file, path: bk2}]}]\n")
    monkeypatch.chdir("/")
    db = load_config(str(conf), environ={}).dbs[0]
    assert db.path == str(tmp_path / "data" / "app.db")
    assert [r.path for r in db.replicas] == [str(tmp_path / "etc" / "bk"), str(tmp_path / "etc" / "bk2")]


def test_unset_stays_distinct_from_zero(cwd):
    rc, zero, empty = load("""\
        dbs:
          - path: app.db
            replicas:
              - {url: /a}
              - {url: /b, sync-interval: 0s, priority: 0}
              - {url: /c, sync-interval: ~, priority: ""}
        """).dbs[0].replicas
    assert (rc.sync_interval, rc.priority) == (None, None)
    assert (zero.sync_interval, zero.priority) == (0.0, 0)
    assert (empty.sync_interval, empty.priority) == (None, None)


def test_url_replica_takes_credentials_and_tuning_keys(cwd):
    rc = load("""\
        dbs:
          - path: app.db
            replicas:
              - url: s3://bk/app?endpoint=http://localhost:9000&force-path-style=true
                name: minio
                access-key-id: id
                secret-access-key: secret
                part-size: 16MiB
                concurrency: 8
                sync-interval: 250ms
        """).dbs[0].replicas[0]
    assert rc == ReplicaConfig("s3", "minio", "app", url=rc.url, bucket="bk", endpoint="http://localhost:9000", force_path_style=True,
                               access_key_id="id", secret_access_key="secret", part_size=16 << 20, concurrency=8,
                               sync_interval=0.25, db_id=rc.db_id)


def test_default_names_are_unique(cwd):
    replicas = load("""\
        dbs:
          - path: app.db
            replicas:
              - {type: s3, bucket: a}
              - {type: s3, bucket: b}
              - {type: s3, bucket: c, name: s3}
              - {url: /x}
              - {url: b2://d/x}
              - {url: /y}
        """).dbs[0].replicas
    # An explicit name keeps its name; defaulted ones skip names already taken.
    assert [r.name for r in replicas] == ["s3-2", "s3-3", "s3", "file", "b2", "file-2"]


def test_names_are_per_database(cwd):
    a, b = load("""\
        dbs:
          - {path: a.db, replicas: [{url: /a}]}
          - {path: b.db, replicas: [{url: /b}]}
        """).dbs
    assert a.replicas[0].name == b.replicas[0].name == "file"


def test_merge_keys_share_settings(cwd):
    cfg = load("""\
        dbs:
          - path: a.db
            replicas:
              - &offsite {type: s3, bucket: shared, region: eu-1, path: a}
          - path: b.db
            replicas:
              - <<: *offsite
                path: b
                region: eu-2
              - <<: [{type: s3, bucket: x}, {bucket: y, region: r}]
        """)
    a, b = cfg.dbs
    assert (a.replicas[0].bucket, a.replicas[0].path, a.replicas[0].region) == ("shared", "a", "eu-1")
    assert (b.replicas[0].bucket, b.replicas[0].path, b.replicas[0].region) == ("shared", "b", "eu-2")
    assert (b.replicas[1].bucket, b.replicas[1].region) == ("x", "r")


def test_dataclasses_are_frozen(cwd):
    cfg = load(MINIMAL)
    with pytest.raises(FrozenInstanceError):
        cfg.dbs[0].path = "x"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        cfg.dbs[0].replicas[0].path = "x"  # type: ignore[misc]


def test_repr_masks_secrets():
    rc = ReplicaConfig("s3", "s3", "p", bucket="b", access_key_id="AKID",
                       secret_access_key="very-secret-1", application_key_id="kid", application_key="very-secret-2")
    text = repr(rc)
    assert "very-secret" not in text and "very-secret" not in str(rc)
    assert "secret_access_key='***'" in text and "application_key='***'" in text
    assert "access_key_id='AKID'" in text
    assert "secret_access_key=None" in repr(ReplicaConfig("s3", "s3", "p"))


def test_config_repr_masks_secrets(cwd):
    cfg = load("""\
        dbs:
          - path: app.db
            replicas:
              - {type: s3, bucket: b, access-key-id: AKID, secret-access-key: hunter2}
        """)
    assert "hunter2" not in repr(cfg)


def test_destination():
    assert ReplicaConfig("file", "file", "/d").destination == "/d"
    assert ReplicaConfig("s3", "s3", "p", bucket="b").destination == "s3://b/p"
    assert ReplicaConfig("s3", "s3", "p", bucket="b", endpoint="http://h").destination == "s3://b/p at http://h"


# --- loading: errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    # structure
    ("logging: {level: info}\n", "litesync.yml:1: missing required key: 'dbs'"),
    ("dbs: []\n", "litesync.yml:1: dbs: at least one database is required"),
    ("dbs:\n", "litesync.yml:1: dbs: at least one database is required"),
    ("dbs: {path: a.db}\n", "litesync.yml:1: dbs: expected a list, got a mapping"),
    ("- a\n- b\n", "litesync.yml:1: expected a mapping, got a list"),
    ("just text\n", "litesync.yml:1: expected a mapping, got a single value"),
    ("dbs:\n  - a.db\n", "litesync.yml:2: dbs[0]: expected a mapping, got a single value"),
    ("dbs:\n  - replicas: [{url: /b}]\n", "litesync.yml:2: dbs[0]: missing required key: 'path' or 'dir'"),
    ("dbs:\n  - path:\n    replicas: [{url: /b}]\n", "litesync.yml:2: dbs[0].path: a value is required"),
    ("dbs:\n  - path: [a, b]\n    replicas: [{url: /b}]\n",
     "litesync.yml:2: dbs[0].path: expected a single value, got a list"),
    ("dbs:\n  - path: a.db\n", "litesync.yml:2: dbs[0]: missing required key: 'replicas'"),
    ("dbs:\n  - path: a.db\n    replicas: []\n", "litesync.yml:3: dbs[0].replicas: at least one replica is required"),
    ("dbs:\n  - path: a.db\n    replicas: {url: /b}\n",
     "litesync.yml:3: dbs[0].replicas: expected a list, got a mapping"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - /b\n",
     "litesync.yml:4: dbs[0].replicas[0]: expected a mapping, got a single value"),
    ("logging: debug\ndbs: [{path: a.db, replicas: [{url: /b}]}]\n",
     "litesync.yml:1: logging: expected a mapping, got a single value"),
    # unknown and duplicate keys
    ("dbs:\n  - path: a.db\n    replica:\n      - url: /b\n",
     "litesync.yml:4: dbs[0].replica: replica: takes one replica (a mapping); write replicas: for a list"),
    ("dbs:\n  - path: a.db\n    replicass:\n      - url: /b\n",
     "litesync.yml:3: dbs[0]: unknown key 'replicass' (did you mean 'replicas'?)"),
    ("db:\n  - path: a.db\n", "litesync.yml:1: unknown key 'db' (did you mean 'dbs'?)"),
    ("retentoin: 24h\ndbs: [{path: a.db, replicas: [{url: /b}]}]\n", "litesync.yml:1: unknown key 'retentoin' (did you mean 'retention'?)"),
    ("compaction: 5m, 1m\ndbs: [{path: a.db, replicas: [{url: /b}]}]\n", "litesync.yml:1: compaction: compaction windows must increase: '5m, 1m'"),
    ("dbs: [{path: a.db, retention: 0s, replicas: [{url: /b}]}]\n", "litesync.yml:1: dbs[0].retention: must be greater than zero: '0s'"),
    ("logging: {levle: info}\ndbs: [{path: a.db, replicas: [{url: /b}]}]\n",
     "litesync.yml:1: logging: unknown key 'levle' (did you mean 'level'?)"),
    ("dbs:\n  - path: a.db\n    path: b.db\n    replicas: [{url: /b}]\n",
     "litesync.yml:3: dbs[0]: duplicate key: 'path'"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - type: s3\n        bukcet: b\n",
     "litesync.yml:5: dbs[0].replicas[0]: unknown key 'bukcet' (did you mean 'bucket'?)"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - type: s3\n        bucket: b\n        application-key: k\n",
     "litesync.yml:6: dbs[0].replicas[0]: key 'application-key' does not apply to type 's3'"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - type: file\n        path: /b\n        bucket: b\n",
     "litesync.yml:6: dbs[0].replicas[0]: key 'bucket' does not apply to type 'file'"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - type: b2\n        bucket: b\n        endpoint: https://x\n",
     "litesync.yml:6: dbs[0].replicas[0]: key 'endpoint' does not apply to type 'b2'"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - url: /b\n        part-size: 8MiB\n",
     "litesync.yml:5: dbs[0].replicas[0]: key 'part-size' does not apply to type 'file'"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - url: s3://b/p\n        bucket: c\n",
     "litesync.yml:5: dbs[0].replicas[0]: key 'bucket' cannot be combined with url: (put it in the URL)"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - url: /b\n        path: /c\n",
     "litesync.yml:5: dbs[0].replicas[0]: key 'path' cannot be combined with url: (put it in the URL)"),
    # url / type
    ("dbs:\n  - path: a.db\n    replicas:\n      - url: /b\n        type: file\n",
     "litesync.yml:5: dbs[0].replicas[0]: give either url: or type:, not both"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - name: x\n        path: /b\n",
     "litesync.yml:4: dbs[0].replicas[0]: missing required key: 'url' or 'type'"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - type: gcs\n",
     "litesync.yml:4: dbs[0].replicas[0].type: unknown replica type: 'gcs' (expected file, s3 or b2)"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - url: ftp://x\n",
     "litesync.yml:4: dbs[0].replicas[0].url: unsupported replica URL scheme: 'ftp' in 'ftp://x'"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - url: s3://b/p?foo=1\n",
     "litesync.yml:4: dbs[0].replicas[0].url: unknown query parameter 'foo' in 's3://b/p' "
     "(expected endpoint, region or force-path-style)"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - url: s3:///p\n",
     "litesync.yml:4: dbs[0].replicas[0].url: replica URL has no bucket: 's3:///p'"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - url:\n",
     "litesync.yml:4: dbs[0].replicas[0].url: a value is required"),
    # required replica keys
    ("dbs:\n  - path: a.db\n    replicas:\n      - type: s3\n        path: p\n",
     "litesync.yml:4: dbs[0].replicas[0]: missing required key: 'bucket'"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - type: b2\n        bucket: ''\n",
     "litesync.yml:5: dbs[0].replicas[0].bucket: a value is required"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - type: file\n        name: x\n",
     "litesync.yml:4: dbs[0].replicas[0]: missing required key: 'path'"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - type: s3\n        bucket: b\n        access-key-id: id\n",
     "litesync.yml:6: dbs[0].replicas[0]: secret-access-key is required with access-key-id"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - type: b2\n        bucket: b\n        application-key: k\n",
     "litesync.yml:6: dbs[0].replicas[0]: application-key-id is required with application-key"),
    # duplicates
    ("dbs:\n  - path: a.db\n    replicas: [{url: /b}]\n  - path: ./x/../a.db\n    replicas: [{url: /c}]\n",
     "litesync.yml:4: dbs[1].path: duplicate database path: '{cwd}/a.db' (also dbs[0])"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - {url: /b, name: one}\n      - {url: /c, name: one}\n",
     "litesync.yml:5: dbs[0].replicas[1].name: duplicate replica name: 'one' (also dbs[0].replicas[0])"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - {url: /b}\n      - {url: 'file:///b/'}\n",
     "litesync.yml:5: dbs[0].replicas[1]: same destination as dbs[0].replicas[0]: '/b'"),
    ("dbs:\n  - path: a.db\n    replicas: [{url: s3://b/p}]\n  - path: c.db\n    replicas:\n"
     "      - {type: s3, bucket: b, path: /p/}\n",
     "litesync.yml:6: dbs[1].replicas[0]: same destination as dbs[0].replicas[0]: 's3://b/p'"),
    # values
    ("snapshot-interval: 10\ndbs: [{path: a.db, replicas: [{url: /b}]}]\n",
     "litesync.yml:1: snapshot-interval: duration needs a unit: '10'"),
    ("snapshot-interval: 0s\ndbs: [{path: a.db, replicas: [{url: /b}]}]\n",
     "litesync.yml:1: snapshot-interval: must be greater than zero: '0s'"),
    ("dbs:\n  - path: a.db\n    checkpoint-pages: 0\n    replicas: [{url: /b}]\n",
     "litesync.yml:3: dbs[0].checkpoint-pages: must be at least 1: '0'"),
    ("dbs:\n  - path: a.db\n    checkpoint-pages: 1.5\n    replicas: [{url: /b}]\n",
     "litesync.yml:3: dbs[0].checkpoint-pages: expected an integer: '1.5'"),
    ("dbs:\n  - path: a.db\n    checkpoint-pages: {a: 1}\n    replicas: [{url: /b}]\n",
     "litesync.yml:3: dbs[0].checkpoint-pages: expected a single value, got a mapping"),
    ("dbs:\n  - path: a.db\n    spool-max-size: 0\n    replicas: [{url: /b}]\n",
     "litesync.yml:3: dbs[0].spool-max-size: must be greater than zero: '0'"),
    ("dbs:\n  - path: a.db\n    spool-max-size: 1G\n    replicas: [{url: /b}]\n",
     "litesync.yml:3: dbs[0].spool-max-size: invalid size: '1G' (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"),
    ("logging: {level: loud}\ndbs: [{path: a.db, replicas: [{url: /b}]}]\n",
     "litesync.yml:1: logging.level: invalid value: 'loud' (expected debug, info, warning or error)"),
    ("logging: {format: xml}\ndbs: [{path: a.db, replicas: [{url: /b}]}]\n",
     "litesync.yml:1: logging.format: invalid value: 'xml' (expected text or json)"),
    ("logging: {stream: file}\ndbs: [{path: a.db, replicas: [{url: /b}]}]\n",
     "litesync.yml:1: logging.stream: invalid value: 'file' (expected stderr or stdout)"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - url: /b\n      - url: /c\n        sync-interval: soon\n",
     "litesync.yml:6: dbs[0].replicas[1].sync-interval: invalid duration: 'soon' (units: ms, s, m, h, d)"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - type: s3\n        bucket: b\n        part-size: 1MiB\n",
     "litesync.yml:6: dbs[0].replicas[0].part-size: must be between 5MiB and 5GiB: '1MiB'"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - type: s3\n        bucket: b\n        concurrency: 0\n",
     "litesync.yml:6: dbs[0].replicas[0].concurrency: must be at least 1: '0'"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - url: /b\n        priority: -1\n",
     "litesync.yml:5: dbs[0].replicas[0].priority: must be at least 0: '-1'"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - type: s3\n        bucket: b\n        force-path-style: yes\n",
     "litesync.yml:6: dbs[0].replicas[0].force-path-style: expected true or false: 'yes'"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - type: s3\n        bucket: b\n        endpoint: ftp://localhost:9000\n",
     "litesync.yml:6: dbs[0].replicas[0].endpoint: endpoint must be an http:// or https:// URL: 'ftp://localhost:9000'"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - url: /b\n        name: a/b\n",
     "litesync.yml:5: dbs[0].replicas[0].name: invalid replica name: 'a/b' (letters, digits, '.', '_', '-')"),
    ("dbs:\n  - path: a.db\n    replicas:\n      - <<: 3\n",
     "litesync.yml:4: dbs[0].replicas[0]: '<<' needs a mapping or a list of mappings"),
])
def test_errors(cwd, text, message):
    assert error(text) == message.replace("{cwd}", str(cwd))


def test_errors_are_usage_errors(cwd):
    with pytest.raises(UsageError) as e:
        load("dbs: []\n")
    assert (e.value.exit_code, e.value.file, e.value.path, e.value.line) == (2, "litesync.yml", "dbs", 1)


@pytest.mark.parametrize("text, message", [
    ("dbs:\n  - path: a.db\n   replicas: []\n",
     "litesync.yml:3: invalid YAML: expected <block end>, but found '<block mapping start>'"),
    ("dbs: [a, b\n", "litesync.yml:2: invalid YAML: expected ',' or ']', but got '<stream end>'"),
    ("a: b: c\n", "litesync.yml:1: invalid YAML: mapping values are not allowed here"),
    ("dbs:\n\t- a\n", "litesync.yml:2: invalid YAML: found character '\\t' that cannot start any token"),
    ("a: &x 1\nb: *y\n", "litesync.yml:2: invalid YAML: found undefined alias 'y'"),
    ("dbs: []\n---\ndbs: []\n", "litesync.yml:3: config file holds more than one YAML document"),
])
def test_invalid_yaml(cwd, text, message):
    assert error(text) == message


def test_empty_file(cwd):
    assert error("") == "litesync.yml: config file is empty"
    assert error("# only a comment\n") == "litesync.yml: config file is empty"


def test_missing_and_unreadable_files(cwd):
    with pytest.raises(ConfigError) as e:
        load_config("nope.yml")
    assert str(e.value) == "nope.yml: config file not found"
    os.mkdir("dir.yml")
    with pytest.raises(ConfigError) as e:
        load_config("dir.yml")
    assert str(e.value) == "dir.yml: cannot read config file: Is a directory"
    with open("latin1.yml", "wb") as f:
        f.write(b"dbs: [{path: caf\xe9.db}]\n")
    with pytest.raises(ConfigError) as e:
        load_config("latin1.yml")
    assert str(e.value) == "latin1.yml: config file is not UTF-8 text"


# --- encryption keys and bandwidth --------------------------------------------------------------

KEY_A, KEY_B, KEY_C = bytes(range(32)), bytes(range(100, 132)), bytes(range(200, 232))


def test_encryption_keys_and_max_bandwidth(cwd):
    import base64

    with open("keys.txt", "w") as f:
        f.write(f"# the current key first\n{KEY_B.hex()}\n\n{base64.b64encode(KEY_A).decode()}\n")
    os.chmod("keys.txt", 0o600)
    cfg = load("""\
        dbs:
          - path: app.db
            replicas:
              - url: file:///b
                encryption-key: ${KEY}
                decryption-keys: ["${OLD}", "${NONE:-}"]
                max-bandwidth: 1.5MB/s
              - type: s3
                bucket: b
                encryption-key-file: keys.txt
                decryption-keys: ${OLD_KEYS}
                max-bandwidth: 512KiB/s
              - url: file:///c
        """, {"KEY": KEY_C.hex(), "OLD": KEY_A.hex(), "OLD_KEYS": f"{KEY_C.hex()}, {KEY_A.hex().upper()}"})
    a, b, c = cfg.dbs[0].replicas
    assert (a.encryption_keys, a.max_bandwidth) == ((KEY_C, KEY_A), 1_500_000)
    assert (b.encryption_keys, b.max_bandwidth) == ((KEY_B, KEY_A, KEY_C, KEY_A), 512 << 10)
    assert (c.encryption_keys, c.max_bandwidth) == (None, None)


@pytest.mark.parametrize("replica, message", [
    ("{url: /b, encryption-key: KEY, encryption-key-file: f}",
     "dbs[0].replicas[0]: give either encryption-key or encryption-key-file, not both"),
    ("{url: /b, decryption-keys: [KEY]}",
     "dbs[0].replicas[0]: decryption-keys needs encryption-key or encryption-key-file "
     "(the key that encrypts new objects)"),
    ("{url: /b, encryption-key: '${UNSET:-}'}",
     "dbs[0].replicas[0].encryption-key: a value is required (leave the key out to store objects unencrypted)"),
    ("{url: /b, encryption-key: not-a-key-but-a-secret}",
     "dbs[0].replicas[0].encryption-key: encryption key is neither 64 hex digits nor base64 (22 characters)"),
    ("{url: /b, encryption-key: KEY, decryption-keys: [KEY, 'AAAA']}",
     "dbs[0].replicas[0].decryption-keys[1]: encryption key must be 32 bytes: base64 decodes to 3 bytes"),
    ("{url: /b, encryption-key: KEY, decryption-keys: 'KEY,secret-typo'}",
     "dbs[0].replicas[0].decryption-keys: key 2: encryption key is neither 64 hex digits nor base64 "
     "(11 characters)"),
    ("{url: /b, encryption-key: KEY, decryption-keys: {a: b}}",
     "dbs[0].replicas[0].decryption-keys: expected a single value, got a mapping"),
    ("{url: /b, encryption-key-file: nokey}",
     "dbs[0].replicas[0].encryption-key-file: cannot read encryption key file: '{cwd}/nokey' "
     "(No such file or directory)"),
    ("{url: /b, encryption-key-file: bad.key}",
     "dbs[0].replicas[0].encryption-key-file: encryption key file '{cwd}/bad.key': key 2: "
     "encryption key is neither 64 hex digits nor base64 (10 characters)"),
    ("{url: /b, encryption-key-file: empty.key}",
     "dbs[0].replicas[0].encryption-key-file: encryption key file '{cwd}/empty.key': encryption key is empty"),
    ("{url: /b, max-bandwidth: 5MB}",
     "dbs[0].replicas[0].max-bandwidth: bandwidth needs a '/s': '5MB' (a size per second: 5MB/s, 512KiB/s)"),
    ("{url: /b, max-bandwidth: fast/s}",
     "dbs[0].replicas[0].max-bandwidth: invalid bandwidth: 'fast/s' (a size per second: 5MB/s, 512KiB/s)"),
    ("{url: /b, max-bandwidth: 0KB/s}", "dbs[0].replicas[0].max-bandwidth: must be greater than zero: '0KB/s'"),
])
def test_encryption_and_bandwidth_errors(cwd, replica, message):
    with open("bad.key", "w") as f:
        f.write(f"{KEY_A.hex()}\nsecret-typ\n")
    open("empty.key", "w").write("# nothing yet\n")
    text = error(f"dbs:\n  - path: a.db\n    replicas:\n      - {replica.replace('KEY', KEY_A.hex())}\n")
    assert text == "litesync.yml:4: " + message.replace("{cwd}", str(cwd))
    assert "secret" not in text.replace("encrypts", "")


def test_repr_masks_encryption_keys():
    rc = ReplicaConfig("file", "file", "/b", encryption_keys=(KEY_A, KEY_B))
    assert "encryption_keys='***'" in repr(rc)
    assert KEY_A.hex() not in repr(rc) and repr(KEY_A) not in repr(rc)


def test_keys_from_environment(tmp_path):
    from litesync.config import command_line_replica, keys_from_env

    assert keys_from_env({}) is None
    assert keys_from_env({"LITESYNC_ENCRYPTION_KEY": f"{KEY_B.hex()},{KEY_A.hex()}"}) == (KEY_B, KEY_A)
    key_file = tmp_path / "k"
    key_file.write_text(KEY_C.hex())
    assert keys_from_env({"LITESYNC_ENCRYPTION_KEY_FILE": str(key_file)}) == (KEY_C,)
    for env, message in [
        ({"LITESYNC_ENCRYPTION_KEY": ""}, "$LITESYNC_ENCRYPTION_KEY: encryption key is empty"),
        ({"LITESYNC_ENCRYPTION_KEY": "secret"},
         "$LITESYNC_ENCRYPTION_KEY: encryption key is neither 64 hex digits nor base64 (6 characters)"),
        ({"LITESYNC_ENCRYPTION_KEY": "x", "LITESYNC_ENCRYPTION_KEY_FILE": "y"},
         "set $LITESYNC_ENCRYPTION_KEY or $LITESYNC_ENCRYPTION_KEY_FILE, not both"),
    ]:
        with pytest.raises(ConfigError) as e:
            keys_from_env(env)
        assert str(e.value) == message
    env = {"LITESYNC_ENCRYPTION_KEY": KEY_A.hex()}
    assert command_line_replica("s3://b/p", env).encryption_keys == (KEY_A,)
    assert command_line_replica("s3://b/p", {}).encryption_keys is None
    db = config_from_args(str(tmp_path / "app.db"), ["file:///x", "s3://b/p"], env).dbs[0]
    assert [r.encryption_keys for r in db.replicas] == [(KEY_A,), (KEY_A,)]
    assert config_from_args(str(tmp_path / "app.db"), [], env).dbs[0].replicas[0].encryption_keys == (KEY_A,)


SECRET_CONFIG = """\
    dbs:
      - path: app.db
        replicas:
          - type: s3
            bucket: b
            access-key-id: AKID
            secret-access-key: {secret}
            encryption-key: {key}
    """


@pytest.mark.parametrize("mode, secret, key, warned", [
    (0o644, "hunter2", "${KEY}", "dbs[0].replicas[0].secret-access-key at line 7"),
    (0o604, "${SECRET}", KEY_A.hex(), "dbs[0].replicas[0].encryption-key at line 8"),
    (0o640, "hunter2", KEY_A.hex(), None),  # readable by the group only
    (0o644, "${SECRET}", "${KEY}", None),  # the file holds no secret
])
def test_world_readable_config_with_secrets_is_warned_about(cwd, caplog, mode, secret, key, warned):
    with open("litesync.yml", "w") as f:
        f.write(textwrap.dedent(SECRET_CONFIG.format(secret=secret, key=key)))
    os.chmod("litesync.yml", mode)
    with caplog.at_level("WARNING", logger="litesync.config"):
        load_config("litesync.yml", environ={"SECRET": "hunter2", "KEY": KEY_A.hex()})
    if warned is None:
        assert caplog.messages == []
        return
    assert caplog.messages == [f"config file is readable by every user and holds secrets: litesync.yml ({warned}); "
                               f"run chmod 600 litesync.yml"]
    assert "hunter2" not in caplog.text and KEY_A.hex() not in caplog.text


def test_world_readable_key_file_is_warned_about(cwd, caplog):
    with open("app.key", "w") as f:
        f.write(KEY_A.hex())
    text = "dbs:\n  - path: a.db\n    replicas:\n      - {url: /b, encryption-key-file: app.key}\n"
    for mode, warnings in [(0o600, 0), (0o644, 1)]:
        os.chmod("app.key", mode)
        caplog.clear()
        with caplog.at_level("WARNING", logger="litesync.config"):
            assert load(text).dbs[0].replicas[0].encryption_keys == (KEY_A,)
        assert len(caplog.messages) == warnings
    assert caplog.messages == [f"encryption key file is readable by every user: {cwd}/app.key "
                               f"(run chmod 600 {cwd}/app.key)"]
    assert KEY_A.hex() not in caplog.text


# --- command-line configuration -----------------------------------------------------------------

def test_config_from_args_default_replica(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config_from_args("app.db", [])
    db = str(tmp_path / "app.db")
    assert cfg == Config((DbConfig(db, (ReplicaConfig("file", "file", db + ".backups", db_id=db),), id=db),),
                         LoggingConfig(), None)
    db = cfg.dbs[0]
    assert (db.snapshot_interval, db.checkpoint_pages, db.spool_max_size) == (14400.0, 1000, 1 << 30)


def test_config_from_args_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = config_from_args("/data/app.db", ["s3://b/app?region=r", "bk", "s3://c/app", "file:///x"]).dbs[0]
    assert db.path == "/data/app.db"
    assert [(r.type, r.name, r.path) for r in db.replicas] == [
        ("s3", "s3", "app"), ("file", "file", str(tmp_path / "bk")), ("s3", "s3-2", "app"), ("file", "file-2", "/x")]


def test_config_from_args_errors():
    with pytest.raises(ConfigError) as e:
        config_from_args("app.db", ["ftp://x"])
    assert str(e.value) == "unsupported replica URL scheme: 'ftp' in 'ftp://x'"
    with pytest.raises(ConfigError) as e:
        config_from_args("app.db", ["/b", "file:///b"])
    assert str(e.value) == "replica given twice: '/b'"
    with pytest.raises(ConfigError) as e:
        config_from_args("", [])
    assert str(e.value) == "empty path"


# --- finding the config file --------------------------------------------------------------------

@pytest.fixture
def lookup(tmp_path, monkeypatch):
    """A cwd and a stand-in for /etc/litesync.yml, both empty, and no $LITESYNC_CONFIG."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("LITESYNC_CONFIG", raising=False)
    monkeypatch.setattr(config.reader, "SYSTEM_CONFIG", str(tmp_path / "etc-litesync.yml"))
    return tmp_path


def test_find_config_order(lookup, monkeypatch):
    assert find_config(None) is None
    system = lookup / "etc-litesync.yml"
    system.write_text(MINIMAL)
    assert find_config(None) == str(system)
    local = lookup / "work" / "litesync.yml"
    local.write_text(MINIMAL)
    assert find_config(None) == str(local)
    from_env = lookup / "env.yml"
    from_env.write_text(MINIMAL)
    monkeypatch.setenv("LITESYNC_CONFIG", str(from_env))
    assert find_config(None) == str(from_env)
    explicit = lookup / "explicit.yml"
    explicit.write_text(MINIMAL)
    assert find_config(str(explicit)) == str(explicit)


def test_find_config_empty_env_is_unset(lookup, monkeypatch):
    monkeypatch.setenv("LITESYNC_CONFIG", "")
    assert find_config(None) is None


def test_find_config_named_files_must_exist(lookup, monkeypatch):
    (lookup / "work" / "litesync.yml").write_text(MINIMAL)
    with pytest.raises(ConfigError) as e:
        find_config("missing.yml")
    assert str(e.value) == "missing.yml: config file not found"
    monkeypatch.setenv("LITESYNC_CONFIG", "/no/such.yml")
    with pytest.raises(ConfigError) as e:
        find_config(None)
    assert str(e.value) == "/no/such.yml: config file not found (from $LITESYNC_CONFIG)"


# --- the example file ---------------------------------------------------------------------------

KEY_1, KEY_2 = "1f0123456789abcdef0123456789abcdef0123456789abcdeffedcba98765432", "2efedcba9876543210fedcba9876543210fedcba98765432100123456789abcd"  # test keys (a repeated byte is refused as weak)
EXAMPLE_ENV = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s3-secret",
               "B2_APPLICATION_KEY_ID": "kid", "B2_APPLICATION_KEY": "b2-secret",
               "LITESYNC_ENCRYPTION_KEY": KEY_1}


def test_example_loads(tmp_path):
    key_file = tmp_path / "litesync.key"
    key_file.write_text(KEY_2 + "\n")
    key_file.chmod(0o600)
    cfg = load_config(EXAMPLE, environ={**EXAMPLE_ENV, "CREDENTIALS_DIRECTORY": str(tmp_path)})
    app, jobs = cfg.dbs
    assert app.path == "/var/lib/app/app.db"
    assert [(r.type, r.name) for r in app.replicas] == [("file", "local"), ("file", "mirror"), ("s3", "offsite"),
                                                        ("b2", "b2")]
    s3 = app.replicas[2]
    assert (s3.secret_access_key, s3.part_size, s3.force_path_style) == ("s3-secret", 8 << 20, True)
    assert (s3.encryption_keys, s3.max_bandwidth) == ((bytes.fromhex(KEY_1),), 5_000_000)
    b2 = app.replicas[3]
    assert (b2.encryption_keys, b2.max_bandwidth) == ((bytes.fromhex(KEY_2),), 512 << 10)
    assert (jobs.path, jobs.snapshot_interval, jobs.spool_max_size) == ("/var/lib/app/jobs.db", 14400.0, 1 << 30)
    assert jobs.replicas[0].region == "us-east-1"


def test_example_needs_its_variables():
    with pytest.raises(ConfigError) as e:
        load_config(EXAMPLE, environ={})
    assert re.search(r"litesync\.yml\.example:\d+: dbs\[0\]\.replicas\[2\]\.access-key-id: "
                     r"environment variable not set: 'AWS_ACCESS_KEY_ID'$", str(e.value))


def test_example_documents_every_key():
    with open(EXAMPLE) as f:
        text = f.read()
    keys = set(config._TOP_KEYS) | set(config._DB_KEYS) | set(config._LOGGING_KEYS) | config._all_replica_keys()
    # Litestream's spellings are documented in the README's "Coming from Litestream" table.
    from_litestream = {"replica", "stderr"}
    undocumented = {k for k in keys - from_litestream
                    if not re.search(rf"^\s*(- )?{re.escape(k)}:", text, re.MULTILINE)}
    assert not undocumented
    readme = open(os.path.join(os.path.dirname(EXAMPLE), "README.md")).read()
    section = readme.split("## Coming from Litestream")[1].split("\n## ")[0]
    assert all(f"{k}:" in section for k in from_litestream)
    for text_needed in ("LITESYNC_CONFIG", "/etc/litesync.yml", "${VAR:-default}", "KiB", "KB", "ms"):
        assert text_needed in text


def test_max_open_databases(cwd):
    assert load("max-open-databases: 50\n" + MINIMAL).max_open == 50
    assert load(MINIMAL).max_open is None
    assert error("max-open-databases: 0\n" + MINIMAL) == (
        "litesync.yml:1: max-open-databases: must be at least 1: '0'")
    assert "max-open-databases: expected an integer: 'many'" in error("max-open-databases: many\n" + MINIMAL)


# --- the backend registry ------------------------------------------------------------------------


def test_every_registered_backend_has_a_conformance_fixture():
    from conftest import BACKEND_FIXTURES
    from litesync.replica.registry import BACKENDS

    assert set(BACKEND_FIXTURES) == set(BACKENDS) == set(config.REPLICA_TYPES)


def test_what_a_backend_declares_is_what_the_config_takes():
    from litesync.replica.registry import BACKENDS

    for name, backend in BACKENDS.items():
        secrets = {f: f"secret-{f}" for f in backend.secret_fields}
        rc = ReplicaConfig(name, name, "p", **secrets)  # declared secret fields exist on the config
        assert not any(v in repr(rc) for v in secrets.values())
        assert config.DEFAULT_SYNC_INTERVAL[name] == backend.default_sync_interval
        for key in backend.keys:  # each declared key is read for its type (else "unknown key")
            text = f"dbs:\n  - path: a.db\n    replicas:\n      - type: {name}\n        {key}: [1]\n"
            with pytest.raises(ConfigError) as e:
                config.reader._Reader("f.yml", {}, "/").config(yaml.compose(text))
            assert "unknown key" not in str(e.value) and "does not apply" not in str(e.value), (name, key, e.value)


def test_every_key_a_backend_declares_is_read_into_the_config():
    from litesync.replica.registry import BACKENDS

    read = set(config.reader._REPLICA_VALUES) | {"path", "bucket"}  # path and bucket: per type
    for name, backend in BACKENDS.items():
        assert not set(backend.keys) - read - set(backend.options), name  # else silently dropped


def _absolute_dir(text):
    if not os.path.isabs(text):
        raise ConfigError(f"must be an absolute path: {text!r}")
    return text


def test_a_backend_with_keys_of_its_own_needs_no_change_to_the_config(cwd, monkeypatch, caplog):
    # The promise of replica/registry.py: a backend with a new key (here "root", and the secret
    # "token") is its factory and its registry entry; litesync.config is not touched for it.
    from litesync.replica import FileReplicaClient, open_replica
    from litesync.replica.registry import BACKENDS, Backend

    built = []

    def factory(cfg):
        built.append(cfg)
        return FileReplicaClient(os.path.join(cfg.option("root"), cfg.path), name=cfg.name)

    monkeypatch.setitem(BACKENDS, "vault", Backend(
        "vault", keys=("path", "root", "token"), url_params=("root",), credentials=(), secret_keys=("token",),
        secret_fields=(), default_sync_interval=0.0, factory=factory,
        options={"root": _absolute_dir, "token": str}))
    text = """\
        dbs:
          - path: app.db
            replicas:
              - type: vault
                root: {root}
                token: s3cr3t-t0ken
                path: app
        """
    rc = load(text.format(root=cwd / "vault")).dbs[0].replicas[0]
    assert (rc.type, rc.path, rc.option("root"), rc.option("token")) == ("vault", "app", str(cwd / "vault"),
                                                                          "s3cr3t-t0ken")
    assert rc.option("region") is None and rc.destination == "vault://app"
    assert "s3cr3t-t0ken" not in repr(rc) and "('token', '***')" in repr(rc)
    client = open_replica(rc)
    assert built == [rc] and client.root == str(cwd / "vault" / "app")
    client.close()
    assert "dbs[0].replicas[0].token at line 6" in caplog.text  # a secret written into the file
    assert error(text.format(root="vault")) == (
        "litesync.yml:5: dbs[0].replicas[0].root: must be an absolute path: 'vault'")
    assert error(text.format(root="/v").replace("root:", "rot:")) == (
        "litesync.yml:5: dbs[0].replicas[0]: unknown key 'rot' (did you mean 'root'?)")
    assert error(text.format(root="/v").replace("vault", "s3").replace("path: app\n", "bucket: b\n")) == (
        "litesync.yml:5: dbs[0].replicas[0]: key 'root' does not apply to type 's3'")
    assert parse_replica_url("vault://b/app?root=/v").option("root") == "/v"  # a URL parameter of its own
    with pytest.raises(ConfigError, match=r"^must be an absolute path: 'v'$"):
        parse_replica_url("vault://b/app?root=v")


def test_restore_timeout_is_a_duration_or_none_and_unset_by_default(cwd):
    assert load(MINIMAL).restore_timeout is None
    assert load("restore-timeout: 30m\n" + MINIMAL).restore_timeout == 1800.0
    assert load("restore-timeout: none\n" + MINIMAL).restore_timeout == float("inf")
    assert error("restore-timeout: 0s\n" + MINIMAL) == (
        "litesync.yml:1: restore-timeout: must be greater than zero (or none): '0s'")
    assert error("restore-timeout: soon\n" + MINIMAL) == (
        "litesync.yml:1: restore-timeout: invalid duration: 'soon' (units: ms, s, m, h, d)")
