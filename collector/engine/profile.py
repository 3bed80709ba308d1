"""Per-user state: identity, traits, session, variables, segments, caps, timers and decisions.

`UserState` is a tree of msgspec Structs holding only plain types (str, int, float, None, lists
and dicts of them), so both stores can keep it as is: the memory store holds the objects, the
Redis store encodes them with msgspec msgpack. The engine mutates the state it is handed and
returns it; the store owns it between events.

Variable state is `variables[name]`: a tuple whose layout belongs to the variable's statistic
(see `collector.engine.variables`); only the engine's rules know how to read or merge it, so `merge`
takes the rules' variable merger.

Merging two profiles of one person (identity merge): counts and caps add up (per-session cap
counts are the newer profile's, whose session is the one kept), traits merge with the newer
profile winning, variables merge as their statistic allows, decision histories interleave by
time (the newest MAX_DECISIONS kept per campaign), pending timers are the union (the
later-armed one per campaign), the spacing clock is the one of the latest spaced delivery, goal
enrolments keep the earliest per campaign (results count profiles: a person counted under two
profiles before they were joined stays counted in both), and segment memberships are the union
(so nobody "enters" a segment only because two halves of their profile were joined). "Newer" is
the profile seen last.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Final, Literal

import msgspec

from collector.engine.values import Value

State = tuple[Value, ...]  # one variable's state; its layout is set by the variable's statistic

DecisionOutcome = Literal["fired", "suppressed"]
FIRED: Final = "fired"
SUPPRESSED: Final = "suppressed"
MAX_ANONYMOUS_IDS = 8  # the most recent anonymous ids kept per profile
MAX_EVENT_NAMES = 100  # distinct event names counted per profile
MAX_DECISIONS = 5  # decisions kept per campaign for "why did it not fire?", newest first


# gc=False on every struct here: they hold only plain values, never a struct of their own tree,
# so no reference cycle can run through them. Untracked, each instance is 16 bytes smaller and
# the cyclic collector never walks the millions of them a busy memory-mode process holds.


class Session(msgspec.Struct, array_like=True, gc=False):
    """The user's current session; `number` counts sessions from 1."""

    # Empty: the id is derived when read (`session_id`) from what the session holds, so a
    # profile does not carry 19 bytes it can compute; profiles of earlier versions hold it.
    id: str
    number: int
    start: float
    last: float  # last activity


def session_id(key: str, session: Session) -> str:
    """A session's id (`#{session_id}`): stable for the session, different for the next."""
    if session.id:
        return session.id
    start = session.start
    digest = hashlib.blake2b(f"{key}\x1f{session.number}\x1f{start!r}".encode(), digest_size=8)
    return f"s_{digest.hexdigest()}"


class Decision(msgspec.Struct, array_like=True, frozen=True, gc=False, omit_defaults=True):
    """What happened to one campaign on one event: fired, or suppressed with a reason."""

    campaign_id: str
    variant_id: str | None
    outcome: DecisionOutcome
    reason: str | None  # None when fired
    at: float
    detail: str | None = None  # what the reason is about: the placeholder missing, the header


class Verdict(msgspec.Struct, array_like=True, frozen=True, gc=False, omit_defaults=True):
    """The latest decision about one campaign, as a profile keeps it (keyed by campaign id)."""

    # Campaigns decided alike on one event share one Verdict (typically all those behind a
    # closed gate), so a profile holds a few small objects however many campaigns it meets.
    variant_id: str | None
    reason: str | None  # None when fired
    at: float
    # What the reason is about, when there is more to say: the placeholder with no value
    # (`missing_variable`), the header (`invalid_header`). Kept only when set.
    detail: str | None = None

    @property
    def outcome(self) -> DecisionOutcome:
        """"fired" or "suppressed"."""
        return FIRED if self.reason is None else SUPPRESSED


class Caps(msgspec.Struct, array_like=True, gc=False):
    """Fired deliveries of one campaign: in total, in session `session`, on local day `day`."""

    total: int = 0
    session: int = 0
    in_session: int = 0
    day: int = 0
    in_day: int = 0


class Spaced(msgspec.Struct, array_like=True, gc=False):
    """Project-wide spacing: when the user's latest spaced campaign fired, page views since."""

    at: float
    page_views: int = 0


class Timer(msgspec.Struct, array_like=True, gc=False):
    """A pending absence trigger: `campaign_id` fires at `due` unless cancelled first."""

    campaign_id: str
    due: float
    armed_at: float
    event_id: str  # messageId of the `after` event: the webhook's event, and its id's seed
    properties: dict[str, Value] = {}  # the `after` event's properties, for its templates


class Enrolment(msgspec.Struct, array_like=True, gc=False):
    """A user's arm in a campaign with a goal: which, since when, and whether they converted."""

    arm: str  # variant id, or results.SOLE / results.CONTROL
    at: float  # event time of the first assignment
    converted: bool = False


class Tally(msgspec.Struct, array_like=True, gc=False):
    """Deliveries of one campaign across every user: in total, and on local day `day`."""

    total: int = 0
    day: int = 0
    in_day: int = 0


class UserState(msgspec.Struct, array_like=True, kw_only=True, gc=False):
    """Everything the engine knows about one user.

    Encoded as an array of its fields in this order, without their names: a profile is read
    and written on every event, and is what memory mode holds per visitor, so the names would
    be a sixth of its bytes and more of the work. New fields therefore go at the end (an array
    written before they existed decodes with their defaults), and none is moved or removed.
    Older versions wrote a map of the fields by name: `decode_state` reads both forms.
    """

    key: str  # the store's key for this profile; also seeds sticky rate/variant assignment
    user_id: str | None = None
    # Oldest first, at most MAX_ANONYMOUS_IDS; encoded as "anonymous_ids", and read or set as a
    # list through that property. Kept as a tuple because the cyclic GC stops tracking a tuple
    # of strings, where a list per profile would be walked by every full collection: in a big
    # memory-mode store, those lists were most of what the collector walked.
    anonymous: tuple[str, ...] = msgspec.field(default=(), name="anonymous_ids")
    traits: dict[str, Value] = {}
    first_seen: float = 0.0
    last_seen: float = 0.0
    event_counts: dict[str, int] = {}  # lifetime count per event name, at most MAX_EVENT_NAMES
    session: Session | None = None
    variables: dict[str, State] = {}  # per maintained variable, layout set by its stat
    # rarely needed, so None until first used (an empty container still costs 56-64 bytes)
    segments: list[str] | None = None  # tracked segments (named by segment_entered) the user is in
    caps: dict[str, Caps] | None = None  # per campaign with frequency caps
    decisions: dict[str, Verdict] = {}  # latest decision per campaign
    # Earlier decisions per campaign, newest first, at most MAX_DECISIONS - 1, kept only once a
    # campaign's outcome changed: consecutive decisions alike (same outcome, reason and variant)
    # are one entry, stamped with the latest time, so most profiles never need this.
    history: dict[str, tuple[Verdict, ...]] | None = None
    page: dict[str, Value] | None = None  # latest page (path, url, title, referrer, search)
    spacing: Spaced | None = None  # only with project-wide spacing, once a spaced campaign fired
    timers: list[Timer] | None = None  # pending absence triggers, at most one per campaign
    goals: dict[str, Enrolment] | None = None  # per campaign with a goal, once assigned

    @property
    def anonymous_ids(self) -> list[str]:
        """The anonymous ids seen, oldest first (a copy: assign a new list to change them)."""
        return list(self.anonymous)

    @anonymous_ids.setter
    def anonymous_ids(self, ids: list[str]) -> None:
        self.anonymous = tuple(ids)


def _by_name(form: type[UserState]) -> type[msgspec.Struct]:
    """The fields of `form` encoded as a map by name, as versions before the array form did."""
    fields = [
        (f.name, f.type, msgspec.field(default=f.default, name=f.encode_name))
        if f.default_factory is msgspec.NODEFAULT
        else (f.name, f.type, msgspec.field(default_factory=f.default_factory, name=f.encode_name))
        for f in msgspec.structs.fields(form)
    ]
    return msgspec.defstruct(
        "UserStateByName", fields, kw_only=True, omit_defaults=True, gc=False, module=__name__
    )


UserStateByName = _by_name(UserState)
"""A profile as versions before the array form encoded it: a map of the fields by name."""

encode_state = msgspec.msgpack.Encoder().encode
"""A profile as stored: a msgpack array of its fields (OverflowError past 64-bit integers)."""
_decode_array = msgspec.msgpack.Decoder(UserState).decode
_decode_map = msgspec.msgpack.Decoder(UserStateByName).decode
_MAP_HEADS = frozenset((*range(0x80, 0x90), 0xDE, 0xDF))  # how a msgpack map begins
_decode_json_map = msgspec.json.Decoder(UserStateByName).decode
_decode_json_array = msgspec.json.Decoder(UserState).decode


def decode_state(data: bytes | msgspec.Raw) -> UserState:
    """A stored profile (msgpack), in the array form written now or the map form written before."""
    if memoryview(data)[0] in _MAP_HEADS:
        return by_name(_decode_map(data))
    return _decode_array(data)


def decode_json_state(data: bytes | msgspec.Raw) -> UserState:
    """A profile stored as JSON (one holding an integer past 64 bits), in either form."""
    if bytes(data).lstrip()[:1] == b"{":
        return by_name(_decode_json_map(data))
    return _decode_json_array(data)


def by_name(state: msgspec.Struct) -> UserState:
    """A profile decoded from the map form, as a `UserState`."""
    return UserState(**msgspec.structs.asdict(state))


VariableMerger = Callable[[str, State, State, bool], State]
"""Merge two states of one variable: (name, a, b, a_is_newer) -> merged."""


def new_state(key: str, now: float = 0.0) -> UserState:
    """A fresh profile for `key`, first seen at `now`."""
    return UserState(key=key, first_seen=now, last_seen=now)


def merge(a: UserState, b: UserState, merge_variable: VariableMerger) -> UserState:
    """Combine two profiles of one person; the result keeps `a.key` and answers to both ids."""
    a_newer = a.last_seen >= b.last_seen
    newer, older = (a, b) if a_newer else (b, a)
    anonymous = [i for i in older.anonymous if i not in newer.anonymous]
    anonymous.extend(newer.anonymous)
    counts = dict(a.event_counts)
    for name, count in b.event_counts.items():
        if name in counts or len(counts) < MAX_EVENT_NAMES:
            counts[name] = counts.get(name, 0) + count
    variables = dict(b.variables)
    for name, value in a.variables.items():
        other = variables.get(name)
        variables[name] = value if other is None else merge_variable(name, value, other, a_newer)
    caps = {cid: _outside_session(c) for cid, c in (older.caps or {}).items()}
    for campaign_id, current in (newer.caps or {}).items():
        previous = caps.get(campaign_id)
        caps[campaign_id] = current if previous is None else _merge_caps(current, previous)
    decisions: dict[str, Verdict] = {}
    history: dict[str, tuple[Verdict, ...]] = {}
    for campaign_id in {**older.decisions, **newer.decisions}:
        both = sorted(
            (*decision_history(older, campaign_id), *decision_history(newer, campaign_id)),
            key=lambda verdict: verdict.at,
            reverse=True,
        )
        decisions[campaign_id] = both[0]
        if len(both) > 1:
            history[campaign_id] = tuple(both[1:MAX_DECISIONS])
    timers: dict[str, Timer] = {}
    for timer in (*(older.timers or ()), *(newer.timers or ())):
        kept_timer = timers.get(timer.campaign_id)
        if kept_timer is None or timer.armed_at >= kept_timer.armed_at:
            timers[timer.campaign_id] = timer
    spacings = [s for s in (a.spacing, b.spacing) if s is not None]
    goals = dict(older.goals or {})
    for campaign_id, enrolment in (newer.goals or {}).items():
        kept_enrolment = goals.get(campaign_id)
        if kept_enrolment is None or enrolment.at < kept_enrolment.at:
            goals[campaign_id] = enrolment  # the first assignment stands
    return UserState(
        key=a.key,
        user_id=newer.user_id or older.user_id,
        anonymous=tuple(anonymous[-MAX_ANONYMOUS_IDS:]),
        traits={**older.traits, **newer.traits},
        first_seen=min(a.first_seen, b.first_seen),
        last_seen=max(a.last_seen, b.last_seen),
        event_counts=counts,
        session=newer.session or older.session,
        variables=variables,
        segments=sorted(set(a.segments or ()) | set(b.segments or ())) or None,
        caps=caps or None,
        decisions=decisions,
        history=history or None,
        page=newer.page or older.page,
        spacing=max(spacings, key=lambda s: s.at) if spacings else None,
        timers=sorted(timers.values(), key=lambda t: t.due) or None,
        goals=goals or None,
    )


def decision_history(state: UserState, campaign_id: str) -> tuple[Verdict, ...]:
    """The decisions kept about one campaign, newest first (empty when none)."""
    latest = state.decisions.get(campaign_id)
    if latest is None:
        return ()
    earlier = state.history.get(campaign_id) if state.history is not None else None
    return (latest, *earlier) if earlier else (latest,)


def remember(state: UserState, campaign_id: str, verdict: Verdict) -> None:
    """Record the newest decision about a campaign, keeping the last few distinct ones."""
    latest = state.decisions
    previous = latest.get(campaign_id)
    latest[campaign_id] = verdict
    if previous is None or (
        previous.reason == verdict.reason and previous.variant_id == verdict.variant_id
    ):
        return
    history = state.history
    if history is None:
        history = state.history = {}
    earlier = history.get(campaign_id, ())
    history[campaign_id] = (previous, *earlier[: MAX_DECISIONS - 2])


def next_due(state: UserState) -> float | None:
    """When the user's earliest pending timer is due, or None without timers."""
    timers = state.timers
    return min(t.due for t in timers) if timers else None


def _outside_session(caps: Caps) -> Caps:
    # the older profile's session numbers mean nothing in the newer one's session count
    return Caps(caps.total, -1, 0, caps.day, caps.in_day)


def _merge_caps(newer: Caps, older: Caps) -> Caps:
    """Totals and same-day counts add up; the session count is the newer profile's."""
    if newer.day == older.day:
        day, in_day = newer.day, newer.in_day + older.in_day
    else:
        day, in_day = max((newer.day, newer.in_day), (older.day, older.in_day))
    return Caps(newer.total + older.total, newer.session, newer.in_session, day, in_day)
