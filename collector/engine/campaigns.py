"""Campaigns compiled for the delivery decision, checked in the seed's order.

The campaign's `Gate` (shared by campaigns configured alike), then `Campaign.qualify`, run the
per-campaign steps for one event and give the `Arm` to fire or the reason it is suppressed:

    status      the campaign is not `published`
    schedule    outside start/end, days or hours (configured timezone)
    target      users: `members` need a user id, `visitors` must have none
    not_in_segment  not in every one of `target.segments`
    trigger     the trigger's `where` is false for this event (counted, not kept per user:
                see `Missed`)
    test_mode   a test-mode campaign and the user does not match `test_users`
    control_group   the user's sticky bucket is outside the rate / every variant
    frequency   a cap is reached
    spacing     project-wide spacing: another campaign fired for this user too recently

The first four steps form the campaign's `Gate`. Campaigns configured alike (the same status,
schedule, target users and segments; typically many campaigns on one audience) share one Gate,
so the engine checks it once per event however many campaigns stand behind it; `qualify` runs
the remaining steps. Exclusivity (`exclusive`) spans campaigns, so the engine settles it;
rendering may still suppress with `missing_variable` or `invalid_header` (see
`collector.engine.templates`).

Rate and variants: each user gets a sticky bucket 0..9999 per campaign, from a blake2b hash of
the campaign id and the profile key. Variant `i` owns the buckets after the rates of the
variants before it; `rate: 30` owns buckets 0..2999. Frequency (SPEC §6, the seed's base
frequency): `per: user` fires at most once per user, `per: session` at most once per session,
`per: event` on every matching event; no `per` (or no `frequency`) means once per session.
`max_total` caps the user's deliveries across all time and `max_per_day` per local day, on top
of the base frequency. Only fired deliveries count. The counts live in the user's state, which
both stores update atomically per user, so two processes cannot both fire a once-only campaign.

Stop conditions (`stop`) count every user's deliveries, so the store holds their tallies and
the engine checks them before `qualify` (`stopped`): `max_deliveries` or
`max_deliveries_per_day` (the local day of the decision's `now`) is the reason.

Trigger misses: an event that does not match a campaign's trigger is one the campaign is not
about, so it leaves no Decision and no Verdict in the profile; the campaign's `Missed` is
counted instead, one count per event however many campaigns it names. A trigger whose `where`
is one text equality on the event (`{context: page.path, eq: /products/7}`, `prop` alike) has
a `key`: the rules look such campaigns up by the event's value (`collector.engine.rules`), so
an event with another value misses them before their gate is checked, at no cost per campaign.

Absence triggers (`trigger.after`) are not indexed by event: the `after` event arms a timer in
the user's state (if the trigger's `where` holds) and the `unless` event cancels it; when the
timer is due the campaign is decided like any other, on the state as it is then.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from itertools import groupby
from operator import attrgetter

from collector.config.schema import DEFAULT_PER, CampaignSpec, Leaf
from collector.engine.goals import Goal, arm_key
from collector.engine.profile import Caps, Spaced, Tally
from collector.engine.results import CONTROL
from collector.engine.schedule import CompiledSchedule
from collector.engine.scope import Predicate, Scope
from collector.engine.templates import ActionTemplate

BUCKETS = 10_000


def sticky_bucket(campaign_id: str, user_key: str) -> int:
    """The user's bucket 0..9999 for a campaign: the same inputs always give the same bucket."""
    digest = hashlib.blake2b(f"{campaign_id}\x1f{user_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class Arm:
    """One way a campaign can fire: a variant (or the plain action) and its bucket range end."""

    __slots__ = ("end", "template", "variant_id")

    def __init__(self, variant_id: str | None, end: int, template: ActionTemplate) -> None:
        self.variant_id = variant_id
        self.end = end
        self.template = template


Label = tuple[str, str, str | None]  # a decision's (campaign id, outcome, reason)


class Missed:
    """Campaigns an event did not trigger, counted as a `trigger` suppression of each.

    Made when the rules are compiled and shared by every event, so counting one is a single
    increment keyed by the object itself (hashed by identity); the counts are spread over the
    campaigns' labels only when they are read (`collector.metrics`). `labels` may be shared by
    several: those of a lookup name every campaign it indexes, and spare the ones the value hit.
    """

    __slots__ = ("labels", "spared")

    def __init__(
        self, labels: tuple[Label, ...], spared: frozenset[str] = frozenset()
    ) -> None:
        self.labels = labels
        self.spared = spared

    def counted(self) -> Iterator[Label]:
        """The (campaign, "suppressed", "trigger") labels this miss counts once each."""
        spared = self.spared
        return (label for label in self.labels if label[0] not in spared)


def trigger_labels(campaign_ids: Iterable[str]) -> tuple[Label, ...]:
    """The labels a trigger miss of each campaign is counted under."""
    return tuple((cid, "suppressed", "trigger") for cid in campaign_ids)


IndexKey = tuple[str, str, str]  # ("context" or "prop", dotted path, the text it must equal)


def index_key(spec: CampaignSpec) -> IndexKey | None:
    """The (operand kind, path, text) a campaign's trigger requires of the event, when its
    `where` is a single text equality on the event; else None."""
    trigger = spec.trigger
    if trigger is None or trigger.after is not None or trigger.segment_entered is not None:
        return None
    where = trigger.where.root if trigger.where is not None else None
    if (
        isinstance(where, Leaf)
        and where.op == "eq"
        and where.kind in ("context", "prop")
        and where.value.__class__ is str
    ):
        return (where.kind, where.name, where.value)
    return None


class Gate:
    """The steps before the trigger (status, schedule, target users, segments), as one check."""

    __slots__ = ("always_open", "published", "schedule", "segments", "users")

    def __init__(
        self,
        published: bool,
        schedule: CompiledSchedule | None,
        users: str,
        segments: tuple[Predicate, ...],
    ) -> None:
        self.published = published
        self.schedule = schedule
        self.users = users
        self.segments = segments
        self.always_open = published and schedule is None and users == "all" and not segments

    def check(self, scope: Scope) -> str | None:
        """None when the gate is open for this event, else the reason it is closed."""
        if not self.published:
            return "status"
        if self.schedule is not None and not self.schedule.allows(
            scope.t, scope.weekday, scope.second_of_day
        ):
            return "schedule"
        users = self.users
        if users != "all" and (users == "members") != (scope.state.user_id is not None):
            return "target"
        for in_segment in self.segments:
            if not in_segment(scope):
                return "not_in_segment"
        return None


class Campaign:
    """A campaign ready for per-event decisions."""

    __slots__ = (
        "after",
        "arm_where",
        "arms",
        "exclusive",
        "gate",
        "goal",
        "has_caps",
        "id",
        "key",
        "max_per_day",
        "max_total",
        "missed",
        "name",
        "order",
        "per",
        "priority",
        "segment_entered",
        "spacing",
        "spec",
        "stop_day",
        "stop_total",
        "stops",
        "test_users",
        "trigger_event",
        "unless",
        "unless_where",
        "updated_at",
        "wait",
        "where",
        "whole",
    )

    def __init__(
        self,
        spec: CampaignSpec,
        *,
        arms: tuple[Arm, ...],
        gate: Gate,
        where: Predicate | None,
        test_users: Predicate | None,
        updated_at: float,
        order: int,
        spacing: tuple[float | None, int | None] | None = None,
        unless_where: Predicate | None = None,
        goal: Goal | None = None,
    ) -> None:
        self.spec = spec
        self.goal = goal  # A/B results are counted for it (see `collector.engine.goals`)
        self.id = spec.id
        self.name = spec.name
        self.gate = gate
        trigger = spec.trigger
        self.segment_entered = trigger.segment_entered if trigger is not None else None
        self.after = trigger.after if trigger is not None else None
        self.wait = float(trigger.wait or 0.0) if trigger is not None else 0.0
        unless = trigger.unless if trigger is not None else None
        self.unless = unless.event if unless is not None else None
        self.unless_where = unless_where
        self.trigger_event = (trigger.event if trigger is not None else None) or (
            None if self.segment_entered or self.after else "page"
        )
        # an absence trigger's `where` is about its `after` event: checked when arming the timer
        self.arm_where = where if self.after is not None else None
        self.where = None if self.after is not None else where
        self.key = index_key(spec)  # set: the rules look the campaign up by the event's value
        self.missed = Missed(trigger_labels((self.id,)))  # what a trigger miss counts
        self.spacing = spacing if spec.spacing else None
        self.stop_total = spec.stop.max_deliveries
        self.stop_day = spec.stop.max_deliveries_per_day
        self.stops = self.stop_total is not None or self.stop_day is not None
        self.test_users = (test_users or _nobody) if spec.test_mode else None
        self.arms = arms
        self.whole = len(arms) == 1 and arms[0].end >= BUCKETS  # no hashing needed
        frequency = spec.frequency
        self.per = (frequency.per if frequency is not None else None) or DEFAULT_PER
        self.max_total = frequency.max_total if frequency is not None else None
        self.max_per_day = frequency.max_per_day if frequency is not None else None
        self.has_caps = (
            self.per != "event" or self.max_total is not None or self.max_per_day is not None
        )
        self.exclusive = spec.exclusive
        self.priority = spec.priority
        self.updated_at = updated_at
        self.order = order

    def rank(self) -> tuple[float, float, int]:
        """Sort key for exclusivity: highest priority, then latest update, then config order."""
        return (-self.priority, -self.updated_at, self.order)

    def qualify(self, scope: Scope) -> Arm | str:
        """Once the gate is open, the arm to fire or why not: trigger, test users, rate, caps."""
        if self.where is not None and not self.where(scope):
            return "trigger"
        if self.test_users is not None and not self.test_users(scope):
            return "test_mode"
        arm = self.arms[0] if self.whole else self.pick(scope.state.key)
        if arm is None:
            return "control_group"
        if self.has_caps and self.capped(scope):
            return "frequency"
        if self.spacing is not None and self.spaced_out(scope):
            return "spacing"
        return arm

    def stopped(self, tally: Tally | None, day: int) -> str | None:
        """The stop condition reached by every user's deliveries so far, or None."""
        if tally is None:
            return None
        if self.stop_total is not None and tally.total >= self.stop_total:
            return "max_deliveries"
        if self.stop_day is not None and tally.day == day and tally.in_day >= self.stop_day:
            return "max_deliveries_per_day"
        return None

    def spaced_out(self, scope: Scope) -> bool:
        """Whether project-wide spacing forbids firing now (another campaign fired too recently)."""
        spaced = scope.state.spacing
        if spaced is None:
            return False
        seconds, page_views = self.spacing or (None, None)
        if seconds is not None and scope.t - spaced.at < seconds:
            return True
        return page_views is not None and spaced.page_views < page_views

    def pick(self, user_key: str) -> Arm | None:
        """The arm owning the user's sticky bucket, or None for the control group."""
        bucket = sticky_bucket(self.id, user_key)
        for arm in self.arms:
            if bucket < arm.end:
                return arm
        return None

    def assigned_arm(self, user_key: str) -> str:
        """The results key of the user's arm: a variant id, SOLE, or CONTROL."""
        arm = self.arms[0] if self.whole else self.pick(user_key)
        return CONTROL if arm is None else arm_key(arm.variant_id)

    def capped(self, scope: Scope) -> bool:
        """Whether a frequency cap forbids firing now."""
        every = scope.state.caps
        caps = every.get(self.id) if every is not None else None
        if caps is None:
            return False
        per = self.per
        if per == "user" and caps.total:
            return True
        if per == "session" and caps.in_session and caps.session == scope.session_number:
            return True
        limit = self.max_total
        if limit is not None and caps.total >= limit:
            return True
        daily = self.max_per_day
        return daily is not None and caps.day == scope.day and caps.in_day >= daily

    def count_fired(self, scope: Scope) -> None:
        """Count a fired delivery against the caps and restart the user's spacing."""
        if self.spacing is not None:
            scope.state.spacing = Spaced(scope.t)
        if not self.has_caps:
            return
        every = scope.state.caps
        if every is None:
            every = scope.state.caps = {}
        caps = every.get(self.id)
        if caps is None:
            caps = every[self.id] = Caps()
        caps.total += 1
        if caps.session == scope.session_number:
            caps.in_session += 1
        else:
            caps.session, caps.in_session = scope.session_number, 1
        if caps.day == scope.day:
            caps.in_day += 1
        else:
            caps.day, caps.in_day = scope.day, 1


def count_delivery(deliveries: dict[str, Tally], campaign_id: str, day: int) -> None:
    """Count one delivery of a campaign with stop conditions, on local day `day`."""
    tally = deliveries.get(campaign_id)
    if tally is None:
        tally = deliveries[campaign_id] = Tally()
    tally.total += 1
    if tally.day == day:
        tally.in_day += 1
    else:
        tally.day, tally.in_day = day, 1


class Run:
    """Neighbouring campaigns (in rank order) behind one gate, decided together when it is shut."""

    __slots__ = ("campaigns", "gate", "ids")

    def __init__(self, gate: Gate, campaigns: tuple[Campaign, ...]) -> None:
        self.gate = gate
        self.campaigns = campaigns
        self.ids = tuple(campaign.id for campaign in campaigns)


def runs(ranked: Iterable[Campaign]) -> tuple[Run, ...]:
    """Campaigns in rank order, cut into runs of neighbours that share a gate."""
    return tuple(Run(gate, tuple(group)) for gate, group in groupby(ranked, attrgetter("gate")))


def _nobody(scope: Scope) -> bool:
    return False


def build_arms(spec: CampaignSpec, templates: list[ActionTemplate]) -> tuple[Arm, ...]:
    """Arms with cumulative bucket ranges: one per variant, or one for `rate` + `action`."""
    if spec.variants is None:
        return (Arm(None, round(spec.rate * 100), templates[0]),)
    arms = []
    end = 0
    for variant, template in zip(spec.variants, templates, strict=True):
        end += round(variant.rate * 100)
        arms.append(Arm(variant.id, end, template))
    return tuple(arms)
