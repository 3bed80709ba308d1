"""Replaying a dead letter: the stored request again, or the campaign's current action re-rendered.

A dead letter is the request as rendered when its event fired. Sent again unchanged, it fails
the same way when what failed was the request itself — refused by the SSRF guard, invalid,
answered with a 4xx or 410 (status `refused`, `failed`, `paused`) — or when it goes to an
endpoint the campaign no longer uses. So a replay renders the campaign's current action for
the same user and event (the event found among the user's recent events, else a stand-in with
its id) and sends that instead when the campaign now sends elsewhere (its URL or method changed:
a fixed URL rescues the delivery), or when the stored request cannot succeed and the action
changed since. Otherwise, or when the action cannot be rendered any more, the stored request
goes again. The `webhook-id` stays the delivery's own either way.
"""

from __future__ import annotations

import time
from typing import Literal

import msgspec
import orjson

from collector.delivery.log import mask_url
from collector.delivery.outbox import DeadLetter
from collector.engine.templates import Suppressed
from collector.errors import HTTPError, NotFound
from collector.events import Event
from collector.ingest.messages import decode_recorded
from collector.runtime import Runtime
from collector.webhook import WebhookRequest

CANNOT_SUCCEED = frozenset({"failed", "refused", "paused"})  # sent again, it fails again
Sent = Literal["stored", "rerendered"]


class ReplayAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """What a dead letter's replay put back on the outbox, and why."""

    count: int
    delivery_ids: list[str]
    sent: Sent  # the stored request, or the campaign's current action re-rendered
    reason: str
    method: str
    url: str  # masked like the delivery log's


async def replay_dead_letter(runtime: Runtime, delivery_id: str) -> ReplayAnswer:
    """Put a dead letter back on the outbox, re-rendered when the stored one cannot succeed."""
    letter = await runtime.deliveries.dead_letter(delivery_id)
    if letter is None:
        raise NotFound(f"no dead letter {delivery_id!r}: only failed deliveries replay")
    fresh = await rerender(runtime, letter.request)
    request, sent, reason = choose(letter, fresh)
    replacement = request if sent == "rerendered" else None
    replayed = await runtime.deliveries.replay(delivery_id, replacement)
    if not replayed.count:  # replayed meanwhile, by another click or process
        raise NotFound(f"no dead letter {delivery_id!r}: only failed deliveries replay")
    return ReplayAnswer(
        count=replayed.count, delivery_ids=replayed.delivery_ids, sent=sent, reason=reason,
        method=request.method, url=mask_url(request.url),
    )


def choose(letter: DeadLetter, fresh: WebhookRequest | str) -> tuple[WebhookRequest, Sent, str]:
    """The request to send again — the stored one or the fresh rendering — and why."""
    stored = letter.request
    if isinstance(fresh, str):
        return stored, "stored", f"sent as stored: {fresh}"
    if (fresh.method, fresh.url) != (stored.method, stored.url):
        return fresh, "rerendered", (
            f"re-rendered from the campaign's current action, which sends {fresh.method} "
            f"{mask_url(fresh.url)} where the stored request went to {stored.method} "
            f"{mask_url(stored.url)}"
        )
    if (fresh.headers, fresh.body) == (stored.headers, stored.body):
        return stored, "stored", "sent as stored: the campaign's action renders the same request"
    if letter.status in CANNOT_SUCCEED:
        return fresh, "rerendered", (
            f"re-rendered from the campaign's current action: the stored request was "
            f"{letter.status} and would be again, and the action changed since"
        )
    return stored, "stored", (
        "sent as stored: the endpoint is the same and the stored request failed only on "
        "errors another attempt can get past"
    )


async def rerender(runtime: Runtime, stored: WebhookRequest) -> WebhookRequest | str:
    """The campaign's current action for the stored request's user and event, or why not."""
    if stored.campaign_id not in runtime.engine.rules.campaigns:
        return f"campaign {stored.campaign_id!r} no longer exists"
    state = await runtime.users.state(stored.user_key)
    if state is None:
        return "its user is no longer known"
    now = time.time()
    event = await _event_of(runtime, stored, now)
    try:
        fresh = runtime.engine.preview(
            stored.campaign_id, state, now, event, variant_id=stored.variant_id
        )
    except Suppressed as suppressed:
        return (
            f"the campaign's current action cannot be rendered for it "
            f"({suppressed.reason}: {suppressed.detail})"
        )
    return msgspec.structs.replace(fresh, webhook_id=stored.webhook_id)


async def _event_of(runtime: Runtime, stored: WebhookRequest, now: float) -> Event:
    """The triggering event, from the user's recent events; else a stand-in with its id."""
    view = await runtime.users.lookup(stored.user_key, now)
    for message in view.recent_events if view is not None else ():
        if message.get("messageId") == stored.event_id:
            try:
                return decode_recorded(orjson.dumps(message), "$")[0]
            except HTTPError:
                break
    return Event(
        type="track", name="", message_id=stored.event_id,
        timestamp=stored.created_at, received_at=stored.created_at,
    )
