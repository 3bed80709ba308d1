"""Signatures as a Standard Webhooks receiver checks them (the `standardwebhooks` package)."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from collector.delivery.signing import InvalidSecret, Signer

OLD_SECRET = "whsec_" + base64.b64encode(b"old secret key bytes 0123456789").decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"new secret key bytes 9876543210").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"somebody else's key").decode()
BODY = b'{"user_id":"u-1","viewed_path":"/cart","spent":42}'


def test_receiver_verifies_the_signature_and_gets_the_body_back() -> None:
    headers = Signer([NEW_SECRET]).headers("msg_abc", int(time.time()), BODY)
    assert Webhook(NEW_SECRET).verify(BODY, headers) == {
        "user_id": "u-1",
        "viewed_path": "/cart",
        "spent": 42,
    }


def test_during_rotation_receivers_with_either_secret_verify() -> None:
    headers = Signer([OLD_SECRET, NEW_SECRET]).headers("msg_abc", int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(OLD_SECRET).verify(BODY, headers)
    Webhook(NEW_SECRET).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_SECRET).verify(BODY, headers)


def test_a_tampered_body_or_id_does_not_verify() -> None:
    headers = Signer([NEW_SECRET]).headers("msg_abc", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(NEW_SECRET).verify(BODY.replace(b"42", b"43"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(NEW_SECRET).verify(BODY, {**headers, "webhook-id": "msg_other"})


def test_without_secrets_the_id_and_timestamp_are_still_sent() -> None:
    headers = Signer([]).headers("msg_abc", 1_700_000_000, BODY)
    assert headers == {"webhook-id": "msg_abc", "webhook-timestamp": "1700000000"}


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_", "whsec_@@@@"])
def test_malformed_secrets_are_rejected_when_the_signer_is_built(secret: str) -> None:
    with pytest.raises(InvalidSecret):
        Signer([secret])
