"""The sender's connections: kept per endpoint, reused while open, replaced once closed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

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
                writer.write(ANSWER)
                await writer.drain()
                if self.close_after_answer:  # no `Connection: close`: the client finds out
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


@asynccontextmanager
async def receiver(**options: bool) -> AsyncIterator[Receiver]:
    """A started receiver; it stops with the block."""
    state = Receiver(url="", **options)
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    try:
        yield state
    finally:
        for writer in state.writers:
            writer.close()
        server.close()


def sender(connections_per_endpoint: int = 8) -> Sender:
    return Sender(
        signer=Signer([]),
        guard=Guard(Policy(allow_all=True)),
        timeout=5.0,
        connections_per_endpoint=connections_per_endpoint,
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
