"""Standard Webhooks signatures: `webhook-id`, `webhook-timestamp` and `webhook-signature` headers.

    signer = Signer(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
    headers = signer.headers("msg_1", 1_700_000_000, b'{"a":1}')

The signature is `v1,` + base64(HMAC-SHA256(key, "<id>.<timestamp>.<payload>")), one entry per
configured secret, space-separated, so receivers holding either secret verify during a rotation.
A secret is `whsec_<base64 key>`; the key is the decoded part.

The payload is what the request carries: its body when it has one; a request without a body (a
GET, whose data travels in the query string, or another method with no body) signs its request
target instead — the path and query exactly as on the request line — as a JSON string, so what
a receiver reads from the URL is covered and a Standard Webhooks library verifies it as it is:

    Webhook(secret).verify(json.dumps("/hook?user=u-1&plan=pro"), headers)  # -> the target
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

import orjson

from collector.config.secrets import InvalidSecret, decode_secret

__all__ = ["InvalidSecret", "Signer", "decode_secret"]


def signed_payload(target: bytes, body: bytes) -> bytes:
    """What a request's signature covers: its body, or without one its request target as JSON.

    `target` is the path and query as sent (`/hook?user=u-1`), already percent-encoded ASCII.
    """
    if body:
        return body
    return orjson.dumps(target.decode("latin-1"))


class Signer:
    """Signs webhook payloads with every configured secret; keys are decoded once."""

    __slots__ = ("_macs",)

    def __init__(self, secrets: Sequence[str]) -> None:
        self._macs = tuple(hmac.new(decode_secret(s), digestmod=hashlib.sha256) for s in secrets)

    def signature(self, webhook_id: str, timestamp: int, body: bytes) -> str:
        """Return the `webhook-signature` value (empty when no secret is configured)."""
        content = b"%s.%d.%s" % (webhook_id.encode(), timestamp, body)
        entries = []
        for template in self._macs:
            mac = template.copy()
            mac.update(content)
            entries.append("v1," + base64.b64encode(mac.digest()).decode())
        return " ".join(entries)

    def headers(self, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """Return the three Standard Webhooks headers for one attempt."""
        headers = {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp)}
        if self._macs:
            headers["webhook-signature"] = self.signature(webhook_id, timestamp, body)
        return headers
