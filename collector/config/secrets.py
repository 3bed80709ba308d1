"""Webhook signing secrets as the config gives them: `whsec_` followed by a base64 key."""

from __future__ import annotations

import base64
import binascii

_PREFIX = "whsec_"


class InvalidSecret(ValueError):
    """A signing secret is not `whsec_` followed by base64."""


def decode_secret(secret: str) -> bytes:
    """Return the HMAC key of a `whsec_<base64>` secret (the prefix is optional)."""
    encoded = secret.removeprefix(_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidSecret("signing secret must be 'whsec_' followed by base64") from exc
    if not key:
        raise InvalidSecret("signing secret is empty")
    return key
