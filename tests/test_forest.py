"""The compiled IsolationForest must score exactly like scikit-learn's score_samples.

Every check compares against scikit-learn itself (the installed version), within 1e-9, on
forests and inputs drawn by hypothesis: several forest shapes, row and feature subsampling,
bootstrap on and off, duplicated and constant columns, missing values, and query values on,
just beside, and far outside the split thresholds.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.ensemble import IsolationForest
from sklearn.ensemble._iforest import _average_path_length
from sklearn.tree import ExtraTreeRegressor

from modeld.core._forest import Forest
from modeld.core.forest import (
    CompiledIsolationForest,
    average_path_length,
    compile_isolation_forest,
)

TOLERANCE = 1e-9
# A float64 value that overflows float32: both scorers must see it as +/-inf.
BEYOND_FLOAT32 = 1e39

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ForestCase:
    """A fitted forest, its compiled twin, and the rows to score with both."""

    model: IsolationForest
    compiled: CompiledIsolationForest
    training: Matrix
    queries: Matrix


def sklearn_scores(model: IsolationForest, X: Matrix) -> npt.NDArray[np.float64]:
    # scikit-learn warns when its float32 cast overflows; the inf it produces is the point.
    with np.errstate(over="ignore"):
        return model.score_samples(X)


def sklearn_decision(model: IsolationForest, X: Matrix) -> npt.NDArray[np.float64]:
    with np.errstate(over="ignore"):
        return model.decision_function(X)


def split_points(model: IsolationForest) -> list[tuple[int, float]]:
    """(input column, float64 threshold) of every split in the forest."""
    points = []
    n_features = model.n_features_in_
    for estimator, chosen in zip(model.estimators_, model.estimators_features_, strict=True):
        tree = estimator.tree_
        internal = tree.children_left != -1
        columns = tree.feature[internal]
        if len(chosen) != n_features:
            columns = np.asarray(chosen)[columns]
        points.extend(zip(columns.tolist(), tree.threshold[internal].tolist(), strict=True))
    return points


def threshold_neighbours(threshold: float) -> list[float]:
    """The threshold itself and the float32 and float64 values right around it.

    The trees compare a float32 cast of the input against a float64 threshold, so these are
    the values where a wrong rounding would send a record down the other branch.
    """
    as_float32 = np.float32(threshold)
    return [
        threshold,
        float(as_float32),
        float(np.nextafter(as_float32, np.float32(np.inf))),
        float(np.nextafter(as_float32, np.float32(-np.inf))),
        float(np.nextafter(threshold, np.inf)),
        float(np.nextafter(threshold, -np.inf)),
    ]


def make_training(draw: Any, rng: np.random.Generator) -> Matrix:
    n_rows = draw(st.integers(2, 80), label="n_rows")
    n_features = draw(st.integers(1, 6), label="n_features")
    kind = draw(st.sampled_from(["normal", "small_integers", "mixed_scales"]), label="kind")
    if kind == "normal":
        training = rng.normal(size=(n_rows, n_features))
    elif kind == "small_integers":
        # Many ties: several rows land on the same values, some splits separate nothing.
        training = rng.integers(-3, 4, size=(n_rows, n_features)).astype(np.float64)
    else:
        scales = 10.0 ** rng.uniform(-4, 7, size=n_features)
        training = rng.normal(size=(n_rows, n_features)) * scales
    if n_features >= 2 and draw(st.booleans(), label="duplicate_column"):
        source, target = rng.choice(n_features, size=2, replace=False)
        training[:, target] = training[:, source]
    if draw(st.booleans(), label="constant_column"):
        training[:, rng.integers(n_features)] = rng.normal()
    if draw(st.booleans(), label="missing_in_training"):
        training[rng.random(training.shape) < 0.1] = np.nan
    return training


def make_queries(
    draw: Any, rng: np.random.Generator, model: IsolationForest, training: Matrix
) -> Matrix:
    n_rows, n_features = training.shape
    parts = [
        training[rng.integers(n_rows, size=8)],
        rng.normal(size=(8, n_features)) * np.nanstd(np.nan_to_num(training), axis=0),
        # Far outside the training range, on both sides, up to float32 overflow.
        rng.choice(
            np.array([-BEYOND_FLOAT32, -1e30, -1e6, 1e6, 1e30, BEYOND_FLOAT32, np.inf, -np.inf]),
            size=(8, n_features),
        ),
        rng.choice(np.array([0.0, -0.0, 1e-45, -1e-45, 1e-300]), size=(2, n_features)),
    ]
    points = split_points(model)
    if points:
        picked = rng.choice(len(points), size=min(len(points), 12), replace=False)
        for index in picked.tolist():
            column, threshold = points[index]
            rows = training[rng.integers(n_rows, size=6)].copy()
            rows[:, column] = threshold_neighbours(threshold)
            parts.append(rows)
    queries = np.concatenate(parts)
    if draw(st.booleans(), label="missing_in_queries"):
        queries[rng.random(queries.shape) < 0.15] = np.nan
    return np.ascontiguousarray(queries)


@st.composite
def forest_cases(draw: Any) -> ForestCase:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    training = make_training(draw, rng)
    n_rows, n_features = training.shape
    max_samples = draw(
        st.one_of(
            st.just("auto"),
            st.integers(1, n_rows),
            st.floats(0.5, 1.0),
        ),
        label="max_samples",
    )
    max_features = draw(
        st.one_of(st.integers(1, n_features), st.floats(0.05, 1.0)), label="max_features"
    )
    model = IsolationForest(
        n_estimators=draw(st.integers(1, 8), label="n_estimators"),
        max_samples=max_samples,
        max_features=max_features,
        bootstrap=draw(st.booleans(), label="bootstrap"),
        contamination=draw(st.sampled_from(["auto", 0.05, 0.3]), label="contamination"),
        random_state=int(rng.integers(2**31)),
    ).fit(training)
    queries = make_queries(draw, rng, model, training)
    return ForestCase(model, compile_isolation_forest(model), training, queries)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=forest_cases())
def test_batch_scores_match_sklearn(case: ForestCase) -> None:
    np.testing.assert_allclose(
        case.compiled.score_samples(case.queries),
        sklearn_scores(case.model, case.queries),
        rtol=0,
        atol=TOLERANCE,
    )
    np.testing.assert_allclose(
        case.compiled.decision_function(case.queries),
        sklearn_decision(case.model, case.queries),
        rtol=0,
        atol=TOLERANCE,
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=forest_cases(), data=st.data())
def test_single_record_scores_match_sklearn(case: ForestCase, data: st.DataObject) -> None:
    # One record takes its own, leaner code path; check it record by record.
    rows = data.draw(
        st.lists(st.integers(0, case.queries.shape[0] - 1), min_size=1, max_size=6),
        label="rows",
    )
    for row in rows:
        record = case.queries[row : row + 1]
        np.testing.assert_allclose(
            case.compiled.score_samples(record),
            sklearn_scores(case.model, record),
            rtol=0,
            atol=TOLERANCE,
        )


def test_batches_larger_than_one_chunk_match_sklearn() -> None:
    # 100 trees and 2,000 records: several scratch-bounded chunks plus a partial last one.
    rng = np.random.default_rng(7)
    training = rng.normal(size=(3_000, 12))
    training[:, 5] = training[:, 2]
    model = IsolationForest(n_estimators=100, max_features=0.6, random_state=3).fit(training)
    compiled = compile_isolation_forest(model)
    queries = rng.normal(size=(2_000, 12)) * 3.0
    queries[rng.random(queries.shape) < 0.01] = np.nan
    np.testing.assert_allclose(
        compiled.score_samples(queries), sklearn_scores(model, queries), rtol=0, atol=TOLERANCE
    )


def test_one_sample_trees_score_like_sklearn() -> None:
    # max_samples=1: every tree is a single leaf and c(1) = 0, so scikit-learn's denominator
    # is zero and it falls back to a ratio of 1 (score -0.5) for every record.
    rng = np.random.default_rng(11)
    training = rng.normal(size=(30, 3))
    model = IsolationForest(n_estimators=5, max_samples=1, random_state=0).fit(training)
    queries = rng.normal(size=(4, 3))
    compiled = compile_isolation_forest(model)
    np.testing.assert_allclose(
        compiled.score_samples(queries), sklearn_scores(model, queries), rtol=0, atol=TOLERANCE
    )
    np.testing.assert_allclose(
        compiled.score_samples(queries[:1]),
        sklearn_scores(model, queries[:1]),
        rtol=0,
        atol=TOLERANCE,
    )


def test_average_path_length_matches_sklearn() -> None:
    sizes = np.array([0, 1, 2, 3, 4, 5, 17, 255, 256, 257, 10_000, 2**31], dtype=np.int64)
    np.testing.assert_array_equal(average_path_length(sizes), _average_path_length(sizes))


@pytest.mark.parametrize("width", [3, 5])
def test_wrong_width_names_expected_and_received(width: int) -> None:
    rng = np.random.default_rng(0)
    model = IsolationForest(n_estimators=2, random_state=0).fit(rng.normal(size=(20, 4)))
    compiled = compile_isolation_forest(model)
    records = rng.normal(size=(2, width))
    with pytest.raises(ValueError, match=rf"4 feature columns, got shape \(2, {width}\)"):
        compiled.score_samples(records)
    with pytest.raises(ValueError, match="4 feature columns"):
        compiled.decision_function(records[:1])


def test_one_dimensional_input_is_rejected() -> None:
    rng = np.random.default_rng(0)
    model = IsolationForest(n_estimators=2, random_state=0).fit(rng.normal(size=(20, 4)))
    compiled = compile_isolation_forest(model)
    with pytest.raises(ValueError, match=r"got shape \(4,\)"):
        compiled.score_samples(rng.normal(size=4))


def test_unfitted_forest_is_rejected() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        compile_isolation_forest(IsolationForest())


def test_other_estimators_are_rejected() -> None:
    rng = np.random.default_rng(0)
    tree = ExtraTreeRegressor(random_state=0).fit(rng.normal(size=(10, 2)), rng.normal(size=10))
    with pytest.raises(ValueError, match="got ExtraTreeRegressor"):
        compile_isolation_forest(tree)  # type: ignore[arg-type]


def test_compiled_arrays_are_read_only() -> None:
    # One compiled model is shared by every request thread; nothing may change it in place.
    rng = np.random.default_rng(0)
    model = IsolationForest(n_estimators=2, random_state=0).fit(rng.normal(size=(20, 4)))
    compiled = compile_isolation_forest(model)
    with pytest.raises(ValueError, match="read-only"):
        compiled.threshold[0] = 0.0


@pytest.mark.parametrize("n_records", [7, 8, 9, 255, 256, 257, 263, 520])
def test_batches_around_the_lane_and_block_sizes_match_sklearn(n_records: int) -> None:
    # The walk takes 8 records side by side in blocks of 256, a block of under 8 records one
    # record at a time, and checks for NaN per block: a NaN only in the last record.
    rng = np.random.default_rng(n_records)
    training = rng.normal(size=(500, 5))
    model = IsolationForest(n_estimators=13, random_state=1).fit(training)
    queries = rng.normal(size=(n_records, 5)) * 2.0
    queries[-1, 2] = np.nan
    np.testing.assert_allclose(
        compile_isolation_forest(model).score_samples(queries),
        sklearn_scores(model, queries),
        rtol=0,
        atol=TOLERANCE,
    )


def small_forest_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    model = IsolationForest(n_estimators=3, random_state=0).fit(rng.normal(size=(40, 4)))
    return {name: array.copy() for name, array in compile_isolation_forest(model).to_arrays().items()}


def first_internal(arrays: dict[str, np.ndarray]) -> int:
    left = arrays["left_child"]
    return int(np.flatnonzero(left != np.arange(left.size))[0])


def set_at(name: str, value: Any, where: Any = None) -> Any:
    def damage(arrays: dict[str, np.ndarray]) -> None:
        arrays[name][first_internal(arrays) if where is None else where] = value
    return damage


def replace(name: str, value: Any) -> Any:
    def damage(arrays: dict[str, np.ndarray]) -> None:
        arrays[name] = value(arrays[name])
    return damage


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (set_at("left_child", 10**6), ValueError, r"left_child\[0\] = 1000000: a child must follow"),
        (set_at("left_child", -5), ValueError, r"left_child\[0\] = -5"),
        # a child before its parent could make a cycle
        (set_at("left_child", 0, where=1), ValueError, r"left_child\[1\] = 0"),
        (set_at("feature", 4), ValueError, r"feature\[0\] = 4 is not a column of the 4"),
        (set_at("feature", -1), ValueError, r"feature\[0\] = -1"),
        (set_at("roots", 1, where=0), ValueError, r"roots must start at 0"),
        (replace("roots", lambda roots: roots[::-1].copy()), ValueError, r"roots must"),
        (replace("n_levels", lambda n: np.asarray(int(n) + 1)), ValueError,
         r"n_levels is \d+ but the deepest leaf"),
        (replace("threshold", lambda t: t.astype(np.float64)), TypeError,
         r"threshold must be an array of float32"),
        (replace("left_child", lambda c: c.astype(np.float64)), TypeError,
         r"left_child must be an array of 32- or 64-bit integers"),
        (replace("feature", lambda f: f[:-1].copy()), ValueError, r"node arrays differ in length"),
        (replace("leaf_path_length", lambda p: np.repeat(p, 2)[::2]), TypeError,
         r"leaf_path_length must be a C-contiguous array of float64"),
    ],
)
def test_node_arrays_that_are_not_a_forest_are_refused(
    damage: Any, error: type[Exception], message: str
) -> None:
    # A bundle's arrays come from disk; the compiled walk trusts them once they are built.
    arrays = small_forest_arrays()
    damage(arrays)
    with pytest.raises(error, match=message):
        CompiledIsolationForest.from_arrays(arrays)


def walk_of(arrays: dict[str, np.ndarray]) -> Forest:
    """The compiled walk of a forest's arrays, called directly (no numpy around it)."""
    return Forest(arrays["feature"], arrays["threshold"], arrays["left_child"],
                  arrays["nan_goes_right"], arrays["leaf_path_length"], arrays["roots"],
                  int(arrays["n_levels"]), int(arrays["n_features_in_"]))


def test_the_walk_refuses_records_it_cannot_read() -> None:
    walk = walk_of(small_forest_arrays())
    x = np.zeros((3, 4), dtype=np.float32)
    out = np.empty(3)
    walk.path_length_sums(x, out)
    assert walk.n_trees == 3 and np.all(out > 0)
    with pytest.raises(TypeError, match="x must be an array of float32"):
        walk.path_length_sums(x.astype(np.float64), out)
    with pytest.raises(TypeError, match="x must be a C-contiguous array"):
        walk.path_length_sums(np.zeros((4, 3), dtype=np.float32).T, out)
    with pytest.raises(ValueError, match=r"4 feature columns, got shape \(3, 5\)"):
        walk.path_length_sums(np.zeros((3, 5), dtype=np.float32), out)
    with pytest.raises(ValueError, match="out has 2 entries for 3 records"):
        walk.path_length_sums(x, np.empty(2))
    out.setflags(write=False)
    with pytest.raises(TypeError, match="out must be a C-contiguous writable array"):
        walk.path_length_sums(x, out)


def test_a_large_batch_lets_other_threads_run_and_a_small_one_does_not() -> None:
    # With a switch interval far longer than the test, another Python thread runs only when
    # this one gives up the GIL: a large batch's walk does (an HTTP thread is not held up
    # behind it), a small one keeps it (giving it up could cost a switch interval to get
    # it back). The other thread counts its wake-ups from short sleeps.
    rng = np.random.default_rng(5)
    model = IsolationForest(n_estimators=100, random_state=0).fit(rng.normal(size=(600, 6)))
    walk = walk_of(compile_isolation_forest(model).to_arrays())
    small = np.zeros((100, 6), dtype=np.float32)  # 10,000 walks: under the 16,384
    large = rng.normal(size=(20_000, 6)).astype(np.float32)
    out_small, out_large = np.empty(100), np.empty(20_000)
    wakeups = [0]
    stop = threading.Event()

    def sleeper() -> None:
        while not stop.is_set():
            time.sleep(0.0002)
            wakeups[0] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    thread = threading.Thread(target=sleeper, name="sleeper")
    try:
        thread.start()
        for _ in range(20):
            before = wakeups[0]
            walk.path_length_sums(small, out_small)
            assert wakeups[0] == before
        # Each large walk takes tens of milliseconds; the sleeper needs to be scheduled once.
        ran_during_walk = False
        for _ in range(200):
            before = wakeups[0]
            walk.path_length_sums(large, out_large)
            if wakeups[0] != before:
                ran_during_walk = True
                break
        assert ran_during_walk
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        thread.join()
