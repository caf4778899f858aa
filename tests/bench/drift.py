"""Drift benchmark: WiFi traffic from the campus simulator, and synthetic streams against the
seed's 10-vs-10 rule.

Run ``python tests/bench/drift.py`` (a few minutes) or ``--quick`` (about a minute).

WiFi: per seed a campus (27 access points, 400 clients) whose first week trains a model as
``modeld train`` does (``train_artifact``: IsolationForest, the default 12 features, its
``reference.npz``); the detector gets that reference, as the daemon does on deployment. Its
ordinary traffic from Thursday 00:00 to Sunday 24:00 of the week after (two working days and
a weekend) is streamed in time order, in batches of 50, evaluated every 500 records: every
alarm there is false. Each change scenario starts from a Tuesday 08:00 of that week: 3000
ordinary records, then 3000 changed ones; the delay is the records from the change to the
first alarm that names an expected signal. The held-out scenarios were not looked at while
tuning; they are reported separately, with the first alarm of any signal.

Synthetic: each stream
has 20 features of mixed kinds (normal, correlated pair, heavy-tailed, discrete, binary), a skewed
anomaly score, a 5% anomaly flag and a request latency; the drift streams change at a known
record. modeld runs twice: with an artifact reference (5000 held-out rows with scores; anomaly
and invalid rates still come from its baseline) and with no reference (the first 2000 records
become the baseline). The scheduler's evaluation runs every 500 records over the last 5000.

Printed: false alarms per 10k records on stationary streams, median detection delay per drift
stream (records after the change to the first alarm of the signal that drifted), per-record cost
and memory over a long stream. See docs/drift.md for how to read it.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from modeld.core.drift import DriftConfig, DriftDetector, Reference
from modeld.core.features import FeatureExtractor, parse_timestamp
from modeld.core.monitor import ScoringWindow
from modeld.daemon.producer.simulator import (
    HELD_OUT_SCENARIOS,
    simulate_wifi_logs,
)
from modeld.daemon.producer.simulator import (
    SCENARIOS as WIFI_SCENARIOS,
)
from modeld.daemon.producer.trainer import DEFAULT_FEATURES, train_artifact

FEATURES = [
    "f0_normal", "f1_normal", "f2_normal", "f3_pair", "f4_pair", "f5_normal", "f6_normal",
    "f7_normal", "f8_normal", "f9_normal", "f10_lognormal", "f11_lognormal", "f12_t3", "f13_t3",
    "hour_of_day", "day_of_week", "f16_poisson", "f17_binary", "f18_uniform", "f19_exponential",
]
D = len(FEATURES)
CHANGE_AT = 4000
EVAL_EVERY = 500
BATCH = 50


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    signal: str  # the signal that should alarm
    target: int | None  # median delay target, records
    horizon: int  # records after the change point
    change: Callable[[np.random.Generator, dict[str, np.ndarray], np.ndarray], None] | None


def generate(rng: np.random.Generator, n: int, start: int,
             scenario: Scenario | None) -> dict[str, np.ndarray]:
    """Records start..start+n of a stream; the scenario's change applies from CHANGE_AT on."""
    x = np.empty((n, D))
    x[:, [0, 1, 2, 5, 6, 7, 8, 9]] = rng.normal(size=(n, 8))
    a, b = rng.normal(size=(2, n))
    x[:, 3] = a
    x[:, 4] = 0.3 * a + math.sqrt(1 - 0.09) * b
    x[:, 10:12] = rng.lognormal(0.0, 1.0, size=(n, 2))
    x[:, 12:14] = rng.standard_t(3, size=(n, 2))
    x[:, 14] = rng.integers(0, 24, size=n)
    x[:, 15] = rng.integers(0, 7, size=n)
    x[:, 16] = rng.poisson(3.0, size=n)
    x[:, 17] = rng.random(n) < 0.1
    x[:, 18] = rng.random(n)
    x[:, 19] = rng.exponential(1.0, size=n)
    data = {
        "x": x,
        "score": -0.45 + 0.05 * (rng.gamma(4.0, 1.0, size=n) - 4.0) / 2.0,
        "flag": rng.random(n) < 0.05,
        "latency": rng.lognormal(math.log(0.002), 0.3, size=n),
        "extra_b": b,
        "extra_a": a,
    }
    if scenario is not None and scenario.change is not None:
        t = start + np.arange(n)
        after = t >= CHANGE_AT
        if after.any():
            scenario.change(rng, data, np.where(after, t - CHANGE_AT, -1))
    return data


def _mean_feature(rng: np.random.Generator, data: dict[str, np.ndarray], t: np.ndarray) -> None:
    data["x"][t >= 0, 0] += 0.5


def _mean_score(rng: np.random.Generator, data: dict[str, np.ndarray], t: np.ndarray) -> None:
    data["score"][t >= 0] += 0.5 * 0.05


def _variance(rng: np.random.Generator, data: dict[str, np.ndarray], t: np.ndarray) -> None:
    data["x"][t >= 0, 0] *= math.sqrt(1.5)


def _ramp(rng: np.random.Generator, data: dict[str, np.ndarray], t: np.ndarray) -> None:
    on = t >= 0
    data["x"][on, 0] += np.minimum(t[on] / 2000.0, 1.0)


def _rate(rng: np.random.Generator, data: dict[str, np.ndarray], t: np.ndarray) -> None:
    on = t >= 0
    data["flag"][on] = rng.random(int(on.sum())) < 0.10


def _correlation(rng: np.random.Generator, data: dict[str, np.ndarray], t: np.ndarray) -> None:
    on = t >= 0
    data["x"][on, 4] = 0.8 * data["extra_a"][on] + math.sqrt(1 - 0.64) * data["extra_b"][on]


def _nan(rng: np.random.Generator, data: dict[str, np.ndarray], t: np.ndarray) -> None:
    rows = np.flatnonzero((t >= 0) & (rng.random(t.size) < 0.05))
    data["x"][rows, rng.integers(0, D, size=rows.size)] = np.nan


SCENARIOS = [
    Scenario("mean_feature", "mean +0.5 sd, one feature", "feature:f0_normal", 150, 4000,
             _mean_feature),
    Scenario("mean_score", "mean +0.5 sd, score", "score", 150, 4000, _mean_score),
    Scenario("variance", "variance x1.5, one feature", "feature:f0_normal", 300, 4000, _variance),
    Scenario("ramp", "ramp 0->1 sd over 2000", "feature:f0_normal", 1500, 5000, _ramp),
    Scenario("anomaly_rate", "anomaly rate 5% -> 10%", "anomaly_rate", 2000, 4000, _rate),
    Scenario("correlation", "correlation 0.3 -> 0.8", "correlation", 2000, 4000, _correlation),
    Scenario("nan", "5% NaN injected", "invalid_rate", 2000, 4000, _nan),
]


def seed_rule_alarms(scores: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Records at which the seed's rule starts firing: |mean(last 10) - mean(previous 10)| /
    |mean(previous 10)| > threshold, checked at every record; a run of consecutive firing
    records is one alarm."""
    c = np.concatenate([[0.0], np.cumsum(scores)])
    t = np.arange(20, scores.size + 1)
    last = (c[t] - c[t - 10]) / 10.0
    prev = (c[t - 10] - c[t - 20]) / 10.0
    fire = np.abs(last - prev) > threshold * np.abs(prev)
    start = fire & ~np.concatenate([[False], fire[:-1]])
    return t[start] - 1


def make_detector(mode: str, rng: np.random.Generator, config: DriftConfig) -> DriftDetector:
    if mode == "artifact":
        held_out = generate(rng, 5000, -10**9, None)
        reference = Reference.from_arrays(FEATURES, held_out["x"], held_out["score"],
                                          levels=config.reference_levels)
        return DriftDetector(FEATURES, config, reference)
    return DriftDetector(FEATURES, config)


def run_stream(mode: str, seed: int, length: int, scenario: Scenario | None,
               config: DriftConfig) -> tuple[list[tuple[int, str]], np.ndarray]:
    """Feed one stream; returns modeld's alarms (record, signal) and the score sequence."""
    rng = np.random.default_rng(seed)
    detector = make_detector(mode, np.random.default_rng(seed + 10_000), config)
    alarms: list[tuple[int, str]] = []
    scores = []
    pos = 0
    while pos < length:
        n = min(BATCH, length - pos)
        data = generate(rng, n, pos, scenario)
        scores.append(data["score"])
        detector.observe(data["x"], data["score"], data["flag"], now=pos / 100.0,
                         latency_s=float(data["latency"][0]))
        pos += n
        if pos % EVAL_EVERY == 0:
            report = detector.evaluate(pos / 100.0)
            alarms.extend((a.record, a.signal) for a in report.alarms)
    alarms.extend((a.record, a.signal) for a in detector.evaluate(pos / 100.0).alarms)
    return sorted(set(alarms)), np.concatenate(scores)


def median_delay(delays: list[float]) -> str:
    found = sorted(delays)
    detected = sum(math.isfinite(v) for v in found)
    med = found[len(found) // 2] if len(found) % 2 else (
        (found[len(found) // 2 - 1] + found[len(found) // 2]) / 2)
    text = "missed" if not math.isfinite(med) else f"{med:.0f}"
    return f"{text} ({detected}/{len(found)})"


def cost_and_memory(records: int) -> list[str]:
    rng = np.random.default_rng(7)
    config = DriftConfig()
    lines = []
    for batch in (1, 10, 100):
        detector = make_detector("artifact", rng, config)
        window = ScoringWindow("bench", n_features=D)
        n = 20_000 if batch > 1 else 10_000
        data = generate(rng, n, 0, None)
        x, s, f = data["x"], data["score"], data["flag"]
        # warm up past the baseline so every CUSUM (rates included) is live
        warm = generate(rng, config.baseline_records, 0, None)
        detector.observe(warm["x"], warm["score"], warm["flag"], now=0.0)
        slices = [(x[i:i + batch], s[i:i + batch], f[i:i + batch]) for i in range(0, n, batch)]
        # CPU time of this process, best of 3: the machine may be shared, wall time is noisy.
        t_drift = t_window = math.inf
        for _ in range(3):
            t0 = time.process_time()
            for xb, sb, fb in slices:
                detector.observe(xb, sb, fb, now=1.0)
            t_drift = min(t_drift, (time.process_time() - t0) / n * 1e6)
            t0 = time.process_time()
            for xb, sb, fb in slices:
                window.observe(xb, sb, fb, 0.002, 1.0)
            t_window = min(t_window, (time.process_time() - t0) / n * 1e6)
        lines.append(f"  batch {batch:>3}: DriftDetector.observe {t_drift:5.1f} us/record, "
                     f"ScoringWindow.observe {t_window:4.1f} us/record (CPU time, best of 3)")
    chunk = 1000
    data = generate(rng, chunk, 0, None)
    marks: list[tuple[int, float]] = []
    tracemalloc.start()
    detector = make_detector("artifact", rng, config)
    window = ScoringWindow("bench", n_features=D)
    for i in range(records // chunk):
        detector.observe(data["x"], data["score"], data["flag"], now=float(i), latency_s=0.002)
        window.observe(data["x"], data["score"], data["flag"], 0.002, float(i))
        done = (i + 1) * chunk
        if done % (records // 10) == 0:
            if done % (records // 5) == 0:
                detector.evaluate(float(i))
                window.roll(float(i))
            marks.append((done, tracemalloc.get_traced_memory()[0] / 2**20))
    tracemalloc.stop()
    first, last = marks[0], marks[-1]
    lines.append(f"  memory (tracemalloc, detector + window): {first[1]:.2f} MiB after "
                 f"{first[0]:,} records, {last[1]:.2f} MiB after {last[0]:,} records "
                 f"(max {max(m for _, m in marks):.2f} MiB)")
    return lines


# --------------------------------------------------------------------------- WiFi

WIFI_GAP_SECONDS = 8.0  # about 7,000 lines on a working day, 2,500 on a weekend day
TRAIN_START = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday
ORDINARY_START = TRAIN_START + timedelta(days=10)  # Thursday of the week after
ORDINARY_DAYS = 4  # Thursday, Friday, Saturday, Sunday
SCENARIO_START = TRAIN_START + timedelta(days=8, hours=8)  # Tuesday 08:00
WIFI_CHANGE_AT = 3000
WIFI_HORIZON = 3000
EXPECTED = {
    "radio_degrading": ("feature:signal_dbm", "feature:is_deauth", "feature:reason_code"),
    "firmware_update": ("feature:message_length",),
    "auth_failures": ("feature:is_auth_failure", "feature:is_error"),
    "anomaly_rate": ("anomaly_rate",),
}


@dataclass(frozen=True)
class WifiModel:
    estimator: Any
    threshold: float
    reference: Reference


def wifi_days(start: datetime, days: float, seed: int, site: int,
              scenario: str | None = None, burst: bool = False) -> list[dict[str, Any]]:
    """The campus's lines from ``start`` for ``days`` days."""
    end = start + timedelta(days=days)
    records = simulate_wifi_logs(int(days * 9000) + 100, start, seed, burst, scenario,
                                 mean_gap_seconds=WIFI_GAP_SECONDS, burst_fraction=0.0,
                                 site_seed=site)
    return [r for r in records if parse_timestamp(r["timestamp"]) < end]


def wifi_model(site: int) -> WifiModel:
    """``modeld train`` on the campus's first week (an attack the next night, labelled)."""
    week = wifi_days(TRAIN_START, 7, site, site)
    attack = simulate_wifi_logs(1500, TRAIN_START + timedelta(days=7), site + 500, True,
                                burst_fraction=1.0, site_seed=site)
    artifact = train_artifact(week + attack, seed=site, now=TRAIN_START + timedelta(days=8))
    with np.load(io.BytesIO(artifact.files["reference.npz"])) as npz:
        reference = Reference.from_arrays(DEFAULT_FEATURES, npz["features"], npz["scores"],
                                          flags=npz["flags"], source="artifact")
    return WifiModel(artifact.estimator, -float(artifact.estimator.offset_), reference)


def wifi_stream(model: WifiModel, records: list[dict[str, Any]]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x = FeatureExtractor(DEFAULT_FEATURES).transform(records)
    scores = -model.estimator.score_samples(x)
    times = np.asarray([parse_timestamp(r["timestamp"]).timestamp() for r in records])
    return x, scores, scores > model.threshold, times


Episode = tuple[int, list[tuple[int, str]]]  # opened at record, (record, signal) of each signal


def run_wifi(model: WifiModel, stream: tuple[np.ndarray, ...], config: DriftConfig
             ) -> list[Episode]:
    """The alarm episodes of a detector with the model's reference on the stream: the record
    that opened each, and every signal in it with the record at which it joined."""
    x, scores, flags, times = stream
    detector = DriftDetector(DEFAULT_FEATURES, config, model.reference)
    episodes: dict[int, Episode] = {}

    def note(episode: dict[str, Any] | None) -> None:
        if episode is not None:
            episodes[episode["number"]] = (episode["opened_record"], [
                (s["record"], s["signal"]) for s in episode["signals"]])

    for pos in range(0, x.shape[0], BATCH):
        end = min(pos + BATCH, x.shape[0])
        if detector.observe(x[pos:end], scores[pos:end], flags[pos:end],
                            now=float(times[end - 1]), latency_s=0.002):
            note(detector.evaluate(float(times[end - 1])).episode)
        if end % EVAL_EVERY == 0 or end == x.shape[0]:
            note(detector.evaluate(float(times[end - 1])).episode)
    return sorted(episodes.values())


def wifi_benchmark(seeds: int, config: DriftConfig) -> tuple[list[str], WifiModel]:
    lines: list[str] = []
    ordinary_records = 0
    false_by_signal: Counter[str] = Counter()
    episodes = 0
    examples: list[str] = []
    delays: dict[str, list[float]] = {name: [] for name in (*WIFI_SCENARIOS,
                                                            *HELD_OUT_SCENARIOS)}
    named: dict[str, Counter[str]] = {name: Counter() for name in delays}
    before: Counter[str] = Counter()
    model = None
    for seed in range(seeds):
        site = 1000 + seed
        model = wifi_model(site)
        ordinary = wifi_stream(model, wifi_days(ORDINARY_START, ORDINARY_DAYS, site + 1, site))
        ordinary_records += ordinary[0].shape[0]
        alarms = run_wifi(model, ordinary, config)
        episodes += len(alarms)
        for record, members in alarms:
            false_by_signal.update({sig for _, sig in members})
            if len(examples) < 6:
                examples.append(f"seed {seed} record {record}: "
                                f"{'+'.join(sorted({sig for _, sig in members}))}")
        prefix = wifi_days(SCENARIO_START, 2, site + 2, site)[:WIFI_CHANGE_AT]
        start = parse_timestamp(prefix[-1]["timestamp"])
        for name, found_delays in delays.items():
            changed = simulate_wifi_logs(WIFI_HORIZON, start, site + 3, False, name,
                                         mean_gap_seconds=WIFI_GAP_SECONDS, site_seed=site)
            found = run_wifi(model, wifi_stream(model, prefix + changed), config)
            expected = EXPECTED.get(name)
            hits = [joined - WIFI_CHANGE_AT for opened, members in found
                    if opened >= WIFI_CHANGE_AT for joined, sig in members
                    if expected is None or sig in expected]
            found_delays.append(min(hits) if hits else math.inf)
            for opened, members in found:
                if opened >= WIFI_CHANGE_AT:
                    named[name].update({sig for _, sig in members})
                else:
                    before[name] += 1
    per_10k = episodes / ordinary_records * 1e4
    lines.append(f"false alarms on ordinary traffic (Thu-Sun after the training week, in time "
                 f"order: {ordinary_records:,} records over {seeds} seeds)")
    lines.append(f"  alarm episodes: {episodes} = {per_10k:.2f} per 10k records (target <= 1)")
    lines.append("  by signal: " + (", ".join(f"{sig} {n}" for sig, n in
                                              false_by_signal.most_common()) or "none"))
    for example in examples:
        lines.append(f"    {example}")

    def table(names: tuple[str, ...], title: str) -> None:
        lines.append(title)
        lines.append(f"  {'scenario':<20}{'median delay':>16}  {'false before':>12}  "
                     "signals in its episodes (seeds in which each joined)")
        for name in names:
            signals = ", ".join(f"{sig} {n}" for sig, n in named[name].most_common(6))
            lines.append(f"  {name:<20}{median_delay(delays[name]):>16}  {before[name]:>12}  "
                         f"{signals or 'none'}")

    table(WIFI_SCENARIOS, "\nchange scenarios (tuned on): records from the change until an "
          "expected signal is in an alarm episode, target <= 1000 (detected/seeds)")
    table(HELD_OUT_SCENARIOS, "\nheld-out scenarios (not tuned on): records from the change to "
          "the first alarm of any signal")
    assert model is not None
    return lines, model


def wifi_cost(model: WifiModel, config: DriftConfig) -> str:
    """CPU time per record of DriftDetector.observe at batch 1 with the WiFi model's 12
    features and its seasonal reference, after the baseline."""
    site = 1000
    records = wifi_days(ORDINARY_START, 2, site + 7, site)
    x, scores, flags, times = wifi_stream(model, records)
    detector = DriftDetector(DEFAULT_FEATURES, config, model.reference)
    warm = config.baseline_records
    detector.observe(x[:warm], scores[:warm], flags[:warm], now=float(times[warm]),
                     latency_s=0.002)
    n = min(10_000, x.shape[0] - warm)
    rows = [(x[i:i + 1], scores[i:i + 1], flags[i:i + 1]) for i in range(warm, warm + n)]
    best = math.inf
    for _ in range(3):
        t0 = time.process_time()
        for xb, sb, fb in rows:
            detector.observe(xb, sb, fb, now=1.0)
        best = min(best, (time.process_time() - t0) / n * 1e6)
    return (f"  WiFi, {len(DEFAULT_FEATURES)} features, seasonal reference "
            f"({len(model.reference.seasons)} parts), batch 1: DriftDetector.observe "
            f"{best:5.1f} us/record (CPU time, best of 3; target <= 20)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds, shorter streams")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--wifi-only", action="store_true", help="skip the synthetic streams")
    args = parser.parse_args(argv)
    seeds = args.seeds or (2 if args.quick else 5)
    stationary_length = 20_000 if args.quick else 50_000
    memory_records = 200_000 if args.quick else 1_000_000
    config = DriftConfig()
    started = time.perf_counter()
    wifi_seeds = args.seeds or (2 if args.quick else 5)
    print(f"modeld drift benchmark, WiFi simulator: {wifi_seeds} seeds (campus of 27 APs, 400 "
          f"clients; model from modeld train on its first week), batches of {BATCH}, "
          f"evaluation every {EVAL_EVERY} records")
    wifi_lines, wifi = wifi_benchmark(wifi_seeds, config)
    for line in wifi_lines:
        print(line)
    if args.wifi_only:
        print(wifi_cost(wifi, config))
        return 0
    print(f"\nsynthetic streams: {D} features, {seeds} seeds, batches of {BATCH}, evaluation "
          f"every {EVAL_EVERY} records over the last {config.window_records}, "
          f"baseline {config.baseline_records} records, change at record {CHANGE_AT}")

    print(f"\nfalse alarms on stationary streams ({stationary_length:,} records x {seeds} seeds)")
    total = stationary_length * seeds
    seed_alarms = 0
    modeld: dict[str, list[tuple[int, str]]] = {"artifact": [], "baseline": []}
    for seed in range(seeds):
        for mode, found in modeld.items():
            alarms, scores = run_stream(mode, seed, stationary_length, None, config)
            found.extend(alarms)
            if mode == "artifact":
                seed_alarms += seed_rule_alarms(scores).size
    print(f"  {'detector':<30}{'alarms':>8}{'per 10k records':>18}")
    print(f"  {'seed 10-vs-10 rule':<30}{seed_alarms:>8}{seed_alarms / total * 1e4:>18.2f}")
    for mode, alarms in modeld.items():
        print(f"  {'modeld (' + mode + ' reference)':<30}{len(alarms):>8}"
              f"{len(alarms) / total * 1e4:>18.2f}")
        if alarms:
            print("    " + ", ".join(f"{sig}@{rec}" for rec, sig in alarms[:8]))

    print("\nmedian detection delay, records after the change (detected/seeds)")
    print(f"  {'stream':<28}{'target':>7}{'seed rule':>14}{'modeld artifact':>18}"
          f"{'modeld baseline':>18}{'  other alarms':>14}")
    for scenario in SCENARIOS:
        delays: dict[str, list[float]] = {"seed": [], "artifact": [], "baseline": []}
        other = 0
        for seed in range(seeds):
            length = CHANGE_AT + scenario.horizon
            for mode in ("artifact", "baseline"):
                alarms, scores = run_stream(mode, 100 + seed, length, scenario, config)
                hits = [rec - CHANGE_AT for rec, sig in alarms
                        if rec >= CHANGE_AT and sig == scenario.signal]
                delays[mode].append(min(hits) if hits else math.inf)
                other += sum(1 for rec, sig in alarms if sig != scenario.signal)
                if mode == "artifact":
                    fired = seed_rule_alarms(scores)
                    after = fired[fired >= CHANGE_AT] - CHANGE_AT
                    delays["seed"].append(float(after[0]) if after.size else math.inf)
        target = f"{scenario.target}" if scenario.target else "-"
        print(f"  {scenario.label:<28}{target:>7}{median_delay(delays['seed']):>14}"
              f"{median_delay(delays['artifact']):>18}{median_delay(delays['baseline']):>18}"
              f"{other:>14}")

    print("\ncost and memory (after the baseline)")
    print(wifi_cost(wifi, config))
    print("  synthetic, 20 features, artifact reference:")
    for line in cost_and_memory(memory_records):
        print(line)
    print(f"\nfinished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
