"""Dashboard sessions in Redis, shared by every process: one key per session, with a TTL.

A key is the digest of the session id and the admin token's tag: a process started with
another token finds none of the sessions made with the old one.
"""

from __future__ import annotations

from collector.redis.connection import RedisConnection
from collector.redis.keys import Keys
from collector.store.sessions import SESSION_SECONDS, digest, new_session_id


class RedisSessions:
    """Sessions every collector process sharing the Redis store knows."""

    def __init__(self, connection: RedisConnection, seconds: int = SESSION_SECONDS) -> None:
        self._connection = connection
        self._seconds = seconds

    async def create(self, tag: str) -> str:
        """Start a session; returns its id."""
        session_id = new_session_id()
        key = Keys.session(digest(session_id, tag))
        await self._connection.pipeline([("SET", key, 1, "EX", self._seconds)], "saving a session")
        return session_id

    async def valid(self, session_id: str, tag: str) -> bool:
        """True while the session is live (made under the token `tag`)."""
        key = Keys.session(digest(session_id, tag))
        (found,) = await self._connection.pipeline([("EXISTS", key)], "checking a session")
        return bool(found == 1)

    async def revoke(self, session_id: str, tag: str) -> None:
        """End the session."""
        key = Keys.session(digest(session_id, tag))
        await self._connection.pipeline([("DEL", key)], "ending a session")
