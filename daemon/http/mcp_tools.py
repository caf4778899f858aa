"""modeld's MCP tools on the official ``mcp`` SDK's ``MCPServer``, and the stdio relay.

Imported on the first request to ``/mcp`` (:mod:`modeld.daemon.http.mcp`) and by
``modeld mcp``, so that a daemon nobody asks over MCP never pays for the SDK.

Tools call the runtime on worker threads (``anyio.to_thread``), like the API's handlers. A
refusal is a tool result with ``isError`` and the daemon's ``detail`` (the API's words for
the same refusal), never a broken session. ``deploy_model`` and ``rollback_model`` exist only
while ``mcp.allow_changes`` is true (a reload changes it at once) and are recorded with actor
``mcp``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio
import httpx2
import structlog
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import Tool, ToolAnnotations
from pydantic import Field
from starlette.exceptions import HTTPException

from modeld.core.errors import ModeldError, NoModelDeployed
from modeld.core.lifecycle import lifecycle_state
from modeld.daemon.http.api import anomaly_since
from modeld.daemon.http.views import serving_pair, version_view
from modeld.daemon.process.runtime import Runtime

__all__ = ["CHANGE_TOOLS", "build_server", "serve_stdio", "session_manager"]

log = structlog.get_logger("modeld.mcp")

CHANGE_TOOLS = frozenset({"deploy_model", "rollback_model"})
READ = ToolAnnotations(readOnlyHint=True, destructiveHint=False, openWorldHint=False)
CHANGE = ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=False,
                         openWorldHint=False)

T = TypeVar("T")

Record = dict[str, Any]
RecordsArg = Annotated[list[Record], Field(
    min_length=1, description="WiFi log records: {timestamp, host, process, message, "
    "features?} each, as POST /api/v1/score takes them")]


class ModeldMcp(MCPServer[Any]):
    """The SDK's server, with the change tools hidden and refused while not allowed.

    Called on the event loop by the SDK; ``allowed`` reads the runtime's current settings.
    """

    def __init__(self, allowed: Callable[[], bool]) -> None:
        super().__init__("modeld", version="0.1.0", instructions=(
            "modeld scores WiFi access-point log records with the deployed anomaly model and "
            "explains every score. Start with get_model_status; score_log_records for "
            "traffic, explain_anomaly for one line, list_recent_anomalies for what it flagged."),
            log_level="WARNING")
        self.allowed = allowed

    async def list_tools(self) -> list[Tool]:
        tools = await super().list_tools()
        return tools if self.allowed() else [t for t in tools if t.name not in CHANGE_TOOLS]

    async def call_tool(self, name: str, arguments: dict[str, Any],
                        context: Context[Any, Any] | None = None) -> Any:
        if name in CHANGE_TOOLS and not self.allowed():
            raise ToolError(f"{name} is not available: set mcp.allow_changes: true in the "
                            "daemon's configuration to let agents deploy and roll back")
        return await super().call_tool(name, arguments, context)


async def _run(function: Callable[..., T], *args: Any) -> T:
    """Run blocking runtime work on a worker thread; refusals become the tool's error."""
    try:
        return await anyio.to_thread.run_sync(function, *args)
    except ModeldError as exc:
        raise ToolError(str(exc)) from exc
    except HTTPException as exc:
        raise ToolError(str(exc.detail)) from exc


def build_server(runtime: Runtime) -> ModeldMcp:
    """The tools, bound to one runtime."""
    server = ModeldMcp(lambda: runtime.settings.mcp.allow_changes)

    def score(records: list[Record], top: int | None) -> dict[str, Any]:
        if len(records) > runtime.settings.api.max_records:
            raise HTTPException(413, f"{len(records)} records exceed api.max_records "
                                f"({runtime.settings.api.max_records})")
        return runtime.answer(runtime.score_routed(records), explain=True, top=top)

    @server.tool(annotations=READ, structured_output=True)
    async def score_log_records(
        records: RecordsArg,
        top: Annotated[int, Field(ge=1, le=50, description="contributions per record")] = 3,
    ) -> dict[str, Any]:
        """Score WiFi log records with the deployed model: per record its score (higher is
        more anomalous), is_anomaly, and the top feature contributions with words."""
        return await _run(score, records, top)

    @server.tool(annotations=READ, structured_output=True)
    async def explain_anomaly(
        record: Annotated[Record, Field(description="one WiFi log record")],
    ) -> dict[str, Any]:
        """The full explanation of one record: every feature's contribution to its score,
        largest first, each in words against the model's reference data. It is not counted
        as scored traffic."""
        return await _run(runtime.explain, record)

    @server.tool(annotations=READ, structured_output=True)
    async def get_model_status() -> dict[str, Any]:
        """What serves now: the deployed and fallback versions, their state, quality score
        and since when they serve, and whether the daemon is ready to score."""
        return await _run(model_status, runtime)

    @server.tool(annotations=READ, structured_output=True)
    async def list_models() -> dict[str, Any]:
        """Every version the daemon knows, newest import first, with state and quality."""
        def models() -> dict[str, Any]:
            deployed, fallback = serving_pair(runtime.slot)
            return {"models": [version_view(r, deployed, fallback)
                               for r in runtime.manager.registry.list_versions()]}
        return await _run(models)

    @server.tool(annotations=READ, structured_output=True)
    async def get_drift_report() -> dict[str, Any]:
        """The last drift evaluation of the deployed version, in plain words, with the
        signals that are not ok."""
        return await _run(drift_report, runtime)

    @server.tool(annotations=READ, structured_output=True)
    async def list_recent_anomalies(
        since: Annotated[str | None, Field(description="ISO-8601 time they were scored")]
        = None,
        host: Annotated[str | None, Field(description="only this host")] = None,
        limit: Annotated[int, Field(ge=1, le=1000)] = 50,
    ) -> dict[str, Any]:
        """Recent anomalies, newest first: time, host, process, message, score, version and
        explanation."""
        def read() -> dict[str, Any]:
            return {"anomalies": runtime.monitors.anomalies.read(anomaly_since(since), host,
                                                                  limit)}
        return await _run(read)

    @server.tool(annotations=CHANGE, structured_output=True)
    async def deploy_model(
        version: Annotated[str, Field(min_length=1, description="a version from list_models")],
    ) -> dict[str, Any]:
        """Deploy a version now (recorded in the deployment history with actor mcp)."""
        def deploy() -> dict[str, Any]:
            serving = runtime.manager.deploy(version, "deployed by an agent over MCP", "mcp")
            log.info("mcp_deploy", version=serving)
            return {"deployed_version": serving, "fallback_version": serving_pair(runtime.slot)[1]}
        return await _run(deploy)

    @server.tool(annotations=CHANGE, structured_output=True)
    async def rollback_model(
        version: Annotated[str | None, Field(description="the version to go back to; "
                                             "default: the previous deployed one")] = None,
    ) -> dict[str, Any]:
        """Roll back to the previous deployed version, or to a named one (recorded with actor
        mcp; auto-deploy then never re-deploys the version rolled back from)."""
        def rollback() -> dict[str, Any]:
            serving = runtime.manager.rollback(version, "mcp")
            log.info("mcp_rollback", version=serving)
            return {"deployed_version": serving, "fallback_version": serving_pair(runtime.slot)[1]}
        return await _run(rollback)

    return server


def model_status(runtime: Runtime) -> dict[str, Any]:
    """The deployed and fallback versions with their registry facts."""
    deployed, fallback = serving_pair(runtime.slot)
    registry = runtime.manager.registry

    def one(version: str | None) -> dict[str, Any] | None:
        row = None if version is None else registry.get_version(version)
        if row is None:
            return None
        return {"version": row.version, "model_type": row.model_type,
                "state": lifecycle_state(row.status, row.version, row.deployed_at, deployed,
                                         fallback),
                "quality_score": row.quality_score, "created_at": row.created_at,
                "serving_since": row.deployed_at}

    status = runtime.status()
    return {
        "ready": deployed is not None,
        "state": ("serving" if deployed else "waiting for a valid model; none deployed"),
        "deployed": one(deployed),
        "fallback": one(fallback),
        "feature_names": status["feature_names"],
        "auto_deploy": status["auto_deploy"],
        "uptime_seconds": status["uptime_seconds"],
        "health": status["health"],
    }


def drift_report(runtime: Runtime) -> dict[str, Any]:
    """The deployed version's drift report, summarised in words."""
    deployed = runtime.slot.state.deployed
    if deployed is None:
        raise NoModelDeployed()
    report = runtime.monitors.report(deployed.version)
    signals = report.get("signals", [])
    drifting = [s for s in signals if s.get("status") == "drift"]
    warnings = [s for s in signals if s.get("status") == "warning"]
    progress = report.get("baseline_progress")
    if progress:
        words = (f"{deployed.version} is still collecting its baseline "
                 f"({progress[0]} of {progress[1]} records); no drift verdict yet.")
    elif drifting:
        words = (f"{deployed.version} sees drift in {', '.join(s['name'] for s in drifting)} "
                 f"against its {report.get('reference_source')} reference.")
    elif warnings:
        words = (f"{deployed.version} shows significant but small changes in "
                 f"{', '.join(s['name'] for s in warnings)}; below the drift threshold.")
    elif report.get("status") == "not_evaluated":
        words = f"{deployed.version} has no scheduled drift evaluation yet."
    elif report.get("status") == "insufficient_data":
        words = f"{deployed.version} has not scored enough records for a drift verdict yet."
    else:
        words = (f"No drift: what {deployed.version} scores looks like its "
                 f"{report.get('reference_source')} reference.")
    return {"deployed_version": deployed.version, "status": report.get("status"),
            "summary": words, "evaluated_at": report.get("evaluated_at"),
            "records_seen": report.get("records_seen"),
            "reference_source": report.get("reference_source"),
            "signals": [s for s in signals if s.get("status") != "ok"],
            "drift_detection": report.get("drift_detection")}


def session_manager(runtime: Runtime, path: str) -> StreamableHTTPSessionManager:
    """A fresh SDK session manager serving the tools at ``path``: stateless and answering
    JSON, so every POST is one exchange (a daemon restart never strands an agent's session,
    and a stop never waits for an open stream)."""
    api = runtime.settings.api
    # A token-less daemon listens on loopback only: there the SDK's DNS-rebinding check keeps
    # a web page from reaching the tools through the browser. Elsewhere the token guards.
    security = (TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    ) if api.is_loopback() else TransportSecuritySettings(enable_dns_rebinding_protection=False))
    server = build_server(runtime)
    server.streamable_http_app(streamable_http_path=path, stateless_http=True,
                               json_response=True, transport_security=security,
                               max_request_body_size=api.max_request_bytes)
    return server.session_manager




def serve_stdio(url: str, headers: dict[str, str]) -> int:
    """``modeld mcp``: relay MCP messages between stdin/stdout and the daemon's ``url``.

    Runs until the agent closes stdin. A message the daemon cannot be reached for is logged
    to stderr by the SDK's transport and the agent gets no answer to it; the relay goes on.
    """

    async def relay() -> None:
        async with (httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60.0)) as http,
                    streamable_http_client(url, http_client=http) as (from_daemon, to_daemon),
                    stdio_server() as (from_agent, to_agent),
                    anyio.create_task_group() as tasks):
            async def upstream() -> None:
                await _pump(from_agent, to_daemon)
                tasks.cancel_scope.cancel()  # the agent is gone: so is the relay

            tasks.start_soon(upstream)
            tasks.start_soon(_pump, from_daemon, to_agent)

    anyio.run(relay)
    return 0


async def _pump(source: Any, sink: Any) -> None:
    async with sink:
        async for message in source:
            if isinstance(message, Exception):  # the transport's own report of a bad message
                log.warning("mcp_relay_message_dropped", reason=str(message))
                continue
            await sink.send(message)

