"""Drift benchmark: modeld's detector against the seed's 10-vs-10 rule on synthetic streams.

Run ``python tests/bench/drift.py`` (a few minutes) or ``--quick`` (under a minute). Each stream
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
import math
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from modeld.core.drift import DriftConfig, DriftDetector, Reference
from modeld.core.monitor import ScoringWindow

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds, shorter streams")
    parser.add_argument("--seeds", type=int, default=None)
    args = parser.parse_args(argv)
    seeds = args.seeds or (2 if args.quick else 5)
    stationary_length = 20_000 if args.quick else 50_000
    memory_records = 200_000 if args.quick else 1_000_000
    config = DriftConfig()
    started = time.perf_counter()
    print(f"modeld drift benchmark: {D} features, {seeds} seeds, batches of {BATCH}, evaluation "
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

    print("\ncost and memory (20 features, artifact reference, after the baseline)")
    for line in cost_and_memory(memory_records):
        print(line)
    print(f"\nfinished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
