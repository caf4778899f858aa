"""What a model version's inputs and outputs looked like when it was judged good.

``Reference`` is built from an artifact's ``reference.npz``, from the ``reference`` summary in
``metadata.json`` or by ``BaselineCollector`` from the first records a version scored. Its parts
(``Distribution``, ``Rate``, ``Correlation``) are frozen and JSON-ready.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from modeld.core.drift.arrays import FloatArray, finite_list, json_list
from modeld.core.drift.ranks import RankTransform, column_tables, quantile_levels
from modeld.core.drift.seasonal import SeasonKey, season_key
from modeld.core.errors import ArtifactInvalid

REFERENCE_FORMAT: Final = "modeld.reference/1"
RATE_PRIOR_RECORDS: Final = 1000


def _frozen(array: NDArray[Any]) -> NDArray[Any]:
    array = np.array(array, dtype=np.float64, copy=True)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, slots=True)
class Distribution:
    """A one-dimensional reference distribution: its quantiles at levels ``(i + 0.5) / Q``.

    ``n`` is the size of the sample it summarises; the tests use it as the reference's sample
    size, so a summary with a small ``n`` is treated more cautiously than a large one.
    ``code_counts`` (built from a sample, absent from a summary) counts the sample's values by
    their mid-rank code against the quantiles (see ranks.py): the exact null distribution of
    the codes, ties included. WiFi features are mostly flags and small codes, where one value
    holds most of the mass and interpolating between quantiles would misplace it.
    """

    quantiles: FloatArray
    n: int
    source: str
    code_counts: FloatArray | None = None
    # The rows behind the share of the dominant value when it is not ``n``: a part of the day
    # that takes the whole reference's other values (``_part_distribution``).
    share_rows: int | None = None

    @classmethod
    def from_sample(cls, values: FloatArray, *, levels: int, source: str) -> Distribution | None:
        """The quantiles of the finite values (``inverted_cdf``: real data values, so ties stay ties)."""
        finite = np.asarray(values, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        if finite.size == 0:
            return None
        quantiles = np.quantile(finite, quantile_levels(levels), method="inverted_cdf")
        codes = (np.searchsorted(quantiles, finite, side="left")
                 + np.searchsorted(quantiles, finite, side="right"))
        counts = np.bincount(codes, minlength=2 * levels + 1).astype(np.float64)
        return cls(_frozen(quantiles), int(finite.size), source, _frozen(counts))

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
        given = quantile_levels(q.size) if at is None else np.asarray(at, dtype=np.float64)
        if given.shape != q.shape or np.any(np.diff(given) <= 0) or given[0] <= 0 or given[-1] >= 1:
            raise ValueError("levels must be increasing numbers in (0, 1), one per quantile")
        if n < 1:
            raise ValueError("n must be at least 1")
        resampled = q if at is None and q.size == levels else np.interp(
            quantile_levels(levels), given, q)
        return cls(_frozen(resampled), int(n), source)

    def resampled(self, levels: int) -> Distribution:
        if self.quantiles.size == levels:
            return self
        return Distribution.from_quantiles(self.quantiles, n=self.n, source=self.source,
                                           levels=levels)

    def binary_events(self) -> float | None:
        """How many of the sample's values were 1 when every value was 0 or 1, else None.

        From ``code_counts`` when present (exact), else from the quantiles (a summary)."""
        q = self.quantiles
        if self.code_counts is None:
            if not np.all((q == 0.0) | (q == 1.0)):
                return None
            return float(np.count_nonzero(q == 1.0)) / q.size * self.n
        code = {v: int(np.searchsorted(q, v, side="left") + np.searchsorted(q, v, side="right"))
                for v in (0.0, 1.0)}
        held = np.flatnonzero(self.code_counts)
        if not set(held.tolist()) <= set(code.values()):
            return None
        return float(self.code_counts[code[1.0]]) if code[1.0] != code[0.0] else (
            float(self.n) if q[0] == 1.0 else 0.0)

    @property
    def scale(self) -> float:
        """The reference's standard deviation; 1.0 for a constant reference (absolute units)."""
        sd = float(np.std(self.quantiles))
        return sd if sd > 1e-12 else 1.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"quantiles": finite_list(self.quantiles), "n": self.n,
                               "source": self.source}
        if self.code_counts is not None:
            held = np.flatnonzero(self.code_counts)
            out["code_counts"] = [[int(c), int(self.code_counts[c])] for c in held]
        if self.share_rows is not None:
            out["share_rows"] = self.share_rows
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Distribution:
        q = np.asarray(data["quantiles"], dtype=np.float64)
        counts = None
        if data.get("code_counts") is not None:
            counts = np.zeros(2 * q.size + 1)
            for code, count in data["code_counts"]:
                counts[int(code)] = float(count)
            counts = _frozen(counts)
        share_rows = data.get("share_rows")
        return cls(_frozen(q), int(data["n"]), str(data.get("source", "summary")), counts,
                   None if share_rows is None else int(share_rows))


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
        return {"matrix": [finite_list(row) for row in self.matrix], "n": self.n,
                "source": self.source}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Correlation:
        matrix = np.asarray(data["matrix"], dtype=np.float64)
        return cls(_frozen(matrix), int(data["n"]), str(data.get("source", "summary")))


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
    # The reference per part of the day (seasonal.py), for a model that sees the hour:
    # (its slots, its reference).
    seasons: tuple[tuple[tuple[int, ...], Reference], ...] = ()

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
        seasonal: bool = True,
    ) -> Reference:
        """From raw reference data; rows with NaN are kept and each column uses its finite values.

        With ``seasonal`` and an hour among the features, each season with at least
        ``MIN_SEASON_ROWS`` rows also gets a reference of its own (``seasons``)."""
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
        whole = cls(names, dists, score_dist, correlation, anomaly, invalid, latency)
        key = season_key(names) if seasonal else None
        if key is None:
            return whole
        return dataclasses.replace(whole, seasons=_seasons(whole, key, matrix, scores, flags,
                                                           source, levels))

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
        # A season keeps its own features and scores; the rates and latency it lacks come from
        # the whole of ``other`` (a baseline is too short to have seasons).
        seasons = tuple((slot, part.completed_by(
            Reference(other.feature_names, part.features, part.scores, part.correlation,
                      other.anomaly_rate, other.invalid_rate, other.latency)))
            for slot, part in self.seasons)
        return Reference(merged.feature_names, merged.features, merged.scores,
                         self.correlation or other.correlation, merged.anomaly_rate,
                         merged.invalid_rate, merged.latency, seasons)

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
            "seasons": [[list(slots), part.to_dict()] for slots, part in self.seasons],
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
            tuple((tuple(int(s) for s in slots), Reference.from_dict(part))
                  for slots, part in data.get("seasons", [])),
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


def _seasons(whole: Reference, key: SeasonKey, matrix: FloatArray, scores: FloatArray | None,
             flags: NDArray[np.bool_] | None, source: str,
             levels: int) -> tuple[tuple[tuple[int, ...], Reference], ...]:
    """The reference of each part of the day. A signal whose reference shows no daily cycle
    (a chi-square test of homogeneity across the parts, of its values or of its deciles, at
    5%) keeps the whole reference in every part: a part holds a fraction of the rows, and the
    smaller a reference, the later a CUSUM calibrated on it can tell a change."""
    slots = key.of_rows(matrix)
    parts = key.parts(slots)
    if not parts:
        return ()
    columns = [matrix[:, c] for c in range(matrix.shape[1])]
    if scores is not None:
        columns.append(np.asarray(scores, dtype=np.float64))
    if flags is not None:
        columns.append(np.asarray(flags, dtype=np.float64))
    masks = [np.isin(slots, part) for part in parts]
    part_of = np.full(slots.size, -1)
    for p, rows in enumerate(masks):
        part_of[rows] = p
    cyclic = [_cyclic(values, part_of, len(parts)) for values in columns]
    d = matrix.shape[1]
    out: list[tuple[tuple[int, ...], Reference]] = []
    for part, rows in zip(parts, masks, strict=True):
        own = Reference.from_arrays(
            whole.feature_names, matrix[rows],
            None if scores is None else np.asarray(scores)[rows],
            flags=None if flags is None else np.asarray(flags, dtype=bool)[rows],
            source=source, levels=levels, seasonal=False)
        features = tuple(
            _part_distribution(matrix[:, c], rows, mine, theirs, levels) if cyclic[c] else theirs
            for c, (mine, theirs) in enumerate(zip(own.features, whole.features, strict=True)))
        score = own.scores if scores is not None and cyclic[d] else whole.scores
        anomaly = whole.anomaly_rate
        if own.anomaly_rate is not None and anomaly is not None and cyclic[-1]:
            # A part's flags are few (2% of a few hundred rows): its rate is shrunk towards
            # the whole's by RATE_PRIOR_RECORDS pseudo-records, so that a rate it never saw
            # flagged is not read as "never" (and its CUSUM's threshold stays finite).
            anomaly = Rate(own.anomaly_rate.events + RATE_PRIOR_RECORDS * anomaly.rate,
                           own.anomaly_rate.n + RATE_PRIOR_RECORDS, own.anomaly_rate.source)
        out.append((part, dataclasses.replace(own, features=features, scores=score,
                                              anomaly_rate=anomaly)))
    return tuple(out)


def _part_distribution(values: FloatArray, rows: NDArray[np.bool_], own: Distribution | None,
                       whole: Distribution | None, levels: int) -> Distribution | None:
    """A cyclic column's distribution in one part. When one value holds most of the column
    (0: "this line carries no signal") and only how often it occurs follows the day, not the
    other values (the signals reported), the part gets its own share of that value and the
    whole reference's other values: their distribution is then known from every row."""
    if own is None or whole is None:
        return own
    finite = values[np.isfinite(values)]
    common, counts = np.unique(finite, return_counts=True)
    mode = common[int(np.argmax(counts))]
    if counts.max() < 0.5 * finite.size or counts.max() == finite.size:
        return own
    others = finite[finite != mode]
    inside = values[rows & np.isfinite(values)]
    outside = values[~rows & np.isfinite(values)]
    carried, elsewhere = inside[inside != mode], outside[outside != mode]
    part_of = np.concatenate([np.zeros(elsewhere.size, dtype=int),
                              np.ones(carried.size, dtype=int)])
    if carried.size == 0 or _cyclic(np.concatenate([elsewhere, carried]), part_of, 2):
        return own
    mode_copies = round((inside.size - carried.size) * others.size / carried.size)
    sample = np.concatenate([np.full(mode_copies, mode), others])
    built = Distribution.from_sample(sample, levels=levels, source=own.source)
    return None if built is None else dataclasses.replace(built, share_rows=int(inside.size))


def _cyclic(values: FloatArray, part_of: NDArray[np.int_], parts: int) -> bool:
    """Whether ``values`` differ across the parts of the day (chi-square, 5%): their distinct
    values when there are few, else their deciles."""
    keep = np.isfinite(values) & (part_of >= 0)
    values, part_of = values[keep], part_of[keep]
    distinct, codes = np.unique(values, return_inverse=True)
    if distinct.size > 20:
        edges = np.unique(np.quantile(values, np.linspace(0.1, 0.9, 9)))
        codes = np.searchsorted(edges, values, side="right")
    table = np.zeros((parts, int(codes.max()) + 1 if codes.size else 1))
    np.add.at(table, (part_of, codes), 1.0)
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    if table.shape[0] < 2 or table.shape[1] < 2:
        return False
    return bool(stats.chi2_contingency(table).pvalue < 0.05)


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
    tables = column_tables(grids, np.ones(d, dtype=bool))
    transform = RankTransform(grids)
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
            invalid_count: int, latencies: Sequence[float]) -> int:
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
        room = self.size - len(self._latencies)
        self._latencies.extend(float(v) for v in latencies[:max(room, 0)])
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
            "features": json_list(self._features[rows]),
            "scores": json_list(self._scores[rows]),
            "flags": self._flags[rows].tolist(),
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
            collector.add(feats, scores, np.asarray(state["flags"], dtype=bool), 0, ())
        collector._latencies = [float(v) for v in state.get("latencies", [])]
        collector.invalid = int(state.get("invalid", 0))
        return collector


__all__ = ["REFERENCE_FORMAT", "BaselineCollector", "Correlation", "Distribution", "Rate",
           "Reference"]
