"""Identity resolution shared by both stores: which ids an event names, and who owns a profile.

Ids are namespaced (`a:` anonymous, `u:` user) so an anonymous id can never collide with a
user id. A profile's key is fixed when it is created; later ids are pointed at it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import NamedTuple

from collector.events import Event


def anonymous(anonymous_id: str) -> str:
    """The index entry for an anonymous id."""
    return f"a:{anonymous_id}"


def user(user_id: str) -> str:
    """The index entry for a user id."""
    return f"u:{user_id}"


def dedupe_key(event: Event) -> bytes:
    """What a message is deduplicated by: its messageId from its sender, as a 16-byte digest.

    The sender is the user id, else the anonymous id, so one user's messageId never hides
    another user's message, and a long messageId costs no more to remember than a short one.
    """
    sender = event.user_id or event.anonymous_id or ""
    return hashlib.blake2b(f"{sender}\x1f{event.message_id}".encode(), digest_size=16).digest()


def ids_of(event: Event) -> list[str]:
    """The index entries an event names, the user id first (it wins when profiles merge)."""
    ids: list[str] = []
    if event.user_id:
        ids.append(user(event.user_id))
    if event.anonymous_id:
        ids.append(anonymous(event.anonymous_id))
    if event.previous_id:
        # An alias's previousId is an anonymous id or an earlier user id; link whichever exists.
        ids.extend((user(event.previous_id), anonymous(event.previous_id)))
    return ids


def lookup_ids(identity: str) -> list[str]:
    """Index entries to try for an admin lookup by a bare id, a namespaced id or a key."""
    if identity.startswith(("a:", "u:")):
        return [identity]
    return [user(identity), anonymous(identity)]


def new_key(event: Event) -> str:
    """The key of a profile first seen with this event."""
    return ids_of(event)[0]


class Resolution(NamedTuple):
    """Where an event's data goes: the profile key, profiles to merge into it, ids to link."""

    key: str
    merge: list[str]  # keys of other profiles that turned out to be the same person
    link: list[str]  # index entries to point at `key`


def resolve(
    event: Event, owner: Callable[[str], str | None], user_of: Callable[[str], str | None]
) -> Resolution:
    """Decide which profile an event belongs to, given who owns each id and each profile's user.

    - A user id's profile wins. An anonymous profile seen with it joins it (merge) unless it
      already belongs to another user: then the browser changed hands, and only the anonymous
      id moves to the new user.
    - A new user id on an anonymous profile makes that profile the user's.
    - An alias merges the profile of `previousId` (an anonymous id, or a user id) into the
      user's — unless that profile belongs to another user: alias never merges two known
      users, and the other user's ids stay theirs (not linked), so an alias cannot take over
      someone's identity.
    """
    if not event.user_id and not event.previous_id:  # most events: an anonymous visitor
        if not event.anonymous_id:
            return Resolution(anonymous(event.message_id), [], [])
        entry = anonymous(event.anonymous_id)
        return Resolution(owner(entry) or entry, [], [entry])
    user_key = owner(user(event.user_id)) if event.user_id else None
    anonymous_key = owner(anonymous(event.anonymous_id)) if event.anonymous_id else None
    merge: list[str] = []
    if event.user_id:
        if user_key is not None:
            key = user_key
            if anonymous_key not in (None, key) and user_of(anonymous_key) in (None, event.user_id):
                merge.append(anonymous_key)
        elif anonymous_key is not None and user_of(anonymous_key) in (None, event.user_id):
            key = anonymous_key
        else:
            key = user(event.user_id)
    else:
        key = anonymous_key or anonymous(event.anonymous_id or event.message_id)
    link = ids_of(event)
    if event.previous_id:
        claimant = event.user_id or user_of_key(key, user_of)
        for id_ in (user(event.previous_id), anonymous(event.previous_id)):
            previous = owner(id_)
            if previous is None or previous == key or previous in merge:
                continue
            if user_of(previous) not in (None, claimant):  # another known user's profile
                link.remove(id_)
                continue
            merge.append(previous)
    return Resolution(key, merge, link)


def user_of_key(key: str, user_of: Callable[[str], str | None]) -> str | None:
    """The user a profile key belongs to: its profile's, or the user id it was made from."""
    try:
        found = user_of(key)
    except KeyError:  # no profile under this key yet
        found = None
    return found or (key[2:] if key.startswith("u:") else None)
