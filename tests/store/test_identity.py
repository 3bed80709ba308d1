"""Which profile an event belongs to: identify, alias and a browser that changes hands."""

from __future__ import annotations

from collector.events import Event
from collector.store.identity import resolve


def event(
    anonymous_id: str | None = None, user_id: str | None = None, previous_id: str | None = None
) -> Event:
    return Event(
        type="alias" if previous_id else "track",
        name="E",
        message_id="m",
        anonymous_id=anonymous_id,
        user_id=user_id,
        previous_id=previous_id,
        timestamp=0.0,
        received_at=0.0,
    )


class Profiles:
    """A tiny index: id -> profile key, profile key -> user id."""

    def __init__(self, owners: dict[str, str], users: dict[str, str | None]) -> None:
        self.owners = owners
        self.users = users

    def resolve(self, e: Event) -> tuple[str, list[str]]:
        found = resolve(e, self.owners.get, self.users.get)
        return found.key, found.merge


def test_a_new_visitor_gets_a_profile_of_their_own() -> None:
    assert Profiles({}, {}).resolve(event("v1")) == ("a:v1", [])


def test_identify_turns_the_anonymous_profile_into_the_users() -> None:
    profiles = Profiles({"a:v1": "a:v1"}, {"a:v1": None})
    assert profiles.resolve(event("v1", "ann")) == ("a:v1", [])


def test_anonymous_history_joins_a_known_user() -> None:
    profiles = Profiles({"a:v1": "a:v1", "u:ann": "u:ann"}, {"a:v1": None, "u:ann": "ann"})
    assert profiles.resolve(event("v1", "ann")) == ("u:ann", ["a:v1"])


def test_a_browser_that_changes_hands_does_not_join_two_users() -> None:
    profiles = Profiles({"a:v1": "u:ann", "u:ann": "u:ann"}, {"u:ann": "ann"})
    assert profiles.resolve(event("v1", "bob")) == ("u:bob", [])


def test_alias_never_merges_two_known_users_nor_links_the_others_id() -> None:
    profiles = Profiles({"u:old": "u:old", "u:new": "u:new"}, {"u:old": "old", "u:new": "new"})
    found = resolve(event(user_id="new", previous_id="old"), profiles.owners.get,
                    profiles.users.__getitem__)
    assert (found.key, found.merge) == ("u:new", [])
    assert "u:old" not in found.link  # "old" still finds its own profile


def test_alias_from_a_new_user_cannot_take_a_known_users_profile() -> None:
    profiles = Profiles({"u:victim": "u:victim"}, {"u:victim": "victim"})
    found = resolve(event("fresh", user_id="attacker", previous_id="victim"),
                    profiles.owners.get, profiles.users.__getitem__)
    assert (found.key, found.merge) == ("u:attacker", [])
    assert "u:victim" not in found.link


def test_alias_of_a_user_id_no_other_user_holds_merges_it() -> None:
    profiles = Profiles({"a:v1": "a:v1", "u:ann": "u:ann"}, {"a:v1": None, "u:ann": "ann"})
    assert profiles.resolve(event(user_id="ann", previous_id="v1")) == ("u:ann", ["a:v1"])


def test_alias_of_an_anonymous_id_merges_it() -> None:
    profiles = Profiles({"a:v1": "a:v1", "u:ann": "u:ann"}, {"a:v1": None, "u:ann": "ann"})
    assert profiles.resolve(event(user_id="ann", previous_id="v1")) == ("u:ann", ["a:v1"])
