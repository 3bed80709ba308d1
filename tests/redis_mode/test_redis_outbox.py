"""The Redis Streams outbox and the shared delivery log: claims, retries, take-overs."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest

from collector.delivery.log import DeliveryAttempt
from collector.delivery.outbox import Envelope
from collector.redis.connection import RedisConnection
from collector.redis.deliverylog import RedisDeliveryLog
from collector.redis.outbox import RedisOutbox
from collector.webhook import WebhookRequest
from tests.support.poll import wait_until_async

WRITE_KEY = "test-key"


def request(user: str = "a:u", campaign: str = "c") -> WebhookRequest:
    """A rendered webhook."""
    return WebhookRequest(
        webhook_id=f"msg_{uuid.uuid4().hex}",
        campaign_id=campaign,
        variant_id=None,
        user_key=user,
        event_id=uuid.uuid4().hex,
        method="POST",
        url="http://127.0.0.1:9/hook",
        headers={},
        body={"x": 1},
        created_at=time.time(),
    )


@pytest.fixture(params=["redis", "cluster"])
async def connection(request: pytest.FixtureRequest) -> AsyncIterator[RedisConnection]:
    """A connection to an empty single server or cluster."""
    servers = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster"
    )
    conn = RedisConnection(servers.url)
    yield conn
    await conn.close()


async def claim_all(outbox: RedisOutbox, count: int, timeout: float = 10.0) -> list[Envelope]:
    """Claim until `count` envelopes came out (or fail)."""
    got: list[Envelope] = []

    async def claimed() -> bool:
        got.extend(await outbox.claim(count - len(got), 0.5))
        return len(got) >= count

    await wait_until_async(claimed, timeout, message=lambda: f"{count} claimed (got {len(got)})")
    return got


async def test_put_claim_ack(connection: RedisConnection) -> None:
    outbox = RedisOutbox(connection)
    await outbox.open()
    try:
        requests = [request(user=f"a:{i}") for i in range(30)]
        await outbox.put(requests)
        await outbox.put(requests[:5])  # already pending: ignored
        claimed = await claim_all(outbox, 30)
        assert sorted(e.delivery_id for e in claimed) == sorted(r.webhook_id for r in requests)
        assert await outbox.claim(10, 0.3) == []
        await wait_until_async(lambda: outbox.depth() == 30)
        for envelope in claimed:
            await outbox.ack(envelope)
        await wait_until_async(lambda: outbox.depth() == 0)
    finally:
        await outbox.close()


async def test_retries_come_back_when_due_and_dead_letters_revive(
    connection: RedisConnection,
) -> None:
    outbox = RedisOutbox(connection)
    await outbox.open()
    try:
        first, second = request(campaign="a"), request(campaign="b")
        await outbox.put([first, second])
        claimed = {e.delivery_id: e for e in await claim_all(outbox, 2)}
        retried = claimed[first.webhook_id]
        retried.attempts = 1
        retried.last_error = "503"
        due = time.time() + 0.5
        await outbox.retry_at(retried, due)
        await outbox.dead_letter(claimed[second.webhook_id], "failed", "400 Bad Request")
        again = await claim_all(outbox, 1)
        assert time.time() >= due - 0.05
        assert again[0].delivery_id == first.webhook_id
        assert (again[0].attempts, again[0].last_error) == (1, "503")
        await outbox.ack(again[0])
        letters = await outbox.dead_letters()
        assert [(d.delivery_id, d.status, d.error) for d in letters] == [
            (second.webhook_id, "failed", "400 Bad Request")
        ]
        assert await outbox.dead_letters(campaign="a") == []
        assert await outbox.revive([second.webhook_id, "msg_unknown"]) == [second.webhook_id]
        revived = await claim_all(outbox, 1)
        assert revived[0].delivery_id == second.webhook_id and revived[0].counted
        assert await outbox.dead_letters() == []
        await outbox.ack(revived[0])
    finally:
        await outbox.close()


async def test_entries_of_a_dead_consumer_are_taken_over(connection: RedisConnection) -> None:
    doomed = RedisOutbox(connection, reclaim_after=1.0)
    survivor = RedisOutbox(connection, reclaim_after=1.0)
    await doomed.open()
    requests = [request(user=f"a:{i}") for i in range(10)]
    await doomed.put(requests)
    taken = await claim_all(doomed, 10)
    # The doomed consumer stops without settling or handing back: as if killed.
    doomed._closed = True
    for task in doomed._tasks:
        task.cancel()
    await survivor.open()
    try:
        reclaimed = await claim_all(survivor, 10, timeout=10)
        assert {e.delivery_id for e in reclaimed} == {e.delivery_id for e in taken}
        for envelope in reclaimed:
            await survivor.ack(envelope)
    finally:
        await survivor.close()


async def test_a_live_consumer_keeps_what_it_holds(connection: RedisConnection) -> None:
    holder = RedisOutbox(connection, reclaim_after=1.0)
    other = RedisOutbox(connection, reclaim_after=1.0)
    await holder.open()
    await other.open()
    try:
        await holder.put([request()])
        held = await claim_all(holder, 1)
        assert await other.claim(10, 2.5) == []  # well past reclaim_after
        await holder.ack(held[0])
    finally:
        await holder.close()
        await other.close()


async def test_the_delivery_log_is_shared(connection: RedisConnection) -> None:
    writer, reader = RedisDeliveryLog(connection, capacity=100), RedisDeliveryLog(connection)
    for i in range(150):
        await writer.add(
            DeliveryAttempt(
                at=float(i),
                delivery_id=f"d{i}",
                attempt=1,
                campaign_id="even" if i % 2 == 0 else "odd",
                variant_id=None,
                user_key="a:u",
                method="POST",
                url="http://x/",
                status="delivered",
            )
        )
    await writer.flush()
    newest = await reader.query(limit=3)
    assert [a.delivery_id for a in newest] == ["d149", "d148", "d147"]
    odd = await reader.query(campaign="odd", limit=1000)
    assert odd[0].delivery_id == "d149" and all(a.campaign_id == "odd" for a in odd)
    assert 100 <= len(await reader.query(limit=1000)) < 150  # capped (approximately)


async def test_departed_consumers_holding_nothing_are_forgotten(
    connection: RedisConnection,
) -> None:
    outbox = RedisOutbox(connection)
    await outbox.open()
    try:
        await outbox.claim(1, 0.05)  # joins the consumer groups
        keys = await connection.names()
        stream = keys.outbox(0)
        await connection.call("XGROUP", "CREATECONSUMER", stream, "tripwire", "long-gone", what="t")
        await outbox._forget_departed()  # idle for less than an hour: kept
        names = [
            c[b"name"]
            for c in await connection.call("XINFO", "CONSUMERS", stream, "tripwire", what="t")
        ]
        assert b"long-gone" in names
        monkey = pytest.MonkeyPatch()
        monkey.setattr("collector.redis.outbox._DEPARTED_MS", -1)
        try:
            await outbox._forget_departed()
        finally:
            monkey.undo()
        names = [
            c[b"name"]
            for c in await connection.call("XINFO", "CONSUMERS", stream, "tripwire", what="t")
        ]
        assert b"long-gone" not in names
    finally:
        await outbox.close()
