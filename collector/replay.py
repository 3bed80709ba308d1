"""`tripwire replay`: recorded events through the engine, offline; reports, sends nothing.

The file holds one Segment-spec message per line (a `{"batch": [...]}` line is read as its
messages). Each message's `timestamp` (epoch seconds or milliseconds, or ISO-8601; else
`originalTimestamp`, `sentAt`, `receivedAt`) is the engine's clock for it, so a replay always
gives the same answer. Like the collector, replay skips a `messageId` seen in the previous 24
hours, normalises messages as ingest does, and resolves identities in memory by the stores'
rules (`collector.store.identity`): ids seen together share a profile; when they point at two
profiles, those merge (the one found by user id surviving) unless each belongs to a different
known user. A new profile's key is `u:<userId>` when the message has a user id, else
`a:<anonymousId>`; the key seeds sticky rate/variant buckets, so replay splits users as the
server does.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from collector.engine import Engine, compile_rules
from collector.errors import ConfigError
from collector.events import Event
from collector.messages import MESSAGE_TYPES
from collector.profile import UserState
from collector.schema import ConfigFile
from collector.store import identity

DEDUPE_SECONDS = 86400.0
_TIME_FIELDS = ("timestamp", "originalTimestamp", "sentAt", "receivedAt")


def parse_time(value: Any) -> float | None:
    """Epoch seconds from epoch seconds/milliseconds or an ISO-8601 string (naive = UTC)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value / 1000.0 if value > 1e11 else float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    return None


def _id(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def event_from_message(
    message: Any, fallback_id: str, batch_context: dict[str, Any] | None = None
) -> Event:
    """Normalise one Segment message into an Event as ingest does; raises ValueError if bad."""
    if not isinstance(message, dict):
        raise ValueError("expected a JSON object")
    kind = message.get("type")
    if kind not in MESSAGE_TYPES:
        raise ValueError(f"unknown message type {kind!r}")
    if kind == "track":
        name = message.get("event")
        if not isinstance(name, str) or not name:
            raise ValueError("track message without 'event'")
    else:
        name = kind
    user_id, anonymous_id = _id(message.get("userId")), _id(message.get("anonymousId"))
    if user_id is None and anonymous_id is None:
        raise ValueError("message without 'userId' or 'anonymousId'")
    previous_id = _id(message.get("previousId"))
    if kind == "alias" and previous_id is None:
        raise ValueError("alias message without 'previousId'")
    timestamp = None
    for field in _TIME_FIELDS:
        if field in message:
            timestamp = parse_time(message[field])
            break
    if timestamp is None:
        raise ValueError("message without a valid 'timestamp'")
    properties = _dict(message.get("properties"))
    if kind in ("page", "screen") and isinstance(message.get("name"), str):
        properties.setdefault("name", message["name"])
    context = _dict(message.get("context")) if "context" in message else batch_context or {}
    traits = _dict(message.get("traits")) or _dict(context.get("traits"))
    return Event(
        type=kind,
        name=name,
        message_id=_id(message.get("messageId")) or fallback_id,
        anonymous_id=anonymous_id,
        user_id=user_id,
        previous_id=previous_id,
        properties=properties,
        traits=traits,
        context=context,
        timestamp=timestamp,
        received_at=timestamp,
    )


class Replay:
    """Feeds events to an engine with in-memory identities, dedupe and per-campaign counts."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.states: dict[str, UserState] = {}
        self._index: dict[str, str] = {}  # "u:<userId>" / "a:<anonymousId>" -> profile key
        self._ids: dict[str, list[str]] = {}  # profile key -> ids pointed at it
        self._seen: dict[str, float] = {}
        self.events = 0
        self.duplicates = 0
        self.webhooks = 0
        self.counts: dict[tuple[str, str | None], int] = {}  # (campaign, reason or None=fired)

    def feed(self, event: Event) -> None:
        """Run one event, unless its messageId was seen in the previous 24 hours."""
        seen = self._seen.get(event.message_id)
        if seen is not None and abs(event.timestamp - seen) < DEDUPE_SECONDS:
            self.duplicates += 1
            return
        self._seen[event.message_id] = event.timestamp
        self.events += 1
        key = self._resolve(event)
        outcome = self.engine.process(self.states.get(key), event, event.timestamp, key=key)
        self.states[key] = outcome.state
        self.webhooks += len(outcome.webhooks)
        counts = self.counts
        for decision in outcome.decisions:
            which = (decision.campaign_id, decision.reason)
            counts[which] = counts.get(which, 0) + 1

    def _resolve(self, event: Event) -> str:
        """The event's profile key, merging profiles it shows to be one person, as the stores do."""
        ids = identity.ids_of(event)
        keys: list[str] = []
        for id_ in ids:
            key = self._index.get(id_)
            if key is not None and key not in keys and key in self.states:
                keys.append(key)
        if not keys:
            key = identity.new_key(event)
        else:
            key = keys[0]
            for other in keys[1:]:
                mine, theirs = self.states[key], self.states[other]
                if not (mine.user_id and theirs.user_id and mine.user_id != theirs.user_id):
                    self.states[key] = self.engine.merge(mine, self.states.pop(other))
                    for id_ in self._ids.pop(other, []):
                        self._link(id_, key)
        for id_ in ids:
            self._link(id_, key)
        return key

    def _link(self, id_: str, key: str) -> None:
        if self._index.get(id_) != key:
            self._index[id_] = key
            self._ids.setdefault(key, []).append(id_)

    def report(self, campaign_ids: list[str]) -> dict[str, Any]:
        """Counts per campaign (config order first), as plain data."""
        campaigns: dict[str, dict[str, Any]] = {
            cid: {"fired": 0, "suppressed": {}} for cid in campaign_ids
        }
        for (cid, reason), count in sorted(self.counts.items(), key=lambda item: item[0][1] or ""):
            entry = campaigns.setdefault(cid, {"fired": 0, "suppressed": {}})
            if reason is None:
                entry["fired"] = count
            else:
                entry["suppressed"][reason] = count
        known = set(campaign_ids)
        extra = sorted(cid for cid in campaigns if cid not in known)  # removed from the config
        ordered = {cid: campaigns[cid] for cid in [*campaign_ids, *extra]}
        return {
            "events": self.events,
            "duplicates": self.duplicates,
            "users": len(self.states),
            "webhooks": self.webhooks,
            "campaigns": ordered,
        }


def run_replay(events_path: str, config: ConfigFile, *, as_json: bool, out: TextIO) -> int:
    """Replay a JSON-lines file of events and print per-campaign counts; returns an exit code."""
    try:
        engine = Engine(compile_rules(config))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    replay = Replay(engine)
    invalid: list[str] = []
    try:
        with open(events_path, "rb") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    message = orjson.loads(line)
                    batch = message.get("batch") if isinstance(message, dict) else None
                    messages = batch if isinstance(batch, list) else [message]
                    shared = message.get("context") if batch is not None else None
                    events = [
                        event_from_message(m, f"replay-{number}-{i}", _dict(shared))
                        for i, m in enumerate(messages)
                    ]
                except (orjson.JSONDecodeError, ValueError) as exc:
                    invalid.append(f"line {number}: {exc}")
                    continue
                for event in events:
                    replay.feed(event)
    except OSError as exc:
        print(f"{events_path}: cannot read: {exc.strerror}", file=sys.stderr)
        return 2
    report = replay.report([c.id for c in config.campaigns])
    report["invalid"] = len(invalid)
    if as_json:
        report["invalid_lines"] = invalid[:20]
        out.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_table(report, invalid, out)
    return 0


def _print_table(report: dict[str, Any], invalid: list[str], out: TextIO) -> None:
    out.write(
        f"{report['events']} events ({report['duplicates']} duplicates skipped, "
        f"{report['invalid']} invalid lines), {report['users']} users, "
        f"{report['webhooks']} webhooks would have been sent\n"
    )
    for problem in invalid[:5]:
        out.write(f"  skipped {problem}\n")
    campaigns: dict[str, Any] = report["campaigns"]
    width = max([len("campaign"), *(len(cid) for cid in campaigns)])
    out.write(f"\n{'campaign':<{width}}  {'fired':>8}  {'suppressed':>10}  by reason\n")
    for cid, counts in campaigns.items():
        reasons = counts["suppressed"]
        ordered = sorted(reasons.items(), key=lambda item: -item[1])
        detail = ", ".join(f"{reason} {n}" for reason, n in ordered)
        out.write(f"{cid:<{width}}  {counts['fired']:>8}  {sum(reasons.values()):>10}  {detail}\n")
