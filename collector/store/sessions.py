"""Dashboard sessions: a random id in the cookie, never the admin token; logging out revokes it.

The store keeps a digest of each id with its expiry, so what it holds cannot be replayed as a
cookie. The digest covers the `tag` of the admin token the session was made with (see
`collector.admin.auth.token_tag`): once the token is changed, no session made with the old one
is found, so rotating the token ends every session. Memory mode keeps them in this process
(at most MAX_SESSIONS, the oldest go first); Redis mode keeps them in Redis
(`collector.redis.sessions`), so every process knows them.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from typing import Protocol

SESSION_SECONDS = 7 * 86400
MAX_SESSIONS = 1000


def new_session_id() -> str:
    """A fresh session id: 256 random bits."""
    return secrets.token_urlsafe(32)


def digest(session_id: str, tag: str) -> str:
    """What a store keeps of a session id made under the token `tag`."""
    text = f"{tag}\x00{session_id}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class Sessions(Protocol):
    """Where live dashboard sessions are kept."""

    async def create(self, tag: str) -> str:
        """Start a session under the token `tag`; returns its id (for the cookie)."""

    async def valid(self, session_id: str, tag: str) -> bool:
        """True while the session is live (not expired, not logged out) under `tag`."""

    async def revoke(self, session_id: str, tag: str) -> None:
        """End the session (log out)."""


class MemorySessions:
    """Sessions held in this process."""

    def __init__(self, seconds: float = SESSION_SECONDS, limit: int = MAX_SESSIONS) -> None:
        self._seconds = seconds
        self._limit = limit
        self._expiry: OrderedDict[str, float] = OrderedDict()  # digest -> expiry, oldest first

    async def create(self, tag: str) -> str:
        """Start a session; returns its id."""
        session_id = new_session_id()
        self._expiry[digest(session_id, tag)] = time.time() + self._seconds
        while len(self._expiry) > self._limit:
            self._expiry.popitem(last=False)
        return session_id

    async def valid(self, session_id: str, tag: str) -> bool:
        """True while the session is live."""
        expiry = self._expiry.get(digest(session_id, tag))
        return expiry is not None and expiry > time.time()

    async def revoke(self, session_id: str, tag: str) -> None:
        """End the session."""
        self._expiry.pop(digest(session_id, tag), None)
