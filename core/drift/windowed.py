"""The windowed tests, run over the last ``window_records`` records on the scheduler's tick.

Kolmogorov-Smirnov per feature, for the score and for the latency; Fisher's exact test for the
rates; Fisher's z for the correlations, Holm's correction within them. Each data test returns
its part of a ``SignalResult`` (everything but ``status`` and ``cusum_level``, plus the
``signal`` it judges); the detector adjusts the p-values across signals and gives the verdict.
Latency is an operational signal: its test gives the verdict itself. Pure functions of the
window, the reference and the config.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import special, stats

from modeld.core.drift.arrays import BoolArray, FloatArray
from modeld.core.drift.config import DriftConfig
from modeld.core.drift.engine import Engine
from modeld.core.drift.ranks import quantile_levels
from modeld.core.drift.reference import Correlation, Distribution, Rate
from modeld.core.drift.results import SignalResult

# A data test's outcome: the fields of its SignalResult but ``status`` and ``cusum_level``,
# and ``signal``, the name of the detector's signal state it judges.
TestOutcome = dict[str, Any]


def ks_test(values: FloatArray, grid: FloatArray, reference_n: int) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov of sorted window ``values`` against a reference kept as
    quantiles ``grid`` of a sample of ``reference_n``: the statistic and its p-value
    (Stephens' approximation with the effective sample size)."""
    points = np.concatenate([values, grid])
    gap = (np.searchsorted(values, points, side="right") / values.size
           - np.searchsorted(grid, points, side="right") / grid.size)
    ks = float(np.max(np.abs(gap)))
    n_eff = values.size * reference_n / (values.size + reference_n)
    root = math.sqrt(n_eff)
    p = float(special.kolmogorov((root + 0.12 + 0.11 / root) * ks))
    return ks, min(max(p, 0.0), 1.0)


def holm(p: FloatArray) -> FloatArray:
    """Holm's step-down adjusted p-values (family-wise error control)."""
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adjusted
    return out


def _base_result(name: str, kind: str, method: str, signal: str) -> TestOutcome:
    return {"name": name, "kind": kind, "method": method, "statistic": None,
            "p_value": None, "p_adjusted": None, "effect_size": None, "psi": None,
            "window_size": 0, "reference_size": 0, "reference_source": "none",
            "missing": 0, "detail": "", "signal": signal}


def distribution_test(name: str, kind: str, signal: str, dist: Distribution | None,
                      window: FloatArray, config: DriftConfig,
                      no_reference: str) -> TestOutcome:
    """KS of one column of the window (NaN counted as missing) against its reference; the
    effect size is the Wasserstein distance over the reference's standard deviation.
    ``no_reference`` is the detail to give when ``dist`` is missing."""
    r = _base_result(name, kind, "ks", signal)
    finite = np.isfinite(window)
    r["missing"] = int(window.size - np.count_nonzero(finite))
    if dist is None:
        r["detail"] = no_reference
        return r
    grid = dist.resampled(config.reference_levels).quantiles
    values = np.sort(window[finite])
    r.update(window_size=int(values.size), reference_size=dist.n,
             reference_source=dist.source)
    if values.size < config.min_window_records:
        r["detail"] = f"{values.size} values, need {config.min_window_records}"
        return r
    ks, p = ks_test(values, grid, dist.n)
    window_q = np.quantile(values, quantile_levels(grid.size), method="inverted_cdf")
    effect = float(np.mean(np.abs(window_q - grid)) / dist.scale)
    r.update(statistic=ks, p_value=p, effect_size=effect, psi=_psi(grid, values))
    return r


def rate_test(name: str, ref: Rate | None, events: int, n: int, config: DriftConfig,
              no_reference: str, *, kind: str | None = None,
              signal: str | None = None) -> TestOutcome:
    """Fisher's exact test of ``events`` out of ``n`` against the reference rate; the effect
    size is the change of rate over the reference rate's standard deviation. Judges the rate
    signal ``name`` unless ``kind`` and ``signal`` say otherwise (a 0/1 feature)."""
    r = _base_result(name, kind or name, "fisher_exact", signal or name)
    if ref is None:
        r["detail"] = no_reference
        return r
    r.update(window_size=n, reference_size=ref.n, reference_source=ref.source)
    if n < config.min_window_records:
        r["detail"] = f"{n} records, need {config.min_window_records}"
        return r
    ref_events = round(ref.events)
    table = [[events, n - events], [ref_events, ref.n - ref_events]]
    p = float(stats.fisher_exact(table).pvalue)
    # kept off 0 and 1: a reference whose records were all (or never) flagged has no
    # variance of its own, and the effect is then measured against half a record
    p0 = min(max(ref.rate, 0.5 / ref.n), 1.0 - 0.5 / ref.n)
    rate = events / n
    effect = abs(rate - ref.rate) / math.sqrt(p0 * (1.0 - p0))
    r.update(statistic=rate, p_value=min(max(p, 0.0), 1.0), effect_size=effect,
             psi=_stability_index(np.asarray([rate, 1.0 - rate]),
                                  np.asarray([ref.rate, 1.0 - ref.rate])),
             detail=f"window rate {rate:.4g}, reference {ref.rate:.4g}")
    return r


def seasonal_key_result(name: str, signal: str, dist: Distribution | None, window_size: int,
                        detail: str) -> TestOutcome:
    """A clock feature's line in the report: it is the seasonal key, not tested as data."""
    r = _base_result(name, "feature", "seasonal", signal)
    r.update(window_size=window_size, detail=detail)
    if dist is not None:
        r.update(reference_size=dist.n, reference_source=dist.source)
    return r


def correlation_test(window: FloatArray, engine: Engine | None, ref: Correlation | None,
                     feature_names: tuple[str, ...], drifting: BoolArray,
                     config: DriftConfig, no_reference: str) -> TestOutcome:
    """Fisher's z of the watched pairs' rank correlations in the window's complete rows
    against the reference, Holm-adjusted across pairs; reports the worst pair. Pairs with a
    ``drifting`` feature are not judged: their rank correlation is not comparable."""
    r = _base_result("correlation", "correlation", "fisher_z", "correlation")
    if ref is None or engine is None or engine.pair_i.size == 0:
        r["detail"] = no_reference if ref is None else "no pair of non-constant features"
        return r
    r.update(reference_size=ref.n, reference_source=ref.source)
    d = len(feature_names)
    rows = window[np.isfinite(window[:, :d]).all(axis=1)]
    r["window_size"] = int(rows.shape[0])
    if rows.shape[0] < config.min_window_records:
        r["detail"] = f"{rows.shape[0]} complete rows, need {config.min_window_records}"
        return r
    filled = rows.copy()
    filled[:, d] = np.where(np.isfinite(filled[:, d]), filled[:, d], engine.transform.fill[d])
    u = engine.uniform_scores(filled)[:, :d]
    u = (u - u.mean(axis=0)) / np.maximum(u.std(axis=0), 1e-12)
    usable = np.flatnonzero(~(drifting[engine.pair_i] | drifting[engine.pair_j]))
    if usable.size == 0:
        r["detail"] = "every pair has a drifting feature"
        return r
    pi, pj = engine.pair_i[usable], engine.pair_j[usable]
    corr_w = np.clip((u[:, pi] * u[:, pj]).mean(axis=0), -0.999, 0.999)
    corr_r = np.clip(engine.pair_r[usable], -0.999, 0.999)
    # Fieller, Hartley and Pearson: var(atanh(spearman)) ~ 1.06 / (n - 3).
    se = math.sqrt(1.06 / max(rows.shape[0] - 3, 1) + 1.06 / max(ref.n - 3, 1))
    z = (np.arctanh(corr_w) - np.arctanh(corr_r)) / se
    p = 2.0 * special.ndtr(-np.abs(z))
    p_holm = holm(p)
    worst = int(np.argmin(p_holm))
    i, j = pi[worst], pj[worst]
    r.update(statistic=float(z[worst]), p_value=float(p_holm[worst]),
             effect_size=float(abs(corr_w[worst] - corr_r[worst])),
             detail=(f"{feature_names[i]}~{feature_names[j]}: "
                     f"{corr_r[worst]:.3f} -> {corr_w[worst]:.3f}"))
    return r


def latency_test(ref: Distribution | None, latencies: FloatArray, config: DriftConfig,
                 no_reference: str) -> SignalResult:
    """KS of the window's request latencies against the reference and the ratio of their p99s:
    ``warning`` when both say slower, never drift (latency is not data)."""
    r = _base_result("latency", "latency", "ks", "latency")
    del r["signal"]  # no signal state: latency never alarms
    r["window_size"] = int(latencies.size)
    if ref is None:
        r["detail"] = no_reference
        return SignalResult(status="insufficient_data", cusum_level=None, **r)
    r.update(reference_size=ref.n, reference_source=ref.source)
    if latencies.size < 20:
        r["detail"] = f"{latencies.size} requests"
        return SignalResult(status="insufficient_data", cusum_level=None, **r)
    values = np.sort(latencies)
    grid = ref.quantiles
    ks, p = ks_test(values, grid, ref.n)
    p99_w = float(np.quantile(values, 0.99))
    p99_r = float(np.quantile(grid, 0.99))
    ratio = p99_w / p99_r if p99_r > 0 else math.inf
    degraded = p < config.alpha and ratio >= config.latency_warn_ratio
    r.update(statistic=ks, p_value=p, effect_size=ratio,
             detail=f"p99 {p99_w:.4g}s vs reference {p99_r:.4g}s "
                    "(operational signal, never data drift)")
    return SignalResult(status="warning" if degraded else "ok", cusum_level=None, **r)


def _stability_index(window_p: FloatArray, reference_p: FloatArray) -> float:
    """Population stability index of two sets of bin proportions (empty bins count as 1e-4)."""
    eps = 1e-4
    pw = np.clip(window_p, eps, None)
    pr = np.clip(reference_p, eps, None)
    return float(np.sum((pw - pr) * np.log(pw / pr)))


def _psi(grid: FloatArray, values: FloatArray, bins: int = 10) -> float:
    """Population stability index over the reference's deciles (reported for readability)."""
    edges = np.unique(grid[(np.arange(1, bins) * grid.size) // bins])
    ref_counts = np.bincount(np.searchsorted(edges, grid, side="right"), minlength=edges.size + 1)
    win_counts = np.bincount(np.searchsorted(edges, values, side="right"),
                             minlength=edges.size + 1)
    return _stability_index(win_counts / values.size, ref_counts / grid.size)


__all__ = ["correlation_test", "distribution_test", "holm", "ks_test", "latency_test",
           "rate_test", "seasonal_key_result"]
