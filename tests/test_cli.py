"""The `modeld` CLI as a subprocess against a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import DaemonProcess, artifact_files, records, stamp, write_in_place

pytestmark = pytest.mark.e2e


def modeld(daemon: DaemonProcess, *args: str, stdin: str | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modeld.daemon.cli", *args, "--config", str(daemon.config_path)],
        capture_output=True, text=True, timeout=60, input=stdin, env=env,
    )


def test_cli_operates_a_real_daemon_with_a_token_from_a_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("t0ken-from-file\n")
    daemon = DaemonProcess(tmp_path, overrides={"api": {"token_file": str(token_file)},
                                                "integration": {"auto_import": False}})
    daemon.token = "t0ken-from-file"
    daemon.models_dir.mkdir(parents=True)
    daemon.start()
    try:
        assert daemon.get("/api/v1/status").status_code == 200
        assert daemon.get("/healthz").status_code == 200
        import httpx
        assert httpx.get(daemon.base + "/api/v1/status").status_code == 401

        for i, name in enumerate(("v1", "v2")):
            write_in_place(daemon.models_dir / name,
                           artifact_files(name, seed=i, created_at=stamp(2 - i)))
        done = modeld(daemon, "models", "import", "v1")
        assert done.returncode == 0, done.stderr
        assert "imported: v1" in done.stdout
        done = modeld(daemon, "models", "import", "--latest", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["version"] == "v2"
        daemon.wait_for(lambda: len(daemon.get("/api/v1/models").json()) == 2)

        listing = modeld(daemon, "models", "list")
        assert listing.returncode == 0 and "VERSION" in listing.stdout
        assert "v1" in listing.stdout and "v2" in listing.stdout
        rows = json.loads(modeld(daemon, "models", "list", "--json").stdout)
        assert {r["version"] for r in rows} == {"v1", "v2"}

        assert modeld(daemon, "models", "deploy", "v1").stdout.strip() == "serving v1"
        assert modeld(daemon, "models", "deploy", "v2").stdout.strip() == "serving v2"
        assert modeld(daemon, "models", "rollback").stdout.strip() == "serving v1"
        assert modeld(daemon, "models", "rollback", "v2").stdout.strip() == "serving v2"
        status = json.loads(modeld(daemon, "status", "--json").stdout)
        assert status["deployed_version"] == "v2" and status["fallback_version"] == "v1"

        shown = json.loads(modeld(daemon, "models", "show", "v1", "--json").stdout)
        assert shown["report"]["accepted"] is True
        validated = modeld(daemon, "models", "validate", "v1")
        assert validated.returncode == 0 and "quality_score" in validated.stdout

        history = modeld(daemon, "history")
        assert history.returncode == 0
        lines = history.stdout.splitlines()
        assert lines[0].split()[:4] == ["AT", "FROM_VERSION", "TO_VERSION", "ACTOR"]
        assert "rollback" in lines[1]
        assert "completed" in modeld(daemon, "history", "--transfers").stdout

        batch = records(4)
        stdin = "\n".join(json.dumps(r) for r in batch) + "\n"
        scored = modeld(daemon, "score", stdin=stdin)
        assert scored.returncode == 0, scored.stderr
        results = [json.loads(line) for line in scored.stdout.splitlines()]
        assert len(results) == 4
        assert all(r["model_version"] == "v2" and "score" in r for r in results)

        unknown = modeld(daemon, "models", "deploy", "nope")
        assert unknown.returncode == 1
        assert unknown.stderr.count("\n") == 1 and "unknown model version 'nope'" in \
            unknown.stderr
        bad = modeld(daemon, "score", stdin='{"features": {}}\n')
        assert bad.returncode == 1 and "record 0" in bad.stderr
    finally:
        daemon.stop()

    down = modeld(daemon, "status")
    assert down.returncode == 1 and "not reachable" in down.stderr
    assert down.stderr.count("\n") == 1


def test_non_loopback_without_token_refuses_to_start(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("api:\n  host: 0.0.0.0\n")
    done = subprocess.run([sys.executable, "-m", "modeld.daemon.cli", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "MODELD_STORAGE__DIRECTORY": str(tmp_path / "s")})
    assert done.returncode == 2
    assert "api.host" in done.stderr and "token" in done.stderr
