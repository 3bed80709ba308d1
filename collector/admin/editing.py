"""Editing a campaign safely: its version (ETag), preconditions, and JSON merge patches.

A campaign's ETag is a digest of its writable representation (what GET returns without the
read-only `stats` and `stopped`), so it changes exactly when a write changes the campaign.
`If-Match` makes a PUT, PATCH or DELETE apply only to the version the editor read (412
otherwise): of two editors who read the same version, the second to save is refused instead of
silently overwriting the first. The check and the write happen under one lock per process; with
several processes (Redis mode) each checks against the version it holds, which every campaign
change reaches within a second.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import orjson
from starlette.requests import Request

from collector.config.schema import encode_hook
from collector.errors import PreconditionFailed

READ_ONLY = frozenset({"stats", "stopped"})  # in GET's answer; ignored when written back


def etag(data: dict[str, Any]) -> str:
    """The strong ETag of a campaign's writable representation."""
    canonical = orjson.dumps(
        {k: v for k, v in data.items() if k not in READ_ONLY},
        option=orjson.OPT_SORT_KEYS, default=encode_hook,
    )
    return '"' + hashlib.sha256(canonical).hexdigest()[:32] + '"'


def writable(raw: Any) -> Any:
    """A campaign as sent, without the read-only keys GET adds (so GET → edit → PUT works)."""
    if isinstance(raw, dict):
        return {k: v for k, v in raw.items() if k not in READ_ONLY}
    return raw


def check_preconditions(request: Request, current: str | None) -> None:
    """Raise PreconditionFailed unless If-Match / If-None-Match admit the current ETag
    (None: the campaign does not exist). If-Match uses the strong comparison (RFC 9110)."""
    if_match = request.headers.get("if-match")
    if if_match is not None:
        tags = _tags(if_match)
        if current is None:
            raise PreconditionFailed("If-Match: the campaign does not exist")
        if "*" not in tags and current not in tags:
            raise PreconditionFailed(
                f"If-Match: the campaign changed since that version; its ETag is now {current}: "
                "read it again, redo the change and send it with the new ETag"
            )
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and current is not None:
        tags = {tag.removeprefix("W/") for tag in _tags(if_none_match)}
        if "*" in tags or current in tags:
            raise PreconditionFailed("If-None-Match: the campaign exists already")


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch (RFC 7396): objects merge key by key, null removes a key,
    anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def write_lock(request: Request) -> asyncio.Lock:
    """The app's lock around a campaign write and the check of its precondition."""
    state = request.app.state
    lock: asyncio.Lock | None = getattr(state, "campaign_writes", None)
    if lock is None:
        lock = state.campaign_writes = asyncio.Lock()
    return lock


def _tags(value: str) -> set[str]:
    return {tag.strip() for tag in value.split(",") if tag.strip()}
