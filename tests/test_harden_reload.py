"""Issue 19, finding 5: a reload never weakens authentication silently. A real daemon with a
token, real SIGHUPs, configuration files cut the way a half-finished write leaves them."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers import DaemonProcess

pytestmark = pytest.mark.e2e

TOKEN = "s3cret-token-4711"


def _reload(daemon: DaemonProcess, text: str) -> dict[str, object]:
    before = httpx.get(f"{daemon.base}/healthz", timeout=15).json()
    tried = max(before["config_generation"], (before["last_reload"] or {}).get("generation", 0))
    daemon.config_path.write_text(text)
    daemon.signal(signal.SIGHUP)
    result: dict[str, object] = {}

    def answered() -> bool:
        last = httpx.get(f"{daemon.base}/healthz", timeout=15).json()["last_reload"]
        result.update(last or {})
        return bool(last) and last["generation"] > tried

    daemon.wait_for(answered, 20, "the reload's outcome")
    return result


def _open_without_token(daemon: DaemonProcess) -> int:
    return httpx.get(f"{daemon.base}/api/v1/status", timeout=15).status_code


def test_a_config_caught_mid_write_never_removes_or_changes_the_token(tmp_path: Path) -> None:
    # Before: each of the cut files below was "reloaded": the token was gone (or became
    # "s3c") and /api/v1/status answered anyone with 200.
    daemon = DaemonProcess(tmp_path, {"api": {"token": TOKEN}})
    config = daemon.config()  # api after other sections, so a cut can fall before it
    daemon.config_path.write_text(yaml.safe_dump(
        {k: config[k] for k in ("storage", "integration", "api", "logging")}, sort_keys=False))
    daemon.models_dir.mkdir(parents=True)
    daemon.start()
    try:
        full = daemon.config_path.read_text()
        assert list(yaml.safe_load(full)) == ["storage", "integration", "api", "logging"]
        cuts = {
            "cut before api:": full[:full.index("api:")],
            "empty": "",
            "cut inside the token": full[:full.index(TOKEN) + 3],
        }
        for what, text in cuts.items():
            refused = _reload(daemon, text)
            assert refused["ok"] is False, what
            assert _open_without_token(daemon) == 401, what
            assert daemon.status()["config_generation"] == 1, what
        events = daemon.events("reload_refused")
        assert [e["key"] for e in events] == ["api.token", str(daemon.config_path), "api.token"]

        # the whole file, naming the new token: an explicit change is applied
        config = yaml.safe_load(full)
        config["api"]["token"] = "rotated-token-0815"
        applied = _reload(daemon, yaml.safe_dump(config, sort_keys=False))
        assert applied["ok"] is True
        daemon.token = "rotated-token-0815"
        assert daemon.status()["config_generation"] == applied["generation"]
        assert _open_without_token(daemon) == 401

        config["api"]["token"] = None  # and so is an explicit removal of a complete file
        assert _reload(daemon, yaml.safe_dump(config, sort_keys=False))["ok"] is True
        assert _open_without_token(daemon) == 200
    finally:
        daemon.stop()
