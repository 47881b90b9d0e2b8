"""A Litestream user's configuration and flags: read as litesync's, accepted with a warning,
or refused with one line saying what to write instead. The configurations are written here
from the key lists of Litestream's documentation (0.3 and 0.5)."""

from __future__ import annotations

import logging
import sys

import pytest

from dbcheck import content_digest
from litesync.config import load_config
from litesync.errors import ConfigError
from proc import clean_env, litesync, run_writer


def write(tmp_path, text: str) -> str:
    path = tmp_path / "litestream.yml"
    path.write_text(text)
    return str(path)


def test_a_litestream_05_config_reads_as_litesync(tmp_path, caplog):
    cfg = write(tmp_path, """\
logging:
  level: debug
  type: json
  stderr: false
shutdown-sync-timeout: 5s
exec: ./app serve
snapshot:
  interval: 1h
  retention: 48h
validation:
  interval: 12h
dbs:
  - path: app.db
    monitor-interval: 1s
    min-checkpoint-page-count: 500
    replica:
      url: s3://my-bucket/app?endpoint=localhost:9000&forcePathStyle=true
""")
    caplog.set_level(logging.WARNING)
    c = load_config(cfg, environ={})
    assert (c.logging.level, c.logging.format, c.logging.stream) == ("debug", "json", "stdout")
    assert (c.shutdown_timeout, c.exec) == (5.0, "./app serve")
    db = c.dbs[0]
    assert (db.snapshot_interval, db.retention, db.validation_interval) == (3600.0, 172800.0, 43200.0)
    assert db.checkpoint_pages == 500
    (rc,) = db.replicas
    assert (rc.type, rc.bucket, rc.path, rc.endpoint, rc.force_path_style) == \
        ("s3", "my-bucket", "app", "http://localhost:9000", True)
    assert [r.getMessage() for r in caplog.records] == [
        f"{cfg}:14: dbs[0].monitor-interval: Litestream's 'monitor-interval' has no effect: litesync is woken "
        "by each commit and checkpoints on its own"]


def test_a_litestream_03_config_with_per_replica_settings(tmp_path, caplog):
    cfg = write(tmp_path, """\
dbs:
  - path: /data/app.db
    replicas:
      - type: s3
        bucket: my-bucket
        path: app
        endpoint: s3.us-west-000.backblazeb2.com
        region: us-west-000
        sync-interval: 1s
        retention: 72h
        snapshot-interval: 6h
      - type: file
        path: /backups/app
        retention: 72h
        snapshot-interval: 6h
""")
    caplog.set_level(logging.WARNING)
    db = load_config(cfg, environ={}).dbs[0]
    assert (db.retention, db.snapshot_interval) == (259200.0, 21600.0)
    s3 = db.replicas[0]
    assert (s3.endpoint, s3.region, s3.sync_interval) == ("https://s3.us-west-000.backblazeb2.com", "us-west-000", 1.0)
    assert [r.getMessage() for r in caplog.records] == [
        f"{cfg}:10: dbs[0].replicas[0].retention: Litestream's per-replica retention: litesync applies it to "
        "the database",
        f"{cfg}:11: dbs[0].replicas[0].snapshot-interval: Litestream's per-replica snapshot-interval: litesync "
        "applies it to the database"]


@pytest.mark.parametrize("body,message", [
    ("    replicas:\n      - {url: /b, retention: 24h}\n      - {url: /c, retention: 72h}\n",
     "dbs[0].replicas[0].retention: litesync keeps one retention per database, not one per replica: write it "
     "on the database (dbs[0].retention) alone"),
    ("    meta-path: /var/lib/litestream\n    replicas: [{url: /b}]\n",
     "dbs[0].meta-path: Litestream's 'meta-path' is not supported: litesync keeps its state in .NAME-litesync/ "
     "next to the database; remove the key"),
    ("    replicas:\n      - {type: s3, bucket: b, skip-verify: true}\n",
     "dbs[0].replicas[0].skip-verify: Litestream's 'skip-verify' is not supported: litesync always verifies TLS "
     "certificates: point $AWS_CA_BUNDLE at your CA's certificate instead"),
    ("    replicas:\n      - url: s3://b/p?skipVerify=true\n",
     "dbs[0].replicas[0].url: Litestream's query parameter 'skipVerify' is not supported: litesync always "
     "verifies TLS certificates: point $AWS_CA_BUNDLE at your CA's certificate instead"),
    ("    replicas:\n      - {type: s3, bucket: $BUCKET}\n",
     "dbs[0].replicas[0].bucket: write ${BUCKET} for the variable (litesync expands only that form; $$ is a "
     "literal $): $BUCKET"),
    ("    replicas:\n      - type: s3\n        bucket: b\n        age:\n          recipients: [age1x]\n",
     "dbs[0].replicas[0].age: Litestream's 'age' is not supported: litesync encrypts with its own keys: "
     "encryption-key (litesync cannot read Litestream's age-encrypted backups)"),
    ("    replica: {url: /b}\n    replicas: [{url: /c}]\n", "dbs[0]: give either replica: or replicas:, not both"),
])
def test_what_litesync_refuses_is_one_line_naming_the_key(tmp_path, body, message):
    cfg = write(tmp_path, "dbs:\n  - path: app.db\n" + body)
    with pytest.raises(ConfigError) as e:
        load_config(cfg, environ={})
    assert str(e.value).split(": ", 1)[1] == message  # after "FILE:LINE: "


@pytest.mark.parametrize("top,message", [
    ("levels:\n  - interval: 5m\n",
     "levels: Litestream's 'levels' is not supported: write compaction: 30s,5m,1h (litesync's windows for "
     "merging segments)"),
    ("access-key-id: AKID\n",
     "access-key-id: Litestream's 'access-key-id' is not supported: litesync has no global replica settings: "
     "give it on each replica"),
    ("snapshot:\n  interval: 1h\nsnapshot-interval: 2h\n", "'snapshot-interval' is given twice (as 'snapshot' too): keep one"),
])
def test_top_level_keys_litesync_refuses(tmp_path, top, message):
    cfg = write(tmp_path, top + "dbs:\n  - path: app.db\n    replicas: [{url: /b}]\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg, environ={})
    assert str(e.value).split(": ", 1)[1] == message


def test_litestream_credentials_from_the_environment(tmp_path):
    cfg = write(tmp_path, "dbs:\n  - path: app.db\n    replicas:\n      - url: s3://b/app\n      - url: /d\n")
    env = {"LITESTREAM_ACCESS_KEY_ID": "LKID", "LITESTREAM_SECRET_ACCESS_KEY": "lsecret"}
    s3 = load_config(cfg, environ=env).dbs[0].replicas[0]
    assert (s3.access_key_id, s3.secret_access_key) == ("LKID", "lsecret")
    s3 = load_config(cfg, environ={**env, "AWS_ACCESS_KEY_ID": "AKID"}).dbs[0].replicas[0]
    assert s3.access_key_id is None  # the AWS variables win, read by the S3 client itself


def test_replicate_and_restore_with_a_litestream_config_and_go_style_flags(tmp_path):
    db = str(tmp_path / "app.db")
    run_writer(db, "--count", "5")
    app = f"{sys.executable} -c 'import time; time.sleep(0.5)'"
    cfg = write(tmp_path, f"exec: {app}\nshutdown-sync-timeout: 10s\nlogging:\n  type: text\n"
                          f"dbs:\n  - path: app.db\n    replica:\n      url: file://{tmp_path}/rep\n")
    r = litesync("replicate", "-config", cfg, env=clean_env())
    assert r.returncode == 0, r.stderr
    assert "litesync: warning: -config is Litestream's spelling; litesync's is --config" in r.stderr
    assert "application exited with code 0; final sync" in r.stderr
    out = str(tmp_path / "out.db")
    r = litesync("restore", "-config", cfg, "-o", out, "-if-replica-exists", "-parallelism", "8", db)
    assert r.returncode == 0, r.stderr
    assert content_digest(out) == content_digest(db)
    assert "litesync: warning: -parallelism has no effect: litesync downloads four objects at once" in r.stderr
    r = litesync("restore", "-config", cfg, "-o", str(tmp_path / "x.db"), "-txid", "0000000000000003", db)
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == ("litesync restore: error: Litestream's -txid is not supported: litesync "
                                         "restores to a time: --timestamp TIME (`litesync segments` lists commit "
                                         "times)")
    r = litesync("databases", "--config", cfg)
    assert r.returncode == 0 and f"{db}  file ({tmp_path}/rep)" in r.stdout, r.stdout + r.stderr
