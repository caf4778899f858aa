"""A serving worker's HTTP front (``api.workers``): scoring here, everything else forwarded.

A worker answers what only reads its serving slot: scoring (/api/v1/score, the Open Inference
Protocol's /v2 routes), its own /healthz and /readyz. Every other request (deploy, rollback,
import, the dashboard, drift, anomalies, MCP, the status, /metrics) is forwarded unchanged to
the control process's API on its unix socket, so that it acts once, on the one manager that
imports and decides, and answers from the monitors that see every worker's traffic. Its
answer is relayed as it streams. The control process runs the same guard (token, Host,
cross-site checks) on what it is forwarded.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modeld.daemon.http.views import error

log = structlog.get_logger("modeld.forward")

SERVED_HERE = frozenset({"/healthz", "/readyz", "/api/v1/score", "/api/v1/noop"})
SERVED_PREFIXES = ("/v2",)
# hop-by-hop headers (RFC 9110 7.6.1) are this connection's, not the forwarded request's
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"upgrade",
                        b"te", b"trailer", b"proxy-connection"})
FORWARD_TIMEOUT = httpx.Timeout(120.0, connect=5.0)  # an import or a deploy may take a while


def served_here(path: str) -> bool:
    return path in SERVED_HERE or path.startswith(SERVED_PREFIXES)


class ControlForward:
    """The worker's ASGI app: ``app`` (the daemon's own app) for what :func:`served_here`,
    the control process at ``control_socket`` for the rest. A request body larger than
    ``max_request_bytes`` is refused here (413) before anything is forwarded; a control
    process that cannot be reached is a 503 naming it."""

    def __init__(self, app: ASGIApp, control_socket: Path, max_request_bytes: int) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(control_socket)),
            base_url="http://control", timeout=FORWARD_TIMEOUT)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or served_here(scope["path"]):
            await self.app(scope, receive, send)
            return
        body = await self._body(receive)
        if body is None:
            await error(413, f"request body larger than {self.max_request_bytes} bytes "
                        "(api.max_request_bytes)")(scope, receive, send)
            return
        path = scope["raw_path"].decode("latin-1") if scope.get("raw_path") else scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        request = self.client.build_request(
            scope["method"], path + (f"?{query}" if query else ""), content=body,
            headers=[(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP])
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            log.error("forward_failed", path=scope["path"], reason=f"{type(exc).__name__}: {exc}")
            await error(503, "this worker cannot reach its control process "
                        f"({type(exc).__name__})")(scope, receive, send)
            return
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(k, v) for k, v in response.headers.raw
                                    if k.lower() not in HOP_BY_HOP]})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    async def _body(self, receive: Receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_request_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)
