"""Standard Webhooks signatures: `webhook-id`, `webhook-timestamp` and `webhook-signature` headers.

    signer = Signer(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
    headers = signer.headers("msg_1", 1_700_000_000, b'{"a":1}')

The signature is `v1,` + base64(HMAC-SHA256(key, "<id>.<timestamp>.<body>")), one entry per
configured secret, space-separated, so receivers holding either secret verify during a rotation.
A secret is `whsec_<base64 key>`; the key is the decoded part.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from collector.config.secrets import InvalidSecret, decode_secret

__all__ = ["InvalidSecret", "Signer", "decode_secret"]


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
