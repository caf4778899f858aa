"""core/shadow.py: the comparison statistics, the promotion gate, the canary routing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics import cohen_kappa_score

from modeld.core.errors import ConfigError, UnknownVersion, VersionConflict
from modeld.core.lifecycle import lifecycle_state
from modeld.core.manager import (
    DeploymentPolicy,
    ManagerPolicy,
    ModelManager,
    RegistrySnapshot,
    next_deployment,
)
from modeld.core.registry import Registry
from modeld.core.serving import ServingSlot
from modeld.core.shadow import (
    CANARY_BUCKETS,
    GatePolicy,
    ShadowComparison,
    canary_bucket,
    canary_mask,
    cohen_kappa,
    judge,
)
from modeld.core.store import ModelStore
from modeld.core.validate import ValidationPolicy
from modeld.daemon.http.app import create_app
from modeld.daemon.process.runtime import Runtime
from modeld.daemon.process.settings import CanarySettings, load_settings
from modeld.daemon.process.wiring import apply_settings
from tests.helpers import FEATURES, artifact_files, records
from tests.test_api import IN_PROCESS, add_versions, build_runtime
from tests.test_core import Clock, created, deployment, drop, row

flags = st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=200)


def _table(pairs: list[tuple[bool, bool]]) -> tuple[int, int, int, int]:
    return (sum(a and b for a, b in pairs), sum(a and not b for a, b in pairs),
            sum(b and not a for a, b in pairs), sum(not a and not b for a, b in pairs))


@given(flags)
def test_kappa_matches_scikit_learn(pairs: list[tuple[bool, bool]]) -> None:
    a = [p[0] for p in pairs]
    b = [p[1] for p in pairs]
    ours = cohen_kappa(*_table(pairs))
    assert ours is not None
    if len(set(a)) == 1 and len(set(b)) == 1:
        # both raters constant: scikit-learn answers nan (0/0); we answer 1 when they agree
        assert ours == (1.0 if a == b else 0.0)
    else:
        assert ours == pytest.approx(cohen_kappa_score(a, b), abs=1e-9)


def test_kappa_of_nothing_is_none() -> None:
    assert cohen_kappa(0, 0, 0, 0) is None


def _batch(comparison: ShadowComparison, champion: np.ndarray, candidate: np.ndarray,
           threshold: float = 0.6, seconds: tuple[float, float] = (0.001, 0.001)) -> None:
    records = [{"host": f"ap-{i % 3}", "i": i} for i in range(len(champion))]
    comparison.add(records, champion, champion > threshold, candidate, candidate > threshold,
                   seconds[0], seconds[1])


@settings(max_examples=50)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=3, max_size=300),
       st.integers(1, 50))
def test_statistics_match_scipy_over_any_batching(pairs: list[tuple[float, float]],
                                                  batch: int) -> None:
    champion = np.array([p[0] for p in pairs])
    candidate = np.array([p[1] for p in pairs])
    comparison = ShadowComparison("new", "old")
    for start in range(0, len(pairs), batch):
        _batch(comparison, champion[start:start + batch], candidate[start:start + batch])
    report = comparison.report()
    assert report.records_compared == len(pairs)
    cf, kf = champion > 0.6, candidate > 0.6
    assert report.flag_agreement == pytest.approx(float(np.mean(cf == kf)))
    assert report.champion_flag_rate == pytest.approx(float(cf.mean()))
    assert report.candidate_flag_rate == pytest.approx(float(kf.mean()))
    if np.ptp(champion) > 0 and np.ptp(candidate) > 0:
        rho = stats.spearmanr(champion, candidate).statistic
        assert report.spearman == pytest.approx(rho, abs=1e-9)
    else:
        assert report.spearman is None
    assert report.score_difference_quantiles["p50"] == pytest.approx(
        float(np.quantile(candidate - champion, 0.5)))


def test_memory_is_bounded_and_counts_are_total() -> None:
    comparison = ShadowComparison("new", "old", window=100, latency_window=10,
                                  keep_disagreements=5)
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = rng.uniform(size=64)
        _batch(comparison, a, a + rng.normal(scale=0.05, size=64))
    report = comparison.report()
    assert report.records_compared == 50 * 64
    assert report.window_records == 100
    assert len(comparison.champion_latency) == 10
    assert len(report.top_disagreements) == 5


def test_top_disagreements_are_the_largest_with_differing_flags_first() -> None:
    comparison = ShadowComparison("new", "old", keep_disagreements=3)
    champion = np.array([0.5, 0.5, 0.5, 0.5, 0.55])
    candidate = np.array([0.5, 0.9, 0.3, 0.59, 0.65])  # i=4 crosses 0.6: flags differ
    _batch(comparison, champion, candidate)
    worst = comparison.report().top_disagreements
    assert [d.record["i"] for d in worst] == [1, 4, 2]
    assert worst[0].candidate_flag and not worst[0].champion_flag
    assert worst[0].to_dict()["score_difference"] == pytest.approx(0.4)


def test_mismatched_lengths_are_refused() -> None:
    comparison = ShadowComparison("new", "old")
    with pytest.raises(ValueError, match="lengths"):
        comparison.add([{}, {}], np.zeros(2), np.zeros(2, bool), np.zeros(1), np.zeros(1, bool),
                       0.0, 0.0)


def test_latency_quantiles_per_model() -> None:
    comparison = ShadowComparison("new", "old")
    for i in range(100):
        _batch(comparison, np.full(4, 0.5), np.full(4, 0.5),
               seconds=(0.001 * (i + 1), 0.003 * (i + 1)))
    report = comparison.report()
    assert report.champion_latency_p50_ms == pytest.approx(50.5)
    assert report.candidate_latency_p99_ms == pytest.approx(3 * report.champion_latency_p99_ms)
    assert report.latency_p99_ratio == pytest.approx(3.0)


# --------------------------------------------------------------------------- the gate


def _report(champion_rate: float, candidate_rate: float, agree: bool, n: int,
            latency: tuple[float, float] = (0.001, 0.001)):
    rng = np.random.default_rng(1)
    champion = rng.uniform(size=n)
    base = champion if agree else rng.uniform(size=n)
    # shift the candidate so that its flag rate is candidate_rate at the champion's threshold
    threshold = float(np.quantile(champion, 1 - champion_rate))
    shifted = base + (threshold - float(np.quantile(base, 1 - candidate_rate)))
    comparison = ShadowComparison("new", "old")
    records = [{"host": "ap"}] * n
    comparison.add(records, champion, champion > threshold, shifted, shifted > threshold,
                   *latency)
    return comparison.report()


def test_gate_passes_a_similar_candidate_after_min_records() -> None:
    policy = GatePolicy(min_records=500)
    early = judge(_report(0.05, 0.06, agree=True, n=400), policy)
    assert not early.ready and not early.passed
    verdict = judge(_report(0.05, 0.06, agree=True, n=1000), policy)
    assert verdict.ready and verdict.passed and verdict.failed == ()
    assert "kappa" in verdict.summary()


def test_gate_names_the_flag_rate_condition_when_the_candidate_flags_far_more() -> None:
    verdict = judge(_report(0.05, 0.40, agree=True, n=2000), GatePolicy())
    assert verdict.ready and not verdict.passed
    assert "flag_rate_ratio" in [c.name for c in verdict.failed]
    assert verdict.to_dict()["failed"][0] == "flag_rate_ratio"


def test_gate_names_kappa_for_an_unrelated_candidate() -> None:
    verdict = judge(_report(0.1, 0.1, agree=False, n=3000), GatePolicy())
    assert [c.name for c in verdict.failed] == ["kappa"]


def test_gate_names_latency() -> None:
    verdict = judge(_report(0.1, 0.1, agree=True, n=3000, latency=(0.001, 0.0025)),
                    GatePolicy())
    assert [c.name for c in verdict.failed] == ["latency_p99_ratio"]


def test_zero_champion_flag_rate() -> None:
    comparison = ShadowComparison("new", "old")
    _batch(comparison, np.zeros(10), np.ones(10))
    report = comparison.report()
    assert report.flag_rate_ratio == math.inf
    assert report.to_dict()["flag_rate_ratio"] == "inf"
    assert not judge(report, GatePolicy(min_records=1)).passed


# --------------------------------------------------------------------------- the canary


@given(st.text(max_size=40))
def test_bucket_is_in_range_and_stable(key: str) -> None:
    assert 0 <= canary_bucket(key) < CANARY_BUCKETS
    assert canary_bucket(key) == canary_bucket(key)


def test_bucket_is_the_same_in_another_process() -> None:
    # Python's hash() is salted per process; a sticky route must not be
    script = "from modeld.core.shadow import canary_bucket; print(canary_bucket('ap-3f-12'))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "123"})
    assert int(out.stdout) == canary_bucket("ap-3f-12")


@given(st.lists(st.sampled_from([f"ap-{i}" for i in range(20)]), min_size=1, max_size=100),
       st.floats(0, 100))
def test_one_hosts_stream_is_never_split(hosts: list[str], percent: float) -> None:
    records = [{"host": h, "message": str(i)} for i, h in enumerate(hosts)]
    mask = canary_mask(records, "host", percent)
    routed: dict[str, set[bool]] = {}
    for host, to_candidate in zip(hosts, mask.tolist(), strict=True):
        routed.setdefault(host, set()).add(to_candidate)
    assert all(len(v) == 1 for v in routed.values())


@given(st.floats(0, 100), st.floats(0, 100))
def test_raising_the_percent_only_adds_keys(a: float, b: float) -> None:
    low, high = sorted((a, b))
    records = [{"host": f"ap-{i}"} for i in range(300)]
    assert not np.any(canary_mask(records, "host", low) & ~canary_mask(records, "host", high))


def test_share_is_close_to_the_percent() -> None:
    records = [{"host": f"ap-{i}"} for i in range(20_000)]
    assert canary_mask(records, "host", 10).mean() == pytest.approx(0.10, abs=0.01)
    assert not canary_mask(records, "host", 0).any()
    assert canary_mask(records, "host", 100).all()


def test_records_without_the_key_go_one_way() -> None:
    mask = canary_mask([{"message": "a"}, "not a record", {"host": None}], "host", 50)
    assert len(set(mask.tolist())) == 1


def test_percent_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="percent"):
        canary_mask([], "host", 101)


# --------------------------------------------------------------------------- the candidate


def _manager(tmp_path: Path, policy: str = "shadow") -> ModelManager:
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    manager = ModelManager(
        registry=Registry(tmp_path / "registry.sqlite3"), store=ModelStore(tmp_path / "store"),
        slot=ServingSlot(), models_dir=models,
        policy=ManagerPolicy(ValidationPolicy(), DeploymentPolicy(True, policy), 0.0),
        clock=Clock(),
    )
    manager.start()
    return manager


def _import(manager: ModelManager, version: str, days_ago: float, seed: int = 0) -> None:
    drop(manager, version, artifact_files(version, seed=seed, created_at=created(days_ago)))
    manager.poll_once()


def test_next_deployment_nominates_under_shadow_and_manual() -> None:
    old, new, newest = row("v1", created(3)), row("v2", created(2)), row("v3", created(1))
    snap = RegistrySnapshot(old, (deployment(1, None, "v1"),))
    for policy in ("shadow", "manual"):
        decision = next_deployment(snap, new, DeploymentPolicy(True, policy))
        assert decision.action == "nominate" and decision.version == "v2"
        assert policy in decision.reason
    assert next_deployment(RegistrySnapshot(None, ()), old,
                           DeploymentPolicy(True, "shadow")).action == "deploy"
    with_candidate = RegistrySnapshot(old, snap.history, newest)
    assert next_deployment(with_candidate, new, DeploymentPolicy(True, "shadow")) is None
    assert next_deployment(RegistrySnapshot(old, snap.history, new), newest,
                           DeploymentPolicy(True, "shadow")).version == "v3"
    assert next_deployment(snap, new, DeploymentPolicy(True)).action == "deploy"


def test_candidate_is_a_registry_state_that_survives_a_restart(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    _import(manager, "v1", 3)
    _import(manager, "v2", 2, seed=1)
    state = manager.slot.state
    assert state.deployed.version == "v1" and state.candidate.version == "v2"
    assert manager.registry.candidate().version == "v2"
    assert manager.registry.candidate().champion == "v1"
    assert manager.slot.score(records(4)).version == "v1"  # the champion answers
    assert lifecycle_state("available", "v2", None, "v1", None, "v2") == "candidate"

    _import(manager, "v3", 1, seed=2)  # a newer one supersedes the candidate
    assert manager.slot.state.candidate.version == "v3"
    assert [c.state for c in manager.registry.candidates()] == ["candidate", "superseded"]
    manager.registry.close()

    again = _manager(tmp_path)
    assert again.slot.state.deployed.version == "v1"
    assert again.slot.state.candidate.version == "v3"
    assert again.retention(keep_versions=0, retention_days=0) == ["v2"]  # never the candidate


def test_promote_discard_and_hold(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    _import(manager, "v1", 3)
    _import(manager, "v2", 2, seed=1)
    with pytest.raises(VersionConflict, match="not the candidate"):
        manager.promote("v1")
    with pytest.raises(UnknownVersion):
        manager.discard("nope")
    assert manager.hold("v2", "kappa 0.1 fails >= 0.4", ("kappa",))
    assert not manager.hold("v2", "again", ("kappa",))  # held once
    assert manager.registry.candidate().held == "kappa 0.1 fails >= 0.4"
    assert manager.discard() == "v2"
    assert manager.slot.state.candidate is None and manager.registry.candidate() is None
    with pytest.raises(VersionConflict, match="no candidate"):
        manager.promote()

    _import(manager, "v3", 1, seed=2)
    assert manager.promote("v3", actor="auto", reason="gate held", report={"kappa": 0.9}) == "v3"
    state = manager.slot.state
    assert state.deployed.version == "v3" and state.fallback.version == "v1"
    assert state.candidate is None
    last = manager.registry.deployments()[0]
    assert (last.to_version, last.actor, last.reason) == ("v3", "auto", "gate held")
    closed = manager.registry.candidates()[0]
    assert (closed.state, closed.actor, closed.report) == ("promoted", "auto", {"kappa": 0.9})


def test_operator_deploying_the_candidate_promotes_it(tmp_path: Path) -> None:
    manager = _manager(tmp_path, "manual")
    _import(manager, "v1", 3)
    _import(manager, "v2", 2, seed=1)
    assert manager.slot.state.deployed.version == "v1"  # manual: waits for an operator
    manager.deploy("v2")
    assert manager.registry.candidates()[0].state == "promoted"
    assert manager.slot.state.candidate is None


# --------------------------------------------------------------------------- HTTP and settings


@pytest.fixture
def shadow_runtime(tmp_path: Path) -> Iterator[Runtime]:
    """An in-process runtime under the shadow policy with a 50% canary (a reload to it)."""
    runtime = build_runtime(tmp_path)
    integration = runtime.settings.integration.model_copy(update={
        "deploy_policy": "shadow", "canary": CanarySettings(percent=50)})
    apply_settings(runtime, runtime.settings.model_copy(update={"integration": integration}),
                   None)
    yield runtime
    runtime.close()


def test_shadow_api_without_and_with_a_candidate(shadow_runtime: Runtime) -> None:
    with TestClient(create_app(shadow_runtime), **IN_PROCESS) as client:
        view = client.get("/api/v1/shadow").json()
        assert view["candidate"] is None and view["deploy_policy"] == "shadow"
        refused = client.post("/api/v1/shadow/promote")
        assert refused.status_code == 409 and "no candidate" in refused.json()["detail"]
        assert client.post("/api/v1/shadow/discard").status_code == 409
        bad = client.post("/api/v1/shadow/promote", json={"versoin": "x"})
        assert bad.status_code == 422 and "versoin" in bad.json()["detail"]

        add_versions(shadow_runtime, "v1", "v2")
        view = client.get("/api/v1/shadow").json()
        assert view["candidate"]["version"] == "v2" and view["candidate"]["champion"] == "v1"
        assert view["report"] is None  # nothing scored yet: nothing compared
        assert client.get("/api/v1/models/v2").json()["status"] == "candidate"
        assert client.get("/api/v1/status").json()["candidate_version"] == "v2"
        assert "Candidate <code>v2</code>" in client.get("/").text
        wrong = client.post("/api/v1/shadow/promote", json={"version": "nope"})
        assert wrong.status_code == 404
        done = client.post("/api/v1/shadow/promote", json={"version": "v2", "reason": "looks right"})
        assert done.status_code == 200 and done.json()["deployed_version"] == "v2"
        last = client.get("/api/v1/deployments").json()[0]
        assert (last["to_version"], last["actor"], last["reason"]) == ("v2", "operator",
                                                                      "looks right")
        assert client.get("/api/v1/shadow").json()["history"][0]["state"] == "promoted"


def test_canary_scores_a_share_by_host_and_names_versions(shadow_runtime: Runtime) -> None:
    add_versions(shadow_runtime, "v1", "v2")
    batch = records(40, names=FEATURES)
    for i, record in enumerate(batch):
        record["host"] = f"ap-{i % 8}"
    with TestClient(create_app(shadow_runtime), **IN_PROCESS) as client:
        answer = client.post("/api/v1/score", json={"records": batch}).json()
        expected = canary_mask(batch, "host", 50)
        assert expected.any() and not expected.all()
        got = [r["model_version"] == "v2" for r in answer["results"]]
        assert got == expected.tolist()
        assert answer["model_version"] is None and answer["model_versions"] == ["v1", "v2"]
        # a bad record in the candidate's share is named by its index in the whole batch
        index = int(np.flatnonzero(expected)[-1])
        broken = [dict(r) for r in batch]
        broken[index]["features"] = {"x0": "not a number"}
        refused = client.post("/api/v1/score", json={"records": broken})
        assert refused.status_code == 422
        assert refused.json()["detail"].startswith(f"record {index}:")


def test_the_candidate_scores_by_name_over_the_open_inference_protocol(
        shadow_runtime: Runtime) -> None:
    add_versions(shadow_runtime, "v1", "v2")
    batch = records(6, names=FEATURES)
    request = {"inputs": [{"name": "records", "datatype": "BYTES", "shape": [6],
                           "data": [json.dumps(r) for r in batch]}]}
    with TestClient(create_app(shadow_runtime), **IN_PROCESS) as client:
        assert client.get("/v2/models/wifi-anomaly/versions/v2/ready").status_code == 200
        named = client.post("/v2/models/wifi-anomaly/versions/v2/infer", json=request).json()
        assert named["model_version"] == "v2"
        expected = shadow_runtime.slot.state.candidate.score_records(batch).scores
        assert np.allclose(named["outputs"][0]["data"], expected, rtol=0, atol=1e-12)
        assert client.get("/v2/models/wifi-anomaly").json()["versions"] == ["v1", "v2"]


@pytest.mark.parametrize(("section", "key"), [
    ({"deploy_policy": "sometimes"}, "integration.deploy_policy"),
    ({"shadow": {"sample": 1.5}}, "integration.shadow.sample"),
    ({"shadow": {"gate": {"flag_rate_ratio": [2, 0.5]}}}, "integration.shadow.gate.flag_rate_ratio"),
    ({"canary": {"percent": 101}}, "integration.canary.percent"),
    ({"shadow": {"cpu_budget": 0}}, "integration.shadow.cpu_budget"),
])
def test_bad_shadow_settings_name_the_key(tmp_path: Path, section: dict, key: str) -> None:
    path = tmp_path / "modeld.yaml"
    path.write_text(yaml.safe_dump({"integration": section}))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.key == key


def test_comparison_state_round_trips_through_json() -> None:
    comparison = ShadowComparison("new", "old", window=50, keep_disagreements=3)
    rng = np.random.default_rng(3)
    for _ in range(5):
        a = rng.uniform(size=30)
        _batch(comparison, a, a + rng.normal(scale=0.1, size=30))
    state = json.loads(json.dumps(comparison.to_state()))
    again = ShadowComparison.from_state(state)
    assert again.report() == comparison.report()
    _batch(again, np.full(5, 0.9), np.full(5, 0.1))  # it goes on accumulating
    assert again.report().records_compared == 155
    assert again.report().top_disagreements[0].champion_score == 0.9
    with pytest.raises(ValueError, match="add up"):
        ShadowComparison.from_state({**state, "records": 1})
