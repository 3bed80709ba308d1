"""Dry run: would this campaign fire for this user now, and with what request?

The campaign (as saved, or a draft from the editor) is compiled against the live config and
decided for a copy of the user's profile on the campaign's trigger event, made up now: its
properties are those given, else those of the user's latest such event. Every step is checked
and reported, even after one fails: status, schedule, target users, each target segment,
trigger, test users, rate or variant (with the user's sticky bucket), frequency caps, spacing,
stop conditions, then the rendered request. Nothing is sent and nothing is kept: the copy is
dropped, tallies and caps are read, not counted.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import msgspec

from collector.config.durations import format_duration
from collector.config.schema import CampaignSpec
from collector.engine.campaigns import sticky_bucket
from collector.engine.engine import Engine, UserState
from collector.engine.scope import Scope
from collector.engine.templates import Suppressed
from collector.errors import NotFound
from collector.events import Event

if TYPE_CHECKING:
    from collector.runtime import Runtime

PASS, FAIL, INFO = "pass", "fail", "info"
_encode_state = msgspec.msgpack.Encoder().encode
_decode_state = msgspec.msgpack.Decoder(UserState).decode


def _step(name: str, outcome: str, detail: str) -> dict[str, str]:
    return {"step": name, "outcome": outcome, "detail": detail}


async def dry_run(
    runtime: Runtime, spec: CampaignSpec, identity: str,
    properties: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every step's outcome for this user now, and the request that would be sent."""
    view = await runtime.users.lookup(identity, time.time())
    state = await runtime.users.state(identity)
    if view is None or state is None:
        raise NotFound(f"no user {identity!r}")
    now = time.time()
    original = _decode_state(_encode_state(state))  # copies: the live profile is not touched
    copy = _decode_state(_encode_state(state))
    published = msgspec.structs.replace(spec, status="published")
    rules = runtime.engine.rules.with_campaign(published, now)
    engine = Engine(rules)
    campaign = rules.campaigns[spec.id]
    trigger = spec.trigger
    name = campaign.trigger_event or campaign.after or "page"
    if properties is None:
        latest = next((m for m in reversed(view.recent_events)
                       if (m.get("event") or m.get("type")) == name), None)
        properties = dict((latest or {}).get("properties") or {})
    context = {"page": dict(state.page)} if name == "page" and state.page else {}
    event = Event(
        type="page" if name == "page" else "track", name=name,
        message_id=f"dryrun_{uuid.uuid4().hex}", user_id=state.user_id,
        anonymous_id=state.anonymous[-1] if state.anonymous else None,
        properties=properties, context=context, timestamp=now, received_at=now,
    )
    engine.process(copy, event, now, deliveries={})  # variables and counts see the event
    copy.caps, copy.spacing = original.caps, original.spacing  # as they are before deciding
    number = copy.session.number if copy.session is not None else 1
    scope = Scope(copy, event, now, rules.calendar, number)
    steps = [_status(spec)]
    gate = campaign.gate
    if gate.schedule is None:
        steps.append(_step("schedule", PASS, "no schedule: any time"))
    else:
        allowed = gate.schedule.allows(scope.t, scope.weekday, scope.second_of_day)
        steps.append(_step("schedule", PASS if allowed else FAIL,
                           "now is inside the schedule" if allowed
                           else "now is outside the schedule"))
    users = spec.target.users
    member = copy.user_id is not None
    who = "an identified member" if member else "an anonymous visitor"
    fits = users == "all" or (users == "members") == member
    steps.append(_step("target users", PASS if fits else FAIL,
                       f"target: {users}; the user is {who}"))
    for segment in spec.target.segments:
        inside = rules.segments[segment](scope)
        steps.append(_step(f"segment {segment}", PASS if inside else FAIL,
                           "the user is in it" if inside else "the user is not in it"))
    steps.append(_trigger(campaign, trigger, scope, rules, name, properties))
    if spec.test_mode:
        tester = campaign.test_users is not None and campaign.test_users(scope)
        steps.append(_step("test users", PASS if tester else FAIL,
                           "test mode, and the user is a test user" if tester
                           else "test mode, and the user is not a test user"))
    else:
        steps.append(_step("test users", PASS, "not in test mode: everyone"))
    arm = campaign.arms[0] if campaign.whole else campaign.pick(copy.key)
    bucket = sticky_bucket(spec.id, copy.key)
    share = f"sticky bucket {bucket / 100:.2f} of 100"
    if arm is None:
        steps.append(_step("rate", FAIL, f"control group ({share})"))
    elif arm.variant_id is not None:
        steps.append(_step("rate", PASS, f"variant {arm.variant_id} ({share})"))
    else:
        steps.append(_step("rate", PASS, f"inside the {spec.rate:g} % rate ({share})"))
    capped = campaign.has_caps and campaign.capped(scope)
    steps.append(_step("frequency", FAIL if capped else PASS,
                       f"a cap is reached (once per {campaign.per})" if capped
                       else f"no cap reached (once per {campaign.per})"))
    spaced = campaign.spacing is not None and campaign.spaced_out(scope)
    steps.append(_step("spacing", FAIL if spaced else PASS,
                       "another campaign fired for this user too recently" if spaced
                       else "no spacing wait"))
    stopped = (await runtime.stopped()).get(spec.id)
    steps.append(_step("stop", FAIL if stopped else PASS,
                       f"stopped: {stopped}" if stopped else "no stop condition reached"))
    if spec.exclusive:
        steps.append(_step("exclusive", INFO, "exclusive: it fires unless an exclusive "
                           "campaign ranked higher fires on the same event"))
    request = None
    try:
        rendered = engine.preview(spec.id, copy, now, event,
                                  arm.variant_id if arm is not None else None)
        request = {"method": rendered.method, "url": rendered.url,
                   "headers": dict(rendered.headers), "body": rendered.body}
        steps.append(_step("render", PASS, "every placeholder has a value"))
    except Suppressed as suppressed:
        steps.append(_step("render", FAIL, f"{suppressed.reason}: {suppressed.detail}"))
    failed = [s["step"] for s in steps if s["outcome"] == FAIL]
    return {
        "campaign_id": spec.id, "user": copy.key,
        "event": {"event": name, "properties": properties},
        "steps": steps, "would_fire": not failed, "failed": failed,
        "verdict": _verdict(failed), "request": request, "sent": False,
    }


def _status(spec: CampaignSpec) -> dict[str, str]:
    if spec.status == "published":
        return _step("status", PASS, "published")
    return _step("status", FAIL, f"{spec.status}: it fires only once published "
                 "(the other steps are checked as if it were)")


def _trigger(campaign: Any, trigger: Any, scope: Scope, rules: Any, name: str,
             properties: dict[str, Any]) -> dict[str, str]:
    shown = f"{name} {msgspec.json.encode(properties).decode()}" if properties else name
    if trigger is not None and trigger.segment_entered:
        inside = rules.segments[trigger.segment_entered](scope)
        return _step("trigger", PASS if inside else FAIL,
                     f"fires when the user newly enters {trigger.segment_entered}; they are "
                     f"{'in it' if inside else 'not in it'} now")
    if campaign.after is not None:
        wait = format_duration(campaign.wait)
        unless = f" unless {campaign.unless} comes first" if campaign.unless else ""
        ok = campaign.arm_where is None or campaign.arm_where(scope)
        return _step("trigger", PASS if ok else FAIL,
                     f"fires {wait} after {campaign.after}{unless}; this {shown} "
                     f"{'would start the wait' if ok else 'does not match its filter'}")
    ok = campaign.where is None or campaign.where(scope)
    where = "matches the filter" if campaign.where is not None else "(no filter)"
    return _step("trigger", PASS if ok else FAIL,
                 f"event {shown} {where if ok else 'does not match the filter'}")


def _verdict(failed: list[str]) -> str:
    if not failed:
        return "It would fire now, with the request below (nothing was sent)."
    if failed == ["status"]:
        return "It would fire once published, with the request below (nothing was sent)."
    return "It would not fire now: " + ", ".join(failed) + "."
