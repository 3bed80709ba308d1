"""Ingest counters, kept as plain integers on the hot path and exposed in Prometheus format.

Each process owns one `CollectorRegistry` (never the global default); delivery registers its
own metrics on the same registry, and `/metrics` renders it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from collector.engine.campaigns import Missed
from collector.engine.profile import Decision
from collector.engine.results import ArmResult


class IngestMetrics(Collector):
    """Counts of requests, messages and decisions, read by Prometheus on scrape."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests: Counter[int] = Counter()  # by HTTP status
        self.messages: Counter[str] = Counter()  # accepted, duplicate, rejected
        # (campaign, outcome, reason); reason is None for fired
        self.decisions: Counter[tuple[str, str, str | None]] = Counter()
        # trigger misses not yet spread into `decisions`: one count per event and shared Missed
        self.missed: Counter[Missed] = Counter()
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.counters: dict[str, tuple[str, str, Counter[str]]] = {}
        self.results: dict[str, list[ArmResult]] = {}  # A/B results per campaign with a goal
        registry.register(self)

    def count_decisions(self, decisions: Iterable[Decision], missed: Iterable[Missed]) -> None:
        """Count a request's decisions, and its trigger misses (one count per event and shared
        `Missed`, spread over its campaigns by `decision_counts`). A plain loop: a request has a
        decision or two, where `Counter.update` first asks whether it was given a Mapping (an
        abstract-class check that cost more than the counting)."""
        counts = self.decisions
        for decision in decisions:
            counts[decision.campaign_id, decision.outcome, decision.reason] += 1
        misses = self.missed
        for group in missed:
            misses[group] += 1

    def decision_counts(self) -> Counter[tuple[str, str, str | None]]:
        """`decisions`, with the trigger misses counted so far spread over it, a count per
        campaign: what every reader of the counts reads (a scrape, the backends keeping them)."""
        missed, self.missed = self.missed, Counter()
        decisions = self.decisions
        for group, count in missed.items():
            for label in group.counted():
                decisions[label] += count
        return decisions

    def counter(self, name: str, help_text: str, label: str, counts: Counter[str]) -> None:
        """Expose counts by one label, read at scrape time (profiles evicted by reason, ...)."""
        self.counters[name] = (help_text, label, counts)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Expose a value read at scrape time (profiles held, queue depth, ...)."""
        self.gauges[name] = (help_text, read)

    def collect(self) -> Iterator[Metric]:
        """Yield the current values for a scrape."""
        self.decision_counts()
        requests = CounterMetricFamily(
            "tripwire_ingest_requests", "Ingest requests by HTTP status", labels=["status"]
        )
        for status, count in sorted(self.requests.items()):
            requests.add_metric([str(status)], count)
        yield requests
        messages = CounterMetricFamily(
            "tripwire_ingest_messages", "Ingested messages by result", labels=["result"]
        )
        for result, count in sorted(self.messages.items()):
            messages.add_metric([result], count)
        yield messages
        decisions = CounterMetricFamily(
            "tripwire_campaign_decisions",
            "Campaign decisions by outcome and reason",
            labels=["campaign", "outcome", "reason"],
        )
        for (campaign, outcome, reason), count in sorted(
            self.decisions.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or "")
        ):
            decisions.add_metric([campaign, outcome, reason or ""], count)
        yield decisions
        yield from self._results()
        for name, (help_text, read) in self.gauges.items():
            yield GaugeMetricFamily(name, help_text, value=read())
        for name, (help_text, label, counts) in self.counters.items():
            family = CounterMetricFamily(name, help_text, labels=[label])
            for value, count in sorted(counts.items()):
                family.add_metric([value], count)
            yield family


    def _results(self) -> Iterator[Metric]:
        labels = ["campaign", "variant"]
        families = {
            "assigned": GaugeMetricFamily(
                "tripwire_campaign_assigned_users",
                "Users assigned to each arm of a campaign with a goal (control included)",
                labels=labels,
            ),
            "converted": GaugeMetricFamily(
                "tripwire_campaign_converted_users",
                "Users of each arm who reached the campaign's goal in its window",
                labels=labels,
            ),
            "value": GaugeMetricFamily(
                "tripwire_campaign_goal_value",
                "The goal's value summed over each arm's users",
                labels=labels,
            ),
            "beat": GaugeMetricFamily(
                "tripwire_campaign_probability_to_beat_control",
                "Probability that the arm's conversion rate beats the control group's",
                labels=labels,
            ),
        }
        for campaign, arms in sorted(self.results.items()):
            for arm in arms:
                names = [campaign, arm.arm]
                families["assigned"].add_metric(names, arm.assigned)
                families["converted"].add_metric(names, arm.converted)
                families["value"].add_metric(names, arm.value)
                if arm.probability_to_beat_control is not None:
                    families["beat"].add_metric(names, arm.probability_to_beat_control)
        yield from families.values()


def render(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus text format."""
    return generate_latest(registry)
