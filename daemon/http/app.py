"""The HTTP application (FastAPI on uvicorn): one guard, one error translation, the routers.

Handlers run on uvicorn's event loop; operations that take the manager's lock or load models
run in the thread pool. core's errors are translated here, and only here, into status codes
with a ``detail`` a person can act on. No user error is a 500.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from modeld.core.dialect import DATABASE_ERRORS
from modeld.core.errors import (
    ArtifactError,
    ModeldError,
    ModelLoadFailed,
    NoModelDeployed,
    NotTheImporter,
    PathOutsideModels,
    RecordInvalid,
    UnknownVersion,
    VersionConflict,
    VersionNotLoaded,
)
from modeld.daemon.http.api import api_router
from modeld.daemon.http.auth import UNAUTHORIZED_DETAIL, bearer_ok
from modeld.daemon.http.dashboard import dashboard_router
from modeld.daemon.http.mcp import mount_mcp
from modeld.daemon.http.oip import (
    OPEN_PROTOCOL_PATHS,
    is_protocol_path,
    oip_router,
    protocol_error,
)
from modeld.daemon.http.plan import plan_router
from modeld.daemon.http.shadow import shadow_router
from modeld.daemon.http.views import ORJSONResponse, error
from modeld.daemon.process.runtime import Runtime
from modeld.daemon.process.settings import ApiSettings

__all__ = ["create_app"]

log = structlog.get_logger("modeld.api")

# The dashboard's page holds no data without the token: its script asks for it.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"}) | OPEN_PROTOCOL_PATHS
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Sent by the CLI and the dashboard; a cross-site page cannot add it without a preflight.
CLIENT_HEADER = "x-modeld-client"
# The content types a web page may send anywhere without a CORS preflight (a form's POST, a
# fetch with a string body). Any other type (JSON, tritonclient's application/octet-stream)
# needs a preflight this daemon never grants; a body-less POST from a browser carries its
# Origin, which is checked first. Non-browser clients (curl, httpx, the plan's callers posting
# an import with no body) send neither, and pass.
SIMPLE_MEDIA_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded",
                                "multipart/form-data"})

STATUS_FOR: list[tuple[type[ModeldError], int]] = [
    (UnknownVersion, 404),
    (VersionNotLoaded, 404),
    (VersionConflict, 409),
    (NotTheImporter, 409),
    (ModelLoadFailed, 409),
    (PathOutsideModels, 400),
    (RecordInvalid, 422),
    (ArtifactError, 422),
    (NoModelDeployed, 503),
]


def create_app(runtime: Runtime) -> FastAPI:
    """Build the app for one runtime. Called once by the daemon (and by in-process tests)."""
    app = FastAPI(
        title="modeld",
        version="0.1.0",
        description="Imports, validates, hot-swaps and serves anomaly-detection models for "
        "WiFi access-point logs.",
        default_response_class=ORJSONResponse,
    )
    _add_error_handlers(app)

    app.add_middleware(_Guard, runtime=runtime)
    app.include_router(api_router(runtime))
    app.include_router(dashboard_router(runtime))
    app.include_router(shadow_router(runtime))
    mount_mcp(app, runtime)
    app.include_router(oip_router(runtime))
    app.include_router(plan_router(runtime))
    return app


class _Guard:
    """Every request's checks before any route: cross-site refusals, the bearer token and the
    declared body size.

    A plain ASGI middleware, not ``@app.middleware("http")``: starlette's BaseHTTPMiddleware
    runs every request through a task group and memory streams and re-wraps the response
    body, a fixed cost on each scoring request (measured: docs/performance.md).
    """

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = self.refusal(Request(scope))
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, request: Request) -> Response | None:
        runtime = self.runtime
        refused = cross_site_refusal(request, runtime.settings.api)
        if refused is not None:
            return refused
        if request.url.path not in OPEN_PATHS and not bearer_ok(
                runtime.token, request.headers.get("authorization")):
            refused = _error(request, 401, UNAUTHORIZED_DETAIL)
            refused.headers["WWW-Authenticate"] = "Bearer"
            return refused
        api = runtime.settings.api
        length = request.headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > api.max_request_bytes
            except ValueError:
                return _error(request, 400, "Content-Length is not a number")
            if too_big:
                return _error(request, 413, f"request body larger than {api.max_request_bytes} "
                              "bytes (api.max_request_bytes)")
        return None


def _error(request: Request, status: int, detail: str) -> Response:
    """The one error answer: ``{"detail": ...}``, or the Open Inference Protocol's own shape
    on its routes, which its clients read."""
    if is_protocol_path(request.url.path):
        return protocol_error(status, detail)
    return error(status, detail)


def _host_allowed(host: str, api: ApiSettings) -> bool:
    """``host`` (a Host header or an Origin's host, port removed) names this daemon: its bound
    address, a name in ``api.allowed_hosts``, localhost on a loopback address, or any address
    literal when bound to all addresses. A DNS-rebinding page brings its own name instead."""
    name = host.lower()
    if name == api.host.lower() or name in (h.lower() for h in api.allowed_hosts):
        return True
    try:
        literal = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return name == "localhost" and api.is_loopback()
    if api.host in ("0.0.0.0", "::", ""):
        return True
    return str(literal) == api.host.strip("[]")


def _hostname(netloc: str) -> str:
    """``netloc`` without its port: ``[::1]:8080`` -> ``[::1]``, ``a:80`` -> ``a``."""
    if netloc.startswith("["):
        return netloc.partition("]")[0] + "]"
    return netloc.rpartition(":")[0] if netloc.count(":") == 1 else netloc


def cross_site_refusal(request: Request, api: ApiSettings) -> Response | None:
    """Why a request must not be served although no token may be configured, or None.

    A browser lets any web page send "simple" requests (a form's POST, a fetch without custom
    headers) to 127.0.0.1, and a DNS-rebinding page even read the answers. So: too many
    headers are refused (431); a Host that is not this daemon's address or a name in
    ``api.allowed_hosts`` is refused (400); a state-changing request must not carry a foreign
    ``Origin`` or ``Sec-Fetch-Site: cross-site``, and one with a form or text content type
    (what a page may send cross-site without a CORS preflight, which this daemon never grants)
    needs an ``X-Modeld-Client`` header (403).
    """
    if len(request.headers.raw) > api.max_headers:
        return error(431, f"more than {api.max_headers} request headers (api.max_headers)")
    host = request.headers.get("host")
    if host is not None and not _host_allowed(_hostname(host), api):
        return error(400, f"Host {host!r} is not this daemon's address or a name in "
                     "api.allowed_hosts")
    if request.method in SAFE_METHODS:
        return None
    origin = request.headers.get("origin")
    if origin is not None:
        netloc = urlsplit(origin).netloc
        if not netloc or netloc.lower() != (host or "").lower():
            return error(403, f"cross-site request refused: Origin {origin!r} is not this "
                         "daemon")
    if request.headers.get("sec-fetch-site") == "cross-site":
        return error(403, "cross-site request refused: the browser says it comes from another "
                     "site (Sec-Fetch-Site: cross-site)")
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media in SIMPLE_MEDIA_TYPES and CLIENT_HEADER not in request.headers:
        return error(403, f"cross-site request refused: a state-changing request with "
                     f"Content-Type {media} needs an {CLIENT_HEADER} header (send JSON, or no "
                     "body, instead)")
    return None


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClientDisconnect)
    async def disconnected(request: Request, _exc: ClientDisconnect) -> Response:
        # Nobody is left to answer: one quiet line, no traceback (a flood of these wrote
        # megabytes of error log and slowed everyone else).
        log.debug("client_disconnected", path=request.url.path, method=request.method)
        return Response(status_code=400)

    @app.exception_handler(ModeldError)
    async def modeld_error(request: Request, exc: ModeldError) -> Response:
        for kind, status in STATUS_FOR:
            if isinstance(exc, kind):
                return _error(request, status, str(exc))
        return _error(request, 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return _error(request, 422, f"{where}: {first.get('msg')}")

    async def registry_unreachable(request: Request, exc: Exception) -> Response:
        # the registry is away (a fleet's database restarting): scoring goes on, what needs
        # the database waits. A handler per class, not a case of the catch-all below:
        # starlette answers with the catch-all and then re-raises, so uvicorn logged a
        # traceback for every such 503.
        log.warning("request_registry_unreachable", path=request.url.path,
                    reason=str(exc).strip() or type(exc).__name__)
        return _error(request, 503, "the registry database cannot be used right now "
                      f"({type(exc).__name__}); this daemon keeps serving its last version")

    for kind in DATABASE_ERRORS:
        app.add_exception_handler(kind, registry_unreachable)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("request_failed", path=request.url.path, method=request.method,
                      reason=f"{type(exc).__name__}: {exc}")
        return _error(request, 500, f"internal error ({type(exc).__name__}); the daemon logged "
                      "it as request_failed")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(request, exc.status_code, str(exc.detail))
