"""`tripwire replay`: recorded events through the engine, offline; reports, sends nothing.

The file holds one Segment-spec message per line (a `{"batch": [...]}` line is read as its
messages). Lines are decoded by the same code as ingest and run through the same memory store
(dedupe, identity resolution, profile merges) and engine as `tripwire serve`, so a replay
predicts what the server decides. Each message's own time (`timestamp`, else
`originalTimestamp`, `sentAt`, `receivedAt`; ISO-8601 or epoch seconds/milliseconds) is the
clock for it, so a replay always gives the same answer; a messageId repeated within 24 hours of
the latest event time so far counts as a duplicate, as a resent message would on the server.
Absence triggers run in event time too: before each event, the timers due by its time fire, each
at its own due time; those still pending at the end of the file are counted, not fired.
Campaigns with a goal get their A/B results: each arm against control, as the server reports them.
`--show-webhooks` also prints every request that would have been sent, as it would go on the
wire (a GET's body merged into its query), unsigned.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from typing import Any, TextIO

import orjson

from collector.config.durations import format_duration
from collector.config.schema import ConfigFile
from collector.delivery.sender import InvalidRequest, as_sent
from collector.engine.engine import Engine, compile_rules
from collector.engine.results import Counts
from collector.engine.results import report as results_report
from collector.errors import ConfigError, HTTPError
from collector.ingest.messages import decode_recorded
from collector.memory.store import MemoryStore
from collector.store.base import IngestResult
from collector.store.pipeline import ingest
from collector.webhook import WebhookRequest


class Tally:
    """Counts of a replay: events, duplicates, webhooks, decisions per campaign and reason."""

    def __init__(self, keep_webhooks: bool = False) -> None:
        self.events = 0
        self.duplicates = 0
        self.webhooks = 0
        self.decisions: Counter[tuple[str, str | None]] = Counter()  # reason None = fired
        self.missing: Counter[tuple[str, str]] = Counter()  # (campaign, placeholder) unfilled
        self.invalid: list[str] = []
        self.timers_pending = 0
        self.sent: list[WebhookRequest] | None = [] if keep_webhooks else None

    def count(self, result: IngestResult) -> None:
        """Add what one event (or one round of due timers) did."""
        self.events += result.accepted
        self.duplicates += result.duplicates
        self.webhooks += len(result.webhooks)
        if self.sent is not None:
            self.sent.extend(result.webhooks)
        self.decisions.update((d.campaign_id, d.reason) for d in result.decisions)
        for missed in result.missed:  # campaigns the event did not trigger
            self.decisions.update((campaign, reason) for campaign, _, reason in missed.counted())
        self.missing.update(
            (d.campaign_id, d.detail)
            for d in result.decisions
            if d.reason == "missing_variable" and d.detail is not None
        )

    def report(self, campaign_ids: list[str], users: int) -> dict[str, Any]:
        """Counts per campaign (config order first), as plain data."""
        seen = {campaign for campaign, _ in self.decisions}
        ids = [*campaign_ids, *sorted(seen - set(campaign_ids))]
        campaigns: dict[str, Any] = {}
        for cid in ids:
            reasons = {r: n for (c, r), n in self.decisions.items() if c == cid and r is not None}
            campaigns[cid] = {
                "fired": self.decisions[(cid, None)],
                "suppressed": dict(sorted(reasons.items())),
            }
            missing = {name: n for (c, name), n in self.missing.items() if c == cid}
            if missing:  # which placeholders `missing_variable` counts, and how often
                campaigns[cid]["missing_variables"] = dict(sorted(missing.items()))
        return {
            "events": self.events,
            "duplicates": self.duplicates,
            "users": users,
            "webhooks": self.webhooks,
            "invalid": len(self.invalid),
            "timers_pending": self.timers_pending,
            "campaigns": campaigns,
        }


async def replay(
    lines: Any, config: ConfigFile, engine: Engine, keep_webhooks: bool = False
) -> tuple[Tally, int, dict[str, dict[str, Counts]]]:
    """Run every line's events through a memory store, in order.

    Returns the tally, the number of users, and the A/B counts of the campaigns with a goal.
    """
    store = MemoryStore(lambda: engine, config.state, disk=None)
    tally = Tally(keep_webhooks)
    now = 0.0  # the file's clock: the latest event time so far (for dedupe and eviction)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            events = decode_recorded(line, f"line {number}")
        except HTTPError as exc:
            tally.invalid.append(exc.detail)
            continue
        for event in events:
            now = max(now, event.timestamp)
            tally.count(await store.fire_due(now, event_time=True))
            result = await ingest(store, [event], now)
            tally.count(result)
            tally.invalid.extend(f"line {number}: {detail}" for _, detail in result.rejected)
    tally.timers_pending = store.pending_timers()
    with_goals = [c.id for c in config.campaigns if c.goal is not None]
    return tally, len(store), await store.results(with_goals)


def run_replay(
    events_path: str, config: ConfigFile, *, as_json: bool, out: TextIO,
    show_webhooks: bool = False,
) -> int:
    """Replay a JSON-lines file of events and print per-campaign counts (and, with
    `show_webhooks`, every request that would have been sent); returns an exit code."""
    try:
        engine = Engine(compile_rules(config))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    try:
        with open(events_path, "rb") as lines:
            tally, users, counts = asyncio.run(replay(lines, config, engine, show_webhooks))
    except OSError as exc:
        print(f"{events_path}: cannot read: {exc.strerror}", file=sys.stderr)
        return 2
    report = tally.report([c.id for c in config.campaigns], users)
    if counts:  # campaigns with a goal: their A/B results
        report["results"] = {
            spec.id: results_report(spec, counts[spec.id])
            for spec in config.campaigns
            if spec.id in counts
        }
    shown = [_as_sent(request) for request in tally.sent] if tally.sent is not None else None
    if as_json:
        report["invalid_lines"] = tally.invalid[:20]
        if shown is not None:
            report["requests"] = shown
        out.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_table(report, tally.invalid, out)
        if shown is not None:
            _print_requests(shown, out)
    return 0


def _arm_line(arm: dict[str, Any], width: int) -> str:
    def percent(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    interval = arm["interval"]
    shown = "-" if interval is None else f"{percent(interval[0])}-{percent(interval[1])}"
    per_user = arm["value_per_user"]
    p_value = arm["p_value"]
    beat = arm["probability_to_beat_control"]
    return (
        f"{arm['arm']:<{width}}  {arm['assigned']:>8}  {arm['converted']:>9}"
        f"  {percent(arm['conversion_rate']):>7}  {shown:>15}"
        f"  {'-' if per_user is None else f'{per_user:.2f}':>10}"
        f"  {'-' if p_value is None else f'{p_value:.3f}':>6}"
        f"  {percent(beat):>7}  {arm['label'] or ''}\n"
    )


def _as_sent(request: WebhookRequest) -> dict[str, Any]:
    """A webhook as it would go on the wire: method, URL (a GET's body in its query), body."""
    try:
        method, url, content = as_sent(request)
        body = orjson.loads(content) if content else None
    except InvalidRequest as exc:  # the server would fail it the same way
        method, url, body = request.method, request.url, request.body
        error: str | None = str(exc)
    else:
        error = None
    return {
        "campaign_id": request.campaign_id, "variant_id": request.variant_id,
        "user_key": request.user_key, "event_id": request.event_id,
        "webhook_id": request.webhook_id,
        "method": method, "url": url, "headers": request.headers, "body": body, "error": error,
    }


def _print_requests(shown: list[dict[str, Any]], out: TextIO) -> None:
    out.write(f"\nRequests that would have been sent ({len(shown)}):\n")
    for item in shown:
        variant = f"/{item['variant_id']}" if item["variant_id"] else ""
        out.write(
            f"\n{item['method']} {item['url']}\n"
            f"  # {item['campaign_id']}{variant}, user {item['user_key']}, "
            f"event {item['event_id']}\n"
        )
        for name, value in item["headers"].items():
            out.write(f"  {name}: {value}\n")
        if item["body"] is not None:
            out.write(f"  {orjson.dumps(item['body']).decode()}\n")
        if item["error"]:
            out.write(f"  ! would fail: {item['error']}\n")


def _print_table(report: dict[str, Any], invalid: list[str], out: TextIO) -> None:
    waiting = report["timers_pending"]
    pending = f", {waiting} absence timers still pending at the end" if waiting else ""
    out.write(
        f"{report['events']} events ({report['duplicates']} duplicates skipped, "
        f"{report['invalid']} invalid lines), {report['users']} users, "
        f"{report['webhooks']} {'webhook' if report['webhooks'] == 1 else 'webhooks'} "
        f"would have been sent{pending}\n"
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
        missing = counts.get("missing_variables")
        if missing:
            names = ", ".join(f"#{{{name}}} {n}" for name, n in missing.items())
            detail += f" (missing: {names})"
        out.write(f"{cid:<{width}}  {counts['fired']:>8}  {sum(reasons.values()):>10}  {detail}\n")
    for cid, result in report.get("results", {}).items():
        goal = result["goal"]
        within = format_duration(goal["within"]) if goal else "-"
        out.write(f"\nresults of {cid} (goal: {goal['event'] if goal else '-'} within {within})\n")
        out.write(
            f"{'arm':<{width}}  {'users':>8}  {'converted':>9}  {'rate':>7}  {'95% interval':>15}"
            f"  {'value/user':>10}  {'p':>6}  {'P(beat)':>7}  verdict\n"
        )
        for arm in result["arms"]:
            out.write(_arm_line(arm, width))
