"""A rendered webhook request: what the campaign engine hands to delivery through the outbox."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec


class WebhookRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One webhook to send, fully rendered; delivery adds signatures and sends it."""

    webhook_id: str  # stable across retries and duplicate events (see webhook_id_for)
    campaign_id: str
    variant_id: str | None
    user_key: str  # the profile key of the user the webhook is about
    event_id: str  # messageId of the triggering event
    method: str  # GET POST PUT PATCH DELETE
    url: str  # templated and URL-encoded; for GET the body is merged into its query by delivery
    headers: dict[str, str]  # templated; CR/LF already rejected
    body: Any  # JSON-compatible value (usually a dict), or None
    created_at: float  # epoch seconds when the engine decided to fire


def webhook_id_for(
    campaign_id: str, variant_id: str | None, message_id: str, sender: str | None = None
) -> str:
    """Derive the `webhook-id`: the same campaign, variant and event always give the same id.

    The event is its messageId from its sender (user id, else anonymous id), as for dedupe.
    """
    text = f"{campaign_id}\x1f{variant_id or ''}\x1f{message_id}"
    if sender:
        text += f"\x1f{sender}"
    digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    return f"msg_{digest}"
