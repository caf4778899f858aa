"""Shadow comparison: how a candidate version scores the same live records as the champion.

Three pure parts, each driven by a test with one call:

- :class:`ShadowComparison` accumulates pairs of results on the same records (the champion's
  and the candidate's scores, flags and batch latencies) in bounded memory, and
  :meth:`ShadowComparison.report` turns them into a :class:`ShadowReport`: records compared,
  flag agreement, Cohen's kappa, each model's flag rate, Spearman correlation of the scores,
  quantiles of the score difference, latency p50/p99 per model, and the records the two
  disagree on most.
- :func:`judge` is the promotion gate: a pure function of a report and a :class:`GatePolicy`
  returning which conditions hold and which fail.
- :func:`canary_bucket` / :func:`canary_mask` route a share of records to the candidate by a
  stable hash of one field (``host`` by default), so one access point's stream always goes
  the same way, in every process and after every restart.

Nothing here knows how a servable is loaded or where the pairs come from: the daemon's shadow
worker feeds the accumulator off the request path.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

__all__ = [
    "CANARY_BUCKETS",
    "Disagreement",
    "GateCondition",
    "GatePolicy",
    "GateVerdict",
    "ShadowComparison",
    "ShadowReport",
    "canary_bucket",
    "canary_mask",
    "cohen_kappa",
    "judge",
]

CANARY_BUCKETS = 10_000
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


# --------------------------------------------------------------------------- statistics


def cohen_kappa(both: int, champion_only: int, candidate_only: int, neither: int) -> float | None:
    """Cohen's kappa of two raters' yes/no flags from their 2x2 table; None with no records.

    When chance agreement is total (both flag everything, or nothing) kappa is 0/0; it is
    taken as 1.0 when they agree on every record (they cannot agree more) and 0.0 otherwise.
    """
    n = both + champion_only + candidate_only + neither
    if n == 0:
        return None
    observed = (both + neither) / n
    p_champion = (both + champion_only) / n
    p_candidate = (both + candidate_only) / n
    chance = p_champion * p_candidate + (1 - p_champion) * (1 - p_candidate)
    if math.isclose(chance, 1.0):
        return 1.0 if math.isclose(observed, 1.0) else 0.0
    return (observed - chance) / (1 - chance)


def _spearman(a: NDArray[np.float64], b: NDArray[np.float64]) -> float | None:
    """Spearman's rho (average ranks for ties); None when either side is constant or n < 3."""
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    ra, rb = stats.rankdata(a), stats.rankdata(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def _quantile(values: Sequence[float], q: float) -> float | None:
    return float(np.quantile(np.asarray(values, dtype=np.float64), q)) if values else None


# --------------------------------------------------------------------------- the report


def _ratio(candidate: float | None, champion: float | None) -> float | None:
    """candidate / champion; 1.0 when both are 0, infinity over a 0 champion."""
    if champion is None or candidate is None:
        return None
    if champion == 0:
        return 1.0 if candidate == 0 else math.inf
    return candidate / champion


@dataclass(frozen=True, slots=True)
class Disagreement:
    """One record the two models disagree on, as both saw it."""

    record: Mapping[str, Any]
    champion_score: float
    candidate_score: float
    champion_flag: bool
    candidate_flag: bool
    features: Mapping[str, float]

    @property
    def magnitude(self) -> tuple[bool, float]:
        """Differing flags first, then the size of the score difference."""
        return (self.champion_flag != self.candidate_flag,
                abs(self.candidate_score - self.champion_score))

    def to_dict(self) -> dict[str, Any]:
        return {
            "record": dict(self.record),
            "champion_score": self.champion_score,
            "candidate_score": self.candidate_score,
            "score_difference": self.candidate_score - self.champion_score,
            "champion_flag": self.champion_flag,
            "candidate_flag": self.candidate_flag,
            # the candidate's features for this record: what its score is explained by
            "features": dict(self.features),
        }


@dataclass(frozen=True, slots=True)
class ShadowReport:
    """The comparison of one candidate with one champion, as it stands."""

    candidate: str
    champion: str | None
    records_compared: int
    batches_compared: int
    flag_agreement: float | None
    kappa: float | None
    champion_flag_rate: float | None
    candidate_flag_rate: float | None
    spearman: float | None
    score_difference_quantiles: Mapping[str, float]
    champion_latency_p50_ms: float | None
    champion_latency_p99_ms: float | None
    candidate_latency_p50_ms: float | None
    candidate_latency_p99_ms: float | None
    window_records: int
    top_disagreements: tuple[Disagreement, ...] = ()

    @property
    def flag_rate_ratio(self) -> float | None:
        """The candidate's flag rate over the champion's (1.0 when both flag nothing)."""
        return _ratio(self.candidate_flag_rate, self.champion_flag_rate)

    @property
    def latency_p99_ratio(self) -> float | None:
        """The candidate's p99 scoring time over the champion's."""
        return _ratio(self.candidate_latency_p99_ms, self.champion_latency_p99_ms)

    def to_dict(self) -> dict[str, Any]:
        def finite(value: float | None) -> float | str | None:
            # JSON has no infinity; a ratio over a zero rate is shown as "inf"
            return value if value is None or math.isfinite(value) else str(value)

        return {
            "candidate": self.candidate,
            "champion": self.champion,
            "records_compared": self.records_compared,
            "batches_compared": self.batches_compared,
            "flag_agreement": self.flag_agreement,
            "kappa": self.kappa,
            "flag_rate": {"champion": self.champion_flag_rate,
                          "candidate": self.candidate_flag_rate},
            "flag_rate_ratio": finite(self.flag_rate_ratio),
            "spearman": self.spearman,
            "score_difference_quantiles": dict(self.score_difference_quantiles),
            "latency_ms": {
                "champion": {"p50": self.champion_latency_p50_ms,
                             "p99": self.champion_latency_p99_ms},
                "candidate": {"p50": self.candidate_latency_p50_ms,
                              "p99": self.candidate_latency_p99_ms},
            },
            "latency_p99_ratio": finite(self.latency_p99_ratio),
            "window_records": self.window_records,
            "top_disagreements": [d.to_dict() for d in self.top_disagreements],
        }


class ShadowComparison:
    """Bounded accumulator of champion/candidate pairs for one candidate.

    Counts (records, the 2x2 flag table) cover every record compared; Spearman and the score
    difference quantiles cover the last ``window`` pairs, latencies the last
    ``latency_window`` batches, and the ``keep_disagreements`` largest disagreements are kept.
    Memory is bounded whatever the traffic. Not thread-safe: the daemon's shadow worker is its
    only writer and hands out reports it built (readers never touch the buffers).
    """

    def __init__(self, candidate: str, champion: str | None, window: int = 10_000,
                 latency_window: int = 2_000, keep_disagreements: int = 10) -> None:
        if window < 3 or latency_window < 1 or keep_disagreements < 0:
            raise ValueError("window must be >= 3, latency_window >= 1, "
                             "keep_disagreements >= 0")
        self.candidate = candidate
        self.champion = champion
        self.records = 0
        self.batches = 0
        # 2x2 table: both flag, champion only, candidate only, neither
        self.table = [0, 0, 0, 0]
        self.champion_scores: deque[float] = deque(maxlen=window)
        self.candidate_scores: deque[float] = deque(maxlen=window)
        self.champion_latency: deque[float] = deque(maxlen=latency_window)
        self.candidate_latency: deque[float] = deque(maxlen=latency_window)
        self.keep_disagreements = keep_disagreements
        self._worst: list[tuple[tuple[bool, float], int, Disagreement]] = []
        self._tiebreak = itertools.count()

    def add(self, records: Sequence[Mapping[str, Any]],
            champion_scores: NDArray[np.float64], champion_flags: NDArray[np.bool_],
            candidate_scores: NDArray[np.float64], candidate_flags: NDArray[np.bool_],
            champion_seconds: float, candidate_seconds: float,
            candidate_features: NDArray[np.float64] | None = None,
            feature_names: Sequence[str] = ()) -> None:
        """Add one batch scored by both. Raises ValueError when the arrays disagree in length."""
        n = len(records)
        arrays = (champion_scores, champion_flags, candidate_scores, candidate_flags)
        if any(len(a) != n for a in arrays):
            raise ValueError(f"{n} records but result arrays of lengths "
                             f"{[len(a) for a in arrays]}")
        if n == 0:
            return
        cf = np.asarray(champion_flags, dtype=bool)
        kf = np.asarray(candidate_flags, dtype=bool)
        both = int(np.count_nonzero(cf & kf))
        champion_only = int(np.count_nonzero(cf & ~kf))
        candidate_only = int(np.count_nonzero(~cf & kf))
        self.table[0] += both
        self.table[1] += champion_only
        self.table[2] += candidate_only
        self.table[3] += n - both - champion_only - candidate_only
        self.records += n
        self.batches += 1
        cs = np.asarray(champion_scores, dtype=np.float64)
        ks = np.asarray(candidate_scores, dtype=np.float64)
        self.champion_scores.extend(cs.tolist())
        self.candidate_scores.extend(ks.tolist())
        self.champion_latency.append(champion_seconds)
        self.candidate_latency.append(candidate_seconds)
        if self.keep_disagreements:
            self._note_disagreements(records, cs, cf, ks, kf, candidate_features, feature_names)

    def _note_disagreements(self, records: Sequence[Mapping[str, Any]],
                            cs: NDArray[np.float64], cf: NDArray[np.bool_],
                            ks: NDArray[np.float64], kf: NDArray[np.bool_],
                            features: NDArray[np.float64] | None,
                            names: Sequence[str]) -> None:
        # Only the batch's own worst few can enter the kept list: look at no more than that.
        differs = cf != kf
        size = np.abs(ks - cs)
        order = np.lexsort((-size, ~differs))[: self.keep_disagreements]
        for i in order.tolist():
            key = (bool(differs[i]), float(size[i]))
            if len(self._worst) >= self.keep_disagreements and key <= self._worst[0][0]:
                continue
            row = {} if features is None else {
                name: float(v) for name, v in zip(names, features[i].tolist(), strict=False)}
            record = records[i]
            item = Disagreement(dict(record) if isinstance(record, Mapping) else {},
                                float(cs[i]), float(ks[i]), bool(cf[i]), bool(kf[i]), row)
            entry = (key, next(self._tiebreak), item)
            if len(self._worst) < self.keep_disagreements:
                heapq.heappush(self._worst, entry)
            else:
                heapq.heapreplace(self._worst, entry)

    def to_state(self) -> dict[str, Any]:
        """Everything the accumulator holds, as JSON-ready data (the daemon saves it in the
        registry, so that a restart continues the comparison)."""
        return {
            "candidate": self.candidate, "champion": self.champion,
            "records": self.records, "batches": self.batches, "table": list(self.table),
            "window": self.champion_scores.maxlen,
            "latency_window": self.champion_latency.maxlen,
            "keep_disagreements": self.keep_disagreements,
            "champion_scores": list(self.champion_scores),
            "candidate_scores": list(self.candidate_scores),
            "champion_latency": list(self.champion_latency),
            "candidate_latency": list(self.candidate_latency),
            "disagreements": [d.to_dict() for _, _, d in self._worst],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], window: int | None = None
                   ) -> ShadowComparison:
        """An accumulator from :meth:`to_state`; ``window`` resizes the score window (keeping
        the newest pairs). Raises KeyError/TypeError/ValueError on data of another shape."""
        comparison = cls(str(state["candidate"]), state["champion"],
                         int(window or state["window"]), int(state["latency_window"]),
                         int(state["keep_disagreements"]))
        comparison.records = int(state["records"])
        comparison.batches = int(state["batches"])
        table = [int(v) for v in state["table"]]
        if len(table) != 4 or sum(table) != comparison.records:
            raise ValueError("the flag table does not add up to the records compared")
        comparison.table = table
        comparison.champion_scores.extend(float(v) for v in state["champion_scores"])
        comparison.candidate_scores.extend(float(v) for v in state["candidate_scores"])
        comparison.champion_latency.extend(float(v) for v in state["champion_latency"])
        comparison.candidate_latency.extend(float(v) for v in state["candidate_latency"])
        for item in state["disagreements"]:
            d = Disagreement(dict(item["record"]), float(item["champion_score"]),
                             float(item["candidate_score"]), bool(item["champion_flag"]),
                             bool(item["candidate_flag"]),
                             {str(k): float(v) for k, v in item["features"].items()})
            heapq.heappush(comparison._worst, (d.magnitude, next(comparison._tiebreak), d))
        return comparison

    def report(self) -> ShadowReport:
        """The report as things stand; O(window log window)."""
        n = self.records
        both, champion_only, candidate_only, neither = self.table
        cs = np.fromiter(self.champion_scores, dtype=np.float64)
        ks = np.fromiter(self.candidate_scores, dtype=np.float64)
        diff = ks - cs
        quantiles = ({f"p{round(q * 100):02d}": float(v)
                      for q, v in zip(QUANTILES, np.quantile(diff, QUANTILES), strict=True)}
                     if len(diff) else {})

        def ms(values: Sequence[float], q: float) -> float | None:
            value = _quantile(values, q)
            return None if value is None else round(value * 1000, 4)

        worst = sorted(self._worst, key=lambda e: (e[0], -e[1]), reverse=True)
        return ShadowReport(
            candidate=self.candidate,
            champion=self.champion,
            records_compared=n,
            batches_compared=self.batches,
            flag_agreement=(both + neither) / n if n else None,
            kappa=cohen_kappa(both, champion_only, candidate_only, neither),
            champion_flag_rate=(both + champion_only) / n if n else None,
            candidate_flag_rate=(both + candidate_only) / n if n else None,
            spearman=_spearman(cs, ks),
            score_difference_quantiles=quantiles,
            champion_latency_p50_ms=ms(self.champion_latency, 0.5),
            champion_latency_p99_ms=ms(self.champion_latency, 0.99),
            candidate_latency_p50_ms=ms(self.candidate_latency, 0.5),
            candidate_latency_p99_ms=ms(self.candidate_latency, 0.99),
            window_records=len(cs),
            top_disagreements=tuple(e[2] for e in worst),
        )


# --------------------------------------------------------------------------- the gate


@dataclass(frozen=True, slots=True)
class GatePolicy:
    """When a candidate may be promoted (``integration.shadow.min_records`` and ``.gate``)."""

    min_records: int = 2000
    flag_rate_ratio_min: float = 0.5
    flag_rate_ratio_max: float = 2.0
    min_kappa: float = 0.4
    max_latency_ratio: float = 2.0


@dataclass(frozen=True, slots=True)
class GateCondition:
    """One condition of the gate: its name, whether it holds, what was seen and required."""

    name: str
    holds: bool
    observed: float | None
    required: str

    def describe(self) -> str:
        seen = "n/a" if self.observed is None else f"{self.observed:.4g}"
        return f"{self.name} {seen} {'meets' if self.holds else 'fails'} {self.required}"

    def to_dict(self) -> dict[str, Any]:
        observed = self.observed
        if observed is not None and not math.isfinite(observed):
            return {"name": self.name, "holds": self.holds, "observed": str(observed),
                    "required": self.required}
        return {"name": self.name, "holds": self.holds, "observed": observed,
                "required": self.required}


@dataclass(frozen=True, slots=True)
class GateVerdict:
    """The gate's answer: ``ready`` once min_records are compared; ``passed`` when every
    condition holds as well."""

    ready: bool
    records_compared: int
    min_records: int
    conditions: tuple[GateCondition, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return self.ready and all(c.holds for c in self.conditions)

    @property
    def failed(self) -> tuple[GateCondition, ...]:
        return tuple(c for c in self.conditions if not c.holds)

    def summary(self) -> str:
        """One line naming every condition with what was seen, as recorded and alerted."""
        head = f"{self.records_compared} records compared"
        return head + "; " + "; ".join(c.describe() for c in self.conditions)

    def to_dict(self) -> dict[str, Any]:
        return {"ready": self.ready, "passed": self.passed,
                "records_compared": self.records_compared, "min_records": self.min_records,
                "conditions": [c.to_dict() for c in self.conditions],
                "failed": [c.name for c in self.failed]}


def judge(report: ShadowReport, policy: GatePolicy) -> GateVerdict:
    """Which of the gate's conditions hold for ``report``. A condition whose statistic cannot
    be computed (no latency yet, kappa of nothing) fails."""
    ratio = report.flag_rate_ratio
    latency = report.latency_p99_ratio
    lo, hi = policy.flag_rate_ratio_min, policy.flag_rate_ratio_max
    conditions = (
        GateCondition("flag_rate_ratio", ratio is not None and lo <= ratio <= hi, ratio,
                      f"within [{lo:g}, {hi:g}]"),
        GateCondition("kappa", report.kappa is not None and report.kappa >= policy.min_kappa,
                      report.kappa, f">= {policy.min_kappa:g}"),
        GateCondition("latency_p99_ratio",
                      latency is not None and latency <= policy.max_latency_ratio, latency,
                      f"<= {policy.max_latency_ratio:g}"),
    )
    return GateVerdict(report.records_compared >= policy.min_records, report.records_compared,
                       policy.min_records, conditions)


# --------------------------------------------------------------------------- the canary


def canary_bucket(key: str) -> int:
    """A stable bucket in [0, CANARY_BUCKETS) for a record key: the same in every process
    (Python's own hash() is salted per process, so it is not used)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % CANARY_BUCKETS


def _key_of(record: object, field_name: str) -> str:
    value = record.get(field_name) if isinstance(record, Mapping) else None
    # a record without the key is routed as the key "" (all such records go the same way)
    return "" if value is None else str(value)


def canary_mask(records: Sequence[object], field_name: str, percent: float) -> NDArray[np.bool_]:
    """True for each record the candidate scores: those whose key's bucket falls below
    ``percent`` of the buckets. Raising ``percent`` only adds keys, never moves one back."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be within [0, 100], not {percent}")
    cut = percent / 100 * CANARY_BUCKETS
    if cut <= 0:
        return np.zeros(len(records), dtype=bool)
    seen: dict[str, bool] = {}
    out = np.empty(len(records), dtype=bool)
    for i, record in enumerate(records):
        key = _key_of(record, field_name)
        routed = seen.get(key)
        if routed is None:
            routed = seen[key] = canary_bucket(key) < cut
        out[i] = routed
    return out
