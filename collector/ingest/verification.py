"""Identity verification: the user ids the collector believes.

The write key is public (it is in every page), so without verification anyone can send events
as any user id. With `identity.secrets` set, the site's server signs the id of the user it
logged in — `userHash = hex(HMAC-SHA256(secret, userId))` — and hands it to the tag
(`tripwire("identify", userId, traits, userHash)`), which sends it in `context.userHash` with
every message. A message sent with a public write key is then refused when:

- it names a `userId` without a `userHash` that one of the secrets gives for it;
- it is an alias whose `previousId` is not its own `anonymousId` (a browser may alias only
  itself to its signed user).

Messages sent with one of `identity.server_write_keys` (kept on the site's servers, where user
ids come from the site's own sessions) are believed as sent. The hash is taken out of every
accepted message's context (verification on or not), so it is never stored, shown or
templated: whoever holds it can act as that user.

    check = IdentityCheck(settings.identity)
    if check.on and not check.trusted(write_key):
        event, problem = check.verify(event)     # problem: "<path suffix>: why", or None
"""

from __future__ import annotations

import hashlib
import hmac

import msgspec

from collector.config.schema import IdentitySettings
from collector.events import Event

HASH_FIELD = "userHash"


def user_hash(secret: str, user_id: str) -> str:
    """What the site's server computes for a user id: hex HMAC-SHA256 under the secret."""
    return hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()


def without_hashes(events: list[Event]) -> list[Event]:
    """The events with `context.userHash` taken out (the same list when none has one)."""
    for event in events:
        if HASH_FIELD in event.context:
            return [_without_hash(event) for event in events]
    return events


def _without_hash(event: Event) -> Event:
    if HASH_FIELD not in event.context:
        return event
    context = {k: v for k, v in event.context.items() if k != HASH_FIELD}
    return msgspec.structs.replace(event, context=context)


class IdentityCheck:
    """Believes a user id signed with one of the secrets, or sent with a server write key."""

    def __init__(self, settings: IdentitySettings) -> None:
        self._secrets = [s.encode() for s in settings.secrets]
        self._server_keys = frozenset(settings.server_write_keys)
        self.on = bool(self._secrets)

    def trusted(self, write_key: str | None) -> bool:
        """Whether ids sent with this write key are believed unsigned."""
        return write_key in self._server_keys

    def verify(self, event: Event) -> tuple[Event, str | None]:
        """The event without its hash, and why it is refused (a path suffix and reason), or
        None when it may be accepted."""
        given = event.context.get(HASH_FIELD)
        event = _without_hash(event)
        if event.previous_id is not None and event.previous_id != event.anonymous_id:
            return event, (
                ".previousId: identity verification is on; a browser may alias only its own "
                "anonymousId"
            )
        if event.user_id is None:
            return event, None
        if not isinstance(given, str) or not given:
            return event, (
                f".context.{HASH_FIELD}: userId {event.user_id!r} is not signed (identity "
                "verification is on: the site signs its user ids)"
            )
        if not self._matches(event.user_id, given):
            return event, f".context.{HASH_FIELD}: not the signature of userId {event.user_id!r}"
        return event, None

    def _matches(self, user_id: str, given: str) -> bool:
        data = user_id.encode()
        expected = (hmac.new(s, data, hashlib.sha256).hexdigest() for s in self._secrets)
        text = given.lower().encode("utf-8", "surrogatepass")
        return any(hmac.compare_digest(e.encode(), text) for e in expected)
