"""Slow and idle clients against a real `tripwire serve`: real sockets that send a byte at a time,
or nothing, get a 408 and are closed; one address cannot hold more than its share of connections.
"""

from __future__ import annotations

import contextlib
import socket
import time
import weakref
from collections.abc import Iterator

import pytest

from tests.support.poll import wait_until
from tests.support.server import Tripwire, run_tripwire

CONFIG = {
    "write_keys": ["k"],
    "server": {"header_timeout": "1s", "body_timeout": "1s", "max_connections_per_client": 30},
}


@pytest.fixture(scope="module")
def tripwire() -> Iterator[Tripwire]:
    with run_tripwire(CONFIG) as server:
        yield server


def connect(server: Tripwire) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setblocking(False)
    return sock


def answer_when_closed(sock: socket.socket, trickle: bytes = b"", within: float = 10.0) -> bytes:
    """Keep sending `trickle` a byte now and then until the server closes; what it answered."""
    received = b""
    deadline = time.monotonic() + within
    position = 0
    while time.monotonic() < deadline:
        if position < len(trickle):
            try:
                sock.send(trickle[position : position + 1])
                position += 1
            except OSError:
                break
        try:
            chunk = sock.recv(4096)
        except BlockingIOError:
            time.sleep(0.3)
            continue
        except OSError:
            break
        if not chunk:
            break
        received += chunk
    else:
        raise AssertionError("the server kept the connection open")
    sock.close()
    return received


def good_request(server: Tripwire) -> int:
    batch = {"writeKey": "k", "batch": [{"type": "page", "anonymousId": "slow-test"}]}
    return server.post("/v1/batch", batch).status_code


def test_headers_sent_a_byte_at_a_time_get_a_408(tripwire: Tripwire) -> None:
    sock = connect(tripwire)
    headers = b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" * 5
    answer = answer_when_closed(sock, headers)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert good_request(tripwire) == 200


def test_a_body_that_never_comes_gets_a_408(tripwire: Tripwire) -> None:
    sock = connect(tripwire)
    sock.send(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"writeKey\"")
    answer = answer_when_closed(sock, b":" * 50)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert good_request(tripwire) == 200


def test_a_connection_that_sends_nothing_is_closed(tripwire: Tripwire) -> None:
    sock = connect(tripwire)
    answer_when_closed(sock)
    assert good_request(tripwire) == 200


def test_one_address_cannot_hold_every_connection(tripwire: Tripwire) -> None:
    held = [connect(tripwire) for _ in range(40)]
    try:
        # Beyond the cap (30) connections are refused at once with a 429; the others wait.
        def refused() -> list[socket.socket]:
            found = [s for s in held if _answered(s).startswith(b"HTTP/1.1 429")]
            return found if len(found) >= 10 else []

        wait_until(refused, message="the 10 connections past the cap refused")
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: good_request(tripwire) == 200, message="a normal request served")


# What each socket received so far, forgotten with the socket (an id() would be reused by a
# later socket and hand it an earlier one's bytes).
_seen: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def _answered(sock: socket.socket) -> bytes:
    """What the server sent on a non-blocking socket so far (remembered per socket)."""
    try:
        chunk = sock.recv(4096)
        _seen[sock] = _seen.get(sock, b"") + chunk
    except (BlockingIOError, OSError):
        pass
    return _seen.get(sock, b"")


def test_a_body_sent_after_the_answer_does_not_hold_the_connection(tripwire: Tripwire) -> None:
    # A refused content type is answered before the body comes; the body arriving later must
    # not leave the connection outside every deadline.
    sock = connect(tripwire)
    sock.send(
        b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/xml\r\n"
        b"Content-Length: 10\r\n\r\n"
    )
    wait_until(lambda: b"\r\n\r\n" in _answered(sock), message="the 415 answer")
    answer = _answered(sock)
    assert answer.startswith(b"HTTP/1.1 415") and b"connection: close" in answer.lower(), answer
    with contextlib.suppress(OSError):  # the server may have closed already
        sock.send(b"0123456789")
    answer_when_closed(sock, within=4.0)  # header and body deadlines are 1 s each
    assert good_request(tripwire) == 200
