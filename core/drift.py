"""Drift detection for one deployed model version, judged against that version's reference.

Two detectors share one reference (see docs/drift.md for the statistics and the numbers):

- a streaming detector, updated for every scored record in O(1) memory: each value is mapped
  through the reference CDF to a normal score, and likelihood-ratio CUSUMs watch each feature and
  the anomaly score for mean and spread changes, each pair of features for a correlation change,
  and the anomaly flag and the missing/invalid flag as Bernoulli rates. Thresholds are set from
  the reference itself so that the whole set of CUSUMs raises a false alarm about once every
  ``DriftConfig.target_arl0_records`` records;
- a windowed test run by ``DriftDetector.evaluate`` on the scheduler's tick: Kolmogorov-Smirnov
  per feature and for the score, exact tests for the rates, Fisher's z for correlations, Holm's
  correction across signals, and an effect-size gate (``drift_threshold``) so that large windows
  do not alarm on trivial differences.

Everything here is plain computation: no threads, no I/O, no clock (``now`` is an argument).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from scipy import special, stats

from modeld.core.errors import ArtifactInvalid, ConfigError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]
BoolArray = NDArray[np.bool_]

REFERENCE_FORMAT: Final = "modeld.reference/1"
STATE_FORMAT: Final = "modeld.drift/1"


# Siegmund's correction for the overshoot of a CUSUM over its threshold, in units of the
# increment's standard deviation (2 * 0.583; exact for Gaussian increments, conservative for
# right-skewed ones, whose real overshoot is larger).
_OVERSHOOT: Final = 1.166
# Gauss-Hermite nodes and weights for E[f(Z)], Z ~ N(0, 1): used to average the false-alarm rate
# over the sampling error of a finite reference.
_GH_X, _GH_W = np.polynomial.hermite.hermgauss(7)
_NODES: Final[FloatArray] = _GH_X * math.sqrt(2.0)
_NODE_WEIGHTS: Final[FloatArray] = _GH_W / math.sqrt(math.pi)
# Bivariate-normal lattice for the null distribution of a pair product (deterministic, so that
# thresholds are reproducible across restarts).
_PAIR_LATTICE_HALF: Final = 20
_MAX_H: Final = 400.0


def _config_error(name: str, problem: str) -> ConfigError:
    return ConfigError(f"monitoring.{name}", problem)


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """Tuning of one ``DriftDetector``; the defaults are what the benchmark measured.

    Built by the daemon from its ``monitoring`` settings (``from_mapping``); raises
    ``ConfigError`` on a value that cannot work. ``drift_threshold`` keeps the seed's name: it was
    "a 10% change of the mean score"; here it is the minimum effect size (Wasserstein distance
    divided by the reference's standard deviation; for rates the change of rate divided by the
    reference rate's standard deviation; for correlations the change of correlation) that a
    significant windowed test must reach to be reported as drift.
    """

    baseline_records: int = 2000
    drift_threshold: float = 0.1
    alpha: float = 0.01
    window_records: int = 5000
    min_window_records: int = 500
    target_arl0_records: float = 50_000.0
    mean_shift_design: float = 0.5
    variance_ratio_design: float = 1.5
    rate_ratio_design: float = 2.0
    invalid_rate_design: float = 0.01
    correlation_shift_design: float = 0.4
    correlation_budget_share: float = 0.2
    max_correlation_pairs: int = 190
    cooldown_records: int = 2000
    cooldown_seconds: float = 0.0
    latency_warn_ratio: float = 1.5
    reference_levels: int = 256

    def __post_init__(self) -> None:
        positive_ints = ("baseline_records", "window_records", "min_window_records",
                         "reference_levels")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise _config_error(name, "must be at least 1")
        if self.baseline_records < 200:
            raise _config_error("baseline_records", "must be at least 200 for a usable reference")
        if self.reference_levels < 16:
            raise _config_error("reference_levels", "must be at least 16")
        if self.min_window_records > self.window_records:
            raise _config_error("min_window_records", "must not exceed window_records")
        if not 0.0 < self.alpha < 1.0:
            raise _config_error("alpha", "must be in (0, 1)")
        if not 0.0 <= self.correlation_budget_share < 1.0:
            raise _config_error("correlation_budget_share", "must be in [0, 1)")
        if self.target_arl0_records < 100:
            raise _config_error("target_arl0_records", "must be at least 100")
        if self.variance_ratio_design <= 1.0:
            raise _config_error("variance_ratio_design", "must be above 1")
        if self.rate_ratio_design <= 1.0:
            raise _config_error("rate_ratio_design", "must be above 1")
        for name in ("drift_threshold", "mean_shift_design", "invalid_rate_design",
                     "correlation_shift_design", "latency_warn_ratio"):
            if not getattr(self, name) > 0.0:
                raise _config_error(name, "must be positive")
        if self.cooldown_records < 0 or self.cooldown_seconds < 0:
            raise _config_error("cooldown_records", "cooldowns must not be negative")
        if self.max_correlation_pairs < 0:
            raise _config_error("max_correlation_pairs", "must not be negative")

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> DriftConfig:
        """Build from the ``monitoring`` settings; unknown keys are ignored (they belong to others)."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in settings.items():
            if key in known:
                try:
                    values[key] = type(getattr(cls(), key))(value)
                except (TypeError, ValueError) as exc:
                    raise _config_error(key, f"cannot use {value!r}: {exc}") from exc
        return cls(**values)


# --------------------------------------------------------------------------- reference parts


def _levels(count: int) -> FloatArray:
    return (np.arange(count, dtype=np.float64) + 0.5) / count


def _frozen(array: NDArray[Any]) -> NDArray[Any]:
    array = np.array(array, dtype=np.float64, copy=True)
    array.setflags(write=False)
    return array


def _finite_list(array: FloatArray) -> list[float]:
    return [float(v) for v in np.asarray(array, dtype=np.float64).ravel()]


@dataclass(frozen=True, slots=True)
class Distribution:
    """A one-dimensional reference distribution: its quantiles at levels ``(i + 0.5) / Q``.

    ``n`` is the size of the sample it summarises; the tests use it as the reference's sample
    size, so a summary with a small ``n`` is treated more cautiously than a large one.
    """

    quantiles: FloatArray
    n: int
    source: str

    @classmethod
    def from_sample(cls, values: FloatArray, *, levels: int, source: str) -> Distribution | None:
        """The quantiles of the finite values (``inverted_cdf``: real data values, so ties stay ties)."""
        finite = np.asarray(values, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        if finite.size == 0:
            return None
        quantiles = np.quantile(finite, _levels(levels), method="inverted_cdf")
        return cls(_frozen(quantiles), int(finite.size), source)

    @classmethod
    def from_quantiles(cls, quantiles: Sequence[float] | FloatArray, *, n: int, source: str,
                       levels: int,
                       at: Sequence[float] | None = None) -> Distribution:
        """Resample given quantiles (at levels ``at``, default evenly spaced) to ``levels`` points."""
        q = np.asarray(quantiles, dtype=np.float64)
        if q.ndim != 1 or q.size < 2 or not np.all(np.isfinite(q)):
            raise ValueError("quantiles must be a list of at least 2 finite numbers")
        if np.any(np.diff(q) < 0):
            raise ValueError("quantiles must be non-decreasing")
        given = _levels(q.size) if at is None else np.asarray(at, dtype=np.float64)
        if given.shape != q.shape or np.any(np.diff(given) <= 0) or given[0] <= 0 or given[-1] >= 1:
            raise ValueError("levels must be increasing numbers in (0, 1), one per quantile")
        if n < 1:
            raise ValueError("n must be at least 1")
        resampled = q if at is None and q.size == levels else np.interp(_levels(levels), given, q)
        return cls(_frozen(resampled), int(n), source)

    def resampled(self, levels: int) -> Distribution:
        if self.quantiles.size == levels:
            return self
        return Distribution.from_quantiles(self.quantiles, n=self.n, source=self.source,
                                           levels=levels)

    @property
    def scale(self) -> float:
        """The reference's standard deviation; 1.0 for a constant reference (absolute units)."""
        sd = float(np.std(self.quantiles))
        return sd if sd > 1e-12 else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"quantiles": _finite_list(self.quantiles), "n": self.n, "source": self.source}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Distribution:
        q = np.asarray(data["quantiles"], dtype=np.float64)
        return cls(_frozen(q), int(data["n"]), str(data.get("source", "summary")))


@dataclass(frozen=True, slots=True)
class Rate:
    """A reference Bernoulli rate: ``events`` out of ``n`` trials."""

    events: float
    n: int
    source: str

    @property
    def rate(self) -> float:
        return self.events / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "events": self.events, "n": self.n, "source": self.source}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rate:
        n = int(data["n"])
        rate = float(data["rate"])
        if not 0.0 <= rate <= 1.0 or n < 1:
            raise ValueError("a rate needs 0 <= rate <= 1 and n >= 1")
        events = float(data["events"]) if "events" in data else rate * n
        return cls(events, n, str(data.get("source", "summary")))


@dataclass(frozen=True, slots=True)
class Correlation:
    """Reference rank (Spearman) correlation of the features.

    The entry ``[i, j]`` is the mean over the reference rows of the product of the two features'
    standardised uniform scores (mid-ranks against the reference quantiles), the quantity the
    streaming detector watches; for continuous features it is Spearman's rho.
    """

    matrix: FloatArray
    n: int
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"matrix": [_finite_list(row) for row in self.matrix], "n": self.n,
                "source": self.source}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Correlation:
        matrix = np.asarray(data["matrix"], dtype=np.float64)
        return cls(_frozen(matrix), int(data["n"]), str(data.get("source", "summary")))


# --------------------------------------------------------------------------- normal scores


class _RankTransform:
    """Maps values of F columns to mid-rank codes ``m = #(grid < x) + #(grid <= x)`` in [0, 2Q].

    All columns are searched at once: each column's values are squeezed into its own band of one
    sorted key array by a monotone map (``arctan`` of the value's distance from the column's
    median in units of its interquartile range, plus ``4 * column``), so one ``searchsorted``
    serves a record of any width. Each band ends with a sentinel key above every value, so that
    ``left + right`` is directly ``column * stride + m`` with ``stride = 2Q + 2``. The map is
    exact for ties (equal values give equal keys) and only merges distinct values closer than
    about 1e-14 of the column's spread.
    """

    def __init__(self, grids: FloatArray) -> None:
        columns, q = grids.shape
        self.columns = columns
        self.levels = q
        self.stride = 2 * q + 2
        centre = grids[:, q // 2].copy()
        scale = grids[:, (3 * q) // 4] - grids[:, q // 4]
        spread = grids[:, -1] - grids[:, 0]
        self._centre = centre
        self._scale = np.where(scale > 0, scale, np.where(spread > 0, spread, 1.0))
        self._offset = 4.0 * np.arange(columns, dtype=np.float64)
        keys = np.empty((columns, q + 1))
        keys[:, :q] = np.arctan2(grids - centre[:, None], self._scale[:, None])
        keys[:, q] = 2.0  # the sentinel: above arctan's range, below the next band
        keys += self._offset[:, None]
        # arctan is monotone but rounding must not break the sort order searchsorted relies on.
        self._keys = np.maximum.accumulate(keys.ravel())
        self._key_one = np.empty(columns)
        self.fill = centre.copy()

    def flat_table(self, table: FloatArray) -> FloatArray:
        """A per-column table (F, 2Q+1) laid out for indexing by ``flat_codes``."""
        padded = np.zeros((self.columns, self.stride))
        padded[:, : self.stride - 1] = table
        return padded.ravel()

    def flat_codes_one(self, values: FloatArray) -> IntArray:
        """``flat_codes`` for one record (F,), into a preallocated buffer."""
        keys = self._key_one
        np.subtract(values, self._centre, out=keys)
        np.arctan2(keys, self._scale, out=keys)
        np.add(keys, self._offset, out=keys)
        codes = self._keys.searchsorted(keys, side="left")
        codes += self._keys.searchsorted(keys, side="right")
        return codes

    def flat_codes(self, values: FloatArray) -> IntArray:
        """Index ``column * stride + m`` for finite values of shape (n, columns)."""
        keys = np.arctan2(values - self._centre, self._scale)
        keys += self._offset
        flat = keys.ravel()
        codes = np.searchsorted(self._keys, flat, side="left")
        codes += np.searchsorted(self._keys, flat, side="right")
        return codes.reshape(values.shape)


def _normal_score_table(levels: int) -> FloatArray:
    codes = np.arange(2 * levels + 1, dtype=np.float64)
    return np.asarray(special.ndtri((codes + 1.0) / (2.0 * levels + 2.0)), dtype=np.float64)


def _code_pmf(grid: FloatArray, oversample: int = 8) -> FloatArray:
    """Null distribution of the mid-rank code for a value drawn from the reference.

    The reference is the piecewise-linear quantile function through the grid: flat (an atom)
    where grid values tie, continuous elsewhere. A tail beyond the outermost grid point is an atom
    when the two outermost grid values tie, a continuous tail otherwise.
    """
    q = grid.size
    fine = _levels(oversample * q)
    values = np.interp(fine, _levels(q), grid)
    if grid[0] != grid[1]:
        values[fine < 0.5 / q] = -np.inf
    if grid[-1] != grid[-2]:
        values[fine > 1.0 - 0.5 / q] = np.inf
    codes = np.searchsorted(grid, values, side="left") + np.searchsorted(grid, values,
                                                                          side="right")
    return np.bincount(codes, minlength=2 * q + 1).astype(np.float64) / fine.size


# --------------------------------------------------------------------------- CUSUM calibration


def _tilt_roots(values: FloatArray, log_weights: FloatArray,
                shifts: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per stream and node: theta > 0 with log E[exp(theta (V + shift))] = 0, mean and sd of V + shift.

    ``values`` (s, 1, a), ``log_weights`` (s, g or 1, a), ``shifts`` (s, g). theta is +inf when
    V + shift can never be positive (the CUSUM can never cross) and 0 when the mean is not
    negative (no positive root; the caller treats the stream as drifting).
    """
    weights = np.exp(log_weights)
    raw_mean = (weights * values).sum(-1)
    raw_var = np.maximum((weights * values * values).sum(-1) - raw_mean**2, 1e-300)
    mean = raw_mean + shifts
    reachable = np.where(weights > 0, values, -np.inf).max(-1) + shifts > 0
    solvable = (mean < 0) & reachable
    theta = np.where(solvable, 2.0 * np.abs(mean) / raw_var, 1.0)

    def tilt(th: FloatArray) -> tuple[FloatArray, FloatArray]:
        exponent = th[..., None] * values + log_weights
        top = exponent.max(-1, keepdims=True)
        e = np.exp(exponent - top)
        total = e.sum(-1)
        g = np.log(total) + top[..., 0] + th * shifts
        dg = (e * values).sum(-1) / total + shifts
        return g, dg

    g, dg = tilt(theta)
    for _ in range(80):  # double until right of the root: Newton then descends monotonically
        low = solvable & (g <= 0)
        if not low.any():
            break
        theta = np.where(low, theta * 2.0, theta)
        g, dg = tilt(theta)
    for _ in range(60):
        step = np.where(solvable & (dg > 0), g / np.where(dg > 0, dg, 1.0), 0.0)
        theta = np.maximum(theta - step, 1e-12)
        g, dg = tilt(theta)
        if np.all(np.abs(step) <= 1e-10 * np.maximum(theta, 1e-6)):
            break
    theta = np.where(solvable, theta, np.where(reachable, 0.0, np.inf))
    return theta, mean, np.sqrt(raw_var)


def _false_alarm_rate(h: FloatArray, theta: FloatArray, mean: FloatArray,
                      sd: FloatArray) -> FloatArray:
    """Siegmund's approximation, for general increments: 1 / ARL0 per stream and node."""
    b = h[:, None] + _OVERSHOOT * sd
    finite = np.isfinite(theta) & (theta > 0)
    th = np.where(finite, theta, 1.0)
    tb = np.minimum(th * b, 700.0)
    arl = (np.expm1(tb) - tb) / (th * np.abs(mean))
    drifting = np.where(mean > 0, b / np.maximum(mean, 1e-300), (b / sd) ** 2)
    arl = np.where(finite, arl, np.where(theta == 0, drifting, np.inf))
    return 1.0 / np.maximum(arl, 1.0)


def _thresholds(theta: FloatArray, mean: FloatArray, sd: FloatArray, node_weights: FloatArray,
                target_rate: FloatArray) -> FloatArray:
    """Smallest h whose false-alarm rate, averaged over the nodes, is at most ``target_rate``."""
    lo = np.zeros(theta.shape[0])
    hi = np.full(theta.shape[0], _MAX_H)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        rate = (_false_alarm_rate(mid, theta, mean, sd) * node_weights).sum(-1)
        too_many = rate > target_rate
        lo = np.where(too_many, mid, lo)
        hi = np.where(too_many, hi, mid)
    return hi


def _calibrate(values: FloatArray, log_weights: FloatArray, shifts: FloatArray,
               node_weights: FloatArray, target_rate: FloatArray) -> FloatArray:
    theta, mean, sd = _tilt_roots(values[:, None, :], log_weights, shifts)
    return _thresholds(theta, mean, sd, node_weights, target_rate)


def _pair_lattice() -> tuple[FloatArray, FloatArray]:
    """Midpoint cells of width 0.2 over [-4, 4] for a standard normal, and their probabilities."""
    edges = np.linspace(-4.0, 4.0, 2 * _PAIR_LATTICE_HALF + 1)
    mids = (edges[:-1] + edges[1:]) / 2.0
    cdf = special.ndtr(edges)
    cdf[0], cdf[-1] = 0.0, 1.0  # the outer cells take the tails
    return mids, np.diff(cdf)


def _pair_null_atoms(spearman: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Null atoms (u, M) and log-weights (1, 1, M) of the product of two standardised uniform
    scores with the given Spearman correlations (under a Gaussian copula)."""
    mids, probs = _pair_lattice()
    first, second = (a.ravel() for a in np.meshgrid(mids, mids, indexing="ij"))
    weights = np.outer(probs, probs).ravel()
    r = 2.0 * np.sin(np.pi * spearman[:, None] / 6.0)  # Gaussian-copula correlation
    x = math.sqrt(3.0) * (2.0 * special.ndtr(first[None, :]) - 1.0)
    y = math.sqrt(3.0) * (2.0 * special.ndtr(r * first[None, :]
                                             + np.sqrt(1.0 - r * r) * second[None, :]) - 1.0)
    product = x * y
    product += spearman[:, None] - (product * weights).sum(axis=1, keepdims=True)
    return product, np.log(weights)[None, None, :]


def _jeffreys_nodes(events: float, n: int) -> FloatArray:
    """The Gauss-Hermite nodes mapped onto the Jeffreys posterior of a rate."""
    a = events + 0.5
    b = max(n - events, 0.0) + 0.5
    return np.asarray(stats.beta.ppf(special.ndtr(_NODES), a, b), dtype=np.float64)


def _bernoulli_lr(p0: float, p1: float) -> tuple[float, float]:
    """(A, B) such that the log-likelihood ratio of one trial x in {0, 1} is A * x + B."""
    b = math.log((1.0 - p1) / (1.0 - p0))
    return math.log(p1 / p0) - b, b


# --------------------------------------------------------------------------- reference


@dataclass(frozen=True, slots=True)
class Reference:
    """What one model version's inputs and outputs looked like when it was judged good.

    Built from an artifact's ``reference.npz`` (``from_arrays``), from a ``reference`` summary in
    ``metadata.json`` (``from_summary``), or from the first records the version scored
    (``BaselineCollector``). Any part may be missing; the detector fills missing parts from its
    baseline and says per signal where each reference came from. Immutable: the detector swaps
    in a new one.
    """

    feature_names: tuple[str, ...]
    features: tuple[Distribution | None, ...]
    scores: Distribution | None = None
    correlation: Correlation | None = None
    anomaly_rate: Rate | None = None
    invalid_rate: Rate | None = None
    latency: Distribution | None = None

    def __post_init__(self) -> None:
        if len(self.features) != len(self.feature_names):
            raise ValueError("one feature distribution (or None) per feature name is required")

    @classmethod
    def empty(cls, feature_names: Sequence[str]) -> Reference:
        names = tuple(feature_names)
        return cls(names, (None,) * len(names))

    @classmethod
    def from_arrays(
        cls,
        feature_names: Sequence[str],
        features: FloatArray,
        scores: FloatArray | None = None,
        *,
        flags: NDArray[np.bool_] | None = None,
        invalid_count: int = 0,
        latencies: FloatArray | None = None,
        source: str = "artifact",
        levels: int = 256,
    ) -> Reference:
        """From raw reference data; rows with NaN are kept and each column uses its finite values."""
        names = tuple(feature_names)
        matrix = np.asarray(features, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != len(names):
            raise ValueError(f"features must have shape (n, {len(names)}), got {matrix.shape}")
        dists = tuple(Distribution.from_sample(matrix[:, j], levels=levels, source=source)
                      for j in range(len(names)))
        score_dist = None
        if scores is not None:
            score_dist = Distribution.from_sample(np.asarray(scores, np.float64), levels=levels,
                                                  source=source)
        reference = cls(names, dists, scores=score_dist)
        correlation = _correlation_from_rows(reference, matrix, levels, source)
        anomaly = invalid = latency = None
        if flags is not None:
            flag_array = np.asarray(flags, dtype=bool)
            if flag_array.size:
                anomaly = Rate(float(np.count_nonzero(flag_array)), int(flag_array.size), source)
        if source == "baseline":
            missing_rows = int(np.count_nonzero(~np.isfinite(matrix).all(axis=1)))
            if scores is not None:
                missing_rows = int(np.count_nonzero(
                    ~(np.isfinite(matrix).all(axis=1) & np.isfinite(scores))))
            trials = matrix.shape[0] + int(invalid_count)
            if trials:
                invalid = Rate(float(missing_rows + int(invalid_count)), trials, source)
        if latencies is not None and np.asarray(latencies).size >= 20:
            latency = Distribution.from_sample(np.asarray(latencies, np.float64), levels=levels,
                                               source=source)
        return cls(names, dists, score_dist, correlation, anomaly, invalid, latency)

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any], feature_names: Sequence[str], *,
                     default_n: int = 1000, levels: int = 256,
                     origin: str = "metadata.json") -> Reference:
        """From the ``reference`` summary of metadata.json (format in docs/drift.md).

        Raises ``ArtifactInvalid(origin, reason)`` when the summary is malformed; a validator that
        treats the reference as optional catches it and records a warning.
        """
        names = tuple(feature_names)
        try:
            return _reference_from_summary(summary, names, default_n, levels)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactInvalid(origin, f"reference summary: {exc}") from exc

    @property
    def source(self) -> str:
        """Where the feature reference came from: one source, ``mixed``, or ``none``."""
        found = {d.source for d in self.features if d is not None}
        if self.scores is not None:
            found.add(self.scores.source)
        if not found:
            return "none"
        return found.pop() if len(found) == 1 else "mixed"

    def missing_parts(self) -> tuple[str, ...]:
        parts = [f"feature:{name}" for name, d in zip(self.feature_names, self.features,
                                                      strict=True) if d is None]
        for part in ("scores", "anomaly_rate", "invalid_rate", "latency"):
            if getattr(self, part) is None:
                parts.append(part)
        if self.correlation is None and len(self.feature_names) >= 2:
            parts.append("correlation")
        return tuple(parts)

    def completed_by(self, other: Reference) -> Reference:
        """This reference with its missing parts taken from ``other`` (same feature names)."""
        if other.feature_names != self.feature_names:
            raise ValueError("references for different feature names cannot be merged")
        features = tuple(mine if mine is not None else theirs
                         for mine, theirs in zip(self.features, other.features, strict=True))
        merged = Reference(self.feature_names, features, self.scores or other.scores, None,
                           self.anomaly_rate or other.anomaly_rate,
                           self.invalid_rate or other.invalid_rate,
                           self.latency or other.latency)
        # A rank correlation does not depend on which marginal reference ranked the values, so
        # a baseline's correlation completes an artifact's marginals.
        return Reference(merged.feature_names, merged.features, merged.scores,
                         self.correlation or other.correlation, merged.anomaly_rate,
                         merged.invalid_rate, merged.latency)

    def to_dict(self) -> dict[str, Any]:
        def opt(part: Any) -> Any:
            return None if part is None else part.to_dict()

        return {
            "format": REFERENCE_FORMAT,
            "feature_names": list(self.feature_names),
            "features": [opt(d) for d in self.features],
            "scores": opt(self.scores),
            "correlation": opt(self.correlation),
            "anomaly_rate": opt(self.anomaly_rate),
            "invalid_rate": opt(self.invalid_rate),
            "latency": opt(self.latency),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reference:
        """Inverse of ``to_dict``; raises ``ValueError`` on another format."""
        if data.get("format") != REFERENCE_FORMAT:
            raise ValueError(f"not a {REFERENCE_FORMAT} reference: {data.get('format')!r}")

        def opt(kind: Any, part: Any) -> Any:
            return None if part is None else kind.from_dict(part)

        return cls(
            tuple(data["feature_names"]),
            tuple(opt(Distribution, d) for d in data["features"]),
            opt(Distribution, data.get("scores")),
            opt(Correlation, data.get("correlation")),
            opt(Rate, data.get("anomaly_rate")),
            opt(Rate, data.get("invalid_rate")),
            opt(Distribution, data.get("latency")),
        )


def _reference_from_summary(summary: Mapping[str, Any], names: tuple[str, ...],
                            default_n: int, levels: int) -> Reference:
    """Parse a ``reference`` summary; raises KeyError/TypeError/ValueError when malformed."""
    n = int(summary.get("n", default_n))
    at = summary.get("levels")

    def dist(spec: Any) -> Distribution:
        if isinstance(spec, Mapping):
            return Distribution.from_quantiles(
                spec["quantiles"], n=int(spec.get("n", n)), source="summary", levels=levels,
                at=spec.get("levels", at))
        return Distribution.from_quantiles(spec, n=n, source="summary", levels=levels, at=at)

    feature_specs = summary.get("features", {})
    if not isinstance(feature_specs, Mapping):
        raise TypeError("'features' must map feature names to quantiles")
    unknown = sorted(set(feature_specs) - set(names))
    if unknown:
        raise ValueError(f"features not in feature_names: {unknown}")
    dists = tuple(dist(feature_specs[name]) if name in feature_specs else None for name in names)
    scores = dist(summary["scores"]) if summary.get("scores") is not None else None
    latency = dist(summary["latency"]) if summary.get("latency") is not None else None
    correlation = None
    if summary.get("correlation") is not None:
        matrix = np.asarray(summary["correlation"], dtype=np.float64)
        if matrix.shape != (len(names), len(names)) or not np.all(np.isfinite(matrix)):
            raise ValueError(f"correlation must be a finite {len(names)}x{len(names)} matrix")
        if np.any(np.abs(matrix) > 1.0) or not np.allclose(matrix, matrix.T):
            raise ValueError("correlation must be symmetric with entries in [-1, 1]")
        correlation = Correlation(_frozen(matrix), n, "summary")
    rates: dict[str, Rate] = {}
    for key in ("anomaly_rate", "invalid_rate"):
        value = summary.get(key)
        if value is not None:
            rates[key] = Rate.from_dict({"rate": value, "n": n, "source": "summary"})
    return Reference(names, dists, scores, correlation, rates.get("anomaly_rate"),
                     rates.get("invalid_rate"), latency)


@dataclass(frozen=True, slots=True)
class _ColumnTables:
    """Per column, per mid-rank code: the null pmf and the two standardised scores."""

    pmf: FloatArray  # (F, 2Q+1)
    normal: FloatArray  # (F, 2Q+1) normal scores, mean 0 and sd 1 under the reference
    uniform: FloatArray  # (F, 2Q+1) uniform (Spearman) scores, mean 0 and sd 1
    normal_sd: FloatArray  # (F,) sd of the raw normal score; 0 for a constant column


def _standardise(table: FloatArray, pmf: FloatArray) -> tuple[FloatArray, FloatArray]:
    mean = pmf @ table
    sd = np.sqrt(np.maximum(pmf @ table**2 - mean**2, 0.0))
    return (table[None, :] - mean[:, None]) / np.where(sd > 1e-9, sd, 1.0)[:, None], sd


def _column_tables(grids: FloatArray, present: BoolArray) -> _ColumnTables:
    columns, q = grids.shape
    pmf = np.zeros((columns, 2 * q + 1))
    for c in np.flatnonzero(present):
        pmf[c] = _code_pmf(grids[c])
    normal, sd = _standardise(_normal_score_table(q), pmf)
    codes = np.arange(2 * q + 1, dtype=np.float64)
    uniform, _ = _standardise((codes + 1.0) / (q + 1.0) - 1.0, pmf)
    return _ColumnTables(pmf, normal, uniform, sd)


def _correlation_from_rows(reference: Reference, matrix: FloatArray, levels: int,
                           source: str) -> Correlation | None:
    d = len(reference.feature_names)
    if d < 2 or any(dist is None for dist in reference.features):
        return None
    complete = matrix[np.isfinite(matrix).all(axis=1)]
    if complete.shape[0] < 10:
        return None
    grids = np.stack([dist.resampled(levels).quantiles for dist in reference.features
                      if dist is not None])
    tables = _column_tables(grids, np.ones(d, dtype=bool))
    transform = _RankTransform(grids)
    scores = transform.flat_table(tables.uniform).take(transform.flat_codes(complete))
    corr = scores.T @ scores / complete.shape[0]
    corr = np.clip((corr + corr.T) / 2.0, -1.0, 1.0)
    np.fill_diagonal(corr, 1.0)
    return Correlation(_frozen(corr), int(complete.shape[0]), source)


class BaselineCollector:
    """Collects the first ``size`` records a version scores, to become its reference.

    Owned by a ``DriftDetector`` (same thread, same lock); bounded to ``size`` rows.
    """

    def __init__(self, n_features: int, size: int) -> None:
        self.size = size
        self._features = np.empty((size, n_features))
        self._scores = np.empty(size)
        self._flags = np.zeros(size, dtype=bool)
        self._latencies: list[float] = []
        self.filled = 0
        self.invalid = 0

    @property
    def complete(self) -> bool:
        return self.filled >= self.size

    def add(self, features: FloatArray, scores: FloatArray, flags: NDArray[np.bool_],
            invalid_count: int, latency_s: float | None) -> int:
        """Take as many leading records as still fit; returns how many were taken."""
        if self.complete:
            return 0
        take = int(min(features.shape[0], self.size - self.filled))
        end = self.filled + take
        self._features[self.filled:end] = features[:take]
        self._scores[self.filled:end] = scores[:take]
        self._flags[self.filled:end] = flags[:take]
        self.filled = end
        self.invalid += int(invalid_count)
        if latency_s is not None and len(self._latencies) < self.size:
            self._latencies.append(float(latency_s))
        return take

    def build(self, feature_names: Sequence[str], levels: int) -> Reference:
        rows = slice(0, self.filled)
        return Reference.from_arrays(
            feature_names, self._features[rows], self._scores[rows], flags=self._flags[rows],
            invalid_count=self.invalid, latencies=np.asarray(self._latencies),
            source="baseline", levels=levels)

    def to_state(self) -> dict[str, Any]:
        rows = slice(0, self.filled)
        return {
            "size": self.size,
            "features": [[_json_float(v) for v in row] for row in self._features[rows]],
            "scores": [_json_float(v) for v in self._scores[rows]],
            "flags": [bool(v) for v in self._flags[rows]],
            "latencies": list(self._latencies),
            "invalid": self.invalid,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], n_features: int) -> BaselineCollector:
        collector = cls(n_features, int(state["size"]))
        rows = len(state["scores"])
        if rows:
            feats = np.asarray(state["features"], dtype=np.float64).reshape(rows, n_features)
            scores = np.asarray([np.nan if v is None else v for v in state["scores"]], np.float64)
            collector.add(feats, scores, np.asarray(state["flags"], dtype=bool), 0, None)
        collector._latencies = [float(v) for v in state.get("latencies", [])]
        collector.invalid = int(state.get("invalid", 0))
        return collector


def _json_float(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class DriftAlarm:
    """One alarm: a signal left its reference. Raised once per change (see cooldown)."""

    signal: str
    kind: str
    detector: str  # "cusum" (streaming) or "window" (scheduled test)
    at: float
    record: int
    statistic: float
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"signal": self.signal, "kind": self.kind, "detector": self.detector,
                "at": self.at, "record": self.record, "statistic": _json_float(self.statistic),
                "detail": self.detail}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftAlarm:
        stat = data.get("statistic")
        return cls(str(data["signal"]), str(data["kind"]), str(data["detector"]),
                   float(data["at"]), int(data["record"]),
                   float("nan") if stat is None else float(stat), str(data.get("detail", "")))


@dataclass(frozen=True, slots=True)
class SignalResult:
    """The verdict on one watched signal at one evaluation.

    ``status``: ``ok``, ``warning`` (significant but below the effect-size gate, or latency
    degraded), ``drift`` (significant and above the gate, or a streaming alarm still within its
    cooldown) or ``insufficient_data`` (no reference yet, or fewer than ``min_window_records``
    usable values). ``cusum_level`` is the largest CUSUM statistic of the signal as a fraction of
    its threshold (1.0 would alarm).
    """

    name: str
    kind: str  # score | anomaly_rate | feature | invalid_rate | correlation | latency
    status: str
    method: str
    statistic: float | None
    p_value: float | None
    p_adjusted: float | None
    effect_size: float | None
    psi: float | None
    window_size: int
    reference_size: int
    reference_source: str
    missing: int = 0
    cusum_level: float | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = _json_float(value) if isinstance(value, float) else value
        return out


@dataclass(frozen=True, slots=True)
class DriftReport:
    """What ``DriftDetector.evaluate`` concluded; JSON-ready through ``to_dict``.

    ``alarms`` are the alarms raised since the previous evaluation (streaming and windowed).
    ``status`` is ``drift`` when any data signal drifts (latency never counts as drift).
    """

    evaluated_at: float
    status: str
    reference_source: str
    baseline_progress: tuple[int, int] | None
    records_seen: int
    invalid_seen: int
    missing_counts: Mapping[str, int]
    signals: tuple[SignalResult, ...]
    alarms: tuple[DriftAlarm, ...]
    last_alarm_at: float | None

    def signal(self, name: str) -> SignalResult:
        for result in self.signals:
            if result.name == name:
                return result
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "evaluated_at": self.evaluated_at,
            "status": self.status,
            "reference_source": self.reference_source,
            "baseline_progress": (None if self.baseline_progress is None
                                  else list(self.baseline_progress)),
            "records_seen": self.records_seen,
            "invalid_seen": self.invalid_seen,
            "missing_counts": dict(self.missing_counts),
            "signals": [s.to_dict() for s in self.signals],
            "alarms": [a.to_dict() for a in self.alarms],
            "last_alarm_at": self.last_alarm_at,
        }


# --------------------------------------------------------------------------- streaming engine


@dataclass(slots=True)
class _SignalState:
    kind: str
    last_crossing_record: int | None = None
    last_crossing_at: float | None = None
    last_alarm_at: float | None = None
    alarms: int = 0


class _Engine:
    """The CUSUMs compiled for one reference: tables, stream coefficients and thresholds.

    Rebuilt (deterministically) whenever the reference changes; holds no mutable state.
    """

    def __init__(self, reference: Reference, config: DriftConfig) -> None:
        names = reference.feature_names
        d = len(names)
        columns = d + 1  # features, then the anomaly score
        q = config.reference_levels
        self.correlation_n = reference.correlation.n if reference.correlation else 1
        dists: list[Distribution | None] = [*reference.features, reference.scores]
        grids = np.zeros((columns, q))
        present = np.zeros(columns, dtype=bool)
        sizes = np.ones(columns)
        for c, dist in enumerate(dists):
            if dist is not None:
                grids[c] = dist.resampled(q).quantiles
                present[c] = True
                sizes[c] = dist.n
        self.transform = _RankTransform(grids)
        tables = _column_tables(grids, present)
        pmf, standard = tables.pmf, tables.normal
        self.table = self.transform.flat_table(standard)
        self.utable = self.transform.flat_table(tables.uniform)
        enabled = present & (tables.normal_sd > 1e-9)

        keys: list[str] = []
        signal_of: list[str] = []
        stat_index: list[int] = []
        coef_a: list[float] = []
        coef_b: list[float] = []
        col1: list[int] = []
        col2: list[int] = []
        column_names = [*(f"feature:{n}" for n in names), "score"]

        # Marginal streams: mean up/down on the standardised normal score y, spread up/down on y^2.
        delta = config.mean_shift_design
        ratio = config.variance_ratio_design
        marginal_values: list[FloatArray] = []
        marginal_pmf: list[FloatArray] = []
        marginal_n: list[float] = []
        designs = (
            ("mean+", 0, delta, -delta * delta / 2.0),
            ("mean-", 0, -delta, -delta * delta / 2.0),
            ("spread+", 1, 0.5 * (1.0 - 1.0 / ratio), -0.5 * math.log(ratio)),
            ("spread-", 1, 0.5 * (1.0 - ratio), 0.5 * math.log(ratio)),
        )
        for col in map(int, np.flatnonzero(enabled)):
            y = standard[col]
            for suffix, power, a, b in designs:
                keys.append(f"{column_names[col]}:{suffix}")
                signal_of.append(column_names[col])
                stat_index.append(col + power * columns)
                coef_a.append(a)
                coef_b.append(b)
                col1.append(col)
                col2.append(columns)
                marginal_values.append(a * (y if power == 0 else y * y) + b)
                marginal_pmf.append(pmf[col])
                marginal_n.append(float(sizes[col]))

        # Pair streams: correlation up/down on the product of two standardised normal scores.
        pair_i: list[int] = []
        pair_j: list[int] = []
        pair_r: list[float] = []
        if reference.correlation is not None and config.max_correlation_pairs > 0:
            matrix = reference.correlation.matrix
            candidates = [(i, j) for i in range(d) for j in range(i + 1, d)
                          if enabled[i] and enabled[j]]
            if len(candidates) > config.max_correlation_pairs:
                candidates.sort(key=lambda ij: -abs(matrix[ij[0], ij[1]]))
                candidates = sorted(candidates[: config.max_correlation_pairs])
            for i, j in candidates:
                pair_i.append(i)
                pair_j.append(j)
                pair_r.append(float(np.clip(matrix[i, j], -0.95, 0.95)))
        self.pair_i = np.asarray(pair_i, dtype=np.intp)
        self.pair_j = np.asarray(pair_j, dtype=np.intp)
        self.pair_r = np.asarray(pair_r)
        pairs = len(pair_i)
        for p in range(pairs):
            s = math.sqrt(1.0 + pair_r[p] ** 2)
            step = config.correlation_shift_design / s
            for sign, suffix in ((1.0, "corr+"), (-1.0, "corr-")):
                keys.append(f"correlation:{names[pair_i[p]]}~{names[pair_j[p]]}:{suffix}")
                signal_of.append("correlation")
                stat_index.append(2 * columns + pair_i[p] * columns + pair_j[p])
                coef_a.append(sign * step / s)
                coef_b.append(-sign * step * pair_r[p] / s - step * step / 2.0)
                col1.append(pair_i[p])
                col2.append(pair_j[p])

        # Rate streams: Bernoulli likelihood ratios against the reference rate.
        flag_stat = 2 * columns + columns * columns
        rate_streams: list[tuple[float, int, float, float]] = []  # events, n, A, B
        if reference.anomaly_rate is not None:
            ref = reference.anomaly_rate
            p0 = (ref.events + 0.5) / (ref.n + 1.0)
            for suffix, p1 in (("rate+", min(p0 * config.rate_ratio_design, (1.0 + p0) / 2.0)),
                               ("rate-", p0 / config.rate_ratio_design)):
                a, b = _bernoulli_lr(p0, p1)
                keys.append(f"anomaly_rate:{suffix}")
                signal_of.append("anomaly_rate")
                stat_index.append(flag_stat)
                coef_a.append(a)
                coef_b.append(b)
                col1.append(columns)
                col2.append(columns)
                rate_streams.append((ref.events, ref.n, a, b))
        self.invalid_stream = -1
        if reference.invalid_rate is not None:
            ref = reference.invalid_rate
            p0 = (ref.events + 0.5) / (ref.n + 1.0)
            p1 = min(max(p0 * config.rate_ratio_design, p0 + config.invalid_rate_design),
                     (1.0 + p0) / 2.0)
            a, b = _bernoulli_lr(p0, p1)
            self.invalid_stream = len(keys)
            keys.append("invalid_rate:rate+")
            signal_of.append("invalid_rate")
            stat_index.append(flag_stat + 1)
            coef_a.append(a)
            coef_b.append(b)
            col1.append(columns)
            col2.append(columns)
            rate_streams.append((ref.events, ref.n, a, b))

        self.keys = tuple(keys)
        self.signal_of = tuple(signal_of)
        self.stat_index = np.asarray(stat_index, dtype=np.intp)
        self.coef_a = np.asarray(coef_a)
        self.coef_b = np.asarray(coef_b)
        self.col1 = np.asarray(col1, dtype=np.intp)
        self.col2 = np.asarray(col2, dtype=np.intp)
        self.columns = columns
        self.n_stats = flag_stat + 2

        # Thresholds: split the false-alarm budget, then calibrate each group.
        total_rate = 1.0 / config.target_arl0_records
        marginal_count = len(marginal_values) + len(rate_streams)
        pair_count = 2 * pairs
        pair_share = config.correlation_budget_share if pair_count and marginal_count else (
            1.0 if pair_count else 0.0)
        marginal_rate = total_rate * (1.0 - pair_share) / max(marginal_count, 1)
        pair_rate = total_rate * pair_share / max(pair_count, 1)
        thresholds: list[FloatArray] = []
        if marginal_values:
            values = np.stack(marginal_values)
            weights = np.stack(marginal_pmf)
            sd_inc = np.sqrt(np.maximum((weights * values**2).sum(1)
                                        - (weights * values).sum(1) ** 2, 0.0))
            shifts = (sd_inc / np.sqrt(np.asarray(marginal_n)))[:, None] * _NODES[None, :]
            with np.errstate(divide="ignore"):
                log_w = np.log(weights)[:, None, :]
            thresholds.append(_calibrate(values, log_w, shifts, _NODE_WEIGHTS,
                                         np.full(len(values), marginal_rate)))
        if pairs:
            thresholds.append(self._pair_thresholds(config, pair_rate))
        if rate_streams:
            values = np.asarray([[a + b, b] for _, _, a, b in rate_streams])
            probs = np.stack([_jeffreys_nodes(events, n) for events, n, _, _ in rate_streams])
            probs = np.clip(probs, 1e-300, 1.0 - 1e-16)
            log_w = np.log(np.stack([probs, 1.0 - probs], axis=-1))
            thresholds.append(_calibrate(values, log_w, np.zeros_like(probs), _NODE_WEIGHTS,
                                         np.full(len(values), marginal_rate)))
        self.thresholds = (np.concatenate(thresholds) if thresholds else np.zeros(0))
        # Every CUSUM is kept in units of its own threshold, so that all cross at 1.0.
        self.coef_a = self.coef_a / self.thresholds
        self.coef_b = self.coef_b / self.thresholds
        self.invalid_increment = (float(self.coef_a[self.invalid_stream]
                                        + self.coef_b[self.invalid_stream])
                                  if self.invalid_stream >= 0 else 0.0)
        # Buffers of the one-record path (views into one stat vector; the result is reused).
        self._stat_one = np.zeros(self.n_stats)
        self._y_one = self._stat_one[:columns]
        self._y2_one = self._stat_one[columns:2 * columns]
        self._outer_one = self._stat_one[2 * columns:flag_stat].reshape(columns, columns)
        self._u_one = np.empty(columns)
        self._inc_one = np.empty(self.stat_index.size)
        self.signal_streams: dict[str, IntArray] = {}
        for k, signal in enumerate(self.signal_of):
            self.signal_streams.setdefault(signal, np.zeros(0, dtype=np.intp))
            self.signal_streams[signal] = np.append(self.signal_streams[signal], k)

    def _pair_thresholds(self, config: DriftConfig, pair_rate: float) -> FloatArray:
        # Pairs with (nearly) the same reference correlation share one calibration.
        rounded = np.round(self.pair_r, 2)
        unique, inverse = np.unique(rounded, return_inverse=True)
        atoms, log_w = _pair_null_atoms(unique)  # (u, M), (1, 1, M)
        n = max(self.correlation_n, 1)
        result = np.empty(2 * self.pair_r.size)
        for sign_index in (0, 1):
            a = np.empty(unique.size)
            b = np.empty(unique.size)
            for u, r in enumerate(unique):
                s = math.sqrt(1.0 + r * r)
                step = config.correlation_shift_design / s
                sign = 1.0 if sign_index == 0 else -1.0
                a[u] = sign * step / s
                b[u] = -sign * step * r / s - step * step / 2.0
            values = a[:, None] * atoms + b[:, None]
            weights = np.exp(log_w[0])
            sd_inc = np.sqrt(np.maximum((weights * values**2).sum(1)
                                        - (weights * values).sum(1) ** 2, 0.0))
            shifts = (sd_inc / math.sqrt(n))[:, None] * _NODES[None, :]
            h = _calibrate(values, log_w, shifts, _NODE_WEIGHTS, np.full(unique.size, pair_rate))
            result[sign_index::2] = h[inverse]
        return result

    def uniform_scores(self, values: FloatArray) -> FloatArray:
        """Standardised uniform (rank) scores (n, F) of finite values (n, F)."""
        return self.utable.take(self.transform.flat_codes(values))

    def increments(self, values: FloatArray, flags: NDArray[np.bool_],
                   missing: BoolArray | None, finite: BoolArray | None) -> FloatArray:
        """CUSUM increments (n, streams), in threshold units, for finite ``values`` (n, F).

        ``finite`` marks which original values were finite; streams that read a non-finite value
        get a zero increment for that record (the value is counted, not judged).
        """
        codes = self.transform.flat_codes(values)
        y = self.table.take(codes)
        u = self.utable.take(codes)
        n, cols = y.shape
        stat = np.empty((n, self.n_stats))
        stat[:, :cols] = y
        np.multiply(y, y, out=stat[:, cols:2 * cols])
        np.multiply(u[:, :, None], u[:, None, :],
                    out=stat[:, 2 * cols:2 * cols + cols * cols].reshape(n, cols, cols))
        stat[:, -2] = flags
        stat[:, -1] = 0.0 if missing is None else missing
        inc = stat.take(self.stat_index, axis=1)
        inc *= self.coef_a
        inc += self.coef_b
        if finite is not None:
            bad = np.ones((n, cols + 1), dtype=bool)
            np.logical_not(finite, out=bad[:, :cols])
            bad[:, cols] = False
            inc[bad.take(self.col1, axis=1) | bad.take(self.col2, axis=1)] = 0.0
        return inc

    def increments_one(self, values: FloatArray, flag: bool) -> FloatArray:
        """Increments (streams,) for one record of finite values (F,): the lean scoring path.

        Returns a buffer that the next call overwrites."""
        codes = self.transform.flat_codes_one(values)
        y = self.table.take(codes, out=self._y_one)
        np.multiply(y, y, out=self._y2_one)
        u = self.utable.take(codes, out=self._u_one)
        np.multiply.outer(u, u, out=self._outer_one)
        stat = self._stat_one
        stat[-2] = flag
        inc = stat.take(self.stat_index, out=self._inc_one)
        np.multiply(inc, self.coef_a, out=inc)
        np.add(inc, self.coef_b, out=inc)
        return inc


# --------------------------------------------------------------------------- detector


class DriftDetector:
    """Watches one model version's scored records for drift against its reference.

    Called by the scoring path (``observe``, under the daemon's small monitoring lock, for every
    scored batch) and by the scheduler (``evaluate``, same lock). Not thread-safe by itself.
    ``observe`` returns the streaming alarms the batch raised so they can be logged at once;
    ``evaluate`` runs the windowed tests and returns a ``DriftReport``. Errors: ``ValueError`` for
    arrays of the wrong shape (a caller bug); nothing else is raised on the scoring path.

    If the reference lacks parts (no reference at all, no scores, no anomaly rate...), the first
    ``config.baseline_records`` records are collected and fill exactly those parts; each
    ``SignalResult`` says where its reference came from.
    """

    def __init__(self, feature_names: Sequence[str], config: DriftConfig | None = None,
                 reference: Reference | None = None) -> None:
        self.config = config or DriftConfig()
        self.feature_names = tuple(feature_names)
        d = len(self.feature_names)
        reference = reference or Reference.empty(self.feature_names)
        if reference.feature_names != self.feature_names:
            raise ValueError("the reference was built for other feature names")
        self._reference = reference
        self._baseline: BaselineCollector | None = None
        if reference.missing_parts():
            self._baseline = BaselineCollector(d, self.config.baseline_records)
        self._engine: _Engine | None = None
        self._cusum = np.zeros(0)
        self._signals: dict[str, _SignalState] = {}
        for name in self.feature_names:
            self._signals[f"feature:{name}"] = _SignalState("feature")
        for name, kind in (("score", "score"), ("anomaly_rate", "anomaly_rate"),
                           ("invalid_rate", "invalid_rate"), ("correlation", "correlation")):
            self._signals[name] = _SignalState(kind)
        self._position = 0  # records offered: scored plus rejected
        self.records_seen = 0
        self.invalid_seen = 0
        self._missing_counts = np.zeros(d + 1, dtype=np.int64)
        self._pending: deque[DriftAlarm] = deque(maxlen=100)
        w = self.config.window_records
        self._ring = np.full((w, d + 1), np.nan)
        self._ring_flags = np.zeros(w, dtype=bool)
        self._ring_pos = 0
        self._ring_fill = 0
        self._miss_ring = np.zeros(w, dtype=bool)
        self._miss_pos = 0
        self._miss_fill = 0
        self._lat_ring = np.zeros(w)
        self._lat_pos = 0
        self._lat_fill = 0
        self._one = np.empty(d + 1)
        self._rebuild()

    # ---- public API

    @property
    def reference(self) -> Reference:
        return self._reference

    @property
    def collecting_baseline(self) -> bool:
        return self._baseline is not None

    def observe(self, features: FloatArray, scores: FloatArray, flags: NDArray[np.bool_], *,
                now: float, invalid_count: int = 0,
                latency_s: float | None = None) -> tuple[DriftAlarm, ...]:
        """Feed one scored batch (rows in arrival order); returns the alarms it raised."""
        features = np.asarray(features, dtype=np.float64)
        n = features.shape[0]
        d = len(self.feature_names)
        if features.ndim != 2 or features.shape[1] != d:
            raise ValueError(f"features must have shape (n, {d}), got {features.shape}")
        scores = np.asarray(scores, dtype=np.float64)
        flags = np.asarray(flags, dtype=bool)
        if scores.shape != (n,) or flags.shape != (n,):
            raise ValueError("scores and flags must have one entry per row")
        alarms: list[DriftAlarm] = []
        if invalid_count:
            self._observe_invalid(int(invalid_count), now, alarms)
        if n == 1:
            self._observe_one(features, scores, flags, now, alarms)
        elif n:
            self._observe_rows(features, scores, flags, now, alarms)
        if latency_s is not None:
            self._lat_ring[self._lat_pos] = latency_s
            self._lat_pos = (self._lat_pos + 1) % self._lat_ring.size
            self._lat_fill = min(self._lat_fill + 1, self._lat_ring.size)
        if self._baseline is not None:
            self._baseline.add(features, scores, flags, invalid_count, latency_s)
            if self._baseline.complete:
                built = self._baseline.build(self.feature_names, self.config.reference_levels)
                self._reference = self._reference.completed_by(built)
                self._baseline = None
                self._rebuild()
                # The baseline's records are the reference now: judging them against
                # themselves would hide drift, so the evaluation windows start afresh.
                self._ring_fill = self._miss_fill = self._lat_fill = 0
                self._ring_pos = self._miss_pos = self._lat_pos = 0
        if alarms:
            self._pending.extend(alarms)
        return tuple(alarms)

    def observe_invalid(self, count: int, now: float) -> tuple[DriftAlarm, ...]:
        """Count records rejected before scoring (they feed the invalid-input rate)."""
        alarms: list[DriftAlarm] = []
        if count > 0:
            self._observe_invalid(int(count), now, alarms)
            if self._baseline is not None:
                self._baseline.invalid += int(count)
            self._pending.extend(alarms)
        return tuple(alarms)

    def evaluate(self, now: float) -> DriftReport:
        """Run the windowed tests over the last ``window_records`` records and report."""
        window = self._ring[: self._ring_fill]
        flags = self._ring_flags[: self._ring_fill]
        results: list[dict[str, Any]] = []
        ref = self._reference
        engine = self._engine
        dists = [*ref.features, ref.scores]
        for c, dist in enumerate(dists):
            results.append(self._distribution_test(c, dist, window[:, c]))
        results.append(self._rate_test("anomaly_rate", ref.anomaly_rate,
                                       int(np.count_nonzero(flags)), flags.size))
        miss = self._miss_ring[: self._miss_fill]
        results.append(self._rate_test("invalid_rate", ref.invalid_rate,
                                       int(np.count_nonzero(miss)), miss.size))
        if len(self.feature_names) >= 2:
            results.append(self._correlation_test(window, engine, now))
        # Holm across the data signals that produced a p-value.
        tested = [r for r in results if r["p_value"] is not None]
        adjusted = _holm(np.asarray([r["p_value"] for r in tested]))
        for r, p_adj in zip(tested, adjusted, strict=True):
            r["p_adjusted"] = float(p_adj)
        signals: list[SignalResult] = []
        for r in results:
            signals.append(self._judge(r, now))
        signals.append(self._latency_result())
        data = [s.status for s in signals if s.kind != "latency"]
        if "drift" in data:
            status = "drift"
        elif "warning" in data or signals[-1].status == "warning":
            status = "warning"
        elif "ok" in data:
            status = "ok"
        else:
            status = "insufficient_data"
        alarms = tuple(self._pending)
        self._pending.clear()
        last = [s.last_alarm_at for s in self._signals.values() if s.last_alarm_at is not None]
        progress = None
        if self._baseline is not None:
            progress = (self._baseline.filled, self._baseline.size)
        source = ref.source
        if source == "none" and self._baseline is not None:
            source = "collecting_baseline"
        return DriftReport(
            evaluated_at=now, status=status, reference_source=source,
            baseline_progress=progress, records_seen=self.records_seen,
            invalid_seen=self.invalid_seen,
            missing_counts=dict(zip([*self.feature_names, "score"],
                                    map(int, self._missing_counts), strict=True)),
            signals=tuple(signals), alarms=alarms,
            last_alarm_at=max(last) if last else None)

    def thresholds(self) -> dict[str, float]:
        """The calibrated CUSUM threshold of every stream (for the docs and the benchmark)."""
        if self._engine is None:
            return {}
        return dict(zip(self._engine.keys, map(float, self._engine.thresholds), strict=True))

    def to_state(self) -> dict[str, Any]:
        """JSON-ready state: reference, baseline in progress, CUSUM statistics, alarm states.

        The evaluation windows are not kept: after a restart the windowed tests report
        ``insufficient_data`` until ``min_window_records`` new records arrived.
        """
        keys = self._engine.keys if self._engine is not None else ()
        return {
            "format": STATE_FORMAT,
            "feature_names": list(self.feature_names),
            "reference": self._reference.to_dict(),
            "baseline": None if self._baseline is None else self._baseline.to_state(),
            "position": self._position,
            "records_seen": self.records_seen,
            "invalid_seen": self.invalid_seen,
            "missing_counts": [int(v) for v in self._missing_counts],
            "cusum": {k: float(v) for k, v in zip(keys, self._cusum, strict=True)},
            "signals": {
                name: {"last_crossing_record": s.last_crossing_record,
                       "last_crossing_at": s.last_crossing_at,
                       "last_alarm_at": s.last_alarm_at, "alarms": s.alarms}
                for name, s in self._signals.items()
            },
            "pending_alarms": [a.to_dict() for a in self._pending],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any],
                   config: DriftConfig | None = None) -> DriftDetector:
        """Inverse of ``to_state``; raises ``ValueError`` for another format."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} state: {state.get('format')!r}")
        names = tuple(state["feature_names"])
        reference = Reference.from_dict(state["reference"])
        detector = cls(names, config, reference)
        if state.get("baseline") is not None:
            detector._baseline = BaselineCollector.from_state(state["baseline"], len(names))
        elif detector._baseline is not None:
            detector._baseline = None  # the baseline finished before; parts stay missing
        detector._position = int(state["position"])
        detector.records_seen = int(state["records_seen"])
        detector.invalid_seen = int(state["invalid_seen"])
        detector._missing_counts = np.asarray(state["missing_counts"], dtype=np.int64)
        if detector._engine is not None:
            saved = state.get("cusum", {})
            detector._cusum = np.asarray([float(saved.get(k, 0.0))
                                          for k in detector._engine.keys])
        for name, saved_signal in state.get("signals", {}).items():
            if name in detector._signals:
                s = detector._signals[name]
                s.last_crossing_record = saved_signal["last_crossing_record"]
                s.last_crossing_at = saved_signal["last_crossing_at"]
                s.last_alarm_at = saved_signal["last_alarm_at"]
                s.alarms = int(saved_signal["alarms"])
        detector._pending.extend(DriftAlarm.from_dict(a) for a in state.get("pending_alarms", []))
        return detector

    # ---- streaming internals

    def _observe_one(self, features: FloatArray, scores: FloatArray, flags: NDArray[np.bool_],
                     now: float, alarms: list[DriftAlarm]) -> None:
        """One record: the common case on the scoring path, kept to a few numpy calls."""
        values = self._one
        values[:-1] = features[0]
        values[-1] = scores[0]
        if not math.isfinite(float(np.add.reduce(values))):
            self._observe_rows(features, scores, flags, now, alarms)
            return
        flag = bool(flags[0])
        engine = self._engine
        if engine is not None and engine.keys:
            cusum = self._cusum
            cusum += engine.increments_one(values, flag)
            np.maximum(cusum, 0.0, out=cusum)
            if cusum.max() > 1.0:
                for k in np.flatnonzero(cusum > 1.0):
                    self._crossing(int(k), self._position, now, float(cusum[k]), alarms)
                    cusum[k] = 0.0
        pos = self._ring_pos
        self._ring[pos] = values
        self._ring_flags[pos] = flag
        self._ring_pos = (pos + 1) % self._ring_flags.size
        if self._ring_fill < self._ring_flags.size:
            self._ring_fill += 1
        self._miss_ring[self._miss_pos] = False
        self._miss_pos = (self._miss_pos + 1) % self._miss_ring.size
        if self._miss_fill < self._miss_ring.size:
            self._miss_fill += 1
        self._position += 1
        self.records_seen += 1

    def _observe_rows(self, features: FloatArray, scores: FloatArray, flags: NDArray[np.bool_],
                      now: float, alarms: list[DriftAlarm]) -> None:
        n, d = features.shape
        values = np.empty((n, d + 1))
        values[:, :d] = features
        values[:, d] = scores
        finite = np.isfinite(values)
        missing: BoolArray | None = None
        finite_or_none: BoolArray | None = None
        if not finite.all():
            missing = np.logical_not(np.all(finite, axis=1))
            finite_or_none = finite
            self._missing_counts += n - np.count_nonzero(finite, axis=0)
            values = np.where(finite, values, self._fill)
        engine = self._engine
        if engine is not None and engine.keys:
            self._advance(engine.increments(values, flags, missing, finite_or_none), now, alarms)
        if finite_or_none is not None:
            values = np.where(finite_or_none, values, np.nan)
        self._write_rows(values, flags, missing)
        self._position += n
        self.records_seen += n


    def _rebuild(self) -> None:
        old = dict(zip(self._engine.keys, self._cusum, strict=True)) if self._engine else {}
        ref = self._reference
        has_any = any(d is not None for d in ref.features) or ref.scores is not None or (
            ref.anomaly_rate is not None or ref.invalid_rate is not None)
        self._engine = _Engine(ref, self.config) if has_any else None
        if self._engine is None:
            self._cusum = np.zeros(0)
            self._fill = np.zeros(len(self.feature_names) + 1)
            return
        self._cusum = np.asarray([old.get(k, 0.0) for k in self._engine.keys], dtype=np.float64)
        self._fill = self._engine.transform.fill

    def _observe_invalid(self, count: int, now: float, alarms: list[DriftAlarm]) -> None:
        self.invalid_seen += count
        take = min(count, self._miss_ring.size)
        idx = (self._miss_pos + np.arange(take)) % self._miss_ring.size
        self._miss_ring[idx] = True
        self._miss_pos = int((self._miss_pos + take) % self._miss_ring.size)
        self._miss_fill = min(self._miss_fill + take, self._miss_ring.size)
        engine = self._engine
        if engine is not None and engine.invalid_stream >= 0:
            k = engine.invalid_stream
            # Consecutive positive increments: the CUSUM is their running sum, so count the
            # crossings in closed form.
            total = self._cusum[k] + count * engine.invalid_increment
            if total > 1.0:
                self._crossing(k, self._position, now, float(total), alarms)
                total = 0.0
            self._cusum[k] = total
        self._position += count

    def _advance(self, inc: FloatArray, now: float, alarms: list[DriftAlarm]) -> None:
        """Lindley's recursion S = max(0, S + x), row by row (a row is a vector op over all
        streams; numpy's accumulate along the batch is slower here), then replays the few
        streams whose peak crossed 1 to place each crossing on its record."""
        cusum = self._cusum
        start = cusum.copy()
        peak = np.zeros_like(cusum)
        for row in inc:
            cusum += row
            np.maximum(cusum, 0.0, out=cusum)
            np.maximum(peak, cusum, out=peak)
        if peak.max() > 1.0:
            for k in np.flatnonzero(peak > 1.0):
                cusum[k] = self._replay(int(k), inc[:, k], float(start[k]), now, alarms)

    def _replay(self, k: int, inc: FloatArray, level: float, now: float,
                alarms: list[DriftAlarm]) -> float:
        """Walk one stream through a batch, restarting at 0 after each crossing."""
        begin = 0
        n = inc.shape[0]
        while begin < n:
            total = np.cumsum(inc[begin:])
            path = total - np.minimum(np.minimum.accumulate(total), -level)
            over = np.flatnonzero(path > 1.0)
            if over.size == 0:
                return float(path[-1])
            t = int(over[0])
            self._crossing(k, self._position + begin + t, now, float(path[t]), alarms)
            level = 0.0
            begin += t + 1
        return 0.0

    def _crossing(self, k: int, record: int, now: float, level: float,
                  alarms: list[DriftAlarm]) -> None:
        engine = self._engine
        assert engine is not None
        signal = engine.signal_of[k]
        if signal == "correlation" and self._marginal_active(int(engine.col1[k]),
                                                             int(engine.col2[k]), now, record):
            return  # a drifting marginal moves every pair it is in; it alarmed already
        self._signal_crossed(signal, record, now, "cusum", level,
                             f"stream {engine.keys[k]}", alarms)

    def _marginal_active(self, i: int, j: int, now: float, record: int | None = None) -> bool:
        at = self._position if record is None else record
        for c in (i, j):
            state = self._signals[f"feature:{self.feature_names[c]}"]
            if state.last_crossing_record is not None and not self._cooled_down(state, at, now):
                return True
        return False

    def _signal_crossed(self, signal: str, record: int, now: float, detector: str,
                        statistic: float, detail: str, alarms: list[DriftAlarm]) -> None:
        state = self._signals[signal]
        if self._cooled_down(state, record, now):
            alarm = DriftAlarm(signal, state.kind, detector, now, record, statistic, detail)
            alarms.append(alarm)
            state.last_alarm_at = now
            state.alarms += 1
        state.last_crossing_record = record
        state.last_crossing_at = now

    def _cooled_down(self, state: _SignalState, record: int, now: float) -> bool:
        if state.last_crossing_record is None or state.last_crossing_at is None:
            return True
        return (record - state.last_crossing_record >= self.config.cooldown_records
                and now - state.last_crossing_at >= self.config.cooldown_seconds)

    def _write_rows(self, values: FloatArray, flags: NDArray[np.bool_],
                    missing: BoolArray | None) -> None:
        n = values.shape[0]
        size = self._ring.shape[0]
        if n >= size:
            values, flags = values[-size:], flags[-size:]
            missing = None if missing is None else missing[-size:]
            n = size
        pos = self._ring_pos
        end = pos + n
        if end <= size:
            self._ring[pos:end] = values
            self._ring_flags[pos:end] = flags
        else:
            split = size - pos
            self._ring[pos:] = values[:split]
            self._ring[: end - size] = values[split:]
            self._ring_flags[pos:] = flags[:split]
            self._ring_flags[: end - size] = flags[split:]
        self._ring_pos = end % size
        self._ring_fill = min(self._ring_fill + n, size)
        # The missing ring also receives rejected records, so it has its own position.
        mpos = self._miss_pos
        mend = mpos + n
        mvals = np.zeros(n, dtype=bool) if missing is None else missing
        if mend <= size:
            self._miss_ring[mpos:mend] = mvals
        else:
            split = size - mpos
            self._miss_ring[mpos:] = mvals[:split]
            self._miss_ring[: mend - size] = mvals[split:]
        self._miss_pos = mend % size
        self._miss_fill = min(self._miss_fill + n, size)

    # ---- windowed tests

    def _cusum_level(self, signal: str) -> float | None:
        engine = self._engine
        if engine is None or signal not in engine.signal_streams:
            return None
        return float(np.max(self._cusum[engine.signal_streams[signal]]))

    def _base_result(self, signal: str, kind: str, method: str) -> dict[str, Any]:
        return {"name": signal, "kind": kind, "method": method, "statistic": None,
                "p_value": None, "p_adjusted": None, "effect_size": None, "psi": None,
                "window_size": 0, "reference_size": 0, "reference_source": "none",
                "missing": 0, "detail": ""}

    def _no_reference_detail(self) -> str:
        if self._baseline is not None:
            return f"collecting baseline ({self._baseline.filled}/{self._baseline.size})"
        return "no reference"

    def _distribution_test(self, column: int, dist: Distribution | None,
                           window: FloatArray) -> dict[str, Any]:
        d = len(self.feature_names)
        kind = "score" if column == d else "feature"
        signal = "score" if column == d else f"feature:{self.feature_names[column]}"
        r = self._base_result("score" if column == d else self.feature_names[column], kind, "ks")
        r["signal"] = signal
        finite = np.isfinite(window)
        r["missing"] = int(window.size - np.count_nonzero(finite))
        if dist is None:
            r["detail"] = self._no_reference_detail()
            return r
        grid = dist.resampled(self.config.reference_levels).quantiles
        values = np.sort(window[finite])
        r.update(window_size=int(values.size), reference_size=dist.n,
                 reference_source=dist.source)
        if values.size < self.config.min_window_records:
            r["detail"] = f"{values.size} values, need {self.config.min_window_records}"
            return r
        points = np.concatenate([values, grid])
        gap = (np.searchsorted(values, points, side="right") / values.size
               - np.searchsorted(grid, points, side="right") / grid.size)
        ks = float(np.max(np.abs(gap)))
        n_eff = values.size * dist.n / (values.size + dist.n)
        root = math.sqrt(n_eff)
        p = float(special.kolmogorov((root + 0.12 + 0.11 / root) * ks))
        window_q = np.quantile(values, _levels(grid.size), method="inverted_cdf")
        effect = float(np.mean(np.abs(window_q - grid)) / dist.scale)
        r.update(statistic=ks, p_value=min(max(p, 0.0), 1.0), effect_size=effect,
                 psi=_psi(grid, values))
        return r

    def _rate_test(self, name: str, ref: Rate | None, events: int, n: int) -> dict[str, Any]:
        r = self._base_result(name, name, "fisher_exact")
        r["signal"] = name
        if ref is None:
            r["detail"] = self._no_reference_detail()
            return r
        r.update(window_size=n, reference_size=ref.n, reference_source=ref.source)
        if n < self.config.min_window_records:
            r["detail"] = f"{n} records, need {self.config.min_window_records}"
            return r
        ref_events = round(ref.events)
        table = [[events, n - events], [ref_events, ref.n - ref_events]]
        p = float(stats.fisher_exact(table).pvalue)
        p0 = max(ref.rate, 0.5 / ref.n)
        rate = events / n
        effect = abs(rate - ref.rate) / math.sqrt(p0 * (1.0 - p0))
        eps = 1e-4
        pw = np.clip(np.asarray([rate, 1.0 - rate]), eps, None)
        pr = np.clip(np.asarray([ref.rate, 1.0 - ref.rate]), eps, None)
        r.update(statistic=rate, p_value=min(max(p, 0.0), 1.0), effect_size=effect,
                 psi=float(np.sum((pw - pr) * np.log(pw / pr))),
                 detail=f"window rate {rate:.4g}, reference {ref.rate:.4g}")
        return r

    def _correlation_test(self, window: FloatArray, engine: _Engine | None,
                          now: float) -> dict[str, Any]:
        r = self._base_result("correlation", "correlation", "fisher_z")
        r["signal"] = "correlation"
        ref = self._reference.correlation
        if ref is None or engine is None or engine.pair_i.size == 0:
            r["detail"] = (self._no_reference_detail() if ref is None
                           else "no pair of non-constant features")
            return r
        r.update(reference_size=ref.n, reference_source=ref.source)
        d = len(self.feature_names)
        rows = window[np.isfinite(window[:, :d]).all(axis=1)]
        r["window_size"] = int(rows.shape[0])
        if rows.shape[0] < self.config.min_window_records:
            r["detail"] = f"{rows.shape[0]} complete rows, need {self.config.min_window_records}"
            return r
        filled = rows.copy()
        filled[:, d] = np.where(np.isfinite(filled[:, d]), filled[:, d], engine.transform.fill[d])
        u = engine.uniform_scores(filled)[:, :d]
        u = (u - u.mean(axis=0)) / np.maximum(u.std(axis=0), 1e-12)
        # Pairs with a drifting member are not judged: their rank correlation is not comparable.
        usable = np.flatnonzero([not self._marginal_active(int(i), int(j), now)
                                 for i, j in zip(engine.pair_i, engine.pair_j, strict=True)])
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
        p_holm = _holm(p)
        worst = int(np.argmin(p_holm))
        i, j = pi[worst], pj[worst]
        r.update(statistic=float(z[worst]), p_value=float(p_holm[worst]),
                 effect_size=float(abs(corr_w[worst] - corr_r[worst])),
                 detail=(f"{self.feature_names[i]}~{self.feature_names[j]}: "
                         f"{corr_r[worst]:.3f} -> {corr_w[worst]:.3f}"))
        return r

    def _judge(self, r: dict[str, Any], now: float) -> SignalResult:
        signal = r.pop("signal")
        state = self._signals[signal]
        cfg = self.config
        status = "insufficient_data"
        p_adj = r["p_adjusted"]
        if p_adj is not None:
            significant = p_adj < cfg.alpha
            if significant and r["effect_size"] >= cfg.drift_threshold:
                status = "drift"
                alarms: list[DriftAlarm] = []
                self._signal_crossed(signal, self._position, now, "window", r["effect_size"],
                                     f"{r['method']} p_adj={p_adj:.3g} "
                                     f"effect={r['effect_size']:.3g}", alarms)
                self._pending.extend(alarms)
            else:
                status = "warning" if significant else "ok"
        if status != "drift" and state.last_crossing_record is not None and not (
                self._cooled_down(state, self._position, now)):
            status = "drift"
            r["detail"] = (r["detail"] + "; " if r["detail"] else "") + (
                f"streaming alarm, last crossing at record {state.last_crossing_record}")
        return SignalResult(status=status, cusum_level=self._cusum_level(signal), **r)

    def _latency_result(self) -> SignalResult:
        ref = self._reference.latency
        lat = self._lat_ring[: self._lat_fill]
        base: dict[str, Any] = {"name": "latency", "kind": "latency", "method": "ks", "statistic": None,
                "p_value": None, "p_adjusted": None, "effect_size": None, "psi": None,
                "window_size": int(lat.size), "reference_size": 0, "reference_source": "none",
                "missing": 0, "cusum_level": None}
        if ref is None:
            return SignalResult(status="insufficient_data", detail=self._no_reference_detail(),
                                **base)
        base.update(reference_size=ref.n, reference_source=ref.source)
        if lat.size < 20:
            return SignalResult(status="insufficient_data", detail=f"{lat.size} requests",
                                **base)
        values = np.sort(lat)
        grid = ref.quantiles
        points = np.concatenate([values, grid])
        ks = float(np.max(np.abs(np.searchsorted(values, points, side="right") / values.size
                                 - np.searchsorted(grid, points, side="right") / grid.size)))
        n_eff = values.size * ref.n / (values.size + ref.n)
        root = math.sqrt(n_eff)
        p = float(special.kolmogorov((root + 0.12 + 0.11 / root) * ks))
        p99_w = float(np.quantile(values, 0.99))
        p99_r = float(np.quantile(grid, 0.99))
        ratio = p99_w / p99_r if p99_r > 0 else math.inf
        degraded = p < self.config.alpha and ratio >= self.config.latency_warn_ratio
        base.update(statistic=ks, p_value=p, effect_size=ratio)
        return SignalResult(status="warning" if degraded else "ok",
                            detail=f"p99 {p99_w:.4g}s vs reference {p99_r:.4g}s "
                                   "(operational signal, never data drift)", **base)


def _holm(p: FloatArray) -> FloatArray:
    """Holm's step-down adjusted p-values (family-wise error control)."""
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adjusted
    return out


def _psi(grid: FloatArray, values: FloatArray, bins: int = 10) -> float:
    """Population stability index over the reference's deciles (reported for readability)."""
    edges = np.unique(grid[(np.arange(1, bins) * grid.size) // bins])
    ref_counts = np.bincount(np.searchsorted(edges, grid, side="right"), minlength=edges.size + 1)
    win_counts = np.bincount(np.searchsorted(edges, values, side="right"),
                             minlength=edges.size + 1)
    eps = 1e-4
    pr = np.clip(ref_counts / grid.size, eps, None)
    pw = np.clip(win_counts / values.size, eps, None)
    return float(np.sum((pw - pr) * np.log(pw / pr)))


__all__ = [
    "BaselineCollector",
    "Correlation",
    "Distribution",
    "DriftAlarm",
    "DriftConfig",
    "DriftDetector",
    "DriftReport",
    "Rate",
    "Reference",
    "SignalResult",
]
