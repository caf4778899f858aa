"""The bad-input corpus against a real daemon: each gets its clear error, the deployed version
never changes, the daemon keeps answering. And the sentinel pickle never runs where trust is
required."""

from __future__ import annotations

import pickle
from pathlib import Path

import httpx
import pytest

from modeld.core.trust import sign_folder
from tests.bad_corpus import BAD_REQUESTS, Sentinel, bad_artifacts
from tests.helpers import (
    DaemonProcess,
    artifact_files,
    stamp,
    with_manifest,
    write_in_place,
    write_renamed,
)
from tests.test_api import IN_PROCESS, build_runtime
from tests.test_trust import write_key_pair

pytestmark = pytest.mark.e2e


def test_every_bad_artifact_and_request_gets_its_clear_error(tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel"
    daemon = DaemonProcess(tmp_path)
    daemon.models_dir.mkdir(parents=True)
    daemon.start()
    try:
        write_renamed(daemon.models_dir, "good", artifact_files("good", created_at=stamp(0.5)))
        daemon.wait_deployed("good")
        corpus = bad_artifacts(sentinel)
        assert len(corpus) >= 30
        for _, write, _ in corpus:
            write(daemon.models_dir)

        def outcomes() -> dict[str, dict]:
            return {Path(t["source_path"]).name: t
                    for t in daemon.get("/api/v1/transfer-history?limit=1000").json()}

        daemon.wait_for(lambda: {n for n, _, _ in corpus} <= set(outcomes()), timeout=120,
                        what="a verdict on every bad artifact")
        seen = outcomes()
        for name, _, words in corpus:
            row = seen[name]
            assert row["status"] in ("rejected", "conflict"), (name, row)
            assert words in (row["detail"] or ""), (name, row["detail"])
        assert daemon.status()["deployed_version"] == "good"
        quarantined = {q["folder"] for q in daemon.get("/api/v1/quarantine").json()}
        assert {n for n, _, _ in corpus} <= quarantined

        with httpx.Client(base_url=daemon.base, timeout=30) as http:
            for what, path, body, headers, status, words in BAD_REQUESTS:
                response = http.post(path, content=body,
                                     headers={"content-type": "application/json", **headers})
                assert response.status_code == status, (what, response.text[:300])
                assert words in response.json()["detail"], (what, response.json())
                assert http.get("/healthz").status_code == 200
        assert daemon.status()["deployed_version"] == "good"
        good = daemon.post("/api/v1/score", {"records": [{"features": dict.fromkeys(
            ("x0", "x1", "x2", "x3"), 0.0)}]})
        assert good.status_code == 200 and good.json()["model_version"] == "good"
    finally:
        daemon.stop()


@pytest.mark.parametrize("mode", ["signature", "manifest", "no-pickle"])
def test_the_sentinel_pickle_never_runs_where_trust_is_required(tmp_path: Path,
                                                                mode: str) -> None:
    from fastapi.testclient import TestClient

    from modeld.daemon.http.app import create_app

    sentinel = tmp_path / "sentinel"
    private, public = write_key_pair(tmp_path, "trainer")
    security = {"signature": {"verify_key": str(public)}, "manifest": {"require_manifest": True},
                "no-pickle": {"allow_pickle": False}}[mode]
    runtime = build_runtime(tmp_path, security=security)
    manager = runtime.manager
    files = artifact_files("evil", created_at=stamp(0))
    files["model.joblib"] = pickle.dumps(Sentinel(sentinel))
    if mode == "no-pickle":
        files = with_manifest(files)  # intact and complete: only the format is refused
    write_in_place(manager.models_dir / "evil", files)
    if mode == "signature":
        # signed by the right key, then the pickle swapped: the signature no longer covers it
        sign_folder(manager.models_dir / "evil", private)
        (manager.models_dir / "evil" / "model.joblib").write_bytes(
            pickle.dumps(Sentinel(sentinel)) + b" ")
    with TestClient(create_app(runtime), **IN_PROCESS) as http:
        response = http.post("/api/v1/models/import", json={"path": "evil"})
    assert response.status_code == 422
    expected = {"signature": "modified after signing", "manifest": "no files manifest",
                "no-pickle": "allow_pickle is false"}[mode]
    assert expected in response.json()["detail"]
    manager.note_moved_in("evil")
    manager.poll_once()
    assert not sentinel.exists()
    assert runtime.manager.registry.deployed_version() is None
    runtime.close()


def test_a_signed_artifact_is_accepted(tmp_path: Path) -> None:
    private, public = write_key_pair(tmp_path, "trainer")
    runtime = build_runtime(tmp_path, security={"require_manifest": True,
                                                "verify_key": str(public)})
    folder = runtime.manager.models_dir / "signed"
    write_in_place(folder, with_manifest(artifact_files("signed", created_at=stamp(0))))
    sign_folder(folder, private)
    outcome = runtime.manager.import_path("signed")
    assert outcome.status == "imported", outcome.reason
    runtime.close()
