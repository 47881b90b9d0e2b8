"""A loopback TCP proxy that injects network faults between a client and a real server.

Used by the fault tests and ``scripts/faults.py`` in front of moto's S3 server. The mode
is switched at run time with ``FaultProxy.set``:

- ``pass``: bytes flow both ways untouched.
- ``blackhole``: connections are accepted and what they send is read, but nothing is ever
  answered (connections already open go silent too).
- ``refuse``: the listening socket is closed, so new connections get ECONNREFUSED; the
  same port is listened on again when the mode changes.
- ``reset_request``: a connection is reset (RST) after the client has sent ``after`` bytes.
- ``reset_response``: a response is cut and its connection reset after ``after`` bytes of
  its body, or, with ``p``, each response is cut with probability ``p`` at a random byte
  of its body (a response without a body, such as an upload's, is then lost whole: the
  request was carried out, the client never hears so).
- ``latency``: each response waits ``seconds`` before its first byte is forwarded; with
  ``rate`` too, bytes are also held to that rate (a slow store: far and narrow).
- ``bandwidth``: bytes in both directions together are held to ``rate`` bytes per second.

HTTP/1.1 framing is followed only as far as cutting a response's body needs: request and
response headers, Content-Length, and the responses without a body (HEAD, 1xx, 204, 304).
"""

from __future__ import annotations

import random
import selectors
import socket
import struct
import threading
import time
from collections import deque

MODES = ("pass", "blackhole", "refuse", "reset_request", "reset_response", "latency", "bandwidth")
_CHUNK = 64 << 10


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST rather than a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _header_end(buf: bytearray) -> int:
    i = buf.find(b"\r\n\r\n")
    return -1 if i < 0 else i + 4


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
        if name.strip().lower() == b"transfer-encoding":
            return None
    return 0


class _Framer:
    """Splits one direction of an HTTP/1.1 connection into messages: header, then body."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.body_left: int | None = 0  # None: unknown framing (chunked), stop following
        self.in_body = False

    def feed(self, data: bytes, body_length) -> list[tuple[str, bytes, object]]:
        """Cut ``data`` into ("head", bytes, (head, body length)), ("body", bytes, None) and
        other pieces; ``body_length(head)`` says how long the body after ``head`` is."""
        out = []
        pos = 0
        while pos < len(data) and self.body_left is not None:
            if self.in_body:
                n = min(self.body_left, len(data) - pos)
                out.append(("body", data[pos:pos + n], None))
                pos += n
                self.body_left -= n
                if self.body_left == 0:
                    self.in_body = False
                continue
            before = len(self.head)
            self.head += data[pos:]
            end = _header_end(self.head)
            if end < 0:
                out.append(("partial", data[pos:], None))
                return out
            head = bytes(self.head[:end])
            self.head.clear()
            self.body_left = body_length(head)
            out.append(("head", data[pos:pos + end - before], (head, self.body_left)))
            pos += end - before
            self.in_body = bool(self.body_left)
        if pos < len(data):
            out.append(("raw", data[pos:], None))
        return out


class _Bucket:
    """A token bucket shared by every connection (bandwidth mode)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens = 0.0
        self.last = time.monotonic()

    def take(self, n: int, rate: float) -> None:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(min(rate / 4, _CHUNK), self.tokens + (now - self.last) * rate) - n
            self.last = now
            wait = -self.tokens / rate if self.tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class FaultProxy:
    """Listens on 127.0.0.1 (a free port unless given) and forwards to ``target`` (host, port)."""

    def __init__(self, target: tuple[str, int], port: int = 0, *, seed: int | None = None) -> None:
        self.target = target
        self.mode = "pass"
        self.params: dict = {}
        self.rng = random.Random(seed)
        self.counts = {"connections": 0, "responses": 0, "cut": 0, "reset": 0}
        self._lock = threading.Lock()
        self._bucket = _Bucket()
        self._conns: set[socket.socket] = set()
        self._closed = False
        self._listener: socket.socket | None = None
        self._listen(port)
        self.port = self._listener.getsockname()[1]  # type: ignore[union-attr]
        self._thread = threading.Thread(target=self._accept_loop, name="faultproxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self, port: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        s.settimeout(0.1)
        self._listener = s

    def _stop_listening(self) -> None:
        # shutdown first: a close alone waits for the accept thread's poll to return, and
        # connections made meanwhile would still be accepted.
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        except OSError:
            pass
        self._listener.close()  # type: ignore[union-attr]
        self._listener = None

    def set(self, mode: str, **params) -> None:
        """Switch to ``mode`` (see the module doc) with its parameters."""
        if mode not in MODES:
            raise ValueError(f"unknown fault mode: {mode!r} (one of {', '.join(MODES)})")
        with self._lock:
            self.mode, self.params = mode, params
            if "rate" in params:
                self._bucket = _Bucket()
            if mode == "refuse" and self._listener is not None:
                self._stop_listening()
                for c in list(self._conns):  # and what was open goes away too
                    _reset(c)
            elif mode != "refuse" and self._listener is None and not self._closed:
                self._listen(self.port)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._listener is not None:
                self._stop_listening()
            for c in list(self._conns):
                _reset(c)
        self._thread.join(2)

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            listener = self._listener
            if listener is None:
                time.sleep(0.05)
                continue
            try:
                client, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            with self._lock:
                self.counts["connections"] += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(None)
        if self.mode == "blackhole":
            self._swallow(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            _reset(client)
            return
        with self._lock:
            self._conns.update((client, upstream))
        try:
            self._relay(client, upstream)
        finally:
            with self._lock:
                self._conns.discard(client)
                self._conns.discard(upstream)

    def _swallow(self, client: socket.socket) -> None:
        with self._lock:
            self._conns.add(client)
        try:
            while client.recv(_CHUNK):
                pass
        except OSError:
            pass
        with self._lock:
            self._conns.discard(client)
        client.close()

    def _throttle(self, n: int) -> None:
        rate = self.params.get("rate") if self.mode in ("bandwidth", "latency") else None
        if rate:
            self._bucket.take(n, float(rate))

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Carry one connection both ways (one thread, so a reset is never raced by a read)."""
        requests, responses = _Framer(), _Framer()
        methods: deque[bytes] = deque()
        state = {"sent": 0, "cut_after": None, "open": 2}
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, "request")
        sel.register(upstream, selectors.EVENT_READ, "response")
        try:
            while state["open"]:
                for key, _ in sel.select(0.2):
                    src = key.fileobj
                    data = src.recv(_CHUNK)  # type: ignore[union-attr]
                    if not data:
                        sel.unregister(src)
                        state["open"] -= 1
                        (upstream if src is client else client).shutdown(socket.SHUT_WR)
                        continue
                    step = self._request if key.data == "request" else self._response
                    if not step(data, client, upstream, requests if key.data == "request" else responses,
                                methods, state):
                        _reset(client)
                        _reset(upstream)
                        return
        except OSError:
            _reset(client)
            _reset(upstream)
            return
        finally:
            sel.close()
        client.close()
        upstream.close()

    def _request(self, data: bytes, client: socket.socket, upstream: socket.socket, framer: "_Framer",
                 methods: deque, state: dict) -> bool:
        """Forward request bytes; False when the connection is to be reset."""
        if self.mode == "blackhole":
            return True  # never forwarded: the store goes silent
        for kind, _piece, head in framer.feed(data, lambda h: _content_length(h)):
            if kind == "head":
                methods.append(head[0].split(b" ", 1)[0])  # type: ignore[index]
        state["sent"] += len(data)
        if self.mode == "reset_request" and state["sent"] >= int(self.params.get("after", 0)):
            with self._lock:
                self.counts["reset"] += 1
            return False
        self._throttle(len(data))
        upstream.sendall(data)
        return True

    def _response(self, data: bytes, client: socket.socket, upstream: socket.socket, framer: "_Framer",
                  methods: deque, state: dict) -> bool:
        """Forward response bytes; False when the connection is to be reset (after a cut)."""
        while self.mode == "blackhole":
            time.sleep(0.05)  # the answer never comes
        out = bytearray()
        for kind, piece, head in framer.feed(data, lambda h: self._body_length(methods, h)):
            if kind == "head":
                state["cut_after"] = self._choose_cut(head[1])  # type: ignore[index]
                if state["cut_after"] == -1:  # no body to cut: the whole answer is lost
                    with self._lock:
                        self.counts["cut"] += 1
                    return False
                if self.mode == "latency":
                    time.sleep(float(self.params["seconds"]))
            elif kind == "body" and state["cut_after"] is not None:
                if len(piece) > state["cut_after"]:
                    out += piece[:state["cut_after"]]
                    self._throttle(len(out))
                    client.sendall(out)
                    with self._lock:
                        self.counts["cut"] += 1
                    return False
                state["cut_after"] -= len(piece)
            out += piece
        self._throttle(len(out))
        client.sendall(out)
        return True

    def _body_length(self, methods: deque, head: bytes) -> int | None:
        status = int(head.split(b" ", 2)[1])
        if 100 <= status < 200:
            return 0  # an interim response: the real one follows for the same request
        method = methods.popleft() if methods else b"GET"
        if method == b"HEAD" or status in (204, 304):
            return 0
        return _content_length(head)

    def _choose_cut(self, body: int | None) -> int | None:
        """Where to cut the response whose header was just read (body bytes), or None."""
        with self._lock:
            self.counts["responses"] += 1
        if self.mode != "reset_response":
            return None
        if "p" in self.params:
            if self.rng.random() >= float(self.params["p"]):
                return None
            return self.rng.randrange(body) if body else -1
        if not body:
            return None
        after = int(self.params.get("after", 0))
        return after if after < body else None
