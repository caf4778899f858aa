"""Servable bundles: scores equal scikit-learn's, damage is refused, and serving never unpickles.

The property tests fit real estimators over many shapes and parameters (hypothesis), write
their bundle as the isolated child does, read it back memory-mapped and compare the rebuilt
scorer with scikit-learn's own ``score_samples`` and ``predict`` on fresh rows.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.covariance import EllipticEnvelope
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from modeld.core.bundle import (
    WARMUP_TOLERANCE,
    EstimatorFacts,
    read_bundle,
    servable_from_bundle,
    write_bundle,
)
from modeld.core.errors import BundleInvalid, EstimatorUnbundled
from modeld.core.loader import LoadedArtifact
from modeld.core.registry import Registry
from modeld.core.validate import ValidationPolicy, validate_folder
from tests.helpers import (
    FEATURES,
    DaemonProcess,
    artifact_files,
    records,
    scaled_artifact,
    write_in_place,
    write_renamed,
)
from tests.test_core import NOW, drop, make_manager

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Spec:
    version: str
    feature_names: tuple[str, ...]
    warmup: tuple[Any, ...] = ()


def data(seed: int, rows: int, width: int, rounded: bool) -> np.ndarray:
    """Training-like rows; ``rounded`` makes ties and duplicates (neighbour ties in LOF)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=rng.uniform(-5, 5, width), scale=rng.uniform(0.5, 4, width),
                   size=(rows, width))
    return np.round(x, 0) if rounded else x


def check(model: Any, scaler: Any, x_fit: np.ndarray, seed: int) -> None:
    """Bundle ``model`` (fitted on ``x_fit``, scaled by ``scaler``) and compare with sklearn."""
    width = x_fit.shape[1]
    names = tuple(f"f{i}" for i in range(width))
    loaded = LoadedArtifact(model, scaler, ())
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "v"
        folder.mkdir()
        write_bundle(loaded, folder, folder / "bundle", Spec("v", names), 16)
        bundle = read_bundle(folder / "bundle", "v")
        assert bundle.kind is not None, bundle.manifest
        servable = servable_from_bundle(bundle, Spec("v", names))
        rng = np.random.default_rng(seed + 1)
        spread = x_fit.std(axis=0) + 1e-3
        probe = np.vstack([
            x_fit[rng.integers(0, len(x_fit), 20)],  # training points (ties, zero distances)
            x_fit.mean(axis=0) + rng.normal(size=(60, width)) * spread,
            x_fit.mean(axis=0) + rng.normal(size=(20, width)) * spread * 6,  # outliers
        ])
        scores, flags = servable.score_matrix(probe)
        x = probe if scaler is None else scaler.transform(probe)
        expected = -model.score_samples(x)
        assert np.max(np.abs(scores - expected)) <= WARMUP_TOLERANCE
        decision = model.decision_function(x)
        clear = np.abs(decision) > 1e-9  # a score on the threshold may round either way
        assert np.array_equal(flags[clear], (model.predict(x) == -1)[clear])
        # no reference.npz: the confidence ranks against scikit-learn's warmup scores
        assert np.allclose(servable.reference_scores, np.sort(servable.warmup_scores),
                           rtol=0, atol=WARMUP_TOLERANCE)


@PROPERTY
@given(seed=st.integers(0, 10_000), rows=st.integers(20, 400), width=st.integers(1, 8),
       n_estimators=st.integers(1, 40), max_samples=st.sampled_from(["auto", 0.3, 1.0, 17]),
       max_features=st.sampled_from([1.0, 0.5, 1]),
       contamination=st.sampled_from(["auto", 0.01, 0.1, 0.3]),
       scaled=st.booleans(), rounded=st.booleans())
def test_isolation_forest_bundles_score_as_sklearn(
        seed: int, rows: int, width: int, n_estimators: int, max_samples: Any,
        max_features: Any, contamination: Any, scaled: bool, rounded: bool) -> None:
    x = data(seed, rows, width, rounded)
    scaler = StandardScaler().fit(x) if scaled else None
    fit_x = x if scaler is None else scaler.transform(x)
    model = IsolationForest(n_estimators=n_estimators, max_samples=max_samples,
                            max_features=max_features, contamination=contamination,
                            random_state=seed).fit(fit_x)
    check(model, scaler, x, seed)


@PROPERTY
@given(seed=st.integers(0, 10_000), rows=st.integers(25, 300), width=st.integers(1, 6),
       n_neighbors=st.integers(1, 30),
       metric=st.sampled_from([("minkowski", 2), ("minkowski", 1), ("minkowski", 3),
                               ("euclidean", 2), ("manhattan", 2), ("chebyshev", 2),
                               ("cosine", 2)]),
       algorithm=st.sampled_from(["auto", "kd_tree", "ball_tree", "brute"]),
       contamination=st.sampled_from(["auto", 0.05, 0.2]),
       scaled=st.booleans(), rounded=st.booleans())
def test_local_outlier_factor_bundles_score_as_sklearn(
        seed: int, rows: int, width: int, n_neighbors: int, metric: tuple[str, int],
        algorithm: str, contamination: Any, scaled: bool, rounded: bool) -> None:
    name, p = metric
    if name == "cosine":
        algorithm = "brute"  # the trees do not support it
    x = data(seed, rows, width, rounded)
    scaler = StandardScaler().fit(x) if scaled else None
    fit_x = x if scaler is None else scaler.transform(x)
    model = LocalOutlierFactor(n_neighbors=min(n_neighbors, rows - 1), metric=name, p=p, algorithm=algorithm,
                               contamination=contamination, novelty=True).fit(fit_x)
    check(model, scaler, x, seed)


@PROPERTY
@given(seed=st.integers(0, 10_000), rows=st.integers(30, 300), width=st.integers(1, 6),
       kernel=st.sampled_from(["rbf", "linear", "poly", "sigmoid"]),
       nu=st.sampled_from([0.05, 0.2, 0.5]), gamma=st.sampled_from(["scale", "auto", 0.3]),
       degree=st.integers(1, 4), scaled=st.booleans())
def test_one_class_svm_bundles_score_as_sklearn(
        seed: int, rows: int, width: int, kernel: str, nu: float, gamma: Any, degree: int,
        scaled: bool) -> None:
    x = data(seed, rows, width, rounded=False)
    scaler = StandardScaler().fit(x) if scaled else None
    fit_x = x if scaler is None else scaler.transform(x)
    model = OneClassSVM(kernel=kernel, nu=nu, gamma=gamma, degree=degree, coef0=0.5).fit(fit_x)
    check(model, scaler, x, seed)


@PROPERTY
@given(seed=st.integers(0, 10_000), rows=st.integers(40, 300), width=st.integers(1, 6),
       contamination=st.sampled_from([0.01, 0.1, 0.3]), scaled=st.booleans())
def test_elliptic_envelope_bundles_score_as_sklearn(
        seed: int, rows: int, width: int, contamination: float, scaled: bool) -> None:
    x = data(seed, rows, width, rounded=False)
    scaler = StandardScaler().fit(x) if scaled else None
    fit_x = x if scaler is None else scaler.transform(x)
    model = EllipticEnvelope(contamination=contamination, random_state=seed).fit(fit_x)
    check(model, scaler, x, seed)


# damage and refusals -------------------------------------------------------------------


def written(tmp_path: Path, model: Any = None, scaler: Any = None) -> Path:
    x = data(0, 200, len(FEATURES), rounded=False)
    model = model or IsolationForest(n_estimators=20, random_state=0).fit(x)
    folder = tmp_path / "v"
    folder.mkdir()
    write_bundle(LoadedArtifact(model, scaler, ()), folder, folder / "bundle",
                 Spec("v", FEATURES), 16)
    return folder / "bundle"


def test_a_bundle_whose_files_changed_is_refused_by_its_digest(tmp_path: Path) -> None:
    path = written(tmp_path)
    digest = read_bundle(path, "v").digest
    rows = np.load(path / "warmup_rows.npy")
    np.save(path / "warmup_rows.npy", rows + 1.0)
    with pytest.raises(BundleInvalid, match=r"hash to .* the registry recorded"):
        read_bundle(path, "v", digest)


def test_a_bundle_that_scores_unlike_sklearn_is_refused_by_the_warmup(tmp_path: Path) -> None:
    path = written(tmp_path)
    scores = np.load(path / "warmup_scores.npy")
    scores[3] += 1e-6
    np.save(path / "warmup_scores.npy", scores)
    with pytest.raises(BundleInvalid, match=r"warmup row 3 scores .*more than 1e-09 apart"):
        servable_from_bundle(read_bundle(path, "v"), Spec("v", FEATURES))


def test_a_bundle_never_unpickles_an_object_array(tmp_path: Path) -> None:
    path = written(tmp_path)
    np.save(path / "warmup_rows.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BundleInvalid, match=r"warmup_rows.npy cannot be read"):
        read_bundle(path, "v")


def test_an_unknown_format_and_a_missing_array_are_named(tmp_path: Path) -> None:
    path = written(tmp_path)
    manifest = json.loads((path / "bundle.json").read_text())
    (path / "model.roots.npy").unlink()
    with pytest.raises(BundleInvalid, match=r"array 'model.roots' is missing"):
        read_bundle(path, "v")
    (path / "bundle.json").write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(BundleInvalid, match=r"format 99, not 1"):
        read_bundle(path, "v")


def test_a_forest_whose_nodes_point_outside_its_trees_is_refused(tmp_path: Path) -> None:
    # The daemon walks a bundle's trees in C without bounds checks: a child index out of
    # range must be refused when the forest is built, never followed.
    path = written(tmp_path)
    left = np.load(path / "model.left_child.npy")
    internal = np.flatnonzero(left != np.arange(left.size))
    left[internal[-1]] = left.size + 1000
    np.save(path / "model.left_child.npy", left)
    with pytest.raises(BundleInvalid, match=rf"left_child\[{internal[-1]}\] = {left.size + 1000}"):
        servable_from_bundle(read_bundle(path, "v"), Spec("v", FEATURES))


def city_block(a: np.ndarray, b: np.ndarray) -> float:
    """A callable metric: a LocalOutlierFactor with one has no bundle form."""
    return float(np.abs(a - b).sum())


def test_an_estimator_without_a_bundle_form_needs_the_setting(tmp_path: Path) -> None:
    x = data(0, 200, len(FEATURES), rounded=False)
    lof = LocalOutlierFactor(novelty=True, metric=city_block, algorithm="brute").fit(x)
    path = written(tmp_path, model=lof)
    bundle = read_bundle(path, "v")
    assert bundle.kind is None and bundle.facts.model_type == "LocalOutlierFactor"
    with pytest.raises(EstimatorUnbundled, match=r"security.allow_unbundled_estimators"):
        servable_from_bundle(bundle, Spec("v", FEATURES))

    folder = tmp_path / "artifact"
    write_in_place(folder, artifact_files("v", model=lof, model_type="LocalOutlierFactor",
                                          created_at="2026-01-01T00:00:00Z"))
    refused = validate_folder(folder, ValidationPolicy(), NOW)
    assert not refused.report.accepted
    assert "has no servable bundle form" in refused.report.reason
    allowed = validate_folder(folder, ValidationPolicy(), NOW, allow_unbundled=True)
    assert allowed.report.accepted and allowed.servable is not None
    assert np.allclose(allowed.servable.score_matrix(x[:5])[0], -lof.score_samples(x[:5]))


def test_facts_survive_their_json(tmp_path: Path) -> None:
    scaler = StandardScaler().fit(data(0, 50, 4, rounded=False))
    loaded = LoadedArtifact(IsolationForest(n_estimators=7).fit(np.ones((10, 4))), scaler,
                            ("model.joblib: trained with 1.0",))
    facts = EstimatorFacts.of(loaded)
    assert EstimatorFacts.from_dict(json.loads(json.dumps(facts.to_dict()))) == facts
    assert facts.n_estimators == 7 and facts.scaler_n_features_in == 4


# the manager: bundles recorded, stored versions converted once -------------------------


def test_imports_record_a_bundle_and_stored_versions_are_bundled_once(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    drop(manager, "v1", artifact_files("v1", created_at="2026-01-01T00:00:00Z"))
    manager.poll_once()
    row = manager.registry.bundle("v1")
    assert row is not None and row.size > 0
    assert (manager.store.bundle_path(row.digest) / "bundle.json").is_file()
    expected = manager.slot.score(records(5)).scores
    manager.registry.close()

    # as a store from before bundles: no row, no folder
    with sqlite3.connect(tmp_path / "registry.sqlite3") as conn:
        conn.execute("DELETE FROM bundles")
    conn.close()
    for child in manager.store.bundles.iterdir():
        for file in child.iterdir():
            file.unlink()
        child.rmdir()
    again = make_manager(tmp_path)
    converted = again.registry.events("bundle_converted")
    assert [e["version"] for e in converted] == ["v1"]
    assert again.registry.bundle("v1") is not None
    assert np.allclose(again.slot.score(records(5)).scores, expected)
    again.registry.close()
    orphan = again.store.bundles / ("0" * 64)  # as a crash before the registry commit leaves
    orphan.mkdir()
    third = make_manager(tmp_path)  # converted once: nothing more to do
    assert len(third.registry.events("bundle_converted")) == 1
    assert not orphan.exists()
    assert [p.name for p in third.store.bundles.iterdir()] == [third.registry.bundles()[0].digest]
    third.registry.close()


def test_a_damaged_recorded_bundle_is_not_served(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    drop(manager, "v1", artifact_files("v1", created_at="2026-01-01T00:00:00Z"))
    manager.poll_once()
    row = manager.registry.bundle("v1")
    assert row is not None
    manager.registry.close()
    lrd = manager.store.bundle_path(row.digest) / "warmup_scores.npy"
    np.save(lrd, np.load(lrd) * 2)
    again = make_manager(tmp_path)
    assert again.slot.state.deployed is None
    assert "hash to" in (again.registry.get_version("v1") or {}).reason  # type: ignore[union-attr]
    again.registry.close()


# the daemon process never unpickles -----------------------------------------------------

AUDIT_HOOK = """
import os, sys

def _hook(event, args):
    if event == "pickle.find_class":
        with open(os.environ["MODELD_TEST_AUDIT_LOG"], "a") as fh:
            fh.write(f"{os.getpid()} {args[0]}.{args[1]}\\n")

sys.addaudithook(_hook)
"""


def test_the_serving_process_never_unpickles(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(AUDIT_HOOK))
    audit = tmp_path / "audit.log"
    path = os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])])
    daemon = DaemonProcess(tmp_path, env={"PYTHONPATH": path,
                                          "MODELD_TEST_AUDIT_LOG": str(audit)})
    lof_x = data(1, 300, len(FEATURES), rounded=False)
    daemon.start()
    try:
        write_renamed(daemon.models_dir, "v1", scaled_artifact(
            "v1", created_at="2026-01-01T00:00:00Z"))
        daemon.wait_deployed("v1", 60)
        write_renamed(daemon.models_dir, "v2", artifact_files(
            "v2", model=LocalOutlierFactor(novelty=True).fit(lof_x),
            model_type="LocalOutlierFactor", created_at="2026-01-02T00:00:00Z"))
        daemon.wait_deployed("v2", 60)
        scored = daemon.post("/api/v1/score", {"records": records(3)})
        assert scored.status_code == 200, scored.text
        assert daemon.post("/api/v1/models/rollback", {}).status_code == 200
        daemon.wait_deployed("v1")
        assert daemon.post("/api/v1/score", {"records": records(3)}).status_code == 200
        assert daemon.proc is not None
        pid = daemon.proc.pid
    finally:
        daemon.stop()
    daemon.start()  # a restart loads both from their bundles
    try:
        daemon.wait_deployed("v1")
        assert daemon.post("/api/v1/score", {"records": records(3)}).status_code == 200
        assert daemon.proc is not None
        restarted = daemon.proc.pid
    finally:
        daemon.stop()
    lines = audit.read_text().splitlines()
    by_pid = {int(line.split()[0]) for line in lines}
    assert lines, "the isolated child unpickled nothing: the hook is not installed"
    assert pid not in by_pid and restarted not in by_pid, lines
    assert Registry(tmp_path / "state" / "registry.sqlite3").bundle("v2") is not None
