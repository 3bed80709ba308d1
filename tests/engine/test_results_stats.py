"""The A/B statistics against figures worked out by hand and a simulated experiment."""

from __future__ import annotations

import math
import random
import re

import pytest

from collector.admin.charts import conversion_chart
from collector.engine.results import (
    CONTROL,
    MIN_USERS,
    SOLE,
    Counts,
    evaluate,
    probability_to_beat,
    wilson,
    z_test,
)


def test_z_test_matches_a_hand_computation() -> None:
    # control 100 / 1000 = 10 %, arm 130 / 1000 = 13 %
    # pooled p = 230 / 2000 = 0.115; SE = sqrt(0.115 * 0.885 * (1/1000 + 1/1000)) = 0.0142671
    # z = (0.13 - 0.10) / 0.0142671 = 2.10274; two-sided p = 2 * (1 - Phi(2.10274)) = 0.035488
    found = z_test(130, 1000, 100, 1000)
    assert found is not None
    z, p = found
    assert z == pytest.approx(2.10274, abs=1e-5)
    assert p == pytest.approx(0.035488, abs=1e-5)
    # symmetric: the other way round, the same p and the opposite z
    back = z_test(100, 1000, 130, 1000)
    assert back is not None and back[0] == pytest.approx(-z) and back[1] == pytest.approx(p)


def test_z_test_is_undefined_without_variance_or_users() -> None:
    assert z_test(0, 100, 0, 100) is None
    assert z_test(100, 100, 100, 100) is None
    assert z_test(1, 0, 1, 10) is None


def test_wilson_interval_matches_the_textbook() -> None:
    # 100 / 1000: Wilson 95 % = (0.082909, 0.120152)
    low, high = wilson(100, 1000) or (0.0, 0.0)
    assert (low, high) == (pytest.approx(0.082909, abs=1e-6), pytest.approx(0.120152, abs=1e-6))
    # no conversions still gives a proper upper bound: 0 / 20 -> (0, 0.161125)
    assert wilson(0, 20) == (0.0, pytest.approx(0.161125, abs=1e-6))
    assert wilson(0, 0) is None


def test_probability_to_beat_agrees_with_sampling_the_posteriors() -> None:
    rng = random.Random(7)
    for c1, n1, c2, n2 in [(130, 1000, 100, 1000), (5, 50, 9, 60), (12, 100, 10, 100)]:
        draws = 100_000
        wins = sum(
            rng.betavariate(1 + c1, 1 + n1 - c1) > rng.betavariate(1 + c2, 1 + n2 - c2)
            for _ in range(draws)
        )
        assert probability_to_beat(c1, n1, c2, n2) == pytest.approx(wins / draws, abs=0.006)
    # identical arms: a coin toss
    assert probability_to_beat(50, 500, 50, 500) == pytest.approx(0.5, abs=1e-9)


def test_the_normal_approximation_takes_over_smoothly_for_large_counts() -> None:
    exact = probability_to_beat(5000, 50_000, 4900, 50_000)
    approximate = probability_to_beat(5001, 50_000, 4900, 50_000)
    assert exact is not None and approximate is not None
    assert approximate == pytest.approx(exact, abs=0.005)


def test_labels() -> None:
    control = Counts(1000, 100)
    by_arm = dict(
        (r.arm, r)
        for r in evaluate(
            [
                ("better", Counts(1000, 130)),  # p = 0.035: win
                ("worse", Counts(1000, 70)),  # p = 0.016: lose
                ("hint", Counts(1000, 120)),  # p = 0.15, P(beat) = 0.92: likely_win
                ("same", Counts(1000, 101)),
                ("small", Counts(MIN_USERS - 1, 50)),
                (CONTROL, control),
            ]
        )
    )
    assert by_arm["better"].label == "win"
    assert by_arm["worse"].label == "lose"
    assert by_arm["hint"].label == "likely_win"
    assert by_arm["hint"].p_value is not None and by_arm["hint"].p_value > 0.05
    assert by_arm["same"].label == "no_difference"
    assert by_arm["small"].label == "collecting"
    assert by_arm["control"].label is None and by_arm["control"].control
    assert by_arm["better"].lift == pytest.approx(0.3)
    # everything is compared with a control group that is big enough, or nothing is
    few = evaluate([(SOLE, Counts(5000, 900)), (CONTROL, Counts(MIN_USERS - 1, 2))])
    assert [(r.arm, r.label) for r in few] == [("treatment", "collecting"), ("control", None)]


def test_value_per_user_and_rates() -> None:
    results = evaluate([("a", Counts(200, 50, 1234.5)), (CONTROL, Counts(0, 0, 0.0))])
    arm, control = results
    assert arm.conversion_rate == 0.25
    assert arm.value_per_user == pytest.approx(6.1725)
    assert arm.label == "collecting"
    assert control.assigned == 0 and control.conversion_rate is None
    assert control.interval is None and control.value_per_user is None


def test_a_simulated_experiment_finds_the_real_effect_and_only_it() -> None:
    """Three arms with known true rates; a fixed seed makes the outcome exact."""
    rng = random.Random(20261201)
    true_rates = {CONTROL: 0.10, "plus_five": 0.15, "no_effect": 0.10, "minus_four": 0.06}
    counts = {arm: Counts() for arm in true_rates}
    for _ in range(8000):
        arm = rng.choice(list(true_rates))
        counts[arm].assigned += 1
        if rng.random() < true_rates[arm]:
            counts[arm].converted += 1
            counts[arm].value += 40.0
    results = {r.arm: r for r in evaluate(counts.items())}
    assert results["plus_five"].label == "win"
    assert results["minus_four"].label == "lose"
    assert results["no_effect"].label == "no_difference"
    for arm, rate in true_rates.items():
        shown = results["control" if arm == CONTROL else arm]
        assert shown.interval is not None
        low, high = shown.interval
        assert low <= rate <= high  # each true rate lies inside its 95 % interval here
        assert shown.value_per_user == pytest.approx(40.0 * shown.converted / shown.assigned)
    assert math.isclose(sum(r.assigned for r in results.values()), 8000)


@pytest.mark.parametrize("assigned", [1, 10, 13, 25, 27, 100, 999, 1234])
def test_a_wilson_interval_contains_its_rate_even_at_0_and_100_percent(assigned: int) -> None:
    for converted in (0, assigned // 3, assigned):
        low, high = wilson(converted, assigned) or (math.nan, math.nan)
        rate = converted / assigned
        assert 0.0 <= low <= rate <= high <= 1.0, (converted, assigned, low, high)
    assert (wilson(assigned, assigned) or (0.0, 0.0))[1] == 1.0
    assert (wilson(0, assigned) or (1.0, 1.0))[0] == 0.0


def test_the_conversion_chart_axis_ends_at_100_percent_at_most() -> None:
    arms = [
        {"arm": "control", "control": True, "label": None, "conversion_rate": 1.0,
         "converted": 10, "assigned": 10, "interval": wilson(10, 10)},
        {"arm": "treatment", "control": False, "label": "collecting", "conversion_rate": 0.9,
         "converted": 9, "assigned": 10, "interval": wilson(9, 10)},
    ]
    svg = conversion_chart("c", arms)
    ticks = re.findall(r'class="tick">([^<]+)</text>', svg)
    assert ticks == ["0%", "100.0%"]
