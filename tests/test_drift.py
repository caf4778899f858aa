"""DriftDetector: calibrated false alarms, bounded detection delay, honest reports, durable state."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeld.core._forest import lindley
from modeld.core.drift import Distribution, DriftAlarm, DriftConfig, DriftDetector, Reference
from modeld.core.drift.arrays import json_float, json_list
from modeld.core.drift.calibration import calibrate
from modeld.core.drift.ranks import RankTransform
from modeld.core.errors import ArtifactInvalid, ConfigError

NAMES = ("rssi", "message_length", "hour_of_day", "retries")


def records(rng: np.random.Generator, n: int, *, shift: float = 0.0, score_shift: float = 0.0,
            rate: float = 0.05, corr: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four features (normal, lognormal, discrete hour, normal correlated with the first)."""
    x = np.empty((n, 4))
    x[:, 0] = rng.normal(size=n) + shift
    x[:, 1] = rng.lognormal(3.0, 0.5, size=n)
    x[:, 2] = rng.integers(0, 24, size=n)
    x[:, 3] = corr * (x[:, 0] - shift) + math.sqrt(1 - corr**2) * rng.normal(size=n)
    scores = -0.45 + 0.05 * rng.normal(size=n) + score_shift
    return x, scores, rng.random(n) < rate


def artifact_detector(config: DriftConfig | None = None, seed: int = 0) -> DriftDetector:
    rng = np.random.default_rng(seed)
    x, s, f = records(rng, 5000)
    reference = Reference.from_arrays(NAMES, x, s, flags=f)
    reference = Reference(reference.feature_names, reference.features, reference.scores,
                          reference.correlation, reference.anomaly_rate,
                          Reference.from_summary({"invalid_rate": 0.0, "n": 5000},
                                                 NAMES).invalid_rate)
    return DriftDetector(NAMES, config or DriftConfig(), reference)


def feed(detector: DriftDetector, rng: np.random.Generator, n: int, *, start: int = 0,
         batch: int = 100, **change: float) -> list[tuple[int, str]]:
    alarms = []
    for pos in range(start, start + n, batch):
        x, s, f = records(rng, batch, **change)
        alarms += [(a.record, a.signal) for a in detector.observe(x, s, f, now=pos / 100.0)]
    return alarms


# ---------------------------------------------------------------- building blocks


@settings(max_examples=60, deadline=None)
@given(data=st.data(), columns=st.integers(1, 5), levels=st.sampled_from([16, 32, 64]))
def test_rank_codes_equal_per_column_mid_ranks(data: st.DataObject, columns: int,
                                               levels: int) -> None:
    # Exact for ties and for distinct values however close: the search is inside the grid.
    values = st.floats(-1e6, 1e6, allow_nan=False) | st.integers(-8_000_000, 8_000_000).map(
        lambda i: i / 8)
    grid_values = data.draw(st.lists(st.sampled_from([-3.0, 0.0, 0.5, 1.0, 7.0]) | values,
                                     min_size=levels * columns, max_size=levels * columns))
    grids = np.sort(np.asarray(grid_values).reshape(columns, levels), axis=1)
    probe_pool = st.sampled_from(sorted(set(grid_values))) | values
    probes = np.asarray(data.draw(st.lists(probe_pool, min_size=columns * 3,
                                           max_size=columns * 3))).reshape(3, columns)
    transform = RankTransform(grids)

    expected = np.empty((3, columns), dtype=np.intp)
    for c in range(columns):
        g = grids[c]
        expected[:, c] = (np.searchsorted(g, probes[:, c], "left")
                          + np.searchsorted(g, probes[:, c], "right") + c * (2 * levels + 2))
    np.testing.assert_array_equal(transform.flat_codes(probes), expected)
    np.testing.assert_array_equal(transform.flat_codes(probes[:1].copy()), expected[:1])


def test_calibration_matches_siegmund_for_gaussian_increments() -> None:
    # A Gaussian CUSUM with reference value k: Siegmund's ARL0 = (e^{2kb} - 2kb - 1) / (2k^2).
    z = np.linspace(-6, 6, 2001)
    weights = np.exp(-z * z / 2)
    weights /= weights.sum()
    k = 0.25
    target = 1e5
    h = calibrate((z - k)[None, :], np.log(weights)[None, None, :], np.zeros((1, 1)),
                  np.ones(1), np.asarray([1.0 / target]))[0]
    b = h + 1.166
    assert (math.exp(2 * k * b) - 2 * k * b - 1) / (2 * k * k) == pytest.approx(target, rel=0.02)


def test_config_rejects_values_that_cannot_work() -> None:
    with pytest.raises(ConfigError, match=r"monitoring\.alpha"):
        DriftConfig(alpha=1.5)
    with pytest.raises(ConfigError, match=r"monitoring\.baseline_records"):
        DriftConfig(baseline_records=10)
    with pytest.raises(ConfigError, match=r"monitoring\.drift_threshold"):
        DriftConfig.from_mapping({"drift_threshold": "a lot"})


def test_config_from_settings_keeps_the_seed_name_and_ignores_others() -> None:
    config = DriftConfig.from_mapping({"drift_threshold": "0.2", "baseline_records": 3000,
                                       "check_interval_s": 60})
    assert (config.drift_threshold, config.baseline_records) == (0.2, 3000)


# ---------------------------------------------------------------- references


def test_reference_dict_roundtrip_is_json() -> None:
    detector = artifact_detector()
    reference = detector.reference

    again = Reference.from_dict(json.loads(json.dumps(reference.to_dict(), allow_nan=False)))

    assert again.feature_names == reference.feature_names
    for mine, theirs in zip(again.features, reference.features, strict=True):
        assert mine is not None and theirs is not None
        np.testing.assert_array_equal(mine.quantiles, theirs.quantiles)
    assert again.correlation is not None and reference.correlation is not None
    np.testing.assert_allclose(again.correlation.matrix, reference.correlation.matrix)
    assert again.anomaly_rate == reference.anomaly_rate


def test_summary_reference_is_resampled_and_partial_parts_come_from_baseline() -> None:
    levels = [0.01, 0.25, 0.5, 0.75, 0.99]
    summary = {"n": 20000, "levels": levels,
               "features": {"rssi": [-2.3, -0.67, 0.0, 0.67, 2.3]},
               "scores": {"quantiles": [-0.57, -0.48, -0.45, -0.42, -0.33], "n": 800}}
    reference = Reference.from_summary(summary, NAMES, levels=64)
    detector = DriftDetector(NAMES, DriftConfig(baseline_records=500), reference)

    rssi = reference.features[0]
    assert rssi is not None and rssi.quantiles.size == 64 and rssi.n == 20000
    assert reference.scores is not None and reference.scores.n == 800
    assert detector.collecting_baseline
    feed(detector, np.random.default_rng(1), 500)
    assert not detector.collecting_baseline
    merged = detector.reference
    assert [d.source for d in merged.features if d is not None] == [
        "summary", "baseline", "baseline", "baseline"]
    assert merged.scores is not None and merged.scores.source == "summary"
    assert merged.anomaly_rate is not None and merged.anomaly_rate.source == "baseline"


@pytest.mark.parametrize("summary", [
    {"features": {"unknown_feature": [1, 2, 3]}},
    {"features": {"rssi": [3, 2, 1]}},
    {"scores": [0.1]},
    {"correlation": [[1, 0], [0, 1]]},
    {"anomaly_rate": 1.5},
])
def test_malformed_summary_is_an_invalid_artifact(summary: dict[str, object]) -> None:
    with pytest.raises(ArtifactInvalid, match="reference summary"):
        Reference.from_summary(summary, NAMES)


# ---------------------------------------------------------------- false alarms and detection


def test_false_alarm_rate_matches_the_calibration_target() -> None:
    # A low target (one alarm per 1500 records) makes the rate measurable in a short stream;
    # cooldown 0 counts every crossing.
    config = DriftConfig(target_arl0_records=1500, cooldown_records=0)
    detector = artifact_detector(config)
    alarms = feed(detector, np.random.default_rng(11), 60_000, batch=500)

    expected = 60_000 / 1500
    assert 0.4 * expected <= len(alarms) <= 1.6 * expected


def test_stationary_stream_with_default_config_stays_quiet() -> None:
    detector = artifact_detector()
    rng = np.random.default_rng(12)
    alarms = feed(detector, rng, 30_000, batch=500)
    report = detector.evaluate(300.0)

    assert len(alarms) <= 1
    assert report.status in {"ok", "warning"}
    assert all(s.status != "drift" for s in report.signals)


@pytest.mark.parametrize(("change", "signal", "bound"), [
    ({"shift": 0.5}, "feature:rssi", 250),
    ({"score_shift": 0.025}, "score", 250),
    ({"rate": 0.15}, "anomaly_rate", 1000),
    ({"corr": 0.7}, "correlation", 1000),
])
def test_abrupt_change_is_detected_within_a_bound(change: dict[str, float], signal: str,
                                                  bound: int) -> None:
    detector = artifact_detector(seed=2)
    rng = np.random.default_rng(21)
    feed(detector, rng, 3000)
    alarms = feed(detector, rng, 2000, start=3000, batch=10, **change)

    hits = [record - 3000 for record, name in alarms if name == signal]
    assert hits, alarms
    assert hits[0] <= bound
    assert detector.evaluate(50.0).signal(signal.removeprefix("feature:")).status == "drift"


def test_one_alarm_per_change_then_rearmed_after_the_cooldown() -> None:
    detector = artifact_detector(DriftConfig(cooldown_records=1500, cooldown_seconds=5.0))
    rng = np.random.default_rng(31)
    feed(detector, rng, 2000)
    during = feed(detector, rng, 6000, start=2000, shift=1.0)
    back = feed(detector, rng, 3000, start=8000)
    again = feed(detector, rng, 1000, start=11_000, shift=1.0)

    assert [name for _, name in during] == ["feature:rssi"]
    assert back == []
    assert [name for _, name in again] == ["feature:rssi"]


def test_cooldown_in_seconds_holds_even_after_enough_records() -> None:
    detector = artifact_detector(DriftConfig(cooldown_records=10, cooldown_seconds=3600.0))
    rng = np.random.default_rng(32)
    first = feed(detector, rng, 3000, shift=1.0)
    later = feed(detector, rng, 3000, start=3000, shift=-1.0)

    assert len(first) == 1
    assert later == []  # all within the hour since the last crossing


# ---------------------------------------------------------------- windows, NaN, latency


def test_insufficient_data_instead_of_a_verdict() -> None:
    detector = DriftDetector(NAMES, DriftConfig(baseline_records=500, min_window_records=300))
    empty = detector.evaluate(0.0)

    assert empty.status == "insufficient_data"
    assert empty.reference_source == "collecting_baseline"
    assert empty.baseline_progress == (0, 500)
    assert {s.status for s in empty.signals} == {"insufficient_data"}
    assert "collecting baseline (0/500)" in empty.signal("rssi").detail

    feed(detector, np.random.default_rng(4), 600)
    small = detector.evaluate(6.0)
    assert small.reference_source == "baseline"
    assert small.baseline_progress is None
    assert small.signal("rssi").status == "insufficient_data"
    assert small.signal("rssi").reference_source == "baseline"
    feed(detector, np.random.default_rng(5), 400, start=600)
    assert detector.evaluate(10.0).signal("rssi").status == "ok"


def test_nan_values_are_counted_excluded_and_raise_the_invalid_rate() -> None:
    detector = artifact_detector()
    rng = np.random.default_rng(41)
    feed(detector, rng, 2000)
    alarms = []
    for pos in range(2000, 5000, 50):
        x, s, f = records(rng, 50)
        x[rng.random(50) < 0.2, 1] = np.nan
        alarms += [a.signal for a in detector.observe(x, s, f, now=pos / 100.0)]
    detector.observe_invalid(3, now=50.0)
    report = detector.evaluate(50.0)

    assert alarms == ["invalid_rate"]
    assert report.missing_counts["message_length"] == pytest.approx(600, rel=0.2)
    assert report.missing_counts["rssi"] == 0
    assert report.invalid_seen == 3
    length = report.signal("message_length")
    assert length.status == "ok"
    assert length.missing == pytest.approx(0.2 * 3000, rel=0.2)
    # The window restarted when the baseline (2000 records, for latency) completed.
    assert length.window_size == 3000 - length.missing
    assert report.signal("invalid_rate").status == "drift"
    json.dumps(report.to_dict(), allow_nan=False)


def test_effect_size_gate_turns_a_trivial_significant_shift_into_a_warning() -> None:
    rng = np.random.default_rng(51)
    x, s, f = records(rng, 50_000)
    reference = Reference.from_arrays(NAMES, x, s, flags=f)
    config = DriftConfig(window_records=20_000, min_window_records=1000)
    detector = DriftDetector(NAMES, config, reference)
    feed(detector, rng, 20_000, batch=1000, shift=0.06)
    small = detector.evaluate(1.0).signal("rssi")
    feed(detector, rng, 20_000, start=20_000, batch=1000, shift=0.3)
    large = detector.evaluate(2.0).signal("rssi")

    assert small.p_adjusted is not None and small.p_adjusted < config.alpha
    assert small.effect_size is not None and small.effect_size < config.drift_threshold
    assert small.status == "warning"
    assert large.status == "drift"
    assert large.psi is not None and large.psi > small.psi


def test_latency_is_an_operational_warning_never_drift() -> None:
    detector = artifact_detector(DriftConfig(baseline_records=300))
    rng = np.random.default_rng(61)
    for pos in range(400):
        x, s, f = records(rng, 1)
        slow = 0.01 if pos >= 300 else 0.002
        detector.observe(x, s, f, now=float(pos), latency_s=slow * rng.uniform(0.9, 1.1))
    report = detector.evaluate(400.0)

    latency = report.signal("latency")
    assert latency.kind == "latency"
    assert latency.status == "warning"
    assert report.status == "warning"
    assert all(a.kind != "latency" for a in report.alarms)


# ---------------------------------------------------------------- state


def test_compiled_increments_are_each_streams_two_statistics_by_definition() -> None:
    # The statistics written out in numpy (y, y^2, every product of uniform scores, carried,
    # flag, missing, 1) and each stream's a * s + b * t of them: the compiled rows, bit for bit.
    detector = artifact_detector()
    engine = detector._engines[0]
    rng = np.random.default_rng(8)
    x, s, f = records(rng, 300, shift=0.5)
    values = np.column_stack([x, s])
    missing = rng.random(300) < 0.1
    codes = engine.transform.flat_codes(values)
    y, u = engine.table.take(codes), engine.utable.take(codes)
    cols = engine.columns
    stat = np.column_stack([y, y * y, (u[:, :, None] * u[:, None, :]).reshape(300, -1),
                            engine.ctable.take(codes), f, missing, np.ones(300)])
    expected = stat.take(engine.stat_index, axis=1) * engine.coef_a
    expected += stat.take(engine.b_index, axis=1) * engine.coef_b
    assert stat.shape[1] == 3 * cols + cols * cols + 3
    np.testing.assert_array_equal(engine.increments(values, f, missing, None), expected)
    np.testing.assert_array_equal(engine.increments(values[3:4], f[3:4], missing[3:4], None),
                                  expected[3:4])


def test_compiled_increments_refuse_codes_outside_their_tables() -> None:
    engine = artifact_detector()._engines[0]
    codes = engine.transform.flat_codes(np.zeros((2, engine.columns)))
    codes[1, 0] = engine.table.size
    out = np.empty((2, engine.stat_index.size))
    with pytest.raises(ValueError, match=r"code .* of record 1 is outside the tables"):
        engine._increments.add(codes, np.zeros(2, bool), None, out)
    with pytest.raises(ValueError, match="do not fit"):
        engine._increments.add(codes[:, 1:].copy(), np.zeros(2, bool), None, out)
    with pytest.raises(TypeError, match="flags must be an array of bool"):
        engine._increments.add(codes, np.zeros(2), None, out)


def test_compiled_lindley_is_the_recursion_row_by_row() -> None:
    rng = np.random.default_rng(3)
    inc = rng.normal(-0.1, 0.5, size=(200, 7))
    start = np.abs(rng.normal(size=7))
    expected, peak = start.copy(), np.zeros(7)
    for row in inc:
        expected = np.maximum(expected + row, 0.0)
        peak = np.maximum(peak, expected)
    cusum, got_peak = start.copy(), np.zeros(7)
    lindley(cusum, inc, got_peak)
    np.testing.assert_array_equal(cusum, expected)
    np.testing.assert_array_equal(got_peak, peak)
    with pytest.raises(ValueError, match="increments of shape"):
        lindley(cusum, inc[:, :3].copy(), got_peak)


def test_one_stream_replayed_alone_is_its_column_of_all_increments() -> None:
    # A crossing's description replays its stream over the window; it computed every stream.
    detector = artifact_detector()
    engine = detector._engines[0]
    x, s, _f = records(np.random.default_rng(8), 300, shift=0.5)
    values = np.column_stack([x, s])
    values[::7, 1] = np.nan
    values[::11, -1] = np.inf
    finite = np.isfinite(values)
    filled = np.where(finite, values, detector._fill)
    every = engine.increments(filled, np.zeros(len(values), bool), None, finite)
    for k in range(every.shape[1]):
        np.testing.assert_array_equal(engine.stream_increments(filled, finite, k), every[:, k])
    with pytest.raises(ValueError, match="stream 9999 is not one of"):
        engine.stream_increments(filled, finite, 9999)


def test_requests_fed_one_by_one_or_joined_raise_the_same_alarms() -> None:
    # The monitoring thread joins the requests that queued up into one batch.
    one, joined = artifact_detector(), artifact_detector()
    rng = np.random.default_rng(9)
    x, s, f = records(rng, 1500, shift=0.7)
    alarms_one = [(a.signal, a.record) for i in range(1500)
                  for a in one.observe(x[i:i + 1], s[i:i + 1], f[i:i + 1], now=1.0,
                                       latency_s=0.01)]
    alarms_joined = [(a.signal, a.record) for start in range(0, 1500, 50)
                     for a in joined.observe(x[start:start + 50], s[start:start + 50],
                                             f[start:start + 50], now=1.0,
                                             latency_s=[0.01] * 50)]
    assert alarms_one and alarms_joined == alarms_one
    np.testing.assert_allclose(joined._cusum, one._cusum, rtol=0, atol=1e-9)
    assert joined._window_latency.held_rows().tolist() == [0.01] * 1500


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0.0, -1.5, 2.25, 1e300, math.nan, math.inf, -math.inf]),
                min_size=0, max_size=24), st.sampled_from([1, 2, 3]))
def test_json_list_spells_each_value_as_json_float_does(values: list[float], width: int) -> None:
    flat = np.asarray(values, dtype=np.float64)
    assert json_list(flat) == [json_float(v) for v in flat]
    rows = flat[: flat.size // width * width].reshape(-1, width)
    assert json_list(rows) == [[json_float(v) for v in row] for row in rows]


def test_state_roundtrip_continues_exactly() -> None:
    detector = DriftDetector(NAMES, DriftConfig(baseline_records=400))
    rng = np.random.default_rng(71)
    feed(detector, rng, 1200)
    feed(detector, rng, 300, start=1200, shift=0.8)
    state = json.loads(json.dumps(detector.to_state(), allow_nan=False))
    restored = DriftDetector.from_state(state, DriftConfig(baseline_records=400))

    assert restored.thresholds() == detector.thresholds()
    np.testing.assert_array_equal(restored._cusum, detector._cusum)
    x, s, f = records(np.random.default_rng(72), 400, shift=0.8)

    def facts(alarms: tuple[DriftAlarm, ...]) -> list[tuple[str, int, int, tuple[str, ...]]]:
        # the words quote the evaluation window, which a restart does not keep
        return [(a.signal, a.record, a.episode, a.signals) for a in alarms]

    assert facts(restored.observe(x, s, f, now=20.0)) == facts(detector.observe(x, s, f,
                                                                                now=20.0))
    np.testing.assert_array_equal(restored._cusum, detector._cusum)
    mine, theirs = detector.evaluate(30.0), restored.evaluate(30.0)
    assert theirs.reference_source == mine.reference_source == "baseline"
    assert theirs.last_alarm_at == mine.last_alarm_at
    assert theirs.signal("rssi").status == "drift"  # the streaming alarm survived the restart


def test_state_saved_during_the_baseline_resumes_it() -> None:
    config = DriftConfig(baseline_records=500)
    detector = DriftDetector(NAMES, config)
    rng = np.random.default_rng(81)
    x, s, f = records(rng, 300)
    x[0, 0] = np.nan
    detector.observe(x, s, f, now=0.0)
    restored = DriftDetector.from_state(json.loads(json.dumps(detector.to_state())), config)

    assert restored.evaluate(1.0).baseline_progress == (300, 500)
    x, s, f = records(rng, 200)
    restored.observe(x, s, f, now=2.0)
    assert restored.reference.source == "baseline"
    assert restored.reference.invalid_rate is not None
    assert restored.reference.invalid_rate.events == 1


def test_state_of_another_format_is_refused() -> None:
    with pytest.raises(ValueError, match="drift"):
        DriftDetector.from_state({"format": "nope"})


def test_distribution_scale_of_a_constant_reference_is_absolute() -> None:
    dist = Distribution.from_sample(np.full(100, 3.0), levels=16, source="artifact")
    assert dist is not None and dist.scale == 1.0
    assert Distribution.from_sample(np.asarray([np.nan]), levels=16, source="artifact") is None
