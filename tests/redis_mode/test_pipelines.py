"""Pipelines sent together: concurrent requests share a write to Redis, each gets its replies."""

from __future__ import annotations

import asyncio

from collector.errors import Unavailable
from collector.redis.connection import RedisConnection, is_error
from tests.support.redis import RedisServer


async def test_concurrent_pipelines_each_get_their_own_replies(
    redis_server: RedisServer,
) -> None:
    connection = RedisConnection(redis_server.url)
    try:
        await connection.call("SET", "text", "not a number", what="a test")
        sent_before = connection.round_trips

        async def bump(i: int) -> list[object]:
            # the fifth pipeline's first command is refused: only its own reply says so
            key = "text" if i == 5 else f"n{i}"
            return await connection.pipeline(
                [("INCRBY", key, i), ("GET", f"n{i}"), ("SET", f"m{i}", i)], "a test"
            )

        results = await asyncio.gather(*(bump(i) for i in range(40)))

        assert connection.round_trips - sent_before == 40  # as each request counts them
        for i, (added, read, stored) in enumerate(results):
            if i == 5:
                assert is_error(added) and "not an integer" in str(added)
                assert read is None
            else:
                assert (added, read) == (i, str(i).encode())
            assert stored is True
        values = await connection.pipeline([("GET", f"m{i}") for i in range(40)], "a test")
        assert values == [str(i).encode() for i in range(40)]
        # they went out together: far fewer connections than pipelines in flight
        clients = await connection.call("CLIENT", "LIST", what="a test")
        assert 1 <= clients.count(b"cmd=") <= 4
    finally:
        await connection.close()


async def test_a_lost_server_fails_every_pipeline_of_the_group_then_recovers(
    redis_server: RedisServer,
) -> None:
    connection = RedisConnection(redis_server.url)
    try:
        assert await connection.pipeline([("SET", "k", "1")], "a test") == [True]
        redis_server.stop()
        outcomes = await asyncio.gather(
            *(connection.pipeline([("GET", "k")], "a test") for _ in range(10)),
            return_exceptions=True,
        )
        assert all(isinstance(outcome, Unavailable) for outcome in outcomes)
        redis_server.start()
        replies = await asyncio.gather(
            *(connection.pipeline([("SET", f"k{i}", i), ("GET", f"k{i}")], "a test")
              for i in range(10))
        )
        assert replies == [[True, str(i).encode()] for i in range(10)]
    finally:
        await connection.close()

