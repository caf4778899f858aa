"""The streaming engine: the CUSUMs compiled for one reference.

Every scored record becomes one statistic vector: per column (the features, then the anomaly
score) the standardised normal score ``y`` and ``y^2``, per pair of columns the product of
their standardised uniform scores, per column whether it carries another value than its
dominant one, then the anomaly flag, the missing flag and the constant 1. Each CUSUM stream reads one entry of that vector and adds
the log-likelihood ratio ``A * stat + B * weight`` of its alternative (the weight is 1, or
"carries a value"); the streams are, in this order,
the marginal ones (mean and spread, up and down, per column with more than two values), the
correlation pairs (up and down) and the rate ones (per 0/1 feature its rate up and down, the
anomaly rate up and down, invalid rate up). A 0/1 feature is a rate, watched as one (a
Bernoulli CUSUM against the reference's exact count); a clock feature is the season's key
(seasonal.py) and watched by none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from modeld.core._forest import Increments
from modeld.core.drift.arrays import BoolArray, FloatArray, IntArray
from modeld.core.drift.calibration import (
    bernoulli_lr,
    false_alarm_budget,
    marginal_thresholds,
    pair_coefficients,
    pair_thresholds,
    rate_thresholds,
)
from modeld.core.drift.config import DriftConfig
from modeld.core.drift.ranks import ColumnTables, RankTransform, column_tables
from modeld.core.drift.reference import Correlation, Distribution, Rate, Reference
from modeld.core.drift.seasonal import clock_columns

# A rate stream's null: the reference's events and trials, and its increment A * x + B.
RateStream = tuple[float, int, float, float]


@dataclass(slots=True)
class _Streams:
    """The streams of an engine as they are designed, one list entry per stream."""

    keys: list[str] = field(default_factory=list)
    signal_of: list[str] = field(default_factory=list)
    stat_index: list[int] = field(default_factory=list)
    coef_a: list[float] = field(default_factory=list)
    coef_b: list[float] = field(default_factory=list)
    # The statistic columns a stream reads; a non-finite value in either zeroes its increment.
    # ``columns`` (one past the score) stands for "no column".
    col1: list[int] = field(default_factory=list)
    col2: list[int] = field(default_factory=list)
    # The statistic B multiplies: the constant 1, or a column's "carries a value" indicator.
    b_stat: list[int] = field(default_factory=list)
    one: int = -1

    def add(self, key: str, signal: str, stat: int, a: float, b: float, col1: int,
            col2: int, b_stat: int | None = None) -> None:
        self.b_stat.append(self.one if b_stat is None else b_stat)
        self.keys.append(key)
        self.signal_of.append(signal)
        self.stat_index.append(stat)
        self.coef_a.append(a)
        self.coef_b.append(b)
        self.col1.append(col1)
        self.col2.append(col2)


@dataclass(slots=True)
class _MarginalNulls:
    """Per marginal stream: its increment for each mid-rank code, the codes' null pmf and the
    size of the reference sample (what its threshold is calibrated from)."""

    values: list[FloatArray] = field(default_factory=list)
    pmf: list[FloatArray] = field(default_factory=list)
    n: list[float] = field(default_factory=list)


class Engine:
    """The CUSUMs compiled for one reference: tables, stream coefficients and thresholds.

    Built by ``DriftDetector`` (on its caller's thread, under its lock) whenever the reference
    changes; deterministic, so a restart rebuilds the same thresholds. Holds no detection state
    (the CUSUM values live in the detector).
    """

    def __init__(self, reference: Reference, config: DriftConfig) -> None:
        names = reference.feature_names
        columns = len(names) + 1  # features, then the anomaly score
        self.columns = columns
        self.correlation_n = reference.correlation.n if reference.correlation else 1
        grids, present, sizes, counts = _reference_grids(
            [*reference.features, reference.scores], config.reference_levels)
        self.transform = RankTransform(grids)
        tables = column_tables(grids, present, counts)
        self.utable = self.transform.flat_table(tables.uniform)
        clock = np.asarray([*clock_columns(names), False], dtype=bool)
        self.binary_events: list[float | None] = [
            None if dist is None or clock[c] else dist.binary_events()
            for c, dist in enumerate(reference.features)]
        binary = np.asarray([e is not None for e in self.binary_events] + [False], dtype=bool)
        # A constant column has no spread to watch; a 0/1 one is a rate; a clock is the key.
        enabled = present & (tables.normal_sd > 1e-9) & ~binary & ~clock
        # A column whose reference mostly holds one value (0 for "no signal in this line")
        # is two signals: how often it carries another value, and the distribution of those.
        self.atoms = _dominant_codes(tables.pmf, enabled)
        normal, carried = _conditional_scores(tables, self.atoms)
        self._normal, self._grids = normal, grids
        self.table = self.transform.flat_table(normal)
        self.ctable = self.transform.flat_table(carried)
        # The statistic vector: y, y^2, the pair products, "carries a value", the flag, the
        # missing flag and the constant 1.
        self.carried_stat = 2 * columns + columns * columns
        flag_stat = self.carried_stat + columns

        streams = _Streams(one=flag_stat + 2)
        marginal = _add_marginal_streams(streams, names, enabled, normal, carried, tables.pmf,
                                         sizes, self.carried_stat, config)
        self.pair_i, self.pair_j, self.pair_r = _watched_pairs(reference.correlation, enabled,
                                                               config.max_correlation_pairs)
        self._add_pair_streams(streams, names, config.correlation_shift_design)
        rates = self._add_event_streams(streams, reference, config)
        shares = np.asarray([float(d.share_rows or d.n) if d is not None else 1.0
                             for d in [*reference.features, reference.scores]])
        rates += self._add_carried_streams(streams, reference, tables.pmf, shares, config)
        more, self.invalid_stream = _add_rate_streams(streams, reference, flag_stat, columns,
                                                      config)
        rates += more
        self.keys = tuple(streams.keys)
        self.signal_of = tuple(streams.signal_of)
        self.stat_index = np.asarray(streams.stat_index, dtype=np.intp)
        self.col1 = np.asarray(streams.col1, dtype=np.intp)
        self.col2 = np.asarray(streams.col2, dtype=np.intp)
        self.b_index = np.asarray(streams.b_stat, dtype=np.intp)

        self.thresholds = self._calibrate(marginal, rates, config)
        # Every CUSUM is kept in units of its own threshold, so that all cross at 1.0.
        self.coef_a = np.asarray(streams.coef_a) / self.thresholds
        self.coef_b = np.asarray(streams.coef_b) / self.thresholds
        self.invalid_increment = (float(self.coef_a[self.invalid_stream]
                                        + self.coef_b[self.invalid_stream])
                                  if self.invalid_stream >= 0 else 0.0)
        self.signal_streams = _streams_by_signal(self.signal_of)
        self._increments = Increments(self.table, self.utable, self.ctable, columns,
                                      self.stat_index, self.b_index, self.coef_a, self.coef_b)

    def _add_pair_streams(self, streams: _Streams, names: tuple[str, ...],
                          shift_design: float) -> None:
        """Correlation up/down on the product of two standardised uniform scores."""
        columns = self.columns
        for i, j, r in zip(self.pair_i.tolist(), self.pair_j.tolist(), self.pair_r.tolist(),
                           strict=True):
            for sign, suffix in ((1.0, "corr+"), (-1.0, "corr-")):
                a, b = pair_coefficients(r, shift_design, sign)
                streams.add(f"correlation:{names[i]}~{names[j]}:{suffix}", "correlation",
                            2 * columns + i * columns + j, a, b, i, j)

    def _add_event_streams(self, streams: _Streams, reference: Reference,
                           config: DriftConfig) -> list[RateStream]:
        """Per 0/1 feature: its rate up (and down, when the reference saw it at all), a
        Bernoulli likelihood ratio against the reference's exact count (Jeffreys-smoothed, so
        that a flag the reference never raised is watched too)."""
        rates: list[RateStream] = []
        for c, events in enumerate(self.binary_events):
            dist = reference.features[c]
            if events is None or dist is None:
                continue
            name = f"feature:{reference.feature_names[c]}"
            p0 = (events + 0.5) / (dist.n + 1.0)
            designs = [("rate+", min(p0 * config.rate_ratio_design, (1.0 + p0) / 2.0))]
            if events >= 1:
                designs.append(("rate-", p0 / config.rate_ratio_design))
            # The stream reads the column's normal score y, which is affine in a 0/1 value x:
            # A x + B = A (y - y0) / (y1 - y0) + B.
            y0, y1 = (float(self._normal[c, code]) for code in self._codes_of(c, (0.0, 1.0)))
            for suffix, p1 in designs:
                a, b = bernoulli_lr(p0, p1)
                scale = a / (y1 - y0)
                streams.add(f"{name}:{suffix}", name, c, scale, b - scale * y0, c,
                            self.columns)
                rates.append((events, dist.n, a, b))
        return rates

    def _codes_of(self, column: int, values: tuple[float, ...]) -> list[int]:
        grid = self._grids[column]
        return [int(np.searchsorted(grid, v, side="left") + np.searchsorted(grid, v, side="right"))
                for v in values]

    def _add_carried_streams(self, streams: _Streams, reference: Reference, pmf: FloatArray,
                             sizes: FloatArray, config: DriftConfig) -> list[RateStream]:
        """Per column with a dominant value: how often a line carries another value, up and
        down (Bernoulli, like a 0/1 feature), against the share in ``sizes`` rows."""
        rates: list[RateStream] = []
        names = [*(f"feature:{n}" for n in reference.feature_names), "score"]
        for c, atom in enumerate(self.atoms.tolist()):
            if atom < 0:
                continue
            n = float(sizes[c])
            events = round((1.0 - float(pmf[c, atom])) * n)
            p0 = (events + 0.5) / (n + 1.0)
            for suffix, p1 in (("carried+", min(p0 * config.rate_ratio_design, (1.0 + p0) / 2)),
                               ("carried-", p0 / config.rate_ratio_design)):
                a, b = bernoulli_lr(p0, p1)
                streams.add(f"{names[c]}:{suffix}", names[c], self.carried_stat + c, a, b, c,
                            self.columns)
                rates.append((float(events), int(n), a, b))
        return rates

    def _calibrate(self, marginal: _MarginalNulls, rates: list[RateStream],
                   config: DriftConfig) -> FloatArray:
        """Thresholds in stream order: split the false-alarm budget, calibrate each group."""
        pairs = self.pair_r.size
        marginal_rate, pair_rate = false_alarm_budget(
            len(marginal.values) + len(rates), 2 * pairs, config.correlation_budget_share,
            config.target_arl0_records)
        thresholds: list[FloatArray] = []
        if marginal.values:
            thresholds.append(marginal_thresholds(np.stack(marginal.values),
                                                  np.stack(marginal.pmf),
                                                  np.asarray(marginal.n), marginal_rate))
        if pairs:
            thresholds.append(pair_thresholds(self.pair_r, self.correlation_n,
                                              config.correlation_shift_design, pair_rate))
        if rates:
            thresholds.append(rate_thresholds(rates, marginal_rate))
        return np.concatenate(thresholds) if thresholds else np.zeros(0)

    def uniform_scores(self, values: FloatArray) -> FloatArray:
        """Standardised uniform (rank) scores (n, F) of finite values (n, F)."""
        return self.utable.take(self.transform.flat_codes(values))

    def increments(self, values: FloatArray, flags: NDArray[np.bool_],
                   missing: BoolArray | None, finite: BoolArray | None) -> FloatArray:
        """CUSUM increments (n, streams), in threshold units, for finite ``values`` (n, F):
        the compiled ``Increments`` (core/_forest.c) from the values' mid-rank codes.

        ``finite`` marks which original values were finite; streams that read a non-finite value
        get a zero increment for that record (the value is counted, not judged).
        """
        inc = np.empty((values.shape[0], self.stat_index.size))
        self._increments.add(self.transform.flat_codes(values),
                             np.ascontiguousarray(flags, dtype=bool),
                             None if missing is None else np.ascontiguousarray(missing,
                                                                               dtype=bool),
                             inc)
        if finite is not None:
            inc[self._reads_non_finite(finite, self.col1, self.col2)] = 0.0
        return inc

    def stream_increments(self, values: FloatArray, finite: BoolArray, k: int) -> FloatArray:
        """``increments(values, no flags, None, finite)[:, k]``, to the bit, computing stream
        ``k`` only: a crossing's description replays one stream over the whole window
        (every stream over 5,000 records of 20 features is 4 ms)."""
        inc = np.empty(values.shape[0])
        self._increments.stream(self.transform.flat_codes(values), k, inc)
        inc[self._reads_non_finite(finite, self.col1[k:k + 1], self.col2[k:k + 1])[:, 0]] = 0.0
        return inc

    def _reads_non_finite(self, finite: BoolArray, col1: IntArray, col2: IntArray
                          ) -> BoolArray:
        """(n, streams): whether the stream reading columns ``col1``/``col2`` (``columns``:
        none) reads a value that was not finite in each record."""
        n, cols = finite.shape
        bad = np.ones((n, cols + 1), dtype=bool)
        np.logical_not(finite, out=bad[:, :cols])
        bad[:, cols] = False
        return np.asarray(bad.take(col1, axis=1) | bad.take(col2, axis=1), dtype=bool)


def _reference_grids(dists: list[Distribution | None], levels: int
                     ) -> tuple[FloatArray, BoolArray, FloatArray, list[FloatArray | None]]:
    """Per column: its reference quantiles at ``levels`` points (zeros when it has none),
    whether it has a reference, the reference's sample size and its code counts (None when
    it has none at these levels)."""
    grids = np.zeros((len(dists), levels))
    present = np.zeros(len(dists), dtype=bool)
    sizes = np.ones(len(dists))
    counts: list[FloatArray | None] = [None] * len(dists)
    for c, dist in enumerate(dists):
        if dist is not None:
            at_levels = dist.resampled(levels)
            grids[c] = at_levels.quantiles
            present[c] = True
            sizes[c] = dist.n
            counts[c] = at_levels.code_counts
    return grids, present, sizes, counts


def _dominant_codes(pmf: FloatArray, enabled: BoolArray) -> IntArray:
    """Per column, the code holding at least half of its reference (when other values occur
    at all), else -1."""
    top = pmf.argmax(axis=1)
    share = pmf.max(axis=1)
    atoms = np.where(enabled & (share >= 0.5) & (share < 1.0), top, -1)
    return atoms.astype(np.intp)


def _conditional_scores(tables: ColumnTables, atoms: IntArray) -> tuple[FloatArray, FloatArray]:
    """The normal-score table, with each column that has a dominant code scored on the
    values it carries beside it (standardised on them, 0 at the dominant code), and the
    "carries a value" table (0 at the dominant code, else 1)."""
    normal = tables.normal.copy()
    carried = np.ones_like(normal)
    for c, atom in enumerate(atoms.tolist()):
        if atom < 0:
            continue
        pmf = tables.pmf[c].copy()
        pmf[atom] = 0.0
        pmf /= pmf.sum()
        y = tables.normal[c]
        mean = float(pmf @ y)
        sd = math.sqrt(max(float(pmf @ (y - mean) ** 2), 0.0))
        normal[c] = (y - mean) / (sd if sd > 1e-9 else 1.0)
        normal[c, atom] = 0.0
        carried[c, atom] = 0.0
    return normal, carried


def _add_marginal_streams(streams: _Streams, names: tuple[str, ...], enabled: BoolArray,
                          normal: FloatArray, carried: FloatArray, pmf: FloatArray,
                          sizes: FloatArray, carried_stat: int,
                          config: DriftConfig) -> _MarginalNulls:
    """Mean up/down on the standardised normal score y, spread up/down on y^2, per column;
    for a column with a dominant value, on the values it carries beside it (B is then
    multiplied by "carries a value", so that a line at the dominant value adds nothing)."""
    columns = len(names) + 1
    column_names = [*(f"feature:{n}" for n in names), "score"]
    delta = config.mean_shift_design
    ratio = config.variance_ratio_design
    designs = (
        ("mean+", 0, delta, -delta * delta / 2.0),
        ("mean-", 0, -delta, -delta * delta / 2.0),
        ("spread+", 1, 0.5 * (1.0 - 1.0 / ratio), -0.5 * math.log(ratio)),
        ("spread-", 1, 0.5 * (1.0 - ratio), 0.5 * math.log(ratio)),
    )
    nulls = _MarginalNulls()
    for col in map(int, np.flatnonzero(enabled)):
        y = normal[col]
        conditional = bool(np.any(carried[col] == 0.0))
        weight = carried[col] if conditional else np.ones_like(y)
        for suffix, power, a, b in designs:
            streams.add(f"{column_names[col]}:{suffix}", column_names[col],
                        col + power * columns, a, b, col, columns,
                        carried_stat + col if conditional else None)
            nulls.values.append(a * (y if power == 0 else y * y) + b * weight)
            nulls.pmf.append(pmf[col])
            nulls.n.append(float(sizes[col]))
    return nulls


def _watched_pairs(correlation: Correlation | None, enabled: BoolArray,
                   max_pairs: int) -> tuple[IntArray, IntArray, FloatArray]:
    """The feature pairs (i < j, both non-constant) whose correlation is watched and their
    reference correlations; the most correlated ``max_pairs`` when there are more."""
    pairs: list[tuple[int, int]] = []
    r: list[float] = []
    if correlation is not None and max_pairs > 0:
        matrix = correlation.matrix
        d = enabled.size - 1  # the last column is the score
        pairs = [(i, j) for i in range(d) for j in range(i + 1, d) if enabled[i] and enabled[j]]
        if len(pairs) > max_pairs:
            pairs.sort(key=lambda ij: -abs(matrix[ij[0], ij[1]]))
            pairs = sorted(pairs[:max_pairs])
        r = [float(np.clip(matrix[i, j], -0.95, 0.95)) for i, j in pairs]
    return (np.asarray([i for i, _ in pairs], dtype=np.intp),
            np.asarray([j for _, j in pairs], dtype=np.intp), np.asarray(r))


def _add_rate_streams(streams: _Streams, reference: Reference, flag_stat: int, columns: int,
                      config: DriftConfig) -> tuple[list[RateStream], int]:
    """Bernoulli likelihood ratios against the reference rates: the anomaly rate up and down,
    the invalid-input rate up. Returns the rate streams' nulls and the invalid stream's index
    (-1 without an invalid-rate reference)."""
    rates: list[RateStream] = []

    def add(key: str, signal: str, stat: int, ref: Rate, p0: float, p1: float) -> None:
        a, b = bernoulli_lr(p0, p1)
        streams.add(key, signal, stat, a, b, columns, columns)
        rates.append((ref.events, ref.n, a, b))

    if reference.anomaly_rate is not None:
        ref = reference.anomaly_rate
        p0 = (ref.events + 0.5) / (ref.n + 1.0)
        add("anomaly_rate:rate+", "anomaly_rate", flag_stat, ref, p0,
            min(p0 * config.rate_ratio_design, (1.0 + p0) / 2.0))
        add("anomaly_rate:rate-", "anomaly_rate", flag_stat, ref, p0,
            p0 / config.rate_ratio_design)
    invalid_stream = -1
    if reference.invalid_rate is not None:
        ref = reference.invalid_rate
        p0 = (ref.events + 0.5) / (ref.n + 1.0)
        invalid_stream = len(streams.keys)
        add("invalid_rate:rate+", "invalid_rate", flag_stat + 1, ref, p0,
            min(max(p0 * config.rate_ratio_design, p0 + config.invalid_rate_design),
                (1.0 + p0) / 2.0))
    return rates, invalid_stream


def _streams_by_signal(signal_of: tuple[str, ...]) -> dict[str, IntArray]:
    """The indices of each signal's streams."""
    by_signal: dict[str, list[int]] = {}
    for k, signal in enumerate(signal_of):
        by_signal.setdefault(signal, []).append(k)
    return {signal: np.asarray(ks, dtype=np.intp) for signal, ks in by_signal.items()}


__all__ = ["Engine"]
