"""The outbox on Redis Streams, shared by every collector and worker process.

Each shard (see `collector.redis.keys`) has a stream read through the consumer group
`tripwire`. The store's COMMIT script adds a user's webhooks to the stream of the user's
shard in the same step that stores the state change that fired them, so accepted events
never lose their webhooks; `put` does the same for webhooks from elsewhere.

    put         PUT script: XADD unless the delivery id is already pending (hash `ol`)
    claim       from a local buffer that one reader task per shard fills with
                XREADGROUP BLOCK; due retries are moved onto the stream (PROMOTE) and
                entries idle for `reclaim_after` seconds, left by a dead consumer, are
                taken over with XAUTOCLAIM
    ack         SETTLE: XACK + XDEL, forget the delivery id
    retry_at    SETTLE: XACK + XDEL, ZADD to the shard's retry set with the due time
    dead_letter SETTLE: XACK + XDEL, the letter into the shard's dead-letter hash (capped)
    add_usage   INCRBY of the period's counter

Settling is batched: concurrent acks share one pipeline, and an ack waits (retrying) while
Redis is unreachable rather than losing track of the delivery. A live consumer re-claims what
it holds every `reclaim_after / 3` seconds (XCLAIM JUSTID), so only entries of consumers that
stopped for good are taken over; those are delivered again with the same `webhook-id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from collector.delivery.outbox import DeadLetter, Envelope, OutboxClosed
from collector.errors import Unavailable
from collector.redis.connection import Command, RedisConnection, error_text, evalsha, is_error
from collector.redis.keys import GROUP, Keys
from collector.redis.scripts import HOLD, PROMOTE, PUT, RELEASE, REVIVE, SETTLE
from collector.webhook import WebhookRequest

log = logging.getLogger("tripwire.outbox")

_ENCODER = msgspec.msgpack.Encoder()
_ENVELOPE = msgspec.msgpack.Decoder(Envelope)
_LETTER = msgspec.msgpack.Decoder(DeadLetter)
_BLOCK_MS = 1000  # how long a reader blocks in XREADGROUP
_READ_COUNT = 100
_USAGE_TTL = 40 * 86400  # a month's counter outlives the month
_PAUSE = 0.5  # seconds a background task waits after Redis failed it
_TIDY_EVERY = 60.0  # seconds between sweeps of departed consumers
_DEPARTED_MS = 3_600_000  # a consumer idle this long with nothing pending is gone


def consumer_name() -> str:
    """A consumer name unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class RedisOutbox:
    """Outbox on Redis Streams with a consumer group (the `delivery.outbox.Outbox` interface)."""

    def __init__(
        self,
        connection: RedisConnection,
        *,
        reclaim_after: float = 10.0,
        dead_capacity: int = 10_000,
        buffer: int = 1_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._connection = connection
        self._reclaim_after = reclaim_after
        self._dead_capacity = dead_capacity
        self._capacity = buffer
        self._clock = clock
        self.consumer = consumer_name()
        self._buffer: deque[Envelope] = deque()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._held: dict[str, Envelope] = {}  # receipt -> envelope, buffered or handed out
        self._settling: list[tuple[int, list[Any], asyncio.Future[None]]] = []
        self._settle_wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._depth = 0
        self._closed = True
        self._groups_ready = False
        self._consuming = False

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Start the sweeper (retries, reclaim, depth) and the settler; readers start on claim."""
        if not self._closed:
            return
        self._closed = False
        self._room.set()
        with contextlib.suppress(Unavailable):
            await self._ensure_groups()
        self._tasks = [
            asyncio.create_task(self._settler(), name="tripwire-outbox-settler"),
            asyncio.create_task(self._sweeper(), name="tripwire-outbox-sweeper"),
        ]

    async def close(self) -> None:
        """Stop reading; settle what was settled; hand back what this process still holds."""
        if self._closed:
            return
        self._closed = True
        self._settle_wakeup.set()
        self._room.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._consuming = False
        await self._flush_settles(retry=False)
        held = list(self._held.values())
        self._held.clear()
        self._buffer.clear()
        if held:
            by_shard: dict[int, list[Any]] = defaultdict(lambda: [GROUP])
            for envelope in held:
                shard, entry = _split(envelope.receipt)
                by_shard[shard].extend((entry, envelope.delivery_id))
            try:
                keys = await self._connection.names()
                commands = [
                    evalsha(RELEASE, keys.outbox_keys(s), args) for s, args in by_shard.items()
                ]
                await self._connection.pipeline(commands, "handing back deliveries")
            except Unavailable:
                log.warning(
                    "%d deliveries stay claimed until another worker reclaims them", len(held)
                )

    # -- the Outbox protocol -----------------------------------------------------------

    async def put(self, requests: Iterable[WebhookRequest]) -> None:
        """Enqueue new webhooks, due now; a webhook_id already pending is ignored."""
        if self._closed:
            raise OutboxClosed("the outbox is closed")
        now = self._clock()
        keys = await self._connection.names()
        by_shard: dict[int, list[Any]] = defaultdict(list)
        for request in requests:
            envelope = Envelope(request=request, enqueued_at=now, due_at=now)
            by_shard[keys.shard(request.user_key)].extend(
                (request.webhook_id, _ENCODER.encode(envelope))
            )
        commands = [evalsha(PUT, keys.outbox_keys(s), args) for s, args in by_shard.items()]
        _check(await self._connection.pipeline(commands, "queueing webhooks"))

    async def claim(self, limit: int, wait: float) -> list[Envelope]:
        """Take up to `limit` envelopes read from the streams, waiting up to `wait` seconds."""
        if not self._consuming and not self._closed:
            # Only a process that delivers reads the streams (`serve` may leave it to workers).
            self._consuming = True
            self._tasks.append(asyncio.create_task(self._readers(), name="tripwire-outbox-readers"))
        if not self._buffer and limit > 0 and wait > 0:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._arrived.wait()
        batch: list[Envelope] = []
        while self._buffer and len(batch) < limit:
            batch.append(self._buffer.popleft())
        if len(self._buffer) < self._capacity:
            self._room.set()
        return batch

    async def ack(self, envelope: Envelope) -> None:
        """Forget a claimed envelope: it was delivered or suppressed."""
        await self._settle(envelope, ["ack"])

    async def retry_at(self, envelope: Envelope, due: float) -> None:
        """Put a claimed envelope back, to be claimed again at `due`."""
        envelope.due_at = due
        member = envelope.delivery_id.encode() + b"\n" + _encode(envelope)
        await self._settle(envelope, ["retry", due, member])

    async def dead_letter(self, envelope: Envelope, status: str, error: str | None) -> None:
        """Move a claimed envelope to the dead letters."""
        now = self._clock()
        letter = DeadLetter(
            request=envelope.request,
            status=status,
            error=error,
            attempts=envelope.attempts,
            dead_at=now,
        )
        await self._settle(envelope, ["dead", now, _ENCODER.encode(letter), self._dead_capacity])

    async def dead_letters(
        self,
        *,
        campaign: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """List dead letters, oldest first, by campaign and time of death."""
        keys = await self._connection.names()
        low = "-inf" if since is None else since
        high = "+inf" if until is None else until
        shards = range(keys.shards)
        ids = _check(
            await self._connection.pipeline(
                [("ZRANGEBYSCORE", keys.dead_order(s), low, high) for s in shards],
                "listing dead letters",
            )
        )
        commands = [
            ("HMGET", keys.dead(s), *found) for s, found in zip(shards, ids, strict=True) if found
        ]
        letters = [
            _LETTER.decode(blob)
            for values in _check(await self._connection.pipeline(commands, "listing dead letters"))
            for blob in values
            if blob
        ]
        letters.sort(key=lambda letter: letter.dead_at)
        if campaign is not None:
            letters = [letter for letter in letters if letter.request.campaign_id == campaign]
        return letters if limit is None else letters[:limit]

    async def revive(
        self, delivery_ids: Sequence[str], replacements: Mapping[str, WebhookRequest] | None = None
    ) -> list[str]:
        """Move dead letters back to pending as fresh deliveries (a replacement, same
        webhook_id, instead of the stored request); return the ids moved."""
        if not delivery_ids:
            return []
        keys = await self._connection.names()
        shards = range(keys.shards)
        found = _check(
            await self._connection.pipeline(
                [("HMGET", keys.dead(s), *delivery_ids) for s in shards], "finding dead letters"
            )
        )
        now = self._clock()
        commands: list[Command] = []
        for shard, values in zip(shards, found, strict=True):
            args: list[Any] = []
            for delivery_id, blob in zip(delivery_ids, values, strict=True):
                if blob:
                    letter = _LETTER.decode(blob)
                    request = (replacements or {}).get(delivery_id, letter.request)
                    envelope = Envelope(request=request, enqueued_at=now, due_at=now, counted=True)
                    args.extend((delivery_id, _encode(envelope)))
            if args:
                commands.append(evalsha(REVIVE, keys.outbox_keys(shard), args))
        results = _check(await self._connection.pipeline(commands, "reviving dead letters"))
        revived = {item.decode() for ids in results for item in ids}
        return [d for d in delivery_ids if d in revived]

    async def add_usage(self, period: str, amount: int) -> int:
        """Add to a period's delivery count and return the new total."""
        key = Keys.usage(period)
        results = _check(
            await self._connection.pipeline(
                [("INCRBY", key, amount), ("EXPIRE", key, _USAGE_TTL)], "counting deliveries"
            )
        )
        return int(results[0])

    def depth(self) -> int:
        """Webhooks pending, scheduled or claimed across every process (refreshed each second)."""
        return self._depth

    # -- settling ----------------------------------------------------------------------

    async def _settle(self, envelope: Envelope, action: list[Any]) -> None:
        shard, entry = _split(envelope.receipt)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._settling.append((shard, [entry, envelope.delivery_id, *action], future))
        self._settle_wakeup.set()
        try:
            await future
        finally:
            self._held.pop(envelope.receipt or "", None)

    async def _settler(self) -> None:
        while not self._closed:
            await self._settle_wakeup.wait()
            self._settle_wakeup.clear()
            await self._flush_settles(retry=True)

    async def _flush_settles(self, *, retry: bool) -> None:
        """Send every queued settlement in one pipeline; while Redis is down, keep trying."""
        while self._settling:
            batch, self._settling = self._settling, []
            by_shard: dict[int, list[Any]] = defaultdict(lambda: [GROUP])
            for shard, args, _ in batch:
                by_shard[shard].extend(args)
            keys = await self._connection.names()
            commands = [evalsha(SETTLE, keys.outbox_keys(s), a) for s, a in by_shard.items()]
            try:
                _check(await self._connection.pipeline(commands, "settling deliveries"))
            except Unavailable as exc:
                if not retry:
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self._settling[:0] = batch
                await asyncio.sleep(_PAUSE)
                continue
            for _, _, future in batch:
                if not future.done():
                    future.set_result(None)

    # -- reading -----------------------------------------------------------------------

    async def _ensure_groups(self) -> None:
        keys = await self._connection.names()
        commands = [
            ("XGROUP", "CREATE", keys.outbox(s), GROUP, "0", "MKSTREAM") for s in range(keys.shards)
        ]
        results = await self._connection.pipeline(commands, "creating consumer groups")
        for result in results:
            if is_error(result) and "BUSYGROUP" not in error_text(result):
                raise Unavailable(f"cannot create the outbox consumer group: {result}")
        self._groups_ready = True

    async def _readers(self) -> None:
        while not self._groups_ready and not self._closed:
            try:
                await self._ensure_groups()
            except Unavailable:
                await asyncio.sleep(_PAUSE)
        count = (await self._connection.names()).shards
        readers = [asyncio.create_task(self._reader(s)) for s in range(count)]
        try:
            await asyncio.gather(*readers)
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _reader(self, shard: int) -> None:
        stream = (await self._connection.names()).outbox(shard)
        while not self._closed:
            await self._room.wait()
            room = self._capacity - len(self._buffer)
            if room <= 0:
                self._room.clear()
                continue
            try:
                reply = await self._connection.call(
                    "XREADGROUP",
                    "GROUP",
                    GROUP,
                    self.consumer,
                    "COUNT",
                    min(room, _READ_COUNT),
                    "BLOCK",
                    _BLOCK_MS,
                    "STREAMS",
                    stream,
                    ">",
                    what="reading the outbox",
                )
            except Unavailable as exc:
                if "NOGROUP" in str(exc.__cause__):
                    with contextlib.suppress(Unavailable):
                        await self._ensure_groups()
                await asyncio.sleep(_PAUSE)
                continue
            try:
                for _stream, entries in reply or ():
                    self._take(shard, entries)
            except Exception:  # an unreadable entry; it stays pending and is logged
                log.exception("cannot read an outbox entry")

    def _take(self, shard: int, entries: Iterable[Any]) -> None:
        """Buffer entries read or reclaimed from a shard's stream."""
        added = False
        for entry_id, fields in entries:
            if not fields:
                continue
            envelope = _ENVELOPE.decode(fields[b"e"])
            envelope.receipt = f"{shard}/{entry_id.decode()}"
            if envelope.receipt in self._held:
                continue
            self._held[envelope.receipt] = envelope
            self._buffer.append(envelope)
            added = True
        if added:
            self._arrived.set()
        if len(self._buffer) >= self._capacity:
            self._room.clear()

    async def _sweeper(self) -> None:
        """Promote due retries, take over abandoned entries, keep ours fresh, count depth."""
        last_reclaim = last_heartbeat = last_tidy = 0.0
        while not self._closed:
            delay = 0.5
            try:
                now = self._clock()
                keys = await self._connection.names()
                shards = range(keys.shards)
                commands: list[Command] = [
                    evalsha(PROMOTE, keys.outbox_keys(s), [now, 500]) for s in shards
                ]
                commands += [("HLEN", keys.outbox_live(s)) for s in shards]
                results = _check(await self._connection.pipeline(commands, "promoting retries"))
                dues = [float(r) for r in results[: keys.shards] if float(r) >= 0]
                self._depth = sum(int(r) for r in results[keys.shards :])
                if dues:
                    delay = min(delay, max(0.02, min(dues) - now))
                if now - last_heartbeat >= self._reclaim_after / 3:
                    last_heartbeat = now
                    await self._heartbeat()
                if self._consuming and now - last_reclaim >= min(1.0, self._reclaim_after / 2):
                    last_reclaim = now
                    await self._reclaim()
                if self._consuming and now - last_tidy >= _TIDY_EVERY:
                    last_tidy = now
                    await self._forget_departed()
            except Unavailable:
                self._depth = 0
                delay = _PAUSE
            except Exception:  # a bug here must not stop retries and reclaiming for good
                log.exception("outbox sweep failed")
                delay = _PAUSE
            await asyncio.sleep(delay)

    async def _forget_departed(self) -> None:
        """Drop consumers (processes long gone) that hold nothing from the consumer groups."""
        keys = await self._connection.names()
        streams = [keys.outbox(s) for s in range(keys.shards)]
        infos = _check(
            await self._connection.pipeline(
                [("XINFO", "CONSUMERS", stream, GROUP) for stream in streams], "listing consumers"
            )
        )
        gone: list[Command] = []
        for stream, consumers in zip(streams, infos, strict=True):
            for raw in consumers:
                info = {_text(k): v for k, v in raw.items()}
                name = _text(info["name"])
                idle = int(info.get("inactive", info.get("idle", 0)))  # "inactive" since 7.2
                if name != self.consumer and not int(info["pending"]) and idle > _DEPARTED_MS:
                    gone.append(("XGROUP", "DELCONSUMER", stream, GROUP, name))
        _check(await self._connection.pipeline(gone, "forgetting departed consumers"))

    async def _heartbeat(self) -> None:
        """Reset the idle time of every entry this process holds, so nobody takes them over."""
        by_shard: dict[int, list[str]] = defaultdict(list)
        for receipt in list(self._held):
            shard, entry = _split(receipt)
            by_shard[shard].append(entry)
        keys = await self._connection.names()
        commands: list[Command] = [
            evalsha(HOLD, [keys.outbox(s)], [GROUP, self.consumer, *entries])
            for s, entries in by_shard.items()
        ]
        _check(await self._connection.pipeline(commands, "refreshing claimed deliveries"))

    async def _reclaim(self) -> None:
        """Take over entries left idle by consumers that died (as many as the buffer holds)."""
        keys = await self._connection.names()
        idle_ms = int(self._reclaim_after * 1000)
        cursors = {shard: "0-0" for shard in range(keys.shards)}
        taken = 0
        while cursors:
            room = self._capacity - len(self._buffer)
            if room <= 0:
                break
            count = max(1, min(room, 500))
            order = list(cursors)
            commands: list[Command] = [
                (
                    "XAUTOCLAIM",
                    keys.outbox(s),
                    GROUP,
                    self.consumer,
                    idle_ms,
                    cursors[s],
                    "COUNT",
                    count,
                )
                for s in order
            ]
            results = _check(await self._connection.pipeline(commands, "reclaiming deliveries"))
            for shard, (cursor, entries, *_) in zip(order, results, strict=True):
                found = [e for e in entries if e and e[1]]
                taken += len(found)
                self._take(shard, found)
                if cursor in (b"0-0", "0-0"):
                    del cursors[shard]
                else:
                    cursors[shard] = cursor
        if taken:
            log.info("took over %d deliveries left by a stopped consumer", taken)


def _encode(envelope: Envelope) -> bytes:
    """An envelope as stored: without the receipt of the process that claimed it."""
    return _ENCODER.encode(msgspec.structs.replace(envelope, receipt=None))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _split(receipt: str | None) -> tuple[int, str]:
    shard, _, entry = (receipt or "0/0-0").partition("/")
    return int(shard), entry


def _check(results: list[Any]) -> list[Any]:
    for result in results:
        if is_error(result):
            raise Unavailable(f"the outbox refused a command: {error_text(result)}")
    return results
