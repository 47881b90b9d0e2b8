"""The fault proxy itself, in front of the real (moto) S3 server: each mode does what it says."""

from __future__ import annotations

import http.client
import os
import socket
import time

import boto3
import pytest

from faultproxy import FaultProxy

BODY = os.urandom(1 << 20)


@pytest.fixture
def proxied(s3_bucket):
    """(proxy, path of a signed GET of a stored 1 MiB object)."""
    endpoint, bucket = s3_bucket
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").put_object(Bucket=bucket, Key="obj", Body=BODY)
    host, port = endpoint.removeprefix("http://").split(":")
    with FaultProxy((host, int(port)), seed=1) as proxy:
        url = boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1").generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": "obj"})
        yield proxy, url.removeprefix(proxy.url)


def get(proxy: FaultProxy, path: str, timeout: float = 5) -> bytes:
    """GET the object through the proxy on a fresh connection; return what arrived before the end or a reset."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        got = bytearray()
        try:
            while chunk := resp.read1(1 << 16):
                got += chunk
        except (ConnectionResetError, http.client.IncompleteRead):
            pass
        return bytes(got)
    finally:
        conn.close()


def test_pass_forwards_requests_and_responses_unchanged(proxied):
    proxy, path = proxied
    assert get(proxy, path) == BODY


def test_reset_response_cuts_the_body_after_the_bytes_asked(proxied):
    proxy, path = proxied
    proxy.set("reset_response", after=1000)
    assert get(proxy, path) == BODY[:1000]
    assert proxy.counts["cut"] == 1
    proxy.set("reset_response", p=1.0)
    got = get(proxy, path)
    assert len(got) < len(BODY) and BODY.startswith(got)
    proxy.set("pass")
    assert get(proxy, path) == BODY


def test_reset_request_resets_the_connection_before_any_answer(proxied):
    proxy, path = proxied
    proxy.set("reset_request", after=1)
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
        get(proxy, path)


def test_refuse_closes_the_port_and_pass_opens_it_again(proxied):
    proxy, path = proxied
    proxy.set("refuse")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    proxy.set("pass")
    assert get(proxy, path) == BODY


def test_blackhole_accepts_and_never_answers(proxied):
    proxy, path = proxied
    proxy.set("blackhole")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        get(proxy, path, timeout=0.5)
    assert time.monotonic() - t0 >= 0.5
    proxy.set("pass")
    assert get(proxy, path) == BODY


def test_latency_and_bandwidth_slow_responses_down(proxied):
    proxy, path = proxied
    proxy.set("latency", seconds=0.3)
    t0 = time.monotonic()
    assert get(proxy, path) == BODY
    assert time.monotonic() - t0 >= 0.3
    proxy.set("bandwidth", rate=2 << 20)  # 1 MiB at 2 MiB/s
    t0 = time.monotonic()
    assert get(proxy, path) == BODY
    assert time.monotonic() - t0 >= 0.4
    proxy.set("latency", seconds=0.3, rate=2 << 20)  # both: a slow store
    t0 = time.monotonic()
    assert get(proxy, path) == BODY
    assert time.monotonic() - t0 >= 0.3 + 0.4
