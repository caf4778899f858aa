"""The MCP server, driven by the SDK's own client over both transports against a real daemon.

Streamable HTTP: ``ClientSession`` on ``streamable_http_client`` at the daemon's ``/mcp`` with
its bearer token. stdio: ``ClientSession`` on ``stdio_client`` starting ``modeld mcp`` as an
agent would. Both list the tools, call each, and check results and refusals.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from modeld.daemon.producer.simulator import simulate_wifi_logs
from modeld.daemon.producer.trainer import TrainedArtifact, train_artifact, write_artifact
from tests.helpers import DaemonProcess

pytestmark = pytest.mark.e2e

TOKEN = "mcp-test-token"
READ_TOOLS = {"score_log_records", "explain_anomaly", "get_model_status", "list_models",
              "get_drift_report", "list_recent_anomalies"}
CHANGE_TOOLS = {"deploy_model", "rollback_model"}
NOW = datetime.now(UTC)
LOGS_START = datetime(2026, 11, 23, tzinfo=UTC)
# A deauthentication flood line: the simulator's attack traffic, far from ordinary days.
FLOOD = {"timestamp": "2026-11-28T03:12:09Z", "host": "ap-2f-07", "process": "hostapd",
         "message": "wlan0: STA 02:00:00:13:37:01 IEEE 802.11: deauthenticated due to local "
                    "deauth request (reason 7) signal -91 dBm"}

Session = Callable[[], Any]


def ordinary(logs: list[dict[str, Any]]) -> dict[str, Any]:
    """A line of ordinary office traffic (the first line of a day may be a rare night one)."""
    return next(r for r in logs if "pairwise key handshake completed" in r["message"]
                and "label" not in r)


@pytest.fixture(scope="module")
def logs() -> list[dict[str, Any]]:
    # ordinary days from a fixed Monday: the models' view of the flood must not depend on the
    # hour the suite runs (the simulator's traffic follows the clock it is given)
    return simulate_wifi_logs(2200, LOGS_START, seed=11, anomaly_burst=False)


@pytest.fixture(scope="module")
def artifacts(logs: list[dict[str, Any]]) -> list[TrainedArtifact]:
    return [train_artifact(logs, model_type="LocalOutlierFactor", version="wifi-lof",
                           now=NOW - timedelta(hours=2)),
            train_artifact(logs, n_estimators=40, version="wifi-forest", now=NOW)]


def start_daemon(root: Path, artifacts: list[TrainedArtifact], allow_changes: bool
                 ) -> DaemonProcess:
    """A daemon behind a token serving wifi-forest, with wifi-lof imported (its fallback)."""
    daemon = DaemonProcess(root, {"api": {"token": TOKEN},
                                  "mcp": {"allow_changes": allow_changes},
                                  "monitoring": {"metrics_flush_interval": 0.5}})
    daemon.token = TOKEN
    for artifact in artifacts:
        write_artifact(artifact, daemon.models_dir)
    daemon.start()
    daemon.wait_deployed("wifi-forest", 60)
    return daemon


@asynccontextmanager
async def http_session(daemon: DaemonProcess, token: str = TOKEN
                       ) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (httpx2.AsyncClient(headers=headers, timeout=60) as http,
                streamable_http_client(f"{daemon.base}/mcp", http_client=http)
                as (read, write),
                ClientSession(read, write) as session):
        await session.initialize()
        yield session


@asynccontextmanager
async def stdio_session(daemon: DaemonProcess) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "modeld.daemon.cli", "mcp", "--config", str(daemon.config_path)])
    async with (stdio_client(params) as (read, write), ClientSession(read, write) as session):
        await session.initialize()
        yield session


def run(daemon: DaemonProcess, transport: str,
        body: Callable[[ClientSession], Awaitable[Any]]) -> Any:
    opener = http_session if transport == "http" else stdio_session

    async def main() -> Any:
        with anyio.fail_after(90):
            async with opener(daemon) as session:
                return await body(session)

    return anyio.run(main)


async def call(session: ClientSession, name: str, arguments: dict[str, Any] | None = None
               ) -> tuple[bool, Any]:
    """(is_error, structured content or the error text)."""
    result = await session.call_tool(name, arguments or {})
    if result.is_error:
        return True, " ".join(getattr(c, "text", "") for c in result.content)
    return False, result.structured_content


def test_read_tools_answer_over_both_transports(tmp_path: Path, logs: list[dict[str, Any]],
                                                artifacts: list[TrainedArtifact]) -> None:
    daemon = start_daemon(tmp_path, artifacts, allow_changes=False)
    for transport in ("http", "stdio"):
        check_read_tools(daemon, transport, logs)
    check_change_tools_refused(daemon)
    check_token_required(daemon)
    daemon.stop()


def check_read_tools(locked: DaemonProcess, transport: str, logs: list[dict[str, Any]]
                     ) -> None:
    async def body(session: ClientSession) -> dict[str, Any]:
        listed = {t.name: t for t in (await session.list_tools()).tools}
        out: dict[str, Any] = {"tools": listed}
        out["score"] = await call(session, "score_log_records",
                                  {"records": [ordinary(logs), FLOOD], "top": 2})
        out["explain"] = await call(session, "explain_anomaly", {"record": FLOOD})
        out["status"] = await call(session, "get_model_status")
        out["models"] = await call(session, "list_models")
        out["drift"] = await call(session, "get_drift_report")
        out["anomalies"] = await call(session, "list_recent_anomalies",
                                      {"host": "ap-2f-07", "limit": 5})
        out["bad"] = await call(session, "score_log_records",
                                {"records": [{"timestamp": "yesterday", "message": "x"}]})
        out["after_bad"] = await call(session, "get_model_status")
        return out

    out = run(locked, transport, body)
    tools = out["tools"]
    assert set(tools) == READ_TOOLS  # the change tools do not exist without allow_changes
    for tool in tools.values():
        assert tool.annotations.read_only_hint is True
        assert tool.input_schema["type"] == "object"
    assert tools["score_log_records"].input_schema["required"] == ["records"]
    assert set(tools["list_recent_anomalies"].input_schema["properties"]) == {
        "since", "host", "limit"}

    failed, scored = out["score"]
    assert not failed and scored["model_version"] == "wifi-forest"
    normal, flood = scored["results"]
    assert flood["is_anomaly"] is True and flood["score"] > normal["score"]
    assert len(flood["explanation"]["contributions"]) == 2
    assert flood["explanation"]["method"] == "tree_shap"

    failed, explained = out["explain"]
    assert not failed and explained["is_anomaly"] is True
    contributions = explained["explanation"]["contributions"]
    assert len(contributions) == len(out["status"][1]["feature_names"])
    total = sum(c["contribution"] for c in contributions)
    gap = explained["score"] - explained["explanation"]["expected_score"]
    assert total == pytest.approx(gap, abs=1e-5)
    assert any(c["text"].startswith("signal_dbm -91 dBm") for c in contributions)

    failed, status = out["status"]
    assert not failed and status["ready"] is True
    assert status["deployed"]["version"] == "wifi-forest"
    assert status["deployed"]["state"] == "deployed"
    assert status["deployed"]["serving_since"] is not None
    assert status["fallback"] is None or status["fallback"]["version"] == "wifi-lof"

    failed, models = out["models"]
    assert not failed and {m["version"] for m in models["models"]} == {"wifi-forest",
                                                                        "wifi-lof"}
    failed, drift = out["drift"]
    assert not failed and drift["deployed_version"] == "wifi-forest"
    assert "wifi-forest" in drift["summary"]

    failed, anomalies = out["anomalies"]
    assert not failed and anomalies["anomalies"]
    assert all(a["host"] == "ap-2f-07" for a in anomalies["anomalies"])
    assert anomalies["anomalies"][0]["explanation"]["contributions"]

    failed, detail = out["bad"]
    assert failed and "record 0" in detail and "timestamp" in detail
    assert out["after_bad"][0] is False  # a refusal never breaks the session


def check_change_tools_refused(locked: DaemonProcess) -> None:
    async def body(session: ClientSession) -> tuple[bool, Any]:
        return await call(session, "deploy_model", {"version": "wifi-lof"})

    failed, detail = run(locked, "http", body)
    assert failed and "mcp.allow_changes" in detail
    assert locked.status()["deployed_version"] == "wifi-forest"


def check_token_required(locked: DaemonProcess) -> None:
    answer = httpx.post(f"{locked.base}/mcp", json={"jsonrpc": "2.0", "id": 1,
                                                    "method": "tools/list"}, timeout=10)
    assert answer.status_code == 401

    async def main() -> None:
        async with http_session(locked, token="wrong"):
            pass

    with pytest.raises(BaseException):
        anyio.run(main)


def test_deploy_and_rollback_by_an_agent_are_recorded_as_mcp(
        tmp_path: Path, artifacts: list[TrainedArtifact]) -> None:
    daemon = start_daemon(tmp_path, artifacts, allow_changes=True)
    for transport in ("http", "stdio"):
        check_change_tools(daemon, transport)
    daemon.stop()


def check_change_tools(open_daemon: DaemonProcess, transport: str) -> None:
    async def body(session: ClientSession) -> dict[str, Any]:
        listed = {t.name: t for t in (await session.list_tools()).tools}
        return {
            "tools": listed,
            "deploy": await call(session, "deploy_model", {"version": "wifi-lof"}),
            "unknown": await call(session, "deploy_model", {"version": "no-such-version"}),
            "rollback": await call(session, "rollback_model"),
        }

    out = run(open_daemon, transport, body)
    assert set(out["tools"]) == READ_TOOLS | CHANGE_TOOLS
    for name in CHANGE_TOOLS:
        hints = out["tools"][name].annotations
        assert hints.destructive_hint is True and hints.read_only_hint is False
    assert out["deploy"] == (False, {"deployed_version": "wifi-lof",
                                     "fallback_version": "wifi-forest"})
    failed, detail = out["unknown"]
    assert failed and "no-such-version" in detail
    assert out["rollback"][1]["deployed_version"] == "wifi-forest"
    history = open_daemon.get("/api/v1/deployments?limit=2").json()
    assert [(d["to_version"], d["actor"]) for d in history] == [("wifi-forest", "mcp"),
                                                                ("wifi-lof", "mcp")]
    assert history[0]["reason"].startswith("rollback from wifi-lof")


def test_modeld_mcp_says_so_when_no_daemon_runs(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)  # configured, never started
    done = subprocess.run([sys.executable, "-m", "modeld.daemon.cli", "mcp", "--config",
                           str(daemon.config_path)], capture_output=True, text=True,
                          timeout=60, input="")
    assert done.returncode == 1
    assert "not reachable" in done.stderr and "is it running?" in done.stderr
    assert done.stdout == ""  # nothing an MCP client would take for a message
