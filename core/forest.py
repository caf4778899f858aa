"""An IsolationForest compiled into flat arrays and scored by a compiled tree walk.

scikit-learn's ``IsolationForest.score_samples`` validates its input, then walks every tree in
turn through joblib and a lock; for one WiFi record that costs milliseconds, almost all of it
overhead. At load time we flatten every tree of the forest into a few shared node arrays (the
servable bundle's form of the model) and hand them to ``modeld.core._forest`` (``_forest.c``),
which checks them once and walks several records (or, for a single record, several trees)
side by side without the GIL. docs/performance.md has the measurements that chose it.

The scores are scikit-learn's, not an approximation: the input is cast to float32 exactly as
the trees see it, thresholds are compared the way the Cython tree compares them, each leaf's
path length is computed with scikit-learn's arithmetic, and the trees are added in its order.

This module is pure: no threads, no I/O, no logging.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import IsolationForest

from modeld.core._forest import Forest

__all__ = ["CompiledIsolationForest", "average_path_length", "compile_isolation_forest"]

IntArray = npt.NDArray[np.intp]
FloatArray = npt.NDArray[np.float64]
_ArrayT = TypeVar("_ArrayT", bound="np.ndarray[Any, Any]")

# scikit-learn's marker for "no child" in Tree.children_left / children_right.
_TREE_LEAF = -1


def average_path_length(n_samples: npt.ArrayLike) -> FloatArray:
    """Return c(n), the average path length of an unsuccessful search in a BST of n nodes.

    This is scikit-learn's ``sklearn.ensemble._iforest._average_path_length`` reproduced
    operation for operation (it is private there, so we do not import it): 0 for n <= 1,
    1 for n == 2, else ``2 (ln(n - 1) + euler_gamma) - 2 (n - 1) / n``. The compiler calls it
    for every tree node and for ``max_samples_``; it never raises for a numeric input.
    """
    n = np.asarray(n_samples)
    lengths = np.zeros(n.shape, dtype=np.float64)
    is_one_or_less = n <= 1
    is_two = n == 2
    general = ~np.logical_or(is_one_or_less, is_two)
    lengths[is_two] = 1.0
    lengths[general] = (
        2.0 * (np.log(n[general] - 1.0) + np.euler_gamma) - 2.0 * (n[general] - 1.0) / n[general]
    )
    return lengths


@dataclass(frozen=True, slots=True, eq=False)
class CompiledIsolationForest:
    """A fitted IsolationForest flattened into shared node arrays, scored without scikit-learn.

    Built once per model at load time by :func:`compile_isolation_forest` (or from a bundle's
    arrays by :meth:`from_arrays`); the serving layer then calls :meth:`score_samples` /
    :meth:`decision_function` from any number of request threads at once: scoring only reads
    the (read-only) arrays and allocates its own output, so there is no lock and nothing to
    reset. Building checks every node index (the arrays may come from a bundle on disk) and
    raises ValueError/TypeError naming the array and node that is wrong, so a bad bundle
    cannot make the walk read out of bounds. Input validation (finite-ness policy, dtype,
    feature names) is the caller's job; the only check here is the matrix width, which raises
    ``ValueError`` naming the expected and the received width. Nothing else raises for a
    2-D numeric input.

    Node arrays are indexed by a global node id: the trees are concatenated, each renumbered
    breadth-first so that a node's right child is always ``left_child + 1`` (no right-child
    array to load) and every child follows its parent. A leaf is its own left child, so a
    record that reached a leaf stays there while the other walks finish; that is what lets
    every walk take the same number of steps. ``_forest.Forest`` packs these arrays into one
    16-byte record per node for the walk; these arrays stay the model's description (the
    bundle and the explainer read them).
    """

    feature: IntArray
    """Input column each node tests, already mapped through ``estimators_features_``."""
    threshold: npt.NDArray[np.float32]
    """Largest float32 not above scikit-learn's float64 threshold (see ``_float32_floor``)."""
    left_child: IntArray
    """Global id of the left child; the right child is the next id. Leaves point to themselves."""
    nan_goes_right: npt.NDArray[np.bool_]
    """Where a NaN value goes: scikit-learn's ``missing_go_to_left`` inverted (False on leaves)."""
    leaf_path_length: FloatArray
    """Per leaf, scikit-learn's ``depth + c(n_node_samples) - 1.0``; unused on internal nodes."""
    roots: IntArray
    """Global id of each tree's root, in ``estimators_`` order."""
    n_levels: int
    """Depth of the deepest tree: after this many steps every record is at a leaf in every tree."""
    denominator: float
    """``n_estimators * c(max_samples)``; 0 only for a forest trained on one sample per tree."""
    offset_: float
    """The model's ``offset_``: ``decision_function`` is ``score_samples - offset_``."""
    n_features_in_: int
    """Width of the matrix the model was fitted on and expects."""

    # The compiled walk over the same arrays: checked and packed once, here, for every call.
    _walk: Forest = field(init=False, repr=False)

    def __post_init__(self) -> None:
        """Build the compiled walk (a frozen dataclass needs object.__setattr__ for that).

        Raises ValueError/TypeError from ``_forest.Forest`` for arrays that do not describe
        a forest: a child or feature index out of range, the wrong dtype, a wrong depth.
        """
        walk = Forest(self.feature, self.threshold, self.left_child, self.nan_goes_right,
                      self.leaf_path_length, self.roots, self.n_levels, self.n_features_in_)
        object.__setattr__(self, "_walk", walk)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Every constructor field as an array (scalars as 0-d arrays), for a servable bundle.

        ``core/bundle.py`` writes whatever this returns, one ``.npy`` per key, and gives it
        back to :meth:`from_arrays`: the bundle does not know the layout, so a change to the
        node arrays needs no change there.
        """
        return {f.name: np.asarray(getattr(self, f.name)) for f in fields(self) if f.init}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> CompiledIsolationForest:
        """Rebuild a forest from :meth:`to_arrays`' output (memory-mapped arrays are kept as
        they are, read-only). Raises ValueError naming a missing or unexpected array, and the
        walk's ValueError/TypeError (see ``__post_init__``) for arrays that are not a forest."""
        names = {f.name: f for f in fields(cls) if f.init}
        if set(arrays) != set(names):
            raise ValueError(f"forest arrays {sorted(arrays)} are not {sorted(names)}")
        values: dict[str, Any] = {}
        for name, array in arrays.items():
            kind = names[name].type
            if array.ndim == 0 and kind in ("int", "float"):
                values[name] = int(array) if kind == "int" else float(array)
            else:
                values[name] = _frozen(array) if array.flags.writeable else array
        return cls(**values)

    @property
    def n_trees(self) -> int:
        """Number of trees in the forest."""
        return int(self.roots.shape[0])

    def score_samples(self, X: npt.NDArray[np.floating[Any]]) -> FloatArray:  # noqa: N803
        """Return scikit-learn's ``IsolationForest.score_samples(X)`` (lower = more abnormal).

        ``X`` is a 2-D float array of shape (n_records, n_features_in_). Raises ValueError
        if it is not 2-D or has the wrong width.
        """
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"expected a 2-D matrix with {self.n_features_in_} feature columns, "
                f"got shape {X.shape}"
            )
        # The trees compare float32 values: scikit-learn casts the input before walking them,
        # and a value beyond float32's range becomes +/-inf there too. We silence the
        # overflow warning because that inf is the intended result, not an accident.
        with np.errstate(over="ignore"):
            x32 = np.ascontiguousarray(X, dtype=np.float32)
        path_sums = np.empty(x32.shape[0], dtype=np.float64)
        self._walk.path_length_sums(x32, path_sums)
        # scikit-learn's np.divide(..., out=ones, where=denominator != 0): a forest of
        # one-sample trees scores every record as if the ratio were 1.
        ratio = np.ones_like(path_sums) if self.denominator == 0.0 else path_sums / self.denominator
        scores: FloatArray = -(2.0 ** (-ratio))
        return scores

    def decision_function(self, X: npt.NDArray[np.floating[Any]]) -> FloatArray:  # noqa: N803
        """Return ``score_samples(X) - offset_``: negative means an outlier, as in scikit-learn.

        Raises ValueError on a matrix of the wrong shape, like :meth:`score_samples`.
        """
        decision: FloatArray = self.score_samples(X) - self.offset_
        return decision


def compile_isolation_forest(model: IsolationForest) -> CompiledIsolationForest:
    """Flatten a fitted scikit-learn IsolationForest into a :class:`CompiledIsolationForest`.

    Called by the model loader once per artifact, before the model is offered for serving.
    Raises ValueError if ``model`` is not an IsolationForest, is not fitted, or holds a tree
    that cannot be reproduced exactly (a NaN split threshold); the loader turns that into its
    own artifact error.
    """
    if not isinstance(model, IsolationForest):
        # ValueError, not TypeError: the loader handles "this artifact cannot be served" as
        # one case, whatever was wrong with the object it unpickled.
        message = f"expected a fitted IsolationForest, got {type(model).__name__}"
        raise ValueError(message)
    fitted_attributes = ("estimators_", "estimators_features_", "offset_", "n_features_in_")
    if not all(hasattr(model, name) for name in fitted_attributes):
        raise ValueError("the IsolationForest is not fitted (call fit before compiling it)")

    n_features = int(model.n_features_in_)
    # Mirrors _compute_chunked_score_samples: the trees were fitted on (and score) the columns
    # listed in estimators_features_ only when the forest subsampled features (each list then
    # has max_features < n_features entries); otherwise the list is a mere permutation of all
    # columns that was never applied.
    subsample_features = any(len(chosen) != n_features for chosen in model.estimators_features_)

    # Every tree at once: the trees' node arrays concatenated (global ids), walked breadth-first
    # together, then each tree's nodes put back together in its own breadth-first order (a
    # stable sort by tree), so the layout is the one a tree-by-tree walk gives; a forest of
    # 100 trees costs a few dozen numpy calls instead of some thirty per tree.
    trees = [estimator.tree_ for estimator in model.estimators_]
    sizes = np.array([tree.node_count for tree in trees], dtype=np.intp)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    tree_of = np.repeat(np.arange(len(trees), dtype=np.intp), sizes)
    children_left = np.concatenate([tree.children_left for tree in trees]).astype(np.intp)
    children_right = np.concatenate([tree.children_right for tree in trees]).astype(np.intp)
    is_leaf_node = children_left == _TREE_LEAF
    shift = starts[tree_of]
    left_of = np.where(is_leaf_node, _TREE_LEAF, children_left + shift)
    right_of = np.where(is_leaf_node, _TREE_LEAF, children_right + shift)
    walked, walked_depth = _breadth_first_order(left_of, right_of, starts)
    per_tree = np.argsort(tree_of[walked], kind="stable")
    order, depth = walked[per_tree], walked_depth[per_tree]
    new_id = np.empty_like(order)
    new_id[order] = np.arange(order.shape[0], dtype=np.intp)
    is_leaf = is_leaf_node[order]

    tree_feature = np.where(is_leaf, 0, np.concatenate(
        [tree.feature for tree in trees]).astype(np.intp)[order])
    if subsample_features:
        chosen = np.asarray(model.estimators_features_, dtype=np.intp)
        tree_feature = chosen[tree_of[order], tree_feature]
    tree_threshold = np.concatenate([tree.threshold for tree in trees]).astype(
        np.float64)[order]
    if np.isnan(tree_threshold[~is_leaf]).any():
        raise ValueError("a tree has a NaN split threshold; it cannot be compiled exactly")
    tree_threshold = np.where(is_leaf, np.inf, tree_threshold)
    ids = np.arange(order.shape[0], dtype=np.intp)
    left = np.where(is_leaf, ids, new_id[np.where(is_leaf, 0, left_of[order])])
    # A breadth-first walk appends both children of a node together, so this holds for
    # every internal node; it is what the traversal relies on.
    right = new_id[right_of[order][~is_leaf]]
    assert np.array_equal(right, left[~is_leaf] + 1)

    # scikit-learn: decision_path_lengths[leaf] + average_path_length[leaf] - 1.0, with
    # compute_node_depths counting the root as depth 1; same operands, same order.
    sklearn_depth = (depth + 1).astype(np.int64)
    samples = np.concatenate([tree.n_node_samples for tree in trees]).astype(np.int64)
    average = average_path_length(samples[order])
    missing_left = np.concatenate([tree.missing_go_to_left for tree in trees])
    n_levels = int(depth.max())

    # Scoring divides by c(_max_samples), the row count BaseBagging actually drew per tree;
    # it is private, so fall back to the public max_samples_ (the same number today).
    max_samples = getattr(model, "_max_samples", model.max_samples_)
    denominator = len(model.estimators_) * float(average_path_length([max_samples])[0])
    return CompiledIsolationForest(
        feature=_frozen(tree_feature.astype(np.intp)),
        threshold=_frozen(_float32_floor(tree_threshold)),
        left_child=_frozen(left),
        nan_goes_right=_frozen(~np.asarray(missing_left[order], dtype=bool) & ~is_leaf),
        leaf_path_length=_frozen((sklearn_depth + average - 1.0).astype(np.float64)),
        roots=_frozen(new_id[starts]),
        n_levels=n_levels,
        denominator=denominator,
        offset_=float(model.offset_),
        n_features_in_=n_features,
    )


def _breadth_first_order(
    children_left: Sequence[int] | IntArray, children_right: Sequence[int] | IntArray,
    roots: Sequence[int] | IntArray = (0,),
) -> tuple[IntArray, IntArray]:
    """Return node ids in breadth-first order (left before right) from ``roots`` (walked
    side by side, each tree's nodes in its own breadth-first order) and their depths.

    Vectorised per level rather than per node, so compiling a deep forest stays fast.
    """
    left = np.asarray(children_left, dtype=np.intp)
    right = np.asarray(children_right, dtype=np.intp)
    levels: list[IntArray] = []
    frontier = np.asarray(roots, dtype=np.intp)
    while frontier.shape[0]:
        levels.append(frontier)
        internal = frontier[left[frontier] != _TREE_LEAF]
        frontier = np.stack([left[internal], right[internal]], axis=1).ravel()
    order = np.concatenate(levels)
    depth = np.concatenate(
        [np.full(level.shape[0], number, dtype=np.intp) for number, level in enumerate(levels)]
    )
    return order, depth


def _float32_floor(threshold: FloatArray) -> npt.NDArray[np.float32]:
    """Round float64 thresholds down to float32, so float32 comparisons give float64 answers.

    The Cython tree tests ``float64(x32) <= t`` for a float32 value x32. The largest float32
    ``f <= t`` satisfies ``x32 <= f  <=>  x32 <= t`` for every float32 x32 (including the
    infinities), so comparing in float32 against f is exact and halves the memory traffic.
    """
    with np.errstate(over="ignore"):
        rounded = threshold.astype(np.float32)
    too_high = rounded.astype(np.float64) > threshold
    rounded[too_high] = np.nextafter(rounded[too_high], np.float32(-np.inf))
    return rounded


def _frozen(array: _ArrayT) -> _ArrayT:
    """Mark an array read-only: a compiled model is shared by every request thread."""
    array.setflags(write=False)
    return array
