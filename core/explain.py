"""Why a record scored as it did: per-feature contributions, and the same in words.

For an IsolationForest the attribution is exact path-dependent TreeSHAP (Lundberg et al.,
"Consistent individualized feature attribution for tree ensembles") on the isolation trees,
computed from the compiled arrays of :mod:`modeld.core.forest` alone (so a servable that has
only those arrays can be explained too). Each tree is a cooperative game whose value is the
record's path length; a leaf's share of the game is a product over the distinct features on
its path, and the Shapley value of such a product game is an integral of a polynomial of
degree < depth, which Gauss-Legendre quadrature computes exactly at a handful of points. The
contributions add up to the record's mean path length minus the forest's expected mean path
length (over the training samples each tree saw); they are then rescaled onto modeld's score
``2 ** (-path / c(max_samples))`` so that they add up to ``score - expected_score`` exactly.

For a LocalOutlierFactor (and any other model) the explanation is each feature's deviation
from the record's nearest training neighbours, in the neighbours' standard deviations.

Words come from the version's reference (``reference.npz`` or the metadata summary): where the
value sits among the reference's quantiles, and for a 0/1 feature how often the reference has
it set.

The game depends on the record only through which of each leaf's features it agrees with,
so ForestExplainer computes each leaf's Shapley values for every such pattern once, when it
is built; explaining a record is then one compiled pass (``_forest.Patterns``, in
core/_forest.c): which way it goes at each test, one bit pattern per leaf and a table row per
leaf. In numpy the same lookups were a dozen calls over some 20,000 elements each, 100 to
200 us a record.

Pure: no threads, no I/O, no logging. Explainers are immutable and safe to share between
threads; they raise ValueError for a matrix of the wrong width and nothing else.
"""

from __future__ import annotations

import bisect
import functools
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import IsolationForest

from modeld.core._forest import Patterns
from modeld.core.drift import Reference
from modeld.core.forest import (
    CompiledIsolationForest,
    average_path_length,
    compile_isolation_forest,
)

__all__ = [
    "Contribution",
    "Explainer",
    "Explanation",
    "ForestExplainer",
    "LazyExplainer",
    "NeighbourExplainer",
    "ReferenceWords",
    "describe_value",
    "explainer_for",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

# Records integrated together (see _WideLeaves.add).
_RECORDS_PER_CHUNK = 8
# Leaves with at most this many distinct features on their path get a pattern table (see
# ForestExplainer): 2**9 * 8 floats (32 KiB) per sibling pair at most. 8 covers every leaf of
# a forest grown on 256 samples (depth <= 8), so the per-record integration of wider leaves,
# a few dozen leaves that cost as much as all the tables, is left to deeper forests.
_TABLE_SLOTS = 8

# Features whose names say they count in dBm, and their unit in words.
_UNITS = {"dbm": "dBm", "rssi": "dBm", "signal": "dBm", "_ms": "ms", "seconds": "s"}


@dataclass(frozen=True, slots=True)
class Contribution:
    """One feature's part in a record's score."""

    feature: str
    value: float
    contribution: float
    """IsolationForest: score units (all of them add up to ``score - expected_score``).
    LocalOutlierFactor: signed deviation from the neighbours, in their standard deviations."""
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "value": _finite(self.value),
                "contribution": round(self.contribution, 6), "text": self.text}


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why one record scored as it did; contributions largest first."""

    method: str
    score: float
    expected_score: float | None
    contributions: tuple[Contribution, ...]

    def top(self, n: int) -> tuple[Contribution, ...]:
        return self.contributions[:n]

    @property
    def summary(self) -> str:
        """The top three reasons in one line."""
        return "; ".join(c.text for c in self.contributions[:3])

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        shown = self.contributions if top is None else self.contributions[:top]
        return {"method": self.method, "score": round(self.score, 6),
                "expected_score": None if self.expected_score is None
                else round(self.expected_score, 6),
                "summary": "; ".join(c.text for c in shown[:3]),
                "contributions": [c.to_dict() for c in shown]}


class ReferenceWords:
    """Puts a feature value in words against the reference's quantiles.

    Built once per reference from its quantiles (``None`` per feature without one); called on
    any thread. Plain lists and ``bisect``: a word costs a microsecond, not numpy's overhead.
    """

    def __init__(self, feature_names: Sequence[str],
                 quantiles: Sequence[FloatArray | None]) -> None:
        self.feature_names = tuple(feature_names)
        self._units = tuple(_unit(name) for name in self.feature_names)
        self._cuts = tuple(_cuts(q) for q in quantiles)
        self._binary = tuple(_is_binary(c) for c in self._cuts)

    @classmethod
    def from_reference(cls, reference: Reference) -> ReferenceWords:
        """From a drift reference (the artifact's, or the baseline modeld collected)."""
        return cls(reference.feature_names,
                   [None if d is None else d.quantiles for d in reference.features])

    def text(self, index: int, value: float) -> str:
        return _describe(self.feature_names[index], self._units[index], value,
                         self._cuts[index], self._binary[index])


def describe_value(name: str, value: float, quantiles: FloatArray | None) -> str:
    """``signal_dbm -84 dBm (below the reference's 1st percentile)``, or for a 0/1 feature
    ``is_eap_failure = 1 (0.9% of reference records)``."""
    cuts = _cuts(quantiles)
    return _describe(name, _unit(name), value, cuts, _is_binary(cuts))


def _cuts(quantiles: FloatArray | None) -> list[float] | None:
    if quantiles is None or np.size(quantiles) == 0:
        return None
    return sorted(float(v) for v in np.asarray(quantiles, dtype=np.float64).ravel())


def _is_binary(cuts: list[float] | None) -> bool:
    return cuts is not None and all(v in (0.0, 1.0) for v in cuts)


def _unit(name: str) -> str | None:
    """The unit a feature's name says it counts in, if any."""
    return next((u for key, u in _UNITS.items() if key in name.lower()), None)


def _describe(name: str, unit: str | None, value: float, cuts: list[float] | None,
              binary: bool) -> str:
    if not math.isfinite(value):
        return f"{name} missing"
    shown = f"{name} {_number(value)} {unit}" if unit else f"{name} = {_number(value)}"
    if cuts is None:
        return shown
    size = len(cuts)
    below = bisect.bisect_left(cuts, value) / size * 100
    at_most = bisect.bisect_right(cuts, value) / size * 100
    if binary and value in (0.0, 1.0):
        return f"{shown} ({_percent(at_most - below)} of reference records)"
    if at_most <= 1.0:
        return f"{shown} (below the reference's 1st percentile)"
    if below >= 99.0:
        return f"{shown} (above the reference's 99th percentile)"
    return f"{shown} (reference's {_ordinal(round((below + at_most) / 2))} percentile)"


class Explainer(Protocol):
    """Explains records of the model's input width (after any scaler)."""

    method: str

    def explain_many(self, X: FloatArray, scores: FloatArray,  # noqa: N803
                     values: FloatArray, words: ReferenceWords,
                     top: int | None = None) -> list[Explanation]:
        """One explanation per row of ``X`` (the model's input: after any scaler); ``values``
        are the same records' raw feature values, which the words quote. ``top`` keeps the
        largest contributions only (None: all of them)."""
        ...


class ForestExplainer:
    """Exact TreeSHAP for a compiled IsolationForest; see the module docstring.

    Built once per loaded version (a few hundred milliseconds for 100 trees, off the request
    path: :class:`LazyExplainer`); ``explain`` then runs on request threads and the anomaly
    flush, reading only immutable arrays.

    A leaf's Shapley values depend on the record only through which of the leaf's distinct
    features ("slots") the record agrees with, so for every leaf of at most ``table_slots``
    slots they are computed here for every agreement pattern, once: explaining a record is
    then one compiled pass over the leaves' path tests (which way the record goes at each),
    one bit pattern per leaf and one table row of its slots' values, sibling leaves sharing
    theirs (:class:`_Twig`). A leaf with more slots (deeper forests
    than scikit-learn's default, whose tables would cost 2**slots rows each) is integrated
    per record instead, by the same quadrature.
    """

    method = "tree_shap"

    def __init__(self, forest: CompiledIsolationForest,
                 table_slots: int = _TABLE_SLOTS) -> None:
        self.forest = forest
        n_nodes = forest.left_child.shape[0]
        ids = np.arange(n_nodes, dtype=np.intp)
        is_leaf = forest.left_child == ids
        internal = ids[~is_leaf]
        parent = np.full(n_nodes, -1, dtype=np.intp)
        parent[forest.left_child[internal]] = internal
        parent[forest.left_child[internal] + 1] = internal
        goes_right = np.zeros(n_nodes, dtype=bool)
        goes_right[forest.left_child[internal] + 1] = True
        # Ids are breadth-first within each tree, so a parent's id is below its children's:
        # one pass in id order settles every depth.
        depth = np.zeros(n_nodes, dtype=np.intp)
        for node in internal:
            depth[forest.left_child[node]] = depth[node] + 1
            depth[forest.left_child[node] + 1] = depth[node] + 1
        # A leaf's path length is depth + c(samples in the leaf): c is strictly increasing,
        # so the training samples that reached each leaf (TreeSHAP's cover) are recovered
        # exactly from the compiled arrays.
        max_samples = _inverse_average_path(forest.denominator / max(1, forest.n_trees))
        table = average_path_length(np.arange(1, max_samples + 1))
        leaf_ids = ids[is_leaf]
        wanted = forest.leaf_path_length[leaf_ids] - depth[leaf_ids]
        position = np.clip(np.searchsorted(table, wanted - 1e-9), 0, table.size - 1)
        count = np.zeros(n_nodes, dtype=np.float64)
        count[leaf_ids] = position + 1.0
        for node in internal[::-1]:
            count[node] = count[forest.left_child[node]] + count[forest.left_child[node] + 1]
        roots = forest.roots
        trees = np.searchsorted(roots, leaf_ids, side="right") - 1
        leaf_weight = count[leaf_ids] / count[roots][trees]
        values = forest.leaf_path_length[leaf_ids] / max(1, forest.n_trees)
        self.expected_path = float(np.sum(leaf_weight * values))
        self._c = float(average_path_length([max_samples])[0])

        # Per leaf: its slots in order of first test from the leaf up, the cover fraction of
        # each (product over the path's nodes on that feature) and the path's tests. A leaf
        # that is a whole tree (no test) contributes nothing to any feature.
        paths: list[_LeafPath] = []
        for leaf, value in zip(leaf_ids.tolist(), values.tolist(), strict=True):
            slot_of: dict[int, int] = {}
            cover: list[float] = []
            tests: list[tuple[int, bool, int]] = []
            child = leaf
            while parent[child] >= 0:
                node = int(parent[child])
                slot = slot_of.setdefault(int(forest.feature[node]), len(slot_of))
                if slot == len(cover):
                    cover.append(1.0)
                cover[slot] *= count[child] / count[node]
                tests.append((node, bool(goes_right[child]), slot))
                child = node
            if tests:
                paths.append(_LeafPath(value, tuple(slot_of), tuple(cover), tuple(tests)))
        self.n_leaves = int(leaf_ids.shape[0])
        tabled = [p for p in paths if len(p.features) <= table_slots]
        wide = [p for p in paths if len(p.features) > table_slots]
        self._table = _tabulate(tabled, forest) if tabled else None
        self._wide = _WideLeaves.build(wide, forest) if wide else None

    def path_contributions(self, X: FloatArray) -> tuple[FloatArray, FloatArray]:  # noqa: N803
        """TreeSHAP values of the mean path length, (records, features), and each record's
        mean path length. Cost grows linearly with the records."""
        forest = self.forest
        if X.ndim != 2 or X.shape[1] != forest.n_features_in_:
            raise ValueError(f"expected a 2-D matrix with {forest.n_features_in_} feature "
                             f"columns, got shape {X.shape}")
        with np.errstate(over="ignore"):  # beyond float32's range is beyond every threshold
            x32 = np.ascontiguousarray(X, dtype=np.float32)
        per_feature: FloatArray = np.zeros((X.shape[0], forest.n_features_in_))
        if self._table is not None:
            self._table.add(x32, per_feature)
        if self._wide is not None:
            self._wide.add(x32, per_feature)
        paths: FloatArray = self.expected_path + per_feature.sum(axis=1)
        return per_feature, paths

    def explain_many(self, X: FloatArray, scores: FloatArray,  # noqa: N803
                     values: FloatArray, words: ReferenceWords,
                     top: int | None = None) -> list[Explanation]:
        per_path, paths = self.path_contributions(X)
        scale = np.array([self._score_per_path(path) for path in paths.tolist()])
        return _explanations(self.method, scores, self.expected_score,
                             per_path * scale[:, None], values, words, top)

    def _score_per_path(self, path: float) -> float:
        """Onto the score: the same shares of (score - expected_score) as of the path-length
        gap; at a zero gap, the score's slope there. In Python floats: a record's handful of
        operations costs less than numpy's calls would."""
        if not self._c:
            return 0.0
        own = math.pow(2.0, -path / self._c)
        gap = path - self.expected_path
        if abs(gap) <= 1e-12:
            return -math.log(2) / self._c * own
        return (own - self.expected_score) / gap

    @property
    def expected_score(self) -> float:
        """The score of a record with the forest's expected path length."""
        return 2.0 ** (-self.expected_path / self._c) if self._c else 0.5


class NeighbourExplainer:
    """Each feature's deviation from the record's nearest training neighbours.

    For a LocalOutlierFactor: its fitted rows (``_fit_X``) and ``n_neighbors``. Built once per
    loaded version; ``explain`` is a nearest-neighbour search over the fitted rows.
    """

    method = "neighbour_deviation"

    def __init__(self, fitted_rows: FloatArray, n_neighbors: int) -> None:
        self.rows = np.asarray(fitted_rows, dtype=np.float64)
        self.k = max(1, min(int(n_neighbors), self.rows.shape[0]))

    def explain_many(self, X: FloatArray, scores: FloatArray,  # noqa: N803
                     values: FloatArray, words: ReferenceWords,
                     top: int | None = None) -> list[Explanation]:
        if X.ndim != 2 or X.shape[1] != self.rows.shape[1]:
            raise ValueError(f"expected a 2-D matrix with {self.rows.shape[1]} feature "
                             f"columns, got shape {X.shape}")
        deviations = np.empty(X.shape)
        for i, x in enumerate(X):
            gap = self.rows - x
            distance = np.einsum("ij,ij->i", gap, gap)
            nearest = self.rows[np.argpartition(distance, self.k - 1)[: self.k]]
            spread = nearest.std(axis=0)
            spread = np.where(spread > 1e-9, spread, 1.0)
            deviations[i] = (x - nearest.mean(axis=0)) / spread
        return _explanations(self.method, scores, None, deviations, values, words, top)


@dataclass(frozen=True, slots=True)
class _LeafPath:
    """What TreeSHAP reads of one leaf: built by :class:`ForestExplainer`."""

    value: float  # path length / n_trees
    features: tuple[int, ...]  # per slot
    cover: tuple[float, ...]  # per slot: the share of the samples that take the path there
    tests: tuple[tuple[int, bool, int], ...]  # (node, whether the path goes right, slot)


def _shapley(cover: FloatArray, agree: npt.NDArray[np.bool_]) -> FloatArray:
    """Shapley values of product games, one per leaf: (..., leaf, slot) from the leaves'
    (leaf, slot) covers and whether the record agrees with each slot, (..., leaf, slot).

    A leaf's game is the product over its slots of ``agree`` (slot known) or ``cover`` (slot
    unknown); slot j's Shapley value is ``(agree_j - cover_j)`` times the integral over u in
    [0, 1] of the product over the other slots of ``cover + (agree - cover) u``, a
    polynomial of degree slots-1 that Gauss-Legendre quadrature integrates exactly. Every
    factor is at least ``cover * min(u, 1 - u)`` and a leaf's covers multiply to at least
    1 / max_samples, so nothing underflows. A padded slot (cover 1, agreeing) is a null
    player: its factor is 1 and its value 0.
    """
    u, weights = _quadrature(cover.shape[-1])
    factor = np.where(agree[..., None, :, :], cover + (1.0 - cover) * u, cover * (1.0 - u))
    others = factor.prod(axis=-1, keepdims=True) / factor
    integral = np.einsum("...qls,q->...ls", others, weights)
    phi: FloatArray = (agree - cover) * integral
    return phi


@functools.cache
def _quadrature(slots: int) -> tuple[FloatArray, FloatArray]:
    """Gauss-Legendre points on [0, 1], shaped (point, 1, 1), and weights, exact for a
    polynomial of degree slots-1."""
    points, weights = np.polynomial.legendre.leggauss(max(1, (slots + 1) // 2))
    return ((points + 1.0) / 2.0)[:, None, None], weights / 2.0


@dataclass(frozen=True, slots=True)
class _PathTests:
    """Wide leaves' path tests laid out (test, leaf), padded with tests that set no bit, so
    that the records' per-leaf disagreement bits are a gather of their values, one
    comparison, a choice and one reduction."""

    feature: IntArray  # (test, leaf): the feature its node reads
    threshold: npt.NDArray[np.float32]  # (test, leaf)
    nan_right: npt.NDArray[np.bool_]  # (test, leaf): whether a missing value goes right
    bit_if_right: IntArray  # (test, leaf): 1 << its slot where the path goes left, else 0
    bit_if_left: IntArray  # (test, leaf): 1 << its slot where the path goes right, else 0

    @classmethod
    def build(cls, paths: Sequence[tuple[tuple[int, bool, int], ...]],
              forest: CompiledIsolationForest) -> _PathTests:
        """From each path's (node, whether the path goes right, slot) tests."""
        depth = max(len(tests) for tests in paths)
        node = np.zeros((depth, len(paths)), dtype=np.intp)
        bit_if_right = np.zeros((depth, len(paths)), dtype=np.intp)
        bit_if_left = np.zeros((depth, len(paths)), dtype=np.intp)
        for row, tests in enumerate(paths):
            for i, (at, right, slot) in enumerate(tests):
                node[i, row] = at
                (bit_if_left if right else bit_if_right)[i, row] = 1 << slot
        return cls(forest.feature[node], forest.threshold[node], forest.nan_goes_right[node],
                   bit_if_right, bit_if_left)

    def missed(self, x32: npt.NDArray[np.float32]) -> IntArray:
        """(record, leaf): the bits of the slots the record disagrees with on at least one
        test, from the records' values, (record, feature)."""
        values = np.take(x32, self.feature, axis=1)
        right = values > self.threshold
        if np.isnan(x32).any():
            right |= np.isnan(values) & self.nan_right
        missed: IntArray = np.bitwise_or.reduce(
            np.where(right, self.bit_if_right, self.bit_if_left), axis=1)
        return missed


@dataclass(frozen=True, slots=True)
class _Twig:
    """A leaf, or two sibling leaves explained as one: the pair's slots are the same (from
    their parent up), and which of them the record reaches is one more bit of the pattern,
    so a sibling pair costs one lookup per slot instead of two."""

    leaves: tuple[_LeafPath, ...]  # one, or (left, right)

    @property
    def features(self) -> tuple[int, ...]:
        return self.leaves[0].features

    @property
    def bits(self) -> int:
        """Bits of its pattern: one per slot, and for a pair which way the parent sends the
        record (bit ``slots``: set for right)."""
        return len(self.features) + len(self.leaves) - 1

    @property
    def tests(self) -> tuple[tuple[int, bool, int], ...]:
        """(node, whether the path goes right, the pattern bit a disagreeing record sets)."""
        if len(self.leaves) == 1:
            return self.leaves[0].tests
        # A leaf's slot 0 is its parent's feature; the parent's own test goes to its own bit.
        parent = self.leaves[0].tests[0][0]
        return (*self.leaves[0].tests[1:], (parent, False, len(self.features)))


def _tabulate(leaves: list[_LeafPath], forest: CompiledIsolationForest) -> Patterns:
    """Every twig's Shapley value for each slot and each pattern of its bits (see _Twig),
    packed for ``_forest.Patterns`` (core/_forest.c), which explains a record in one pass.

    A twig's values are one block, pattern-major: for pattern m, its slots' values are
    contiguous from ``m * slots``, one row; Patterns copies the blocks into rows of one cache
    line each, so a record reads one line per twig. At most ``slots * 2**(slots + 1)`` floats
    per sibling pair: 9 MB for 100 default trees on 12 features (11 MiB once padded).
    """
    siblings: dict[int, list[_LeafPath]] = {}
    for leaf in leaves:  # a pair's left leaf (lower id) comes first
        siblings.setdefault(leaf.tests[0][0], []).append(leaf)
    # In order of shape: runs of twigs with as many tests and slots keep the loops' exits
    # predictable for the CPU.
    twigs = sorted((_Twig(tuple(pair)) for pair in siblings.values()),
                   key=lambda t: (len(t.tests), len(t.features)))
    sizes = [len(t.features) << t.bits for t in twigs]
    offset = np.cumsum([0, *sizes[:-1]], dtype=np.intp)
    values = np.zeros(int(sum(sizes)), dtype=np.float64)
    for slots, size in sorted({(len(t.features), len(t.leaves)) for t in twigs}):
        rows = [row for row, t in enumerate(twigs)
                if (len(t.features), len(t.leaves)) == (slots, size)]
        patterns = np.arange(1 << (slots + size - 1))
        went_right = patterns >> slots
        phi = np.zeros((patterns.shape[0], len(rows), slots))
        for member in range(size):
            # The left leaf disagrees on slot 0 when the parent sends the record right, the
            # right one when it sends it left.
            missed = (patterns & ((1 << slots) - 1)) | (went_right != member) * (size - 1)
            agree = ((missed[:, None] >> np.arange(slots)) & 1) == 0  # (pattern, slot)
            cover = np.array([twigs[row].leaves[member].cover for row in rows])
            value = np.array([twigs[row].leaves[member].value for row in rows])
            phi += _shapley(cover, agree[:, None, :]) * value[:, None]
        for i, row in enumerate(rows):
            values[offset[row]:offset[row] + phi.shape[0] * slots] = phi[:, i, :].ravel()
    tests = [test for t in twigs for test in t.tests]
    node = np.array([at for at, _right, _bit in tests], dtype=np.intp)
    return Patterns(
        forest.feature[node], forest.threshold[node], forest.nan_goes_right[node],
        np.array([right for _at, right, _bit in tests], dtype=bool),
        np.array([bit for _at, _right, bit in tests], dtype=np.intp),
        np.cumsum([0, *(len(t.tests) for t in twigs)], dtype=np.intp),
        np.array([f for t in twigs for f in t.features], dtype=np.intp),
        np.cumsum([0, *(len(t.features) for t in twigs)], dtype=np.intp),
        offset, values, forest.n_features_in_)


@dataclass(frozen=True, slots=True)
class _WideLeaves:
    """Leaves with more slots than a table holds, integrated per record; padded to the
    widest with null slots."""

    paths: _PathTests
    cover: FloatArray  # (leaf, slot)
    value: FloatArray  # (leaf,)
    feature: IntArray  # (leaf, slot)

    @classmethod
    def build(cls, leaves: list[_LeafPath], forest: CompiledIsolationForest) -> _WideLeaves:
        slots = max(len(p.features) for p in leaves)
        cover = np.ones((len(leaves), slots))
        feature = np.zeros((len(leaves), slots), dtype=np.intp)
        for row, p in enumerate(leaves):
            cover[row, :len(p.cover)] = p.cover
            feature[row, :len(p.features)] = p.features
        return cls(_PathTests.build([p.tests for p in leaves], forest), cover,
                   np.array([p.value for p in leaves]), feature)

    def add(self, x32: npt.NDArray[np.float32], per_feature: FloatArray) -> None:
        """Adds these leaves' values to ``per_feature`` (record, feature), from the records'
        values, a few records at a time: the (record, test) scratch of a chunk stays a few
        megabytes whatever the batch size."""
        for start in range(0, x32.shape[0], _RECORDS_PER_CHUNK):
            chunk = slice(start, start + _RECORDS_PER_CHUNK)
            bits = self.paths.missed(x32[chunk])[:, :, None] >> np.arange(self.cover.shape[1])
            phi = _shapley(self.cover, (bits & 1) == 0) * self.value[:, None]
            _add_by_feature(per_feature[chunk], self.feature, phi)


def _add_by_feature(per_feature: FloatArray, feature: IntArray, amounts: FloatArray) -> None:
    """``per_feature[r, feature[...]] += amounts[r, ...]`` for every record r."""
    n_records, width = per_feature.shape
    offsets = (np.arange(n_records, dtype=np.intp) * width).reshape(
        (n_records,) + (1,) * feature.ndim)
    per_feature += np.bincount((feature + offsets).ravel(), weights=amounts.ravel(),
                               minlength=n_records * width).reshape(n_records, width)


class LazyExplainer:
    """Builds a version's explainer on first use (tens of milliseconds for a forest), so that
    loading and the canary never pay for it. Any thread may call ``get``; it builds once."""

    def __init__(self, build: Callable[[], Explainer | None]) -> None:
        self._build: Callable[[], Explainer | None] | None = build
        self._explainer: Explainer | None = None
        self._lock = threading.Lock()

    def get(self) -> Explainer | None:
        with self._lock:
            if self._build is not None:
                self._explainer = self._build()
                self._build = None
            return self._explainer


def explainer_for(estimator: Any) -> Explainer | None:
    """The explainer of a loaded estimator, or None when it cannot be explained."""
    if isinstance(estimator, IsolationForest):
        return ForestExplainer(compile_isolation_forest(estimator))
    rows = getattr(estimator, "_fit_X", None)
    if rows is not None and hasattr(estimator, "n_neighbors"):
        return NeighbourExplainer(np.asarray(rows), int(estimator.n_neighbors))
    return None


def _explanations(method: str, scores: FloatArray, expected: float | None,
                  amounts: FloatArray, values: FloatArray, words: ReferenceWords,
                  top: int | None) -> list[Explanation]:
    """One explanation per row of ``amounts`` (record, feature), largest first. Read as
    Python floats and sorted per record: a dozen floats sort faster than numpy is called."""
    names = words.feature_names
    features = range(amounts.shape[1])
    explanations = []
    for score, amount, value in zip(np.asarray(scores, dtype=np.float64).tolist(),
                                    amounts.tolist(),
                                    np.asarray(values, dtype=np.float64).tolist(), strict=True):
        # Stable: equal contributions keep the features' order.
        size = [abs(a) for a in amount]
        order = sorted(features, key=size.__getitem__, reverse=True)[:top]
        explanations.append(Explanation(method, score, expected, tuple(
            Contribution(names[i], value[i], amount[i], words.text(i, value[i]))
            for i in order)))
    return explanations


def _inverse_average_path(target: float) -> int:
    """The sample count n with c(n) == target (the forest's max_samples)."""
    low, high = 1, 2
    while float(average_path_length([high])[0]) < target - 1e-9:
        low, high = high, high * 2
    while low < high:
        middle = (low + high) // 2
        if float(average_path_length([middle])[0]) < target - 1e-9:
            low = middle + 1
        else:
            high = middle
    return low


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"


def _percent(share: float) -> str:
    return f"{share:.1f}%" if share < 10 else f"{share:.0f}%"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None

