"""Identity resolution shared by both stores: which ids an event names, and who owns a profile.

Ids are namespaced (`a:` anonymous, `u:` user) so an anonymous id can never collide with a
user id. A profile's key is fixed when it is created; later ids are pointed at it.
"""

from __future__ import annotations

from collector.events import Event


def anonymous(anonymous_id: str) -> str:
    """The index entry for an anonymous id."""
    return f"a:{anonymous_id}"


def user(user_id: str) -> str:
    """The index entry for a user id."""
    return f"u:{user_id}"


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
