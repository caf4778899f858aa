"""Configuration loading, the journal and rotated-file log outputs, registry backups."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from modeld.core.errors import ConfigError
from modeld.core.registry import Registry, backup_registry
from modeld.daemon.process.logs import configure_logging
from modeld.daemon.process.settings import LoggingSettings, load_settings, parse_size
from tests.helpers import DaemonProcess, artifact_files, write_renamed


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def test_yaml_environment_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("api:\n  port: 9001\nstorage:\n  keep_versions: 3\n")
    assert load_settings(cfg).api.port == 9001
    monkeypatch.setenv("MODELD_API__PORT", "9002")
    monkeypatch.setenv("MODELD_INTEGRATION__SETTLE_SECONDS", "0.25")
    settings = load_settings(cfg)
    assert settings.api.port == 9002 and settings.integration.settle_seconds == 0.25
    assert settings.storage.keep_versions == 3

    cfg.write_text("storage:\n  compression: true\n")
    assert load_settings(cfg).storage.compression
    cfg.write_text("security:\n  verify_key: /nonexistent.pub\n")
    with pytest.raises(ConfigError, match=r"security\.verify_key"):
        load_settings(cfg)
    cfg.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(cfg)
    assert parse_size("10MB") == 10_000_000 and parse_size("2KiB") == 2048


def test_journal_lines_have_a_priority_and_no_timestamp(tmp_path: Path,
                                                        restore_logging: None) -> None:
    out = (tmp_path / "journal").open("w+")
    st = os.fstat(out.fileno())
    configure_logging(LoggingSettings(), stream=out,
                      environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    structlog.get_logger("t").warning("model_swapped", old="v1", new="v2")
    structlog.get_logger("t").info("ready")
    out.seek(0)
    lines = out.read().splitlines()
    assert lines[0].startswith("<4>event='model_swapped'") and "new='v2'" in lines[0]
    assert lines[1].startswith("<6>event='ready'")
    assert all("timestamp" not in line for line in lines)
    out.close()


def test_rotated_log_file(tmp_path: Path, restore_logging: None) -> None:
    target = tmp_path / "logs" / "modeld.log"
    settings = LoggingSettings(file=target, rotation={"max_size": 2000, "backup_count": 2})
    with (tmp_path / "stderr").open("w") as stream:
        configure_logging(settings, stream=stream, environ={})
        log = structlog.get_logger("t")
        for i in range(200):
            log.info("scored", version="v1", batch=i)
    files = sorted(p.name for p in target.parent.iterdir())
    assert files == ["modeld.log", "modeld.log.1", "modeld.log.2"]
    assert json.loads(target.read_text().splitlines()[-1])["event"] == "scored"
    assert all(p.stat().st_size <= 2500 for p in target.parent.iterdir())


def test_registry_backups_keep_n_copies(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.sqlite3")
    registry.record_deployment(None, "v1", "2026-11-28T00:00:00+00:00", "first", "auto")
    for i in range(4):
        backup_registry(registry, tmp_path / "backups", keep=2, stamp=f"2026112{i}")
    kept = sorted(p.name for p in (tmp_path / "backups").iterdir())
    assert kept == ["registry-20261122.sqlite3", "registry-20261123.sqlite3"]
    with sqlite3.connect(tmp_path / "backups" / kept[-1]) as copy:
        assert copy.execute("SELECT to_version FROM deployments").fetchall() == [("v1",)]
    registry.close()


def test_forced_polling_finds_artifacts_and_says_so(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, overrides={
        "integration": {"force_polling": True, "polling_interval": 0.2},
        "storage": {"backup_enabled": True, "backup_interval": 1, "backup_count": 2}})
    daemon.models_dir.mkdir(parents=True)
    daemon.start()
    try:
        daemon.wait_for(lambda: daemon.events("watch_fallback_polling"), what="the log line")
        write_renamed(daemon.models_dir, "p", artifact_files("p"))
        daemon.wait_deployed("p")
        time.sleep(2.5)
        backups = list((tmp_path / "state" / "backups").iterdir())
        assert 1 <= len(backups) <= 2
    finally:
        daemon.stop()
