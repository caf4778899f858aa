"""core/ driven without threads: one function call at a time, real files, a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.preprocessing import StandardScaler
from structlog.testing import capture_logs

from modeld.core.errors import (
    ModelLoadFailed,
    PathOutsideModels,
    RecordInvalid,
    UnknownVersion,
    VersionConflict,
)
from modeld.core.events import ManagerEvent, ModelImported, ModelSwapped
from modeld.core.manager import (
    DeploymentPolicy,
    ManagerPolicy,
    ModelManager,
    RegistrySnapshot,
    next_deployment,
    rollback_target,
)
from modeld.core.registry import DeploymentRow, Registry, VersionRow
from modeld.core.serving import ServingSlot
from modeld.core.source import SettleTracker, inspect_folder
from modeld.core.store import ModelStore
from modeld.core.validate import ValidationPolicy, quality_score, validate_folder
from tests.helpers import (
    artifact_files,
    metadata,
    records,
    scaled_artifact,
    train_forest,
    with_manifest,
    write_in_place,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


class Clock:
    """An injected wall clock the tests move by hand."""

    def __init__(self, start: datetime = NOW) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_manager(tmp_path: Path, clock: Clock | None = None, auto_deploy: bool = True,
                 settle: float = 1.0, allow_unbundled: bool = False,
                 registry: str | None = None) -> ModelManager:
    """A manager on ``tmp_path``; ``registry`` is a registry URL (default: a SQLite file)."""
    models = tmp_path / "models"
    models.mkdir(parents=True, exist_ok=True)
    manager = ModelManager(
        registry=Registry(registry or tmp_path / "registry.sqlite3"),
        store=ModelStore(tmp_path / "store"),
        slot=ServingSlot(),
        models_dir=models,
        policy=ManagerPolicy(ValidationPolicy(), DeploymentPolicy(auto_deploy), settle,
                             allow_unbundled=allow_unbundled),
        clock=clock or Clock(),
    )
    manager.start()
    return manager


def drop(manager: ModelManager, name: str, files: dict[str, bytes]) -> Path:
    folder = manager.models_dir / name
    write_in_place(folder, files)
    manager.note_moved_in(name)
    return folder


def created(days_before_now: float) -> str:
    return (NOW - timedelta(days=days_before_now)).isoformat()


# source -------------------------------------------------------------------------------


def test_settle_tracker_waits_for_quiet_unless_completeness_is_proven(tmp_path: Path) -> None:
    tracker = SettleTracker(settle_seconds=2.0)
    folder = tmp_path / "a"
    write_in_place(folder, artifact_files("v1"))
    seen = inspect_folder(folder)
    t0 = seen.newest_mtime
    assert not tracker.readiness(seen, t0 + 0.5).ready
    assert tracker.readiness(seen, t0 + 0.5).wait_until == pytest.approx(t0 + 2.5, abs=0.01)
    assert tracker.readiness(seen, t0 + 2.6).ready

    (folder / "scaler.joblib").write_bytes(b"more")  # changed: the quiet period starts again
    changed = inspect_folder(folder)
    assert changed.fingerprint != seen.fingerprint
    assert not tracker.readiness(changed, t0 + 2.7).ready

    marked = tmp_path / "b"
    write_in_place(marked, {**artifact_files("v2"), "_SUCCESS": b""})
    assert tracker.readiness(inspect_folder(marked), 0).ready

    manifested = tmp_path / "c"
    write_in_place(manifested, with_manifest(artifact_files("v3")))
    assert tracker.readiness(inspect_folder(manifested), 0).reason == "files manifest sizes match"
    (manifested / "model.joblib").write_bytes(b"truncated")
    assert not tracker.readiness(inspect_folder(manifested), 0).ready

    renamed = tmp_path / "d"
    write_in_place(renamed, artifact_files("v4"))
    tracker.note_moved_in("d")
    assert tracker.readiness(inspect_folder(renamed), 0).ready

    partial = tmp_path / "e"
    write_in_place(partial, {"model.joblib": b"x", "metadata.json.part": b"{"})
    assert not tracker.readiness(inspect_folder(partial), 10**10).ready


# validate -----------------------------------------------------------------------------


def validate_files(tmp_path: Path, files: dict[str, bytes], **policy: Any) -> Any:
    folder = tmp_path / "artifact"
    write_in_place(folder, files)
    return validate_folder(folder, ValidationPolicy(**policy), NOW)


def test_quality_score_follows_the_seed_formula() -> None:
    assert quality_score(0, 0) == 1.0
    assert quality_score(1, 2) == 0.7
    assert quality_score(6, 0) == 0.0


def test_a_good_artifact_is_accepted_with_a_servable(tmp_path: Path) -> None:
    result = validate_files(tmp_path, artifact_files("v1", created_at=created(1)))
    # its four features x0..x3 draw the plan's two feature warnings (count, expected names)
    assert result.report.accepted and result.report.quality_score == 0.9
    assert {f.code for f in result.report.findings} == {"few_features", "missing_features"}
    wifi = validate_files(tmp_path / "wifi", artifact_files(
        "v2", created_at=created(1), model=train_forest(n_features=5),
        feature_names=["hour_of_day", "day_of_week", "message_length", "x3", "x4"]))
    assert wifi.report.quality_score == 1.0 and not wifi.report.findings
    assert result.servable is not None and result.servable.version == "v1"


@pytest.mark.parametrize(
    ("files_args", "code", "blocking"),
    [
        ({"metrics": {"f1_score": 0.4, "roc_auc": 0.9}}, "f1_low", False),
        ({"metrics": {"f1_score": 0.65, "roc_auc": 0.9}}, "f1_fair", False),
        ({"metrics": {"f1_score": 0.9, "roc_auc": 0.55}}, "auc_low", False),
        ({"metrics": {"f1_score": 0.9, "roc_auc": 0.75}}, "auc_fair", False),
        ({"metrics": {"f1_score": 0.9, "precision": 0.3}}, "precision_low", False),
        ({"metrics": {}}, "no_metrics", False),
        ({"metrics": {"f1_score": None, "roc_auc": 0.9}}, "metric_ignored", False),
        ({"created_at": created(10)}, "old", False),
        ({"created_at": created(40)}, "stale", False),
        ({"created_at": created(-30)}, "created_in_future", True),
        ({"feature_names": ["a", "b", "c"]}, "feature_count", True),
    ],
)
def test_findings(tmp_path: Path, files_args: dict[str, Any], code: str, blocking: bool) -> None:
    files_args.setdefault("created_at", created(1))
    report = validate_files(tmp_path, artifact_files("v", **files_args)).report
    found = {f.code: f for f in report.findings}
    assert code in found, report.to_dict()
    assert found[code].blocking is blocking
    if blocking:
        assert not report.accepted and found[code].message in report.reason


def test_quality_below_the_minimum_rejects_and_the_minimum_is_configurable(
    tmp_path: Path,
) -> None:
    files = artifact_files("v", created_at=created(40), metrics={
        "f1_score": 0.4, "roc_auc": 0.5, "precision": 0.3, "recall": 0.3})
    report = validate_files(tmp_path, files).report
    # two errors, three warnings, and the two feature warnings of x0..x3
    assert report.quality_score == pytest.approx(1 - 0.4 - 0.25)
    assert not report.accepted and "below the minimum" in report.reason
    assert validate_files(tmp_path / "2", files, min_quality_score=0.35).report.accepted


def test_lof_without_novelty_and_a_scaler_of_another_width_are_blocking(tmp_path: Path) -> None:
    lof = LocalOutlierFactor().fit(np.random.default_rng(0).normal(size=(50, 4)))
    report = validate_files(tmp_path, artifact_files("lof", model=lof,
                                                     created_at=created(1))).report
    assert "lof_not_novelty" in {f.code for f in report.findings}
    assert not report.accepted

    novelty = LocalOutlierFactor(novelty=True).fit(np.random.default_rng(0).normal(size=(50, 4)))
    ok = validate_files(tmp_path / "n", artifact_files(
        "lofn", model=novelty, model_type="LocalOutlierFactor", created_at=created(1)))
    assert ok.report.accepted, ok.report.to_dict()

    scaler = StandardScaler().fit(np.ones((10, 3)))
    report = validate_files(tmp_path / "s", artifact_files(
        "sc", scaler=scaler, created_at=created(1))).report
    assert "scaler_width" in {f.code for f in report.findings}


def test_unloadable_and_unsupported_models(tmp_path: Path) -> None:
    files = {**artifact_files("v", created_at=created(1)), "model.joblib": b"\x80\x04garbage"}
    report = validate_files(tmp_path, files).report
    assert not report.accepted and "cannot be loaded" in report.reason

    scaler_as_model = StandardScaler().fit(np.ones((10, 4)))
    report = validate_files(tmp_path / "2", artifact_files(
        "v", model=scaler_as_model, created_at=created(1))).report
    assert "cannot_score" in {f.code for f in report.findings} and not report.accepted

    meta = metadata("v", created_at=created(1))
    meta["model_info"]["sklearn_version"] = "0.1.0"
    report = validate_files(tmp_path / "3", artifact_files("v", meta=meta)).report
    assert report.accepted and "version_mismatch" in {f.code for f in report.findings}


def test_metadata_structure_errors_name_the_field(tmp_path: Path) -> None:
    for broken, field in [
        ({"model_info": {"model_type": "IsolationForest", "created_at": "2026-01-01"}},
         "model_info.version"),
        ({"model_info": {"version": "../x", "model_type": "IsolationForest",
                         "created_at": "2026-01-01"}}, "model_info.version"),
        ({"model_info": {"version": "v", "model_type": "IsolationForest",
                         "created_at": "yesterday"}}, "model_info.created_at"),
    ]:
        meta = {**metadata("v"), **broken}
        files = artifact_files("v", meta=meta)
        report = validate_files(tmp_path / field / str(len(str(broken))), files).report
        assert field in report.reason


# registry -----------------------------------------------------------------------------


def test_deployment_history_is_append_only(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.sqlite3")
    registry.record_deployment(None, "v1", NOW.isoformat(), "first", "auto")
    with pytest.raises(sqlite3.IntegrityError):
        registry._conn.execute("DELETE FROM deployments")
    with pytest.raises(sqlite3.IntegrityError):
        registry._conn.execute("UPDATE deployments SET to_version = 'x'")
    assert registry.deployed_version() == "v1"
    mode = registry._conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    registry.close()


# policy -------------------------------------------------------------------------------


def row(version: str, created_at: str, status: str = "available") -> VersionRow:
    return VersionRow(version, status, "IsolationForest", 1.0, {}, {}, created_at,
                      NOW.isoformat(), "/x", "/y", {}, "d", "", False, None)


def deployment(i: int, src: str | None, dst: str, actor: str = "auto") -> DeploymentRow:
    return DeploymentRow(i, src, dst, NOW.isoformat(), "", actor)


def test_next_deployment_is_a_pure_decision() -> None:
    policy = DeploymentPolicy(auto_deploy=True)
    old, new = row("v1", created(2)), row("v2", created(1))
    empty = RegistrySnapshot(None, ())
    assert next_deployment(empty, old, policy).version == "v1"
    snap = RegistrySnapshot(old, (deployment(1, None, "v1"),))
    assert next_deployment(snap, new, policy).version == "v2"
    assert next_deployment(snap, row("v0", created(3)), policy) is None
    assert next_deployment(snap, new, DeploymentPolicy(auto_deploy=False)) is None
    assert next_deployment(snap, row("v9", created(0), "rejected"), policy) is None
    rolled = RegistrySnapshot(old, (deployment(2, "v2", "v1", "rollback"),
                                    deployment(1, "v1", "v2")))
    assert next_deployment(rolled, new, policy) is None


def test_equal_created_at_is_decided_by_version_whichever_import_finishes_first() -> None:
    # Imports run on several threads: with equal created_at, the first to finish used to
    # keep serving. The version decides, so the same two folders end the same either way.
    policy = DeploymentPolicy(auto_deploy=True)
    a, b = row("v-a", created(1)), row("v-b", created(1))
    assert next_deployment(RegistrySnapshot(a, ()), b, policy).version == "v-b"
    assert next_deployment(RegistrySnapshot(b, ()), a, policy) is None
    shadow = DeploymentPolicy(auto_deploy=True, deploy_policy="shadow")
    old = row("v0", created(2))
    assert next_deployment(RegistrySnapshot(old, (), a), b, shadow).action == "nominate"
    assert next_deployment(RegistrySnapshot(old, (), b), a, shadow) is None


def test_rollback_target_walks_back_past_versions_rolled_back_from() -> None:
    available = {v: row(v, created(1)) for v in ("v1", "v2", "v3")}
    history = (deployment(3, "v2", "v3"), deployment(2, "v1", "v2"), deployment(1, None, "v1"))
    snap = RegistrySnapshot(available["v3"], history)
    assert rollback_target(snap, available) == "v2"
    after = RegistrySnapshot(available["v2"], (deployment(4, "v3", "v2", "rollback"), *history))
    assert rollback_target(after, available) == "v1"
    assert rollback_target(RegistrySnapshot(available["v1"], (deployment(1, None, "v1"),)),
                           available) is None


# manager ------------------------------------------------------------------------------


def test_import_deploy_duplicate_conflict_and_rejection_once(tmp_path: Path) -> None:
    clock = Clock()
    manager = make_manager(tmp_path, clock)
    files = artifact_files("v1", created_at=created(1))
    drop(manager, "a", files)
    [outcome] = manager.poll_once().outcomes
    assert outcome.status == "imported" and outcome.deployed
    assert manager.slot.state.deployed.version == "v1"
    assert manager.poll_once().outcomes == ()  # imported exactly once

    drop(manager, "copy", files)  # same version, same content: a no-op
    assert manager.poll_once().outcomes[0].status == "duplicate"
    drop(manager, "other", artifact_files("v1", seed=5, created_at=created(1)))
    assert manager.poll_once().outcomes[0].status == "conflict"
    assert manager.poll_once().outcomes == ()
    with pytest.raises(VersionConflict):
        manager.import_path("other")

    drop(manager, "bad", {**artifact_files("v9"), "model.joblib": b"junk"})
    assert manager.poll_once().outcomes[0].status == "rejected"
    assert manager.poll_once().outcomes == ()  # stable and invalid: judged once
    assert len([t for t in manager.registry.transfers() if t.status == "rejected"]) == 1
    assert manager.slot.state.deployed.version == "v1"


def test_operator_deploy_rollback_and_auto_deploy_respects_them(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    for i, name in enumerate(("v1", "v2", "v3")):
        drop(manager, name, artifact_files(name, seed=i, created_at=created(3 - i)))
        manager.poll_once()
    assert manager.slot.state.deployed.version == "v3"
    assert manager.slot.state.fallback.version == "v2"

    assert manager.rollback() == "v2"
    assert manager.slot.state.deployed.version == "v2"
    assert manager.rollback() == "v1"
    with pytest.raises(UnknownVersion):
        manager.deploy("nope")
    assert manager.deploy("v3") == "v3"
    assert manager.rollback("v1") == "v1"
    actors = [d.actor for d in manager.registry.deployments()]
    assert actors == ["rollback", "operator", "rollback", "rollback", "auto", "auto", "auto"]

    # a newer import is auto-deployed, but never a version that was rolled back from
    drop(manager, "v4", artifact_files("v4", seed=4, created_at=created(0.5)))
    manager.poll_once()
    assert manager.slot.state.deployed.version == "v4"

    drop(manager, "rej", artifact_files("rej", feature_names=["a"], created_at=created(0)))
    manager.poll_once()
    with pytest.raises(VersionConflict, match="rejected"):
        manager.deploy("rej")
    assert manager.registry.deployed_version() == manager.slot.state.deployed.version == "v4"


def test_a_swap_that_fails_to_load_keeps_the_old_model(tmp_path: Path) -> None:
    manager = make_manager(tmp_path, auto_deploy=False)
    for i, name in enumerate(("v1", "v2")):
        drop(manager, name, artifact_files(name, seed=i, created_at=created(2 - i)))
        manager.poll_once()
    manager.deploy("v1")
    (manager.store.path_of("v2") / "model.joblib").write_bytes(b"corrupt")
    with pytest.raises(ModelLoadFailed, match="checksum"):
        manager.deploy("v2")
    assert manager.slot.state.deployed.version == "v1"
    assert manager.registry.deployed_version() == "v1"
    assert manager.registry.events("swap_failed")[0]["version"] == "v2"


def test_manager_events_are_logged_as_before_and_passed_on_as_types(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    seen: list[ManagerEvent] = []
    manager.listener = seen.append
    with capture_logs() as logs:
        drop(manager, "v1", artifact_files("v1", created_at=created(1)))
        manager.poll_once()
    assert [type(event) for event in seen] == [ModelImported, ModelSwapped]
    imported = next(entry for entry in logs if entry["event"] == "model_imported")
    assert {"version", "path", "quality_score", "warnings", "took_ms"} <= set(imported)
    assert imported["version"] == "v1" and imported["log_level"] == "info"
    # where the import's time went, stage by stage, in order (no first load: no child here)
    assert list(imported["stages_ms"]) == ["stage", "trust", "validate", "commit"]
    assert sum(imported["stages_ms"].values()) <= imported["took_ms"]
    swapped = next(entry for entry in logs if entry["event"] == "model_swapped")
    assert (swapped["old"], swapped["new"], swapped["actor"], swapped["reason"]) == (
        None, "v1", "auto", "first valid version")


class RaisingForest:
    """A fault we cannot cause with a real estimator: score_samples that raises after load."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.n_features_in_ = inner.n_features_in_
        self.offset_ = inner.offset_
        self.armed = False

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.inner.predict(x)

    def score_samples(self, x: np.ndarray) -> np.ndarray:
        if self.armed:
            raise FloatingPointError("boom")
        return self.inner.score_samples(x)


def test_scoring_failure_is_answered_by_the_fallback_and_recorded(tmp_path: Path) -> None:
    # the raising wrapper has no bundle form: it is served unpickled, as the setting allows
    manager = make_manager(tmp_path, allow_unbundled=True)
    manager.slot._on_fallback = manager.scoring_failed
    drop(manager, "v1", artifact_files("v1", created_at=created(2)))
    manager.poll_once()
    raising = RaisingForest(train_forest(seed=3))
    drop(manager, "v2", artifact_files("v2", model=raising, created_at=created(1)))
    manager.poll_once()
    deployed = manager.slot.state.deployed
    assert deployed.version == "v2"
    # arm the loaded instance: scoring now raises inside the deployed model
    deployed.scorer.__closure__[0].cell_contents.__self__.armed = True
    result = manager.slot.score(records(2))
    assert result.version == "v1" and "boom" in result.fallback_reason
    assert manager.registry.events("fallback_used")[0]["fallback"] == "v1"


def test_records_are_checked_all_or_nothing(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    drop(manager, "v1", artifact_files("v1", created_at=created(1)))
    manager.poll_once()
    batch = records(3)
    del batch[1]["features"]["x2"]
    with pytest.raises(RecordInvalid) as err:
        manager.slot.score(batch)
    assert err.value.index == 1 and "x2" in err.value.problem


def test_import_path_must_stay_inside_the_models_folder(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    outside = tmp_path / "outside"
    write_in_place(outside, artifact_files("evil"))
    (manager.models_dir / "link").symlink_to(outside)
    for path in ("../outside", str(outside), "link", "/etc", "", "."):
        with pytest.raises(PathOutsideModels):
            manager.import_path(path)
    assert manager.registry.list_versions() == []


def test_restart_recovers_staging_orphans_and_unconsidered_imports(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    drop(manager, "v1", artifact_files("v1", created_at=created(1)))
    manager.poll_once()
    manager.registry.close()
    # an interrupted import: staging left behind, a version renamed into the store but never
    # committed to the registry
    (manager.store.staging / "deadbeef").mkdir()
    (manager.store.staging / "deadbeef" / "model.joblib").write_bytes(b"half")
    orphan = manager.store.versions / "ghost"
    orphan.mkdir()
    restarted = make_manager(tmp_path)
    assert not any(restarted.store.staging.iterdir())
    assert not orphan.exists()
    assert restarted.slot.state.deployed.version == "v1"


def test_retention_keeps_newest_deployed_and_fallback(tmp_path: Path) -> None:
    clock = Clock()
    manager = make_manager(tmp_path, clock, auto_deploy=False)
    for i in range(6):
        name = f"v{i}"
        drop(manager, name, artifact_files(name, seed=i, created_at=created(60 - i)))
        manager.poll_once()
    manager.deploy("v0")
    manager.deploy("v1")
    removed = manager.retention(keep_versions=2, retention_days=30)
    assert sorted(removed) == ["v2", "v3"]
    assert not manager.store.path_of("v2").exists()
    assert manager.registry.get_version("v2").status == "removed"
    assert manager.store.path_of("v0").exists() and manager.store.path_of("v1").exists()


def test_scaler_is_applied_before_the_model(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    drop(manager, "s", scaled_artifact("s", created_at=created(1)))
    manager.poll_once()
    folder = manager.store.path_of("s")
    model, scaler = joblib.load(folder / "model.joblib"), joblib.load(folder / "scaler.joblib")
    batch = records(5)
    x = np.array([[r["features"][f"x{i}"] for i in range(4)] for r in batch])
    expected = -model.score_samples(scaler.transform(x))
    assert np.allclose(manager.slot.score(batch).scores, expected, atol=1e-12)


def test_report_is_stored_with_the_version(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    drop(manager, "v1", artifact_files("v1", created_at=created(10)))
    manager.poll_once()
    stored = manager.registry.get_version("v1")
    # old (10 days), and the feature warnings of x0..x3
    assert stored.report["warnings"] and stored.report["quality_score"] == 0.85
    assert set(stored.checksums) == {"model.joblib", "metadata.json"}
    assert json.loads((manager.store.path_of("v1") / "metadata.json").read_text())[
        "model_info"]["version"] == "v1"


class FullDiskStore(ModelStore):
    """A disk that is full once: a fault we cannot cause on the test machine's disk."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.fail = True

    def _copy_file(self, src: Path, dst: Path) -> Any:
        if self.fail:
            self.fail = False
            import errno
            import os

            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return super()._copy_file(src, dst)


def test_disk_full_while_staging_fails_cleanly_and_is_retried(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    manager.store = FullDiskStore(tmp_path / "store")
    drop(manager, "v1", artifact_files("v1", created_at=created(1)))
    [outcome] = manager.poll_once().outcomes
    assert outcome.status == "failed" and "No space left" in outcome.reason
    assert not any(manager.store.staging.iterdir())
    assert manager.registry.folder("v1") is None  # not judged: it will be tried again
    [retry] = manager.poll_once().outcomes
    assert retry.status == "imported" and manager.slot.state.deployed.version == "v1"


def test_health_check_replaces_a_model_that_stops_scoring(tmp_path: Path) -> None:
    manager = make_manager(tmp_path, allow_unbundled=True)
    drop(manager, "v1", artifact_files("v1", created_at=created(2)))
    manager.poll_once()
    drop(manager, "v2", artifact_files("v2", model=RaisingForest(train_forest(seed=3)),
                                       created_at=created(1)))
    manager.poll_once()
    assert manager.check_health() is None
    deployed = manager.slot.state.deployed
    deployed.scorer.__closure__[0].cell_contents.__self__.armed = True
    problem = manager.check_health()
    assert problem is not None and "boom" in problem
    assert manager.slot.state.deployed.version == "v1"
    newest = manager.registry.deployments()[0]
    assert (newest.from_version, newest.to_version, newest.actor) == ("v2", "v1", "fallback")


def test_anomaly_threshold_is_a_serving_policy_changed_at_once(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    drop(manager, "v1", artifact_files("v1", created_at=created(1)))
    manager.poll_once()
    batch = records(50)
    own = manager.slot.score(batch)
    manager.slot.anomaly_threshold = 0.0  # every score in (0, 1] is above it
    assert manager.slot.score(batch).flags.all()
    manager.slot.anomaly_threshold = 1.0
    assert not manager.slot.score(batch).flags.any()
    manager.slot.anomaly_threshold = None
    assert (manager.slot.score(batch).flags == own.flags).all()


def test_a_batch_of_fsyncs_covers_files_and_folders_and_names_the_first_that_failed(
    tmp_path: Path,
) -> None:
    from modeld.core._durable import fsync_all

    files = [tmp_path / f"f{i}" for i in range(150)]  # more than run at once (64)
    for file in files:
        file.write_bytes(b"x")
    fsync_all([*files, tmp_path, str(tmp_path), bytes(tmp_path)])
    fsync_all([])
    with pytest.raises(FileNotFoundError) as raised:
        fsync_all([files[0], tmp_path / "gone", files[1], tmp_path / "also gone"])
    assert raised.value.filename == tmp_path / "gone"
    with pytest.raises(TypeError):
        fsync_all([files[0], 3])
