"""A webhook receiver's answer costs the collector no more than the delivery log keeps.

The receiver picks the response's `Content-Encoding`: stacked codings around a body that
inflates a thousandfold at each step must not be inflated past the 4 KB prefix the delivery log
keeps, at any step, and a gzip body of several members (valid per RFC 1952) reads whole.
"""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator

import pytest

from collector.delivery.bounded import read_prefix
from collector.delivery.sender import RESPONSE_PREFIX, Sender
from collector.delivery.signing import Signer
from collector.delivery.ssrf import Guard, Policy
from tests.delivery.test_dispatcher import webhook
from tests.support.sink import Reply, Sink


def gzip_of_zeros(size: int) -> bytes:
    """gzip of `size` zero bytes, made in pieces (never `size` bytes at once)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    piece = bytes(1 << 20)
    parts = [packer.compress(piece) for _ in range(size // len(piece))]
    return b"".join(parts) + packer.flush()


@pytest.fixture
def sender() -> Iterator[Sender]:
    yield Sender(signer=Signer([]), guard=Guard(Policy(allow_all=True)), timeout=5.0)


async def test_stacked_codings_never_inflate_past_what_the_log_keeps(sender: Sender) -> None:
    bomb = gzip.compress(gzip_of_zeros(128 << 20))  # two layers: 128 MB of zeros inside
    assert len(bomb) < 4096
    reply = Reply(200, headers={"Content-Encoding": "gzip, gzip, gzip"}, body=bomb)
    with Sink(default=reply) as sink:
        tracemalloc.start()
        try:
            result = await sender.send(webhook(f"{sink.url}/hook"))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            await sender.aclose()
    assert result.outcome == "delivered" and result.status_code == 200
    assert peak < 4 << 20, f"reading the answer took {peak / 2**20:.0f} MB"


async def test_a_nested_encoding_of_real_text_still_fills_the_kept_prefix(sender: Sender) -> None:
    text = "".join(f"line {n}: the receiver says thanks\n" for n in range(2000))
    body = gzip.compress(zlib.compress(text.encode()))
    reply = Reply(400, headers={"Content-Encoding": "deflate, gzip"}, body=body)
    with Sink(default=reply) as sink:
        result = await sender.send(webhook(f"{sink.url}/hook"))
        await sender.aclose()
    assert result.outcome == "failed"
    assert result.response == text[:RESPONSE_PREFIX]


async def test_a_gzip_body_of_several_members_reads_whole(sender: Sender) -> None:
    body = gzip.compress(b'{"ok": ') + gzip.compress(b"true}")
    reply = Reply(200, headers={"Content-Encoding": "gzip"}, body=body)
    with Sink(default=reply) as sink:
        result = await sender.send(webhook(f"{sink.url}/hook"))
        await sender.aclose()
    assert result.response == '{"ok": true}'


async def test_a_gzip_member_starting_in_a_later_packet_is_read() -> None:
    first, second = gzip.compress(b"a" * 3000), gzip.compress(b"b" * 3000)

    async def chunks() -> AsyncIterator[bytes]:
        yield first  # the first member ends exactly where a read ends
        yield second

    prefix = await read_prefix(chunks(), [b"gzip"], limit=RESPONSE_PREFIX, read_limit=65536)
    assert prefix == (b"a" * 3000 + b"b" * 3000)[:RESPONSE_PREFIX]
