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
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from typing import Any, TextIO

import orjson

from collector.config.durations import format_duration
from collector.config.schema import ConfigFile
from collector.engine.engine import Engine, compile_rules
from collector.engine.results import Counts
from collector.engine.results import report as results_report
from collector.errors import ConfigError, HTTPError
from collector.ingest.messages import decode_recorded
from collector.store.base import IngestResult
from collector.store.memory import MemoryStore


class Tally:
    """Counts of a replay: events, duplicates, webhooks, decisions per campaign and reason."""

    def __init__(self) -> None:
        self.events = 0
        self.duplicates = 0
        self.webhooks = 0
        self.decisions: Counter[tuple[str, str | None]] = Counter()  # reason None = fired
        self.invalid: list[str] = []
        self.timers_pending = 0

    def count(self, result: IngestResult) -> None:
        """Add what one event (or one round of due timers) did."""
        self.events += result.accepted
        self.duplicates += result.duplicates
        self.webhooks += len(result.webhooks)
        self.decisions.update((d.campaign_id, d.reason) for d in result.decisions)

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
    lines: Any, config: ConfigFile, engine: Engine
) -> tuple[Tally, int, dict[str, dict[str, Counts]]]:
    """Run every line's events through a memory store, in order.

    Returns the tally, the number of users, and the A/B counts of the campaigns with a goal.
    """
    store = MemoryStore(lambda: engine, config.state, data_dir=None)
    tally = Tally()
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
            result = await store.ingest([event], now)
            tally.count(result)
            tally.invalid.extend(f"line {number}: {detail}" for _, detail in result.rejected)
    tally.timers_pending = store.pending_timers()
    with_goals = [c.id for c in config.campaigns if c.goal is not None]
    return tally, len(store), await store.results(with_goals)


def run_replay(events_path: str, config: ConfigFile, *, as_json: bool, out: TextIO) -> int:
    """Replay a JSON-lines file of events and print per-campaign counts; returns an exit code."""
    try:
        engine = Engine(compile_rules(config))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    try:
        with open(events_path, "rb") as lines:
            tally, users, counts = asyncio.run(replay(lines, config, engine))
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
    if as_json:
        report["invalid_lines"] = tally.invalid[:20]
        out.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_table(report, tally.invalid, out)
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


def _print_table(report: dict[str, Any], invalid: list[str], out: TextIO) -> None:
    waiting = report["timers_pending"]
    pending = f", {waiting} absence timers still pending at the end" if waiting else ""
    out.write(
        f"{report['events']} events ({report['duplicates']} duplicates skipped, "
        f"{report['invalid']} invalid lines), {report['users']} users, "
        f"{report['webhooks']} webhooks would have been sent{pending}\n"
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
