"""A webhook response's body, decoded no further than the delivery log keeps.

A receiver chooses its answer's `Content-Encoding`, and may stack codings (`gzip, gzip, gzip`)
around a body that inflates a thousandfold at each step. `read_prefix` undoes every coding with
a cap on what each step may produce in all — never more than `limit` bytes, the prefix the
delivery log keeps — so however the body is encoded, one response costs at most
`len(codings) × limit` decoded bytes and the CPU to make them, in small steps between reads of
the network (never one long inflate on the event loop). What is not needed is not inflated.

Codings: gzip (several members, as RFC 1952 allows) and deflate (zlib-wrapped or raw, as
httpx accepts); an unknown coding leaves the body as it is.

    prefix = await read_prefix(chunks, codings, limit=4096, read_limit=65536)
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterable, Iterable
from typing import Final

# Content codings undone without optional packages, with zlib's window bits for each.
INFLATE_WBITS: Final = {b"gzip": zlib.MAX_WBITS | 16, b"deflate": zlib.MAX_WBITS}


def content_codings(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """The known codings a response's Content-Encoding headers name, in the order applied."""
    return [
        coding
        for key, value in headers
        if key.lower() == b"content-encoding"
        for coding in value.lower().replace(b" ", b"").split(b",")
        if coding in INFLATE_WBITS
    ]


async def read_prefix(
    chunks: AsyncIterable[bytes], codings: list[bytes], *, limit: int, read_limit: int
) -> bytes:
    """The first `limit` bytes of the decoded body, reading at most about `read_limit` bytes
    (a body read to its end leaves its connection reusable; what is past the prefix is read
    and dropped, not decoded).

    Raises zlib.error when a coding does not decode.
    """
    steps = [BoundedInflater(coding, limit) for coding in reversed(codings)]
    kept = b""
    seen = 0
    decoding = True
    async for chunk in chunks:
        seen += len(chunk)
        if decoding:
            for step in steps:
                chunk = step.feed(chunk)
            kept += chunk[: limit - len(kept)]
            decoding = len(kept) < limit and not any(step.done for step in steps)
        if seen > read_limit:
            break
    return kept


class BoundedInflater:
    """Undoes one gzip or deflate coding, producing at most `budget` bytes in all."""

    __slots__ = ("_coding", "_inflater", "_left", "_raw_fallback")

    def __init__(self, coding: bytes, budget: int) -> None:
        self._coding = coding
        self._inflater = zlib.decompressobj(INFLATE_WBITS[coding])
        self._raw_fallback = coding == b"deflate"
        self._left = budget

    @property
    def done(self) -> bool:
        """Whether this step will produce nothing more: its budget is spent."""
        return self._left <= 0

    def feed(self, data: bytes) -> bytes:
        """Inflate what `data` holds, up to the budget left; input past the budget is dropped."""
        out: list[bytes] = []
        while data and self._left > 0:
            if self._inflater.eof:  # a stream ended: a further gzip member, or trailing bytes
                if self._coding != b"gzip" or data[:2] != b"\x1f\x8b":
                    break
                self._inflater = zlib.decompressobj(INFLATE_WBITS[b"gzip"])
            produced = self._inflate(data)
            self._left -= len(produced)
            out.append(produced)
            if not self._inflater.eof:
                break  # all of it taken in, or the rest is past the budget (dropped)
            data = self._inflater.unused_data
        return b"".join(out)

    def _inflate(self, data: bytes) -> bytes:
        # max_length is never 0 here (0 would mean "no limit" to zlib).
        fallback, self._raw_fallback = self._raw_fallback, False
        try:
            return self._inflater.decompress(data, self._left)
        except zlib.error:
            if not fallback:
                raise
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._inflater.decompress(data, self._left)
