"""Explanations: exact TreeSHAP on the compiled isolation trees, neighbour deviations for LOF,
and the words, on models trained on simulated WiFi logs."""

from __future__ import annotations

import copy
import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor

from modeld.core._forest import Patterns
from modeld.core.explain import (
    ForestExplainer,
    NeighbourExplainer,
    ReferenceWords,
    describe_value,
)
from modeld.core.features import FeatureExtractor
from modeld.core.forest import average_path_length, compile_isolation_forest
from modeld.daemon.producer.simulator import simulate_wifi_logs
from modeld.daemon.producer.trainer import DEFAULT_FEATURES

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def wifi() -> dict[str, Any]:
    logs = simulate_wifi_logs(1500, NOW - timedelta(days=3), seed=4, anomaly_burst=True)
    matrix = FeatureExtractor(DEFAULT_FEATURES).transform(logs)
    forest = IsolationForest(n_estimators=30, random_state=0).fit(matrix)
    return {"logs": logs, "matrix": matrix, "model": forest,
            "explainer": ForestExplainer(compile_isolation_forest(forest))}


def test_contributions_add_up_to_score_minus_expected_score(wifi: dict[str, Any]) -> None:
    explainer, model, matrix = wifi["explainer"], wifi["model"], wifi["matrix"]
    rows = matrix[:200]
    scores = -model.score_samples(rows)
    words = ReferenceWords(DEFAULT_FEATURES, [None] * len(DEFAULT_FEATURES))
    explanations = explainer.explain_many(rows, scores, rows, words)
    for explanation, score in zip(explanations, scores, strict=True):
        total = sum(c.contribution for c in explanation.contributions)
        assert total == pytest.approx(score - explanation.expected_score, abs=1e-12)
        sizes = [abs(c.contribution) for c in explanation.contributions]
        assert sizes == sorted(sizes, reverse=True)
    # the path lengths behind them are scikit-learn's own
    _, paths = explainer.path_contributions(rows)
    c = float(average_path_length([model.max_samples_])[0])
    np.testing.assert_allclose(2.0 ** (-paths / c), scores, rtol=0, atol=1e-12)


def test_expected_score_is_the_trees_own_samples(wifi: dict[str, Any]) -> None:
    """The cover recovered from the compiled arrays is the training samples each tree saw."""
    model, matrix = wifi["model"], wifi["matrix"]
    per_tree = []
    for tree, samples in zip(model.estimators_, model.estimators_samples_, strict=True):
        leaves = tree.apply(matrix[samples].astype(np.float32))
        depth = np.asarray(tree.decision_path(matrix[samples].astype(np.float32)).sum(axis=1)
                           ).ravel() - 1
        per_tree.append(np.mean(depth + average_path_length(tree.tree_.n_node_samples[leaves])))
    assert wifi["explainer"].expected_path == pytest.approx(np.mean(per_tree), abs=1e-9)


def _brute_force_shapley(model: IsolationForest, x: np.ndarray) -> np.ndarray:
    """Path-dependent Shapley values of the mean path length, by enumerating every subset."""
    width = x.shape[0]

    def conditional(tree: Any, subset: frozenset[int], node: int = 0, depth: int = 0) -> float:
        t = tree.tree_
        if t.children_left[node] == -1:
            return depth + float(average_path_length([t.n_node_samples[node]])[0])
        left, right = t.children_left[node], t.children_right[node]
        if int(t.feature[node]) in subset:
            child = left if np.float32(x[t.feature[node]]) <= t.threshold[node] else right
            return conditional(tree, subset, child, depth + 1)
        n = t.n_node_samples[node]
        return (t.n_node_samples[left] / n * conditional(tree, subset, left, depth + 1)
                + t.n_node_samples[right] / n * conditional(tree, subset, right, depth + 1))

    def value(subset: frozenset[int]) -> float:
        return float(np.mean([conditional(tree, subset) for tree in model.estimators_]))

    phi = np.zeros(width)
    players = range(width)
    for i in players:
        others = [j for j in players if j != i]
        for size in range(width):
            weight = math.factorial(size) * math.factorial(width - size - 1) / math.factorial(width)
            for chosen in itertools.combinations(others, size):
                subset = frozenset(chosen)
                phi[i] += weight * (value(subset | {i}) - value(subset))
    return phi


def test_tree_shap_equals_the_shapley_values_by_enumeration() -> None:
    """On a forest small enough to enumerate every coalition (4 features, shallow trees)."""
    rng = np.random.default_rng(3)
    data = rng.normal(size=(64, 4))
    model = IsolationForest(n_estimators=5, max_samples=32, random_state=1).fit(data)
    explainer = ForestExplainer(compile_isolation_forest(model))
    for x in (data[0], np.array([4.0, -3.0, 0.1, 0.0])):
        fast, _ = explainer.path_contributions(x[None, :])
        np.testing.assert_allclose(fast[0], _brute_force_shapley(model, x), atol=1e-10)


def test_matches_shap_tree_explainer(wifi: dict[str, Any]) -> None:
    """Development check against the reference implementation, where shap installs."""
    shap = pytest.importorskip("shap")
    rows = wifi["matrix"][:100]
    for model in (wifi["model"],
                  IsolationForest(n_estimators=20, max_features=0.5, random_state=2)
                  .fit(wifi["matrix"])):
        reference = copy.deepcopy(model)
        if all(len(f) == model.n_features_in_ for f in model.estimators_features_):
            # scikit-learn never applies this per-tree permutation when no feature is
            # subsampled, but shap maps every tree through it: hand shap the identity.
            reference.estimators_features_ = [np.arange(model.n_features_in_)
                                              for _ in model.estimators_features_]
        expected = shap.TreeExplainer(reference)
        ours = ForestExplainer(compile_isolation_forest(model))
        values, _ = ours.path_contributions(rows)
        np.testing.assert_allclose(values, expected.shap_values(rows), atol=1e-9)
        assert ours.expected_path == pytest.approx(float(np.ravel(expected.expected_value)[0]))


def test_the_flagged_feature_leads_a_deauth_flood(wifi: dict[str, Any]) -> None:
    explainer, model = wifi["explainer"], wifi["model"]
    flood = {"timestamp": "2026-11-28T03:12:09Z", "host": "ap-2f-07", "process": "hostapd",
             "message": "wlan0: STA 02:00:00:13:37:01 IEEE 802.11: deauthenticated due to "
                        "local deauth request (reason 7)"}
    row = FeatureExtractor(DEFAULT_FEATURES).transform([flood])
    words = ReferenceWords(DEFAULT_FEATURES, [np.quantile(wifi["matrix"][:, i],
                                                          (np.arange(256) + 0.5) / 256)
                                              for i in range(len(DEFAULT_FEATURES))])
    [explanation] = explainer.explain_many(row, -model.score_samples(row), row, words)
    assert explanation.score > explanation.expected_score
    assert explanation.contributions[0].contribution > 0
    assert "of reference records" in explanation.summary or "percentile" in explanation.summary


def test_neighbour_deviation_names_the_odd_feature() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(400, 3))
    lof = LocalOutlierFactor(n_neighbors=20, novelty=True).fit(rows)
    explainer = NeighbourExplainer(lof._fit_X, lof.n_neighbors)
    x = np.array([[0.1, 6.0, -0.2]])
    words = ReferenceWords(("a", "b", "c"), [None, None, None])
    [explanation] = explainer.explain_many(x, -lof.score_samples(x), x, words)
    assert explanation.method == "neighbour_deviation"
    assert explanation.contributions[0].feature == "b"
    assert explanation.contributions[0].contribution > 3
    assert explanation.expected_score is None


def test_words_against_the_reference() -> None:
    levels = (np.arange(1000) + 0.5) / 1000
    eap = np.quantile(np.r_[np.zeros(991), np.ones(9)], levels, method="inverted_cdf")
    assert describe_value("is_eap_failure", 1.0, eap) == (
        "is_eap_failure = 1 (0.9% of reference records)")
    signal = np.quantile(np.random.default_rng(0).normal(-60, 6, 5000), levels)
    assert describe_value("signal_dbm", -84.0, signal) == (
        "signal_dbm -84 dBm (below the reference's 1st percentile)")
    assert describe_value("signal_dbm", -60.0, signal).endswith("percentile)")
    assert describe_value("message_length", 30.0, None) == "message_length = 30"
    assert describe_value("signal_dbm", float("nan"), signal) == "signal_dbm missing"


def test_explainer_shared_by_threads_gives_each_its_own_answer(wifi: dict[str, Any]) -> None:
    """The compiled pass of a few records runs without the GIL and keeps no scratch in the
    explainer."""
    explainer, rows = wifi["explainer"], wifi["matrix"][:64]
    alone = [explainer.path_contributions(rows[i::4])[0] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            together = list(pool.map(lambda i: explainer.path_contributions(rows[i::4])[0],
                                     range(4)))
            for mine, expected in zip(together, alone, strict=True):
                np.testing.assert_array_equal(mine, expected)
    assert explainer.path_contributions(rows[:0])[0].shape == (0, rows.shape[1])


def test_wrong_width_is_a_clear_error(wifi: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="feature columns"):
        wifi["explainer"].path_contributions(np.zeros((1, 3)))


def test_integrated_leaves_equal_the_tables(wifi: dict[str, Any]) -> None:
    """Leaves wider than a table holds are integrated per record: the same values, and on the
    enumerable forest the Shapley values themselves."""
    rows = wifi["matrix"][:50].copy()
    rows[::7, 2] = np.nan  # a missing value goes where each node says, in both
    rows[::5, 0] = np.nan
    forest = compile_isolation_forest(wifi["model"])
    tabled, tabled_paths = ForestExplainer(forest).path_contributions(rows)
    integrated, integrated_paths = ForestExplainer(forest, table_slots=0).path_contributions(rows)
    np.testing.assert_allclose(integrated, tabled, rtol=0, atol=1e-12)
    np.testing.assert_allclose(integrated_paths, tabled_paths, rtol=0, atol=1e-12)
    rng = np.random.default_rng(3)
    data = rng.normal(size=(64, 4))
    model = IsolationForest(n_estimators=5, max_samples=32, random_state=1).fit(data)
    mixed = ForestExplainer(compile_isolation_forest(model), table_slots=2)
    x = np.array([4.0, -3.0, 0.1, 0.0])
    np.testing.assert_allclose(mixed.path_contributions(x[None, :])[0][0],
                               _brute_force_shapley(model, x), atol=1e-10)


def _patterns(**changed: Any) -> Patterns:
    """One twig of two tests (feature 0 must go right, feature 1 left) and one slot, on
    feature 1: pattern 0 (agrees with both) is worth 10, pattern 1 (disagrees) 20."""
    arrays: dict[str, Any] = {
        "test_feature": np.array([0, 1]), "test_threshold": np.array([0.5, 0.5], np.float32),
        "test_nan_right": np.array([False, True]), "test_goes_right": np.array([True, False]),
        "test_bit": np.array([0, 0]), "twig_tests": np.array([0, 2]),
        "slot_feature": np.array([1]), "twig_slots": np.array([0, 1]),
        "twig_values": np.array([0]), "values": np.array([10.0, 20.0]), "n_features": 2}
    return Patterns(**(arrays | changed))


def test_compiled_patterns_read_the_row_of_the_records_pattern() -> None:
    out = np.zeros((4, 2))
    x = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, np.nan]], dtype=np.float32)
    _patterns().add(x, out)
    np.testing.assert_array_equal(out, [[0, 10], [0, 20], [0, 20], [0, 20]])


@pytest.mark.parametrize(("changed", "error", "message"), [
    ({"test_feature": np.array([0, 2])}, ValueError, r"test_feature\[1\] = 2 is not a column"),
    ({"slot_feature": np.array([-1])}, ValueError, r"slot_feature\[0\] = -1"),
    ({"test_bit": np.array([0, 16])}, ValueError, r"test_bit\[1\] = 16"),
    ({"twig_tests": np.array([0, 3])}, ValueError, r"twig_tests\[1\] = 3"),
    ({"twig_slots": np.array([1, 1])}, ValueError, r"twig_slots\[0\] = 1"),
    ({"test_bit": np.array([0, 1])}, ValueError, r"twig_values\[0\] = 0: 4 rows"),
    ({"twig_values": np.array([1])}, ValueError, r"twig_values\[0\] = 1"),
    ({"test_threshold": np.array([0.5, 0.5])}, TypeError, "test_threshold must be an array of "
                                                           "float32"),
    ({"test_goes_right": np.array([True])}, ValueError, "test arrays differ in length"),
    ({"twig_slots": np.array([0])}, ValueError, "need one more entry"),
])
def test_compiled_patterns_refuse_indices_they_cannot_trust(
        changed: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        _patterns(**changed)


def test_compiled_patterns_refuse_a_matrix_of_another_shape() -> None:
    patterns = _patterns()
    with pytest.raises(ValueError, match="feature columns"):
        patterns.add(np.zeros((1, 3), np.float32), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="as many rows"):
        patterns.add(np.zeros((2, 2), np.float32), np.zeros((1, 2)))
    with pytest.raises(TypeError, match="x must be an array of float32"):
        patterns.add(np.zeros((1, 2)), np.zeros((1, 2)))
