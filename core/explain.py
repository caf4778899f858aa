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

Pure: no threads, no I/O, no logging. Explainers are immutable and safe to share between
threads; they raise ValueError for a matrix of the wrong width and nothing else.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import IsolationForest

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

# Records explained together (see ForestExplainer.path_contributions).
_RECORDS_PER_CHUNK = 8
# See _LeafGroup.contributions.
_NEGLIGIBLE_LOG = -600.0
# Leaves are explained in groups by the distinct features on their path: up to 2, 4, 6, 8
# (more only in forests deeper than scikit-learn's default).
_GROUP_SLOTS = (2, 4, 6, 8)

# One test on a leaf's path: (node, whether the path goes right there, the child it goes to).
_Test = tuple[int, bool, int]

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
        self._cuts = tuple(_cuts(q) for q in quantiles)
        self._binary = tuple(_is_binary(c) for c in self._cuts)

    @classmethod
    def from_reference(cls, reference: Reference) -> ReferenceWords:
        """From a drift reference (the artifact's, or the baseline modeld collected)."""
        return cls(reference.feature_names,
                   [None if d is None else d.quantiles for d in reference.features])

    def text(self, index: int, value: float) -> str:
        return _describe(self.feature_names[index], value, self._cuts[index],
                         self._binary[index])


def describe_value(name: str, value: float, quantiles: FloatArray | None) -> str:
    """``signal_dbm -84 dBm (below the reference's 1st percentile)``, or for a 0/1 feature
    ``is_eap_failure = 1 (0.9% of reference records)``."""
    cuts = _cuts(quantiles)
    return _describe(name, value, cuts, _is_binary(cuts))


def _cuts(quantiles: FloatArray | None) -> list[float] | None:
    if quantiles is None or np.size(quantiles) == 0:
        return None
    return sorted(float(v) for v in np.asarray(quantiles, dtype=np.float64).ravel())


def _is_binary(cuts: list[float] | None) -> bool:
    return cuts is not None and all(v in (0.0, 1.0) for v in cuts)


def _describe(name: str, value: float, cuts: list[float] | None, binary: bool) -> str:
    if not math.isfinite(value):
        return f"{name} missing"
    unit = next((u for key, u in _UNITS.items() if key in name.lower()), None)
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

    Built once per loaded version (a few tens of milliseconds for 100 trees); ``explain``
    then runs on request threads and the anomaly flush, reading only immutable arrays.
    """

    method = "tree_shap"

    def __init__(self, forest: CompiledIsolationForest) -> None:
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

        # Per leaf: its distinct features ("slots") and the cover fraction of each (product
        # over the path's nodes on that feature). Each slot owns the path nodes that test its
        # feature, laid out contiguously so that one reduceat says whether the record agrees
        # with all of them. Leaves are grouped by how many slots they need (a padded slot is a
        # null player: it owns one entry that always agrees and changes no Shapley value), so
        # that a shallow leaf costs what it needs, not what the deepest one does.
        paths: list[tuple[int, list[tuple[int, list[_Test]]]]] = []
        for leaf in leaf_ids:
            owned: dict[int, list[_Test]] = {}
            child = int(leaf)
            while parent[child] >= 0:
                node = int(parent[child])
                owned.setdefault(int(forest.feature[node]), []).append(
                    (node, bool(goes_right[child]), child))
                child = node
            paths.append((int(leaf), list(owned.items())))
        roots = forest.roots
        trees = np.searchsorted(roots, leaf_ids, side="right") - 1
        leaf_weight = count[leaf_ids] / count[roots][trees]
        values = forest.leaf_path_length[leaf_ids] / max(1, forest.n_trees)
        self.expected_path = float(np.sum(leaf_weight * values))
        value_of = dict(zip(leaf_ids.tolist(), values.tolist(), strict=True))
        self._groups: list[_LeafGroup] = []
        low = 0
        for slots in _GROUP_SLOTS:
            members = [p for p in paths if low < max(1, len(p[1])) <= slots]
            low = slots
            if members:
                self._groups.append(_LeafGroup.build(members, slots, count, value_of, n_nodes))
        deepest = max((len(p[1]) for p in paths), default=0)
        if deepest > _GROUP_SLOTS[-1]:
            self._groups.append(_LeafGroup.build(
                [p for p in paths if len(p[1]) > _GROUP_SLOTS[-1]], deepest, count, value_of,
                n_nodes))
        self._c = float(average_path_length([max_samples])[0])

    @property
    def n_leaves(self) -> int:
        return sum(group.value.shape[0] for group in self._groups)

    def path_contributions(self, X: FloatArray) -> tuple[FloatArray, FloatArray]:  # noqa: N803
        """TreeSHAP values of the mean path length, (records, features), and each record's
        mean path length. Cost grows linearly with the records."""
        forest = self.forest
        if X.ndim != 2 or X.shape[1] != forest.n_features_in_:
            raise ValueError(f"expected a 2-D matrix with {forest.n_features_in_} feature "
                             f"columns, got shape {X.shape}")
        # A few records at a time: the (record, slot, leaf) scratch of a chunk stays a few
        # hundred kilobytes whatever the batch size.
        parts = [self._chunk(X[start:start + _RECORDS_PER_CHUNK])
                 for start in range(0, X.shape[0], _RECORDS_PER_CHUNK)]
        if not parts:
            return np.zeros((0, forest.n_features_in_)), np.zeros(0)
        values: FloatArray = np.concatenate([p[0] for p in parts])
        paths: FloatArray = np.concatenate([p[1] for p in parts])
        return values, paths

    def _chunk(self, X: FloatArray) -> tuple[FloatArray, FloatArray]:  # noqa: N803
        forest = self.forest
        n_records = X.shape[0]
        with np.errstate(over="ignore"):
            x32 = np.ascontiguousarray(X, dtype=np.float32)
        values = x32[:, forest.feature]
        right = np.zeros((n_records, forest.feature.shape[0] + 1), dtype=bool)
        np.greater(values, forest.threshold, out=right[:, :-1])
        nan = np.isnan(values)
        if nan.any():
            right[:, :-1] |= nan & forest.nan_goes_right
        per_feature: FloatArray = np.zeros((n_records, forest.n_features_in_))
        for group in self._groups:
            per_feature += group.contributions(right, forest.n_features_in_)
        paths: FloatArray = self.expected_path + per_feature.sum(axis=1)
        return per_feature, paths

    def explain_many(self, X: FloatArray, scores: FloatArray,  # noqa: N803
                     values: FloatArray, words: ReferenceWords,
                     top: int | None = None) -> list[Explanation]:
        per_path, paths = self.path_contributions(X)
        expected = self.expected_score
        out = []
        for i in range(X.shape[0]):
            own = 2.0 ** (-paths[i] / self._c) if self._c else 0.5
            gap = paths[i] - self.expected_path
            # Onto the score: the same shares of (score - expected_score) as of the
            # path-length gap; at a zero gap, the score's slope there.
            scale = ((own - expected) / gap if abs(gap) > 1e-12
                     else -math.log(2) / self._c * own)
            out.append(_explanation(self.method, float(scores[i]), expected,
                                    per_path[i] * scale, values[i], words, top))
        return out

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
        out = []
        for i, x in enumerate(X):
            gap = self.rows - x
            distance = np.einsum("ij,ij->i", gap, gap)
            nearest = self.rows[np.argpartition(distance, self.k - 1)[: self.k]]
            spread = nearest.std(axis=0)
            spread = np.where(spread > 1e-9, spread, 1.0)
            deviation = (x - nearest.mean(axis=0)) / spread
            out.append(_explanation(self.method, float(scores[i]), None, deviation,
                                    values[i], words, top))
        return out


@dataclass(frozen=True, slots=True)
class _LeafGroup:
    """Leaves that need at most ``slots`` distinct features, with what TreeSHAP reads of them.

    Built by :class:`ForestExplainer`; ``contributions`` is the per-record work. Arrays are
    laid out leaf-last, so that every step is one contiguous pass over the group's leaves
    (loops run over the few slots and quadrature points only).
    """

    slots: int
    cover: FloatArray  # (slot, leaf): the share of each node's samples that takes the path
    value: FloatArray  # (leaf,): path length / n_trees
    slot_feature: IntArray  # (slot * leaf,)
    entry_node: IntArray
    entry_right: npt.NDArray[np.bool_]
    slot_start: IntArray  # per (slot, leaf), slot-major: where its entries start
    quad_weight: FloatArray  # (q,)
    log_disagree_all: FloatArray  # (q, leaf)
    log_gain: FloatArray  # (slot, q, leaf)
    inv_disagree: FloatArray  # (q, slot, leaf)
    inv_gain: FloatArray  # (q, slot, leaf)

    @classmethod
    def build(cls, members: list[tuple[int, list[tuple[int, list[_Test]]]]],
              slots: int, count: FloatArray, value_of: dict[int, float], n_nodes: int
              ) -> _LeafGroup:
        n_leaves = len(members)
        cover = np.ones((slots, n_leaves), dtype=np.float64)
        slot_feature = np.zeros((slots, n_leaves), dtype=np.intp)
        entry_node: list[int] = []
        entry_right: list[bool] = []
        slot_start: list[int] = []
        for slot in range(slots):
            for row, (_leaf, owned) in enumerate(members):
                slot_start.append(len(entry_node))
                if slot >= len(owned):
                    entry_node.append(n_nodes)  # the appended "never right" node: agrees
                    entry_right.append(False)
                    continue
                feature, tests = owned[slot]
                slot_feature[slot, row] = feature
                for node, right, child in tests:
                    cover[slot, row] *= count[child] / count[node]
                    entry_node.append(node)
                    entry_right.append(right)
        # Gauss-Legendre on [0, 1]: exact for the polynomial of degree slots-1 in u whose
        # integral is the Shapley weighting of a product game.
        nodes, weights = np.polynomial.legendre.leggauss(max(1, (slots + 1) // 2))
        u = (nodes + 1.0) / 2.0
        # A slot's factor at point u: cover + (agree - cover) * u, for agree 1 or 0:
        # (slot, q, leaf)
        factor_agree = cover[:, None, :] + (1.0 - cover[:, None, :]) * u[None, :, None]
        factor_disagree = cover[:, None, :] * (1.0 - u)[None, :, None]
        return cls(
            slots=slots, cover=cover,
            value=np.array([value_of[leaf] for leaf, _ in members]),
            slot_feature=slot_feature.ravel(),
            entry_node=np.asarray(entry_node, dtype=np.intp),
            entry_right=np.asarray(entry_right, dtype=bool),
            slot_start=np.asarray(slot_start, dtype=np.intp),
            quad_weight=weights / 2.0,
            log_disagree_all=np.log(factor_disagree).sum(axis=0),
            log_gain=np.log(factor_agree) - np.log(factor_disagree),
            inv_disagree=np.ascontiguousarray((1.0 / factor_disagree).transpose(1, 0, 2)),
            inv_gain=np.ascontiguousarray(
                (1.0 / factor_agree - 1.0 / factor_disagree).transpose(1, 0, 2)),
        )

    def contributions(self, right: npt.NDArray[np.bool_], width: int) -> FloatArray:
        """(record, feature) Shapley values of these leaves, given each node's direction."""
        n_records = right.shape[0]
        n_leaves = self.value.shape[0]
        disagree = right[:, self.entry_node] != self.entry_right
        misses = np.logical_or.reduceat(disagree, self.slot_start, axis=1)
        agree = (~misses).reshape(n_records, self.slots, n_leaves).astype(np.float64)
        # log of the product over all slots at each point: (record, q, leaf)
        log_product = np.broadcast_to(self.log_disagree_all,
                                      (n_records, *self.log_disagree_all.shape)).copy()
        for slot in range(self.slots):
            log_product += agree[:, slot, None, :] * self.log_gain[slot]
        # A leaf of a deep forest far from the record can weigh under e^-708: as subnormal
        # floats such weights slow every later step on x86, so below e^-600 (a share under
        # 1e-260 of a path length, far beneath float64's resolution of the sum) it is 0.
        log_product[log_product < _NEGLIGIBLE_LOG] = -np.inf
        weighted = np.exp(log_product)
        weighted *= self.quad_weight[:, None]
        # the product over the other slots, integrated: (record, slot, leaf)
        base = np.zeros_like(agree)
        gain = np.zeros_like(agree)
        for q in range(self.quad_weight.shape[0]):
            point = weighted[:, q, None, :]
            base += point * self.inv_disagree[q]
            gain += point * self.inv_gain[q]
        phi = (agree - self.cover) * (base + agree * gain)
        phi *= self.value
        offsets = (np.arange(n_records, dtype=np.intp) * width)[:, None]
        per_feature: FloatArray = np.bincount(
            (self.slot_feature[None, :] + offsets).ravel(), weights=phi.ravel(),
            minlength=n_records * width,
        ).astype(np.float64).reshape(n_records, width)
        return per_feature


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


def _explanation(method: str, score: float, expected: float | None, amounts: FloatArray,
                 values: FloatArray, words: ReferenceWords, top: int | None) -> Explanation:
    order = np.argsort(-np.abs(amounts), kind="stable")[:top]
    contributions = tuple(
        Contribution(words.feature_names[i], float(values[i]), float(amounts[i]),
                     words.text(int(i), float(values[i])))
        for i in order
    )
    return Explanation(method, float(score), expected, contributions)


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

