"""The event as the engine sees it: one accepted Segment message, normalised and trusted."""

from __future__ import annotations

from typing import Any

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One accepted message. Times are epoch seconds; `timestamp` is skew-corrected."""

    type: str  # track | page | identify | alias | screen | group
    name: str  # what triggers match: the track event name, or "page", "identify", "screen", ...
    message_id: str
    anonymous_id: str | None = None
    user_id: str | None = None
    previous_id: str | None = None  # alias only
    properties: dict[str, Any] = {}
    traits: dict[str, Any] = {}
    context: dict[str, Any] = {}
    timestamp: float
    received_at: float
