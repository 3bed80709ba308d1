"""The sender's connections: kept per endpoint, reused while open, replaced once closed."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from collector.delivery.sender import Sender
from collector.delivery.signing import Signer
from collector.delivery.ssrf import Guard, Policy
from collector.webhook import WebhookRequest

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


@dataclass
class Receiver:
    """A bare HTTP/1.1 receiver on loopback that counts the connections made to it."""

    url: str
    connections: int = 0
    requests: int = 0
    close_after_answer: bool = False
    answer: bytes = ANSWER
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                self.requests += 1
                writer.write(self.answer)
                await writer.drain()
                if self.close_after_answer:  # no `Connection: close`: the client finds out
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


@asynccontextmanager
async def receiver(
    tls: ssl.SSLContext | None = None, *, close_after_answer: bool = False, answer: bytes = ANSWER
) -> AsyncIterator[Receiver]:
    """A started receiver (over TLS with a context); it stops with the block."""
    state = Receiver(url="", close_after_answer=close_after_answer, answer=answer)
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    state.url = f"https://localhost:{port}/hook" if tls else f"http://127.0.0.1:{port}/hook"
    try:
        yield state
    finally:
        for writer in state.writers:
            writer.close()
        server.close()


def sender(connections_per_endpoint: int = 8, trust: ssl.SSLContext | None = None) -> Sender:
    return Sender(
        signer=Signer([]),
        guard=Guard(Policy(allow_all=True)),
        timeout=5.0,
        connections_per_endpoint=connections_per_endpoint,
        ssl_context=trust,
    )


def webhook(url: str) -> WebhookRequest:
    return WebhookRequest(
        webhook_id=f"msg_{uuid.uuid4().hex}",
        campaign_id="c",
        variant_id=None,
        user_key="user:u-1",
        event_id=str(uuid.uuid4()),
        method="POST",
        url=url,
        headers={},
        body={"n": 1},
        created_at=time.time(),
    )


async def outcomes(send: Sender, url: str, count: int) -> list[str]:
    results = await asyncio.gather(*(send.send(webhook(url)) for _ in range(count)))
    return [result.outcome for result in results]


async def test_webhooks_one_after_another_share_one_connection() -> None:
    async with receiver() as target:
        send = sender()
        for _ in range(5):
            assert (await send.send(webhook(target.url))).outcome == "delivered"
        await send.aclose()
    assert (target.requests, target.connections) == (5, 1)


async def test_a_connection_the_receiver_closed_while_idle_is_replaced_not_retried() -> None:
    async with receiver(close_after_answer=True) as target:
        send = sender()
        for _ in range(3):
            assert (await send.send(webhook(target.url))).outcome == "delivered"
            await asyncio.sleep(0.05)  # the receiver's close reaches the idle connection
        await send.aclose()
    assert (target.requests, target.connections) == (3, 3)


async def test_concurrent_webhooks_open_connections_and_keep_at_most_the_limit() -> None:
    async with receiver() as target:
        send = sender(connections_per_endpoint=2)
        assert await outcomes(send, target.url, 4) == ["delivered"] * 4
        assert target.connections == 4
        assert await outcomes(send, target.url, 4) == ["delivered"] * 4
        await send.aclose()
    assert target.connections == 6  # 2 kept from the first round, 2 more opened


def closed(target: Receiver) -> bool:
    """Whether the receiver has seen every connection end (and closed its side)."""
    return all(writer.transport.is_closing() for writer in target.writers)


async def test_closing_the_sender_closes_its_idle_connections() -> None:
    async with receiver() as target:
        send = sender()
        assert await outcomes(send, target.url, 3) == ["delivered"] * 3
        await send.aclose()
        for _ in range(100):  # the receiver reads the end of each stream
            if closed(target):
                break
            await asyncio.sleep(0.01)
        assert closed(target)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
async def test_https_checks_the_certificate_for_the_host_name_and_keeps_the_connection(
    tmp_path: Path,
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    names: list[str | None] = []

    def note_name(_: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
        names.append(name)

    tls.sni_callback = note_name
    async with receiver(tls) as target:
        send = sender(trust=ssl.create_default_context(cafile=cert))
        assert await outcomes(send, target.url, 1) == ["delivered"]
        assert await outcomes(send, target.url, 1) == ["delivered"]
        by_address = await send.send(webhook(target.url.replace("localhost", "127.0.0.1")))
        untrusting = sender()  # the system's certificate authorities only
        unknown = await untrusting.send(webhook(target.url))
        await send.aclose()
        await untrusting.aclose()
    assert (target.requests, target.connections) == (2, 1)
    assert names[0] == "localhost"  # sent as SNI
    assert by_address.outcome == "retry"
    assert "CERTIFICATE_VERIFY_FAILED" in (by_address.error or "")  # issued for localhost only
    assert unknown.outcome == "retry"
    assert "CERTIFICATE_VERIFY_FAILED" in (unknown.error or "")


async def twice(answer: bytes, *, close_after_answer: bool = False) -> tuple[list[str], Receiver]:
    """Send two webhooks one after the other to a receiver answering `answer`: the logged
    responses (outcome and kept body), and the receiver."""
    async with receiver(answer=answer, close_after_answer=close_after_answer) as target:
        send = sender()
        results = [await send.send(webhook(target.url)) for _ in range(2)]
        await send.aclose()
    return [f"{r.outcome} {r.status_code} {r.response}" for r in results], target


async def test_a_chunked_answer_is_read_whole_and_its_connection_kept() -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    )
    results, target = await twice(answer)
    assert results == ["delivered 200 abcdefg"] * 2
    assert (target.requests, target.connections) == (2, 1)


async def test_an_answer_saying_connection_close_is_not_reused() -> None:
    answer = b"HTTP/1.1 202 Accepted\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
    results, target = await twice(answer)
    assert results == ["delivered 202 ok"] * 2
    assert (target.requests, target.connections) == (2, 2)


async def test_an_answer_ending_with_its_connection_is_read_to_the_end() -> None:
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nthanks, got it"
    results, target = await twice(answer, close_after_answer=True)
    assert results == ["delivered 200 thanks, got it"] * 2
    assert (target.requests, target.connections) == (2, 2)


async def test_an_interim_100_continue_is_skipped_for_the_final_answer() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\n" + ANSWER
    results, target = await twice(answer)
    assert results == ["delivered 200 ok"] * 2
    assert (target.requests, target.connections) == (2, 1)


async def test_bytes_after_the_answer_leave_the_connection_unused_again() -> None:
    results, target = await twice(ANSWER + b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    assert results == ["delivered 200 ok"] * 2
    assert (target.requests, target.connections) == (2, 2)


async def test_an_answer_that_is_not_http_is_retried_on_a_new_connection() -> None:
    results, target = await twice(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    assert [result.split()[0] for result in results] == ["retry"] * 2
    assert (target.requests, target.connections) == (2, 2)


async def test_a_header_value_with_a_control_character_is_refused_before_sending() -> None:
    async with receiver() as target:
        send = sender()
        request = webhook(target.url)
        request = msgspec.structs.replace(request, headers={"x-note": "a\x07b"})
        result = await send.send(request)
        await send.aclose()
    assert (result.outcome, target.connections) == ("failed", 0)
    assert "control character" in (result.error or "")
