"""A/B results: each arm of a campaign against its control group. Pure arithmetic, no I/O.

Per arm the stores count users `assigned`, users who `converted` (reached the campaign's goal
within its window after their first assignment) and the goal's `value` summed over them.
`evaluate` turns those counts into what the admin API, dashboard, metrics and replay show:

- conversion rate with its 95 % Wilson score interval;
- value per assigned user;
- against control: the two-proportion z-test (pooled standard error, two-sided p-value) and the
  Bayesian probability that the arm's rate beats control's (uniform Beta(1, 1) priors);
- a label, the seed's verdicts:

    collecting      the arm or the control group has fewer than MIN_USERS assigned users
    win             p < ALPHA and the arm converts better than control
    lose            p < ALPHA and the arm converts worse
    likely_win      not significant, but the probability to beat control is >= LIKELY
    no_difference   none of the above
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Final, Literal

import msgspec

from collector.config.schema import CampaignSpec

MIN_USERS: Final = 100  # per arm and in the control group, before any verdict
ALPHA: Final = 0.05  # two-sided significance level of the z-test
LIKELY: Final = 0.90  # probability to beat control that makes a `likely_win`
Z95: Final = 1.959963984540054  # the standard normal's 97.5th percentile
EXACT_LIMIT: Final = 5000  # above this many conversions, P(beat) uses the normal approximation

Label = Literal["win", "likely_win", "lose", "no_difference", "collecting"]
CONTROL: Final = "~control"  # the control group's arm key (no variant id can start with ~)
SOLE: Final = "~action"  # the arm key of a campaign without variants (its `rate` + `action`)


class Counts(msgspec.Struct, array_like=True, gc=False):
    """One arm's counters: users assigned, users who reached the goal, value they brought."""

    assigned: int = 0
    converted: int = 0
    value: float = 0.0


class ArmResult(msgspec.Struct):
    """One arm as shown: its counts, rate and interval, and how it compares with control."""

    arm: str  # the variant id, "treatment" for a campaign without variants, or "control"
    variant_id: str | None
    control: bool
    assigned: int
    converted: int
    conversion_rate: float | None
    interval: tuple[float, float] | None  # 95 % Wilson score interval of the rate
    value: float
    value_per_user: float | None
    lift: float | None = None  # relative: (rate - control's) / control's
    z: float | None = None
    p_value: float | None = None
    probability_to_beat_control: float | None = None
    label: Label | None = None  # None for the control group itself


def arm_name(key: str) -> str:
    """How an arm key is shown: the variant id, `treatment` or `control`."""
    if key == CONTROL:
        return "control"
    if key == SOLE:
        return "treatment"
    return key


def wilson(converted: int, assigned: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (95 % by default); None without users."""
    if assigned <= 0:
        return None
    p = converted / assigned
    z2 = z * z
    denominator = 1 + z2 / assigned
    centre = (p + z2 / (2 * assigned)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / assigned + z2 / (4 * assigned * assigned))
    # The interval contains its rate; rounding may leave an end of it a hair past (at 0 or 100 %).
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def z_test(c1: int, n1: int, c2: int, n2: int) -> tuple[float, float] | None:
    """Two-proportion z-test of c1/n1 against c2/n2: (z, two-sided p-value), pooled variance.

    None when it is undefined (no users on a side, or nobody or everybody converted).
    """
    if n1 <= 0 or n2 <= 0:
        return None
    pooled = (c1 + c2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return None
    z = (c1 / n1 - c2 / n2) / math.sqrt(variance)
    return z, math.erfc(abs(z) / math.sqrt(2))


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def probability_to_beat(c1: int, n1: int, c2: int, n2: int) -> float | None:
    """P(rate 1 > rate 2) with Beta(1 + c, 1 + n - c) posteriors; None without users.

    Exact (a finite sum over the first arm's conversions) up to EXACT_LIMIT conversions; past
    that, the normal approximation of the two posteriors, which is then accurate to < 0.001.
    """
    if n1 <= 0 or n2 <= 0:
        return None
    a1, b1 = 1 + c1, 1 + n1 - c1
    a2, b2 = 1 + c2, 1 + n2 - c2
    if c1 <= EXACT_LIMIT:
        # P(X1 > X2) = sum_{i<a1} B(a2+i, b1+b2) / ((b1+i) B(1+i, b1) B(a2, b2))
        base = _log_beta(a2, b2)
        total = 0.0
        for i in range(a1):
            total += math.exp(
                _log_beta(a2 + i, b1 + b2) - math.log(b1 + i) - _log_beta(1 + i, b1) - base
            )
        return min(1.0, max(0.0, total))
    m1, m2 = a1 / (a1 + b1), a2 / (a2 + b2)
    v1 = a1 * b1 / ((a1 + b1) ** 2 * (a1 + b1 + 1))
    v2 = a2 * b2 / ((a2 + b2) ** 2 * (a2 + b2 + 1))
    return 0.5 * math.erfc(-(m1 - m2) / math.sqrt(2 * (v1 + v2)))


def label(
    arm: Counts, control: Counts, p_value: float | None, beat: float | None
) -> Label:
    """The verdict on an arm against control (see the module docstring)."""
    if arm.assigned < MIN_USERS or control.assigned < MIN_USERS:
        return "collecting"
    better = arm.converted / arm.assigned > control.converted / control.assigned
    if p_value is not None and p_value < ALPHA:
        return "win" if better else "lose"
    if beat is not None and beat >= LIKELY:
        return "likely_win"
    return "no_difference"


def evaluate(arms: Iterable[tuple[str, Counts]]) -> list[ArmResult]:
    """Every arm (keyed as stored: variant id, SOLE or CONTROL) compared with control.

    The control group comes last; arms keep the order given.
    """
    given = list(arms)
    control = next((counts for key, counts in given if key == CONTROL), Counts())
    shown: list[ArmResult] = []
    for key, counts in given:
        if key == CONTROL:
            continue
        result = _describe(key, counts)
        tested = z_test(counts.converted, counts.assigned, control.converted, control.assigned)
        beat = probability_to_beat(
            counts.converted, counts.assigned, control.converted, control.assigned
        )
        if tested is not None:
            result.z, result.p_value = tested
        result.probability_to_beat_control = beat
        if counts.assigned and control.assigned and control.converted:
            control_rate = control.converted / control.assigned
            result.lift = (counts.converted / counts.assigned - control_rate) / control_rate
        result.label = label(counts, control, result.p_value, beat)
        shown.append(result)
    shown.append(_describe(CONTROL, control))
    return shown


def _describe(key: str, counts: Counts) -> ArmResult:
    n = counts.assigned
    return ArmResult(
        arm=arm_name(key),
        variant_id=None if key in (CONTROL, SOLE) else key,
        control=key == CONTROL,
        assigned=n,
        converted=counts.converted,
        conversion_rate=counts.converted / n if n else None,
        interval=wilson(counts.converted, n),
        value=counts.value,
        value_per_user=counts.value / n if n else None,
    )


def arm_keys(spec: CampaignSpec) -> list[str]:
    """A campaign's arm keys in config order: its variants (or SOLE), then CONTROL."""
    keys = [v.id for v in spec.variants] if spec.variants is not None else [SOLE]
    return [*keys, CONTROL]


def report(spec: CampaignSpec, counts: dict[str, Counts]) -> dict[str, Any]:
    """A campaign's results as the admin API, dashboard and replay show them."""
    keys = arm_keys(spec)
    keys[-1:-1] = [k for k in counts if k not in keys]  # arms removed since, before control
    arms = evaluate((k, counts.get(k) or Counts()) for k in keys)
    goal = spec.goal
    return {
        "campaign_id": spec.id,
        "goal": None
        if goal is None
        else {
            "event": goal.event,
            "within": goal.window(),
            "value": goal.value,
            "where": None if goal.where is None else goal.where.raw,
        },
        "minimum_sample": MIN_USERS,
        "arms": [msgspec.structs.asdict(arm) for arm in arms],
    }
