"""The campaign engine: one event in; state changes, decisions and webhooks out. Pure.

(Past 500 lines on purpose: the per-event path — observe, record variables, arm timers, decide,
render — is kept in one class, so that what runs for every event can be read and measured as
one piece.)

What the store and app call::

    rules = compile_rules(config, updated_at={"cart-followup": 1767225600.0})  # or ConfigError
    engine = Engine(rules)
    outcome = engine.process(state, event, now, key=profile_key, deliveries=tallies)
    outcome = engine.fire_due(state, now, deliveries=tallies)  # absence timers due by `now`
    outcome.state       # the same object, mutated (or a new one); store it under its `key`
    outcome.decisions   # one Decision per campaign considered: fired, or suppressed + reason
    outcome.missed      # the campaigns the event did not trigger, as shared `Missed` to count
    outcome.webhooks    # one WebhookRequest per fired campaign, for the outbox
    outcome.entered     # segments the user newly entered on this event
    outcome.ticks       # A/B results counted: enrolments in an arm, conversions, goal values
    engine.merge(a, b)              # one profile from two (identity merge); keeps a.key
    engine.describe(state, now)     # plain dict for the user-lookup view
    engine.preview(campaign_id, state, now, event)  # the webhook a test-fire sends
    engine.describe(state, now, stopped)  # plain dict for the user-lookup view
    engine.stopped(tallies, now)    # campaigns stopped by their stop conditions, with the reason
    engine.replace_campaign(spec, updated_at); engine.remove_campaign(campaign_id)
    new_state(key, now)             # an empty profile, if the store wants to make one itself

Time: the engine reads no clock. The event's time is `min(event.timestamp, now)`: windows,
sessions, schedules, caps and `within`/`older_than` all use it, so replaying recorded events
(with `now` = their timestamp) gives the same answers as live traffic. `now` stamps decisions
and webhooks.

Per event: identity, traits (every message's `traits` merge in), counts, session (a new one
after `session_timeout` of inactivity) and latest page are updated; then the variables fed by
the event; then tracked segments (those some `segment_entered` trigger names) are re-evaluated;
then the campaigns indexed under the event's name (plus those whose segment was just entered)
are checked in exclusivity-rank order: their gate (status, schedule, target users, segments;
checked once per event for all the campaigns sharing it), then `Campaign.qualify` (trigger,
test users, rate or variant, frequency caps), exclusivity (one `exclusive` campaign at most
fires per event: the best ranked that passes and renders), then rendering. Campaigns whose
trigger requires one text of an event field are looked up by the event's value first
(`rules.Lookup`): those it does not hit are missed before their gate is checked. Every
campaign considered leaves a Decision, except a trigger miss, which the event is not about: it
is counted through `outcome.missed` and leaves the profile as it was. The state keeps the
latest Decision per campaign as a Verdict, and the few before it once the outcome changes
("why didn't it fire?", see `profile.remember`).

Stop conditions count every user's deliveries: the store owns those tallies (`deliveries`,
campaign id -> Tally, for the campaigns with a `stop`), hands them to each call, and the engine
checks and counts them; the day is the local day of `now`. Absence triggers: the `after` event
arms a Timer in the state, the `unless` event cancels it; the store's scheduler calls
`fire_due` once it is due, and the campaign is then decided at the timer's due time, on the
state as it is then, like a campaign triggered by an event.

Goals (A/B results): a campaign with a `goal` enrols the user in their arm the first time it
gets past the trigger and test users (`collector.engine.goals`); a later goal event within the
window converts them once. Each enrolment, conversion and goal value is an `outcome.ticks`
entry, which the store counts in the same step as the state (memory) or in the same script
(Redis).

Hot path: neighbouring campaigns behind one gate form a `Run`; when the gate is shut, the whole
run is suppressed with decisions made once per `now` and shared by every event of a request
(they are frozen), and the profile keeps one shared Verdict for the run.
"""

from __future__ import annotations

import logging
import sys

import msgspec

from collector.config.schema import CampaignSpec
from collector.engine.campaigns import Arm, Campaign, Gate, Missed, Run, count_delivery, runs
from collector.engine.goals import ASSIGNED_REASONS, Tick, arm_key, enrol
from collector.engine.profile import (
    FIRED,
    MAX_ANONYMOUS_IDS,
    MAX_EVENT_NAMES,
    SUPPRESSED,
    Decision,
    DecisionOutcome,
    Session,
    State,
    Tally,
    Timer,
    UserState,
    Verdict,
    decision_history,
    merge,
    new_state,
    remember,
    session_id,
)
from collector.engine.results import arm_name
from collector.engine.rules import Rules, compile_rules
from collector.engine.scope import Scope
from collector.engine.templates import PAGE_FIELDS, Suppressed
from collector.engine.values import MISSING, Value
from collector.events import Event
from collector.webhook import WebhookRequest, webhook_id_for

__all__ = [
    "Decision", "Engine", "Outcome", "Rules", "Tally", "UserState", "compile_rules", "new_state",
]

class Outcome(msgspec.Struct):
    """What one event did: the user's state, a decision per campaign considered, webhooks."""

    state: UserState
    decisions: list[Decision]
    webhooks: list[WebhookRequest]
    entered: list[str]
    ticks: list[Tick] = []  # changes to campaigns' A/B results, for the store to count
    missed: list[Missed] = []  # campaigns the event did not trigger: counted, not decided


def key_for(event: Event) -> str:
    """The key `process` gives a new profile when the caller names none."""
    return event.user_id or event.anonymous_id or event.message_id


log = logging.getLogger("tripwire.engine")
_MAX_TOLD = 1000  # (campaign, placeholder) pairs logged per process, at most


class Engine:
    """Runs events through compiled rules; holds no per-user data itself."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        # Decisions are frozen and stamped with `now`, which is the same for every event of a
        # request: those a shut gate gives a whole run of campaigns are made once per `now` and
        # shared, as are the verdicts profiles keep. Only the current `now`'s are held.
        self._made_at: float | None = None
        self._shut: dict[tuple[Run, str], tuple[list[Decision], Verdict]] = {}
        self._verdicts: dict[str, Verdict] = {}
        self._told: set[tuple[str, str]] = set()  # (campaign, placeholder) missing, logged once

    def replace_campaign(self, spec: CampaignSpec, updated_at: float) -> None:
        """Add or replace one campaign (raises ConfigError if its templates are invalid)."""
        self.rules = self.rules.with_campaign(spec, updated_at)

    def remove_campaign(self, campaign_id: str) -> None:
        """Drop one campaign."""
        self.rules = self.rules.without_campaign(campaign_id)

    def process(
        self,
        state: UserState | None,
        event: Event,
        now: float,
        *,
        key: str | None = None,
        deliveries: dict[str, Tally] | None = None,
    ) -> Outcome:
        """Run one event for one user; mutates and returns the state (new under `key` if None)."""
        rules = self.rules
        t = event.timestamp if event.timestamp < now else now
        if state is None:
            state = new_state(key or key_for(event), t)
        number = self._observe(rules, state, event, t)
        scope = Scope(state, event, t, rules.calendar, number)
        recorders = rules.variables_by_event.get(event.name)
        if recorders is not None:
            plain, filtered = recorders
            if filtered:
                # every `where` first, so each sees the variables as they were before this event
                matched = [v for v in filtered if v.where is not None and v.where(scope)]
                plain.record(scope)
                for variable in matched:
                    variable.record(scope)
                scope.values.clear()  # values read by a `where` are stale now
                scope.segments.clear()
            else:
                plain.record(scope)
        entered = self._entered(rules, scope) if rules.tracked else []
        if rules.arming or rules.cancelling:
            self._arm(rules, scope)
        ticks: list[Tick] = []
        goals = rules.goals_by_event.get(event.name)
        if goals is not None and state.goals is not None:
            for goal in goals:  # before any decision: an enrolment on this event is not reached
                goal.reach(scope, ticks)
        missed: list[Missed] = []
        lookup = rules.lookups.get(event.name)
        if lookup is None:
            candidates = rules.runs_by_event.get(event.name, ())
            triggered = rules.by_event.get(event.name, ())
        else:
            choice = lookup.choose(event)
            candidates, triggered = choice.runs, choice.ranked
            if choice.missed is not None:
                missed.append(choice.missed)
        if entered:
            extra = [c for name in entered for c in rules.by_segment[name]]
            candidates = runs(sorted((*triggered, *extra), key=Campaign.rank))
        decisions: list[Decision] = []
        webhooks: list[WebhookRequest] = []
        if candidates:
            self._decide(candidates, scope, now, decisions, webhooks, deliveries, ticks, missed)
        return Outcome(state, decisions, webhooks, entered, ticks, missed)

    def fire_due(
        self, state: UserState, now: float, *, deliveries: dict[str, Tally] | None = None
    ) -> Outcome:
        """Decide the absence timers due by `now`, each at its due time; the rest stay pending."""
        rules = self.rules
        decisions: list[Decision] = []
        webhooks: list[WebhookRequest] = []
        ticks: list[Tick] = []
        timers = state.timers or []
        due = sorted((x for x in timers if x.due <= now), key=lambda x: x.due)
        if not due:
            return Outcome(state, decisions, webhooks, [])
        state.timers = [x for x in timers if x.due > now] or None
        for timer in due:
            candidates = rules.absence_runs.get(timer.campaign_id)
            campaign = rules.campaigns.get(timer.campaign_id)
            if candidates is None or campaign is None or campaign.after is None:
                continue  # the campaign was removed or changed meanwhile
            t = timer.due
            event = Event(
                type="track",
                name=campaign.after,
                message_id=timer.event_id,
                anonymous_id=state.anonymous[-1] if state.anonymous else None,
                user_id=state.user_id,
                properties=timer.properties,
                timestamp=t,
                received_at=now,
            )
            scope = Scope(state, event, t, rules.calendar, self._session_at(state, t))
            # an absence trigger has no `where` left to check when due: nothing is missed
            self._decide(candidates, scope, now, decisions, webhooks, deliveries, ticks, [])
        return Outcome(state, decisions, webhooks, [], ticks)

    def _session_at(self, state: UserState, t: float) -> int:
        """The session number at `t` without activity: the current one, or the next if it ended."""
        session = state.session
        number = session.number if session is not None else 0
        if session is None or t - session.last > self.rules.session_timeout:
            number += 1  # the session is over: "session" windows start afresh
        return number

    def _arm(self, rules: Rules, scope: Scope) -> None:
        """Cancel the timers the event's `unless` names and arm those its `after` starts."""
        name = scope.event.name
        cancelling = rules.cancelling.get(name)
        arming = rules.arming.get(name)
        if cancelling is None and arming is None:
            return
        state = scope.state
        timers = list(state.timers or ())
        for campaign in cancelling or ():
            if campaign.unless_where is None or campaign.unless_where(scope):
                timers = [x for x in timers if x.campaign_id != campaign.id]
        for campaign in arming or ():
            if not campaign.gate.published:
                continue
            if campaign.arm_where is not None and not campaign.arm_where(scope):
                continue
            # a new `after` event restarts the wait: one pending timer per campaign
            timers = [x for x in timers if x.campaign_id != campaign.id]
            event = scope.event
            properties = event.properties
            if properties and len(_encode(properties)) > rules.timer_property_bytes:
                properties = {}  # too big to keep for each wait: templates fall back
            timers.append(
                Timer(campaign.id, scope.t + campaign.wait, scope.t, event.message_id, properties)
            )
        if len(timers) > rules.max_timers:  # bounded per user: the earliest armed go first
            timers.sort(key=lambda x: x.armed_at)
            timers = timers[-rules.max_timers :]
        timers.sort(key=lambda x: x.due)
        state.timers = timers or None

    def _observe(self, rules: Rules, state: UserState, event: Event, t: float) -> int:
        if event.user_id is not None and state.user_id != event.user_id:
            state.user_id = event.user_id
        anonymous_id = event.anonymous_id
        if anonymous_id is not None:
            ids = state.anonymous
            if not ids or ids[-1] != anonymous_id:
                if anonymous_id in ids:
                    ids = tuple(i for i in ids if i != anonymous_id)
                state.anonymous = (*ids, anonymous_id)[-MAX_ANONYMOUS_IDS:]
        if event.traits:
            traits = {**state.traits, **event.traits}
            if len(_encode(traits)) > rules.trait_bytes:
                traits = _fit_traits(state.traits, event.traits, rules.trait_bytes)
            state.traits = traits
        counts = state.event_counts
        count = counts.get(event.name)
        if count is not None:
            counts[event.name] = count + 1
        elif len(counts) < MAX_EVENT_NAMES:
            counts[sys.intern(event.name)] = 1
        if t > state.last_seen:
            state.last_seen = t
        if t < state.first_seen or not state.first_seen:
            state.first_seen = t
        if rules.keep_page and event.type == "page":
            page = event.context.get("page")
            if page.__class__ is dict:
                state.page = {k: page[k] for k in PAGE_FIELDS if k in page}
        if rules.count_page_views and event.type == "page":
            spaced = state.spacing
            if spaced is not None:
                spaced.page_views += 1
        session = state.session
        if session is None or t - session.last > rules.session_timeout:
            number = 1 if session is None else session.number + 1
            state.session = Session("", number, t, t)  # its id is derived when read
            return number
        if t > session.last:
            session.last = t
        return session.number

    def _entered(self, rules: Rules, scope: Scope) -> list[str]:
        before = scope.state.segments or []
        now_in = [name for name, member in rules.tracked if member(scope)]
        if now_in == before:
            return []
        scope.state.segments = now_in or None
        return [name for name in now_in if name not in before]

    def _decide(
        self,
        candidates: tuple[Run, ...],
        scope: Scope,
        now: float,
        decisions: list[Decision],
        webhooks: list[WebhookRequest],
        deliveries: dict[str, Tally] | None,
        ticks: list[Tick],
        missed: list[Missed],
    ) -> None:
        if now != self._made_at:
            self._made_at = now
            self._shut.clear()
            self._verdicts.clear()
        shut = self._shut
        verdicts = self._verdicts
        state = scope.state
        latest = state.decisions
        known = latest.get
        record = decisions.append
        exclusive_fired = False
        gates: dict[Gate, str | None] = {}  # each distinct gate is checked once per event
        for run in candidates:
            gate = run.gate
            closed: str | None = None
            if not gate.always_open:
                checked = gates.get(gate, MISSING)
                if checked is MISSING:
                    checked = gates[gate] = gate.check(scope)
                closed = checked
            if closed is not None:
                # The common case (most visitors are outside most audiences): every campaign of
                # the run gets the same decision, made once per `now` and shared.
                made = shut.get((run, closed))
                if made is None:
                    made = shut[run, closed] = (
                        [Decision(cid, None, SUPPRESSED, closed, now) for cid in run.ids],
                        Verdict(None, closed, now),
                    )
                decisions.extend(made[0])
                verdict = made[1]
                for campaign_id in run.ids:
                    previous = known(campaign_id)
                    if previous is None or (
                        previous.reason == closed and previous.variant_id is None
                    ):
                        latest[campaign_id] = verdict  # the usual case: nothing changed
                    else:
                        remember(state, campaign_id, verdict)
                continue
            for campaign in run.campaigns:
                campaign_id = campaign.id
                if campaign.stops:
                    if deliveries is None:
                        deliveries = {}  # a caller keeping no tallies: counted for this call only
                    stop = campaign.stopped(deliveries.get(campaign_id), self._day(now))
                    if stop is not None:
                        record(Decision(campaign_id, None, SUPPRESSED, stop, now))
                        remember(state, campaign_id, Verdict(None, stop, now))
                        continue
                arm = campaign.qualify(scope)
                if arm == "trigger":  # an event the campaign is not about: counted, not kept
                    missed.append(campaign.missed)
                    continue
                if campaign.goal is not None:
                    self._enrol(campaign, arm, scope, ticks)
                if isinstance(arm, str):  # suppressed before a variant was picked: the usual case
                    record(Decision(campaign_id, None, SUPPRESSED, arm, now))
                    shared = verdicts.get(arm)
                    if shared is None:
                        shared = verdicts[arm] = Verdict(None, arm, now)
                    previous = known(campaign_id)
                    if previous is None or (previous.reason == arm and previous.variant_id is None):
                        latest[campaign_id] = shared
                    else:
                        remember(state, campaign_id, shared)
                    continue
                variant_id = arm.variant_id
                detail: str | None = None
                if campaign.exclusive and exclusive_fired:
                    reason: str | None = "exclusive"
                else:
                    failure = self._fire(campaign, arm, scope, now, webhooks)
                    reason = None if failure is None else failure.reason
                    detail = None if failure is None else failure.detail
                    if reason is None and campaign.exclusive:
                        exclusive_fired = True
                    if reason is None and campaign.stops and deliveries is not None:
                        count_delivery(deliveries, campaign_id, self._day(now))
                outcome: DecisionOutcome = FIRED if reason is None else SUPPRESSED
                record(Decision(campaign_id, variant_id, outcome, reason, now, detail))
                remember(state, campaign_id, Verdict(variant_id, reason, now, detail))

    def _enrol(self, campaign: Campaign, arm: Arm | str, scope: Scope, ticks: list[Tick]) -> None:
        """Enrol the user in the campaign's results once they have their arm."""
        if isinstance(arm, str):
            if arm not in ASSIGNED_REASONS:
                return  # not assigned yet: the trigger or test users turned them away
            goals = scope.state.goals
            if goals is not None and campaign.id in goals:
                return
            enrol(scope, campaign.id, campaign.assigned_arm(scope.state.key), ticks)
        else:
            enrol(scope, campaign.id, arm_key(arm.variant_id), ticks)

    def _fire(
        self, campaign: Campaign, arm: Arm, scope: Scope, now: float, webhooks: list[WebhookRequest]
    ) -> Suppressed | None:
        """Render and queue the campaign's webhook; None, or why it was not sent."""
        try:
            webhooks.append(_render(campaign, arm, scope, now))
        except Suppressed as suppressed:
            if suppressed.reason == "missing_variable":
                self._tell_missing(campaign.id, suppressed.detail)
            return suppressed
        campaign.count_fired(scope)
        return None

    def _tell_missing(self, campaign_id: str, name: str) -> None:
        """Log, once per campaign and placeholder, that a webhook was held back for it."""
        if (campaign_id, name) in self._told or len(self._told) >= _MAX_TOLD:
            return
        self._told.add((campaign_id, name))
        log.warning(
            "campaign %s: #{%s} had no value for a user, so its webhook was not sent "
            "(suppressed as missing_variable; #{%s|fallback} gives a fallback). "
            "Told once; the user lookup shows each user's.",
            campaign_id, name, name,
        )

    def preview(
        self, campaign_id: str, state: UserState, now: float, event: Event,
        variant_id: str | None = None,
    ) -> WebhookRequest:
        """The webhook a campaign would send for this user and event now, ignoring its
        conditions and caps (a test-fire, a re-rendered replay: `variant_id` names the arm,
        else the user's own); raises KeyError for an unknown campaign, and Suppressed when a
        placeholder has no value."""
        rules = self.rules
        campaign = rules.campaigns[campaign_id]
        arm = next((a for a in campaign.arms if variant_id and a.variant_id == variant_id), None)
        if arm is None:
            arm = campaign.pick(state.key) or campaign.arms[0]  # the control group tests the first
        number = state.session.number if state.session is not None else 1
        return _render(campaign, arm, Scope(state, event, now, rules.calendar, number), now)

    def _day(self, now: float) -> int:
        """The local day stop conditions count in: that of the decision time."""
        return self.rules.calendar.day_index(now)

    def stopped(self, deliveries: dict[str, Tally], now: float) -> dict[str, str]:
        """Campaigns that their stop conditions have stopped, with the condition reached."""
        day = self._day(now)
        found = {}
        for campaign in self.rules.stopping:
            reason = campaign.stopped(deliveries.get(campaign.id), day)
            if reason is not None:
                found[campaign.id] = reason
        return found

    def merge(self, a: UserState, b: UserState) -> UserState:
        """One profile from two of the same person; keeps `a.key` (see `profile.merge`)."""
        return merge(a, b, self._merge_variable)

    def _merge_variable(
        self, name: str, a: State, b: State, a_is_newer: bool
    ) -> State:
        variable = self.rules.variables.get(name)
        if not a or not b:
            return a or b
        if variable is None:
            return a if a_is_newer else b
        return variable.merge(a, b, a_is_newer)

    def describe(
        self, state: UserState, now: float, stopped: dict[str, str] | None = None
    ) -> dict[str, Value]:
        """The user-lookup view: identity, traits, variables, segments, decisions, timers."""
        rules = self.rules
        session = state.session
        number = self._session_at(state, now)
        event = Event(type="describe", name="", message_id="", timestamp=now, received_at=now)
        scope = Scope(state, event, now, rules.calendar, number)
        variables = {}
        for name, variable in rules.variables.items():
            if not name.startswith("~"):
                value = variable.read(scope)
                variables[name] = None if value is MISSING else value
        return {
            "key": state.key,
            "user_id": state.user_id,
            "anonymous_ids": list(state.anonymous),
            "traits": dict(state.traits),
            "first_seen": state.first_seen,
            "last_seen": state.last_seen,
            "event_counts": dict(state.event_counts),
            "session": None
            if session is None
            else {"id": session_id(state.key, session), "number": session.number,
                  "start": session.start, "last_activity": session.last,
                  "active": number == session.number},
            "variables": variables,
            "segments": [name for name, member in rules.segments.items() if member(scope)],
            "decisions": {cid: _decision(d) for cid, d in state.decisions.items()},
            # per campaign, the last few distinct decisions, newest first (the first is the above)
            "decision_history": {
                cid: [_decision(d) for d in decision_history(state, cid)] for cid in state.decisions
            },
            "caps": {cid: msgspec.structs.asdict(c) for cid, c in (state.caps or {}).items()},
            "spacing": None
            if state.spacing is None
            else {"last_fired_at": state.spacing.at, "page_views_since": state.spacing.page_views},
            "timers": [
                {"campaign_id": x.campaign_id, "due": x.due, "armed_at": x.armed_at,
                 "event_id": x.event_id}
                for x in state.timers or ()
            ],
            "stopped": dict(stopped or {}),
            "goals": {
                cid: {"arm": arm_name(e.arm), "assigned_at": e.at, "converted": e.converted}
                for cid, e in (state.goals or {}).items()
            },
        }


def _decision(verdict: Verdict) -> dict[str, Value]:
    shown: dict[str, Value] = {"variant_id": verdict.variant_id, "outcome": verdict.outcome,
                               "reason": verdict.reason, "at": verdict.at}
    if verdict.detail is not None:  # what the reason is about: `missing_variable`'s placeholder
        shown["detail"] = verdict.detail
    return shown


def _render(campaign: Campaign, arm: Arm, scope: Scope, now: float) -> WebhookRequest:
    """A campaign's webhook for the scope's user and event; raises Suppressed."""
    event = scope.event
    webhook_id = webhook_id_for(
        campaign.id, arm.variant_id, event.message_id, event.user_id or event.anonymous_id
    )
    scope.campaign_id = campaign.id
    scope.campaign_name = campaign.name
    scope.variant_id = arm.variant_id
    scope.delivery_id = webhook_id
    url, headers, body = arm.template.render(scope)
    return WebhookRequest(
        webhook_id=webhook_id,
        campaign_id=campaign.id,
        variant_id=arm.variant_id,
        user_key=scope.state.key,
        event_id=event.message_id,
        method=arm.template.method,
        url=url,
        headers=headers,
        body=body,
        created_at=now,
    )


_encode = msgspec.json.Encoder().encode


def _fit_traits(
    kept: dict[str, Value], incoming: dict[str, Value], budget: int
) -> dict[str, Value]:
    """Traits merged in one by one while they fit the budget (JSON bytes); the rest are dropped."""
    traits = dict(kept)
    size = len(_encode(traits))
    for name, value in incoming.items():
        added = len(_encode({name: value})) - 1  # `"name":value` plus a comma
        removed = len(_encode({name: traits[name]})) - 1 if name in traits else 0
        if size + added - removed <= budget:
            traits[name] = value
            size += added - removed
    return traits


