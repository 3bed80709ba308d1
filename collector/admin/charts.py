"""Inline SVG charts for the dashboard, rendered on the server: no script, no library.

- `conversion_chart`: one row per arm of a campaign with a goal: its conversion rate as a bar,
  its 95 % interval as a whisker, and the figures and verdict as text;
- `hourly_chart`: fired and suppressed decisions per hour, side by side.

Every mark carries its figures in `data-` attributes and a `<title>` (a tooltip), and each chart
has an `aria-label` summing it up, so that people, screen readers and tests can read it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any

WIDTH = 640
LABEL_WIDTH = 130
TEXT_WIDTH = 190
ROW = 26
COLOURS = {"control": "#8a8f98", "arm": "#3b6fd8", "fired": "#2f9e5b", "suppressed": "#d0a53a"}
VERDICTS = {
    "win": "win",
    "likely_win": "likely win",
    "lose": "lose",
    "no_difference": "no difference",
    "collecting": "collecting data",
}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def conversion_chart(campaign_id: str, arms: Sequence[dict[str, Any]]) -> str:
    """Conversion rate per arm with its 95 % interval (arms as `results.report` gives them)."""
    highs = [a["interval"][1] for a in arms if a["interval"] is not None]
    top = min(1.0, max([0.01, *highs]) * 1.1)  # some room to the right, never past 100 %
    plot = WIDTH - LABEL_WIDTH - TEXT_WIDTH
    height = ROW * len(arms) + 24

    def x(rate: float) -> float:
        return float(LABEL_WIDTH + plot * min(rate, top) / top)

    rows: list[str] = []
    summary: list[str] = []
    for i, arm in enumerate(arms):
        y = 8 + i * ROW
        name = arm["arm"]
        rate = arm["conversion_rate"]
        colour = COLOURS["control"] if arm["control"] else COLOURS["arm"]
        verdict = "control" if arm["control"] else VERDICTS.get(arm["label"] or "", "")
        figures = f"{_percent(rate)} ({arm['converted']}/{arm['assigned']})"
        interval = arm["interval"]
        low, high = interval if interval is not None else (None, None)
        tip = f"{name}: {figures}, 95% interval {_percent(low)}–{_percent(high)}; {verdict}"
        summary.append(f"{name} {figures} {verdict}")
        rows.append(
            f'<g class="arm" data-arm="{_e(name)}" data-assigned="{arm["assigned"]}" '
            f'data-converted="{arm["converted"]}" data-rate="{"" if rate is None else rate}" '
            f'data-low="{"" if low is None else low}" data-high="{"" if high is None else high}" '
            f'data-label="{_e(arm["label"] or "")}"><title>{_e(tip)}</title>'
            f'<text x="{LABEL_WIDTH - 8}" y="{y + 14}" text-anchor="end">{_e(name)}</text>'
        )
        if rate is not None:
            rows.append(
                f'<rect x="{LABEL_WIDTH}" y="{y + 3}" width="{x(rate) - LABEL_WIDTH:.1f}" '
                f'height="{ROW - 10}" fill="{colour}" opacity="0.75"/>'
            )
        if low is not None and high is not None:
            mid = y + ROW / 2 - 3
            rows.append(
                f'<path d="M{x(low):.1f},{mid - 5}v10M{x(low):.1f},{mid}H{x(high):.1f}'
                f'M{x(high):.1f},{mid - 5}v10" stroke="#222" stroke-width="1.5" fill="none"/>'
            )
        rows.append(
            f'<text x="{WIDTH - TEXT_WIDTH + 8}" y="{y + 14}">{_e(figures)} '
            f'<tspan class="verdict {_e(arm["label"] or "control")}">{_e(verdict)}</tspan></text>'
            "</g>"
        )
    axis = (
        f'<path d="M{LABEL_WIDTH},4V{height - 18}" stroke="#999"/>'
        f'<text x="{LABEL_WIDTH}" y="{height - 4}" text-anchor="middle" class="tick">0%</text>'
        f'<text x="{LABEL_WIDTH + plot}" y="{height - 4}" text-anchor="middle" class="tick">'
        f"{_percent(top)}</text>"
    )
    label = f"Conversion per arm of {campaign_id}: " + "; ".join(summary)
    return (
        f'<svg class="chart conversion" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
        f'height="{height}" role="img" aria-label="{_e(label)}" '
        f'data-campaign="{_e(campaign_id)}" font-size="12">{"".join(rows)}{axis}</svg>'
    )


def hourly_chart(
    campaign_id: str, hours: Sequence[tuple[int, int, int]], zone: tzinfo = UTC
) -> str:
    """Fired and suppressed decisions per hour, oldest first (hours since the epoch)."""
    height = 150
    base = height - 22
    plot_left = 40
    plot = WIDTH - plot_left - 10
    slot = plot / max(1, len(hours))
    top = max([1, *(max(f, s) for _, f, s in hours)])
    bars: list[str] = []
    fired_total = sum(f for _, f, _ in hours)
    suppressed_total = sum(s for _, _, s in hours)
    for i, (hour, fired, suppressed) in enumerate(hours):
        left = plot_left + i * slot
        when = datetime.fromtimestamp(hour * 3600, zone)
        tip = f"{when:%Y-%m-%d %H:00}: {fired} fired, {suppressed} suppressed"
        parts = [f'<g class="hour" data-hour="{hour}" data-fired="{fired}" '
                 f'data-suppressed="{suppressed}"><title>{_e(tip)}</title>']
        for j, (count, colour) in enumerate(
            ((fired, COLOURS["fired"]), (suppressed, COLOURS["suppressed"]))
        ):
            tall = (base - 8) * count / top
            parts.append(
                f'<rect x="{left + 1 + j * (slot - 2) / 2:.1f}" y="{base - tall:.1f}" '
                f'width="{max(1.0, (slot - 2) / 2):.1f}" height="{tall:.1f}" fill="{colour}"/>'
            )
        if i % 6 == 0:
            parts.append(
                f'<text x="{left:.1f}" y="{height - 6}" class="tick">{when:%H:00}</text>'
            )
        parts.append("</g>")
        bars.append("".join(parts))
    legend = (
        f'<text x="{plot_left}" y="12"><tspan fill="{COLOURS["fired"]}">■</tspan> fired '
        f'{fired_total}  <tspan fill="{COLOURS["suppressed"]}">■</tspan> suppressed '
        f"{suppressed_total}  <tspan class=\"tick\">(max {top} an hour)</tspan></text>"
    )
    axis = f'<path d="M{plot_left},{base}H{WIDTH - 10}" stroke="#999"/>'
    label = (
        f"Decisions per hour of {campaign_id} over the last {len(hours)} hours: "
        f"{fired_total} fired, {suppressed_total} suppressed"
    )
    return (
        f'<svg class="chart hourly" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
        f'height="{height}" role="img" aria-label="{_e(label)}" '
        f'data-campaign="{_e(campaign_id)}" font-size="11">{legend}{"".join(bars)}{axis}</svg>'
    )
