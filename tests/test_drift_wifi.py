"""Drift on WiFi-like data: the daily cycle is not drift, flags are rates, ties are ties, one
change is one alarm episode in the signal's own units; and the campus simulator's scenarios."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import numpy as np
import pytest

from modeld.core.drift import DriftConfig, DriftDetector, Reference
from modeld.core.features import FeatureExtractor, parse_timestamp
from modeld.daemon.producer.simulator import (
    HELD_OUT_SCENARIOS,
    SCENARIOS,
    simulate_wifi_logs,
)

NAMES = ("hour_of_day", "busy_flag", "signal_dbm", "rare_flag")


def day_records(rng: np.random.Generator, n: int, *, start_hour: float = 0.0,
                rare: float = 0.01, weaker: float = 0.0, tied_scores: bool = True
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Records in time order over a day from ``start_hour``: a flag whose rate follows the
    day (busy by day), a signal carried by 15% of the lines (0 otherwise), a rare flag; the
    score takes a few tied levels and follows the day too."""
    hour = (start_hour + np.arange(n) * 24.0 / n) % 24.0
    daytime = np.exp(-(((hour - 13.0) / 4.0) ** 2))
    x = np.empty((n, 4))
    x[:, 0] = np.floor(hour)
    x[:, 1] = rng.random(n) < 0.05 + 0.4 * daytime
    carried = rng.random(n) < 0.15
    x[:, 2] = np.where(carried, np.round(rng.normal(-60.0 - weaker, 7.0, n)), 0.0)
    x[:, 3] = rng.random(n) < rare
    level = rng.integers(0, 6, n) + 2 * x[:, 1]
    scores = 0.35 + 0.01 * (level if tied_scores else level + rng.random(n))
    return x, scores, rng.random(n) < 0.02


def reference(seed: int = 0, *, seasonal: bool = True, days: int = 6) -> Reference:
    rng = np.random.default_rng(seed)
    parts = [day_records(rng, 4000) for _ in range(days)]
    x = np.concatenate([p[0] for p in parts])
    s = np.concatenate([p[1] for p in parts])
    f = np.concatenate([p[2] for p in parts])
    return Reference.from_arrays(NAMES, x, s, flags=f, seasonal=seasonal)


def stream(detector: DriftDetector, x: np.ndarray, s: np.ndarray, f: np.ndarray,
           start: int = 0) -> list[tuple[int, tuple[str, ...], str]]:
    alarms = []
    for pos in range(0, x.shape[0], 50):
        found = detector.observe(x[pos:pos + 50], s[pos:pos + 50], f[pos:pos + 50],
                                 now=1.8e9 + start + pos, latency_s=0.002)
        alarms += [(a.record, a.signals, a.detail) for a in found]
    return alarms


def complete(ref: Reference) -> Reference:
    """The rates a baseline would add, so that the detector starts judging at once."""
    rates = Reference.from_summary({"invalid_rate": 0.0, "latency": [0.001, 0.002, 0.003],
                                    "n": 20_000}, NAMES)
    return ref.completed_by(Reference(NAMES, ref.features, ref.scores, ref.correlation,
                                      ref.anomaly_rate, rates.invalid_rate, rates.latency))


# ---------------------------------------------------------------- seasons


def test_a_reference_with_the_hour_has_parts_where_the_day_shows() -> None:
    ref = reference()
    assert ref.seasons, "parts of the day"
    covered = sorted(slot for slots, _ in ref.seasons for slot in slots)
    assert covered == list(range(24))
    _, busy_part = next((slots, part) for slots, part in ref.seasons if 13 in slots)
    # the busy flag follows the day: its own rate in each part ...
    assert busy_part.features[1] is not ref.features[1]
    # ... the rare flag does not: every part keeps the whole reference's (more rows)
    assert all(part.features[3] is ref.features[3] for _, part in ref.seasons)
    assert Reference.from_dict(ref.to_dict()).to_dict() == ref.to_dict()


def test_the_daily_cycle_is_not_drift_but_like_hour_to_like_hour() -> None:
    rng = np.random.default_rng(7)
    x, s, f = day_records(rng, 16_000)
    seasonal = DriftDetector(NAMES, DriftConfig(), complete(reference()))
    flat = DriftDetector(NAMES, DriftConfig(), complete(reference(seasonal=False)))

    assert stream(seasonal, x, s, f) == []
    assert stream(flat, x, s, f), "without parts of the day the cycle alarms"
    report = seasonal.evaluate(2e9)
    assert report.signal("hour_of_day").method == "seasonal"
    assert "part of the day" in report.signal("hour_of_day").detail


# ---------------------------------------------------------------- rates, ties, units


def test_a_flag_is_a_rate_and_its_alarm_says_so_in_percent() -> None:
    detector = DriftDetector(NAMES, DriftConfig(), complete(reference()))
    assert "feature:rare_flag:rate+" in detector.thresholds()
    assert not any(k.startswith("feature:rare_flag:mean") for k in detector.thresholds())
    rng = np.random.default_rng(8)
    stream(detector, *day_records(rng, 3000, start_hour=8.0))
    x, s, f = day_records(rng, 2000, start_hour=11.0, rare=0.04)
    alarms = stream(detector, x, s, f, start=3000)

    record, signals, detail = alarms[0]
    assert signals[0] == "feature:rare_flag"
    assert record - 3000 <= 1000
    assert re.search(r"feature:rare_flag rate 1(\.\d)?% -> [34](\.\d)?%", detail), detail
    assert "Bernoulli" in detail and "one alarm per 50,000" in detail
    assert detector.evaluate(2e9).signal("rare_flag").method == "fisher_exact"


def test_a_value_carried_by_few_lines_is_judged_on_those_lines_in_its_units() -> None:
    detector = DriftDetector(NAMES, DriftConfig(), complete(reference()))
    rng = np.random.default_rng(9)
    stream(detector, *day_records(rng, 3000, start_hour=8.0))
    alarms = stream(detector, *day_records(rng, 2000, start_hour=11.0, weaker=10.0),
                    start=3000)

    record, signals, detail = alarms[0]
    assert signals[0] == "feature:signal_dbm"
    assert record - 3000 <= 1000
    assert re.search(r"feature:signal_dbm median -60 -> -(6[6-9]|7\d) dBm where not 0", detail)
    assert "records 3," in detail  # where the change began, as the CUSUM tells


def test_tied_scores_raise_no_false_alarm() -> None:
    # six score levels: a reference kept as interpolated quantiles misplaces their mass
    detector = DriftDetector(NAMES, DriftConfig(), complete(reference()))
    rng = np.random.default_rng(10)
    alarms = stream(detector, *day_records(rng, 20_000))
    assert alarms == []


# ---------------------------------------------------------------- episodes


def test_signals_moving_together_are_one_episode_rearmed_once_settled() -> None:
    detector = DriftDetector(NAMES, DriftConfig(cooldown_records=1500), complete(reference()))
    rng = np.random.default_rng(11)
    stream(detector, *day_records(rng, 2000, start_hour=9.0))
    change = stream(detector, *day_records(rng, 3000, start_hour=10.0, rare=0.05,
                                           weaker=12.0), start=2000)
    episode = detector.evaluate(1.8e9 + 5000).episode
    assert len(change) == 1, change
    assert episode is not None and episode["number"] == 1
    assert {s["signal"] for s in episode["signals"]} >= {"feature:rare_flag",
                                                          "feature:signal_dbm"}
    settled = stream(detector, *day_records(rng, 4000, start_hour=11.0), start=5000)
    again = stream(detector, *day_records(rng, 2000, start_hour=15.0, rare=0.05),
                   start=9000)
    assert settled == []
    episode = detector.evaluate(1.8e9 + 11_000).episode
    assert len(again) == 1 and episode is not None and episode["number"] == 2


# ---------------------------------------------------------------- the simulator


START = datetime(2026, 11, 16, tzinfo=UTC)  # a Monday


def test_the_campus_has_a_day_and_a_week() -> None:
    records = simulate_wifi_logs(30_000, START, 3, False, mean_gap_seconds=8.0)
    when = [parse_timestamp(r["timestamp"]) for r in records]
    hosts = {r["host"] for r in records if r["process"] == "hostapd"}
    weekday = sum(1 for t in when if t.weekday() == 1)
    saturday = sum(1 for t in when if t.weekday() == 5)
    assert len(hosts) == 27
    assert saturday < 0.5 * weekday, "fewer lines at weekends"
    night = [r for r, t in zip(records, when, strict=True) if t.hour < 5]
    day = [r for r, t in zip(records, when, strict=True) if 10 <= t.hour < 16]

    def share(rows: list[dict[str, str]], text: str) -> float:
        return sum(text in r["message"] for r in rows) / len(rows)

    assert share(night, "inactivity") > 3 * share(day, "inactivity"), "idle timeouts at night"
    assert share(day, "AP-STA-CONNECTED") > 2 * share(night, "AP-STA-CONNECTED")
    assert 0.002 < share(records, "EAP-FAILURE") < 0.02
    assert share(records, "ASSOC-REJECT") > 0


@pytest.mark.parametrize(("scenario", "feature", "direction"), [
    ("radio_degrading", "signal_dbm", -1), ("firmware_update", "message_length", 1),
    ("auth_failures", "is_auth_failure", 1), ("eap_server_outage", "is_eap_failure", 1)])
def test_a_scenario_changes_what_it_names(scenario: str, feature: str, direction: int) -> None:
    names = [feature, "has_signal"]
    base = FeatureExtractor(names).transform(simulate_wifi_logs(4000, START, 1, False))
    moved = FeatureExtractor(names).transform(simulate_wifi_logs(4000, START, 1, False,
                                                                 scenario))
    if feature == "signal_dbm":
        base, moved = base[base[:, 1] == 1], moved[moved[:, 1] == 1]
    if feature.startswith("is_"):
        assert moved[:, 0].mean() > 2.5 * base[:, 0].mean()
    else:
        assert direction * (np.median(moved[:, 0]) - np.median(base[:, 0])) >= 2


def test_scenarios_are_named_and_checked() -> None:
    assert set(SCENARIOS).isdisjoint(HELD_OUT_SCENARIOS)
    with pytest.raises(ValueError, match="unknown scenario"):
        simulate_wifi_logs(10, START, 1, False, "solar_flare")
