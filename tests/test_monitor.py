"""ScoringWindow: lean bounded windows, exact totals, a bounded time series, state that survives."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeld.core.monitor import LATENCY_BUCKETS_S, IntervalSummary, ScoringWindow
from modeld.core.ring import Ring


def _feed(window: ScoringWindow, scores: np.ndarray, flags: np.ndarray, latencies: np.ndarray,
          features: np.ndarray | None = None, *, batch: int = 1, now: float = 0.0) -> None:
    for i, start in enumerate(range(0, scores.size, batch)):
        rows = slice(start, start + batch)
        window.observe(None if features is None else features[rows], scores[rows], flags[rows],
                       float(latencies[i]), now)


def test_snapshot_values_match_numpy() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(-0.45, 0.05, size=300)
    flags = rng.random(300) < 0.1
    latencies = rng.lognormal(-6, 0.5, size=300)
    window = ScoringWindow("v1", capacity=1000)
    _feed(window, scores, flags, latencies, now=5.0)
    window.observe_invalid(7, now=6.0)

    snap = window.snapshot()

    assert snap["records"] == 300
    assert snap["anomalies"] == int(flags.sum())
    assert snap["anomaly_rate"] == pytest.approx(flags.mean())
    assert snap["invalid"] == 7
    assert snap["requests"] == 300
    assert snap["score"]["mean"] == pytest.approx(scores.mean())
    assert snap["score"]["min"] == pytest.approx(scores.min())
    assert snap["score"]["max"] == pytest.approx(scores.max())
    assert snap["score"]["p50"] == pytest.approx(np.quantile(scores, 0.5))
    assert snap["score"]["p95"] == pytest.approx(np.quantile(scores, 0.95))
    assert snap["latency_s"]["p50"] == pytest.approx(np.quantile(latencies, 0.5))
    assert snap["latency_s"]["p99"] == pytest.approx(np.quantile(latencies, 0.99))
    assert snap["latency_s"]["max"] == pytest.approx(latencies.max())
    expected_hist = np.bincount(np.searchsorted(LATENCY_BUCKETS_S, latencies, side="left"),
                                minlength=len(LATENCY_BUCKETS_S) + 1)
    assert snap["latency_s"]["histogram"]["counts"] == expected_hist.tolist()
    assert snap["window"]["records"] == 300
    assert (snap["first_seen"], snap["last_seen"]) == (5.0, 6.0)
    json.dumps(snap, allow_nan=False)


def test_empty_snapshot_is_json_without_nan() -> None:
    snap = ScoringWindow("v1").snapshot()

    assert snap["records"] == 0
    assert snap["anomaly_rate"] is None
    assert snap["score"] == {"mean": None, "min": None, "max": None, "p50": None, "p95": None}
    json.dumps(snap, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(min_value=1, max_value=37), min_size=1, max_size=30),
       capacity=st.integers(min_value=1, max_value=50))
def test_batches_and_single_records_give_the_same_window(sizes: list[int], capacity: int) -> None:
    total = sum(sizes)
    rng = np.random.default_rng(total)
    scores = rng.normal(size=total)
    flags = rng.random(total) < 0.3
    features = rng.normal(size=(total, 3))
    one = ScoringWindow("a", capacity=capacity)
    many = ScoringWindow("b", capacity=capacity)
    for i in range(total):
        one.observe(features[i:i + 1], scores[i:i + 1], flags[i:i + 1], 0.001, 0.0)
    start = 0
    for size in sizes:
        rows = slice(start, start + size)
        many.observe(features[rows], scores[rows], flags[rows], 0.001, 0.0)
        start += size

    keep = min(capacity, total)
    np.testing.assert_array_equal(one.recent_scores(), scores[-keep:])
    np.testing.assert_array_equal(many.recent_scores(), scores[-keep:])
    np.testing.assert_array_equal(many.recent_flags(), flags[-keep:])
    np.testing.assert_array_equal(many.recent_features(), features[-keep:])
    assert (many.records, many.anomalies) == (one.records, one.anomalies) == (total, flags.sum())
    assert many.snapshot()["score"]["mean"] == pytest.approx(scores.mean())


def test_memory_is_bounded_over_a_long_stream() -> None:
    window = ScoringWindow("v1", n_features=8, capacity=500, latency_capacity=300,
                           max_intervals=24)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(100, 8))
    s = rng.normal(size=100)
    f = rng.random(100) < 0.05
    for _ in range(50):  # warm up: every ring wrapped, the time series full
        window.observe(x, s, f, 0.002, 0.0)
        window.roll(0.0)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(2000):
        window.observe(x, s, f, 0.002, float(i))
        window.observe(x[:1], s[:1], f[:1], 0.002, float(i))
        if i % 10 == 0:
            window.roll(float(i))
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()

    assert window.records == 5000 + 2000 * 101
    assert len(window.intervals) == 24
    assert window.recent_scores().size == 500
    assert window.recent_latencies().size == 300
    assert grown < 64 * 1024


def test_roll_closes_intervals_with_their_own_records() -> None:
    window = ScoringWindow("v1", capacity=1000, started_at=0.0)
    window.observe(None, np.asarray([1.0, 2.0, 3.0]), np.asarray([True, False, False]), 0.01, 1.0)
    window.observe_invalid(2, now=2.0)
    first = window.roll(10.0)
    window.observe(None, np.asarray([10.0]), np.asarray([True]), 0.5, 11.0)
    second = window.roll(20.0)
    empty = window.roll(30.0)

    assert first == IntervalSummary(start=0.0, end=10.0, records=3, anomalies=1, invalid=2,
                                    requests=1, anomaly_rate=pytest.approx(1 / 3),
                                    score_p50=2.0, latency_p50_s=0.01, latency_p99_s=0.01,
                                    sampled=False)
    assert (second.records, second.anomalies, second.score_p50, second.latency_p99_s) == (
        1, 1, 10.0, 0.5)
    assert (empty.records, empty.anomaly_rate, empty.score_p50) == (0, None, None)
    assert [i["end"] for i in window.time_series()] == [10.0, 20.0, 30.0]


def test_roll_marks_an_interval_larger_than_the_window_as_sampled() -> None:
    window = ScoringWindow("v1", capacity=10)
    window.observe(None, np.arange(25.0), np.zeros(25, dtype=bool), 0.01, 0.0)

    summary = window.roll(1.0)

    assert summary.records == 25
    assert summary.sampled
    assert summary.score_p50 == pytest.approx(np.quantile(np.arange(15.0, 25.0), 0.5))


def test_state_roundtrip_keeps_totals_and_time_series() -> None:
    window = ScoringWindow("v7", n_features=2, capacity=100, max_intervals=5)
    rng = np.random.default_rng(5)
    for i in range(30):
        window.observe(rng.normal(size=(3, 2)), rng.normal(size=3), rng.random(3) < 0.2,
                       0.003 * (i + 1), float(i))
        if i % 7 == 6:
            window.roll(float(i))
    window.observe_invalid(4, now=30.0)

    restored = ScoringWindow.from_state(json.loads(json.dumps(window.to_state())))

    before, after = window.snapshot(), restored.snapshot()
    for key in ("version", "records", "anomalies", "invalid", "requests", "first_seen",
                "last_seen", "interval"):
        assert after[key] == before[key]
    assert after["score"]["mean"] == pytest.approx(before["score"]["mean"])
    assert after["latency_s"]["histogram"] == before["latency_s"]["histogram"]
    assert restored.time_series() == window.time_series()
    # The open interval continues: its counts carry over, its quantiles come from new records.
    restored.observe(None, np.asarray([5.0]), np.asarray([False]), 0.001, 31.0)
    closed = restored.roll(40.0)
    assert closed.records == before["interval"]["records"] + 1
    assert closed.score_p50 == 5.0
    assert closed.sampled


def test_state_of_another_format_is_refused() -> None:
    with pytest.raises(ValueError, match="scoring_window"):
        ScoringWindow.from_state({"format": "something/else"})


def test_features_of_another_width_are_refused() -> None:
    window = ScoringWindow("v1", n_features=3)

    with pytest.raises(ValueError, match="columns"):
        window.observe(np.zeros((1, 4)), np.zeros(1), np.zeros(1, dtype=bool), 0.0, 0.0)


def test_nan_scores_are_kept_out_of_the_score_aggregates() -> None:
    window = ScoringWindow("v1")
    window.observe(None, np.asarray([np.nan]), np.asarray([False]), 0.001, 0.0)
    window.observe(None, np.asarray([1.0, np.nan, 3.0]), np.zeros(3, dtype=bool), 0.001, 0.0)

    snap = window.snapshot()

    assert snap["records"] == 4
    assert snap["score"]["mean"] == 2.0
    assert snap["score"]["p50"] == 2.0


def test_a_ring_reads_its_fill_where_it_skipped_and_old_rows_after_it_wrapped() -> None:
    # The ring's array is not filled when it is built (its pages become resident as rows
    # are written): what skip passes for the first time must read as the fill value.
    ring = Ring(4, (2,), fill=np.nan)
    ring.append([1.0, 2.0])
    ring.skip(2)
    ring.append([3.0, 4.0])
    assert np.array_equal(ring.held_rows(), [[1, 2], [np.nan, np.nan], [np.nan, np.nan],
                                             [3, 4]], equal_nan=True)
    ring.skip(1)  # wrapped: the slot keeps its old row, as before
    assert np.array_equal(ring.recent(4), [[np.nan, np.nan], [np.nan, np.nan], [3, 4],
                                           [1, 2]], equal_nan=True)
    ring.clear()
    ring.skip(1)  # after a clear, a written slot keeps its row too
    assert np.array_equal(ring.held_rows(), [[1, 2]])
