"""The MCP server at ``/mcp``: modeld's tools for agents over streamable HTTP.

``mount_mcp`` adds the endpoint to the daemon's app, inside the app's one guard (the same
bearer token as the API). The tools and the SDK (:mod:`modeld.daemon.http.mcp_tools`) are
loaded on the first request to ``/mcp``, and the SDK's session manager then runs until the
app's lifespan ends (the daemon runs uvicorn with its lifespan on). ``modeld mcp`` relays an
agent's stdio to this endpoint, so both transports serve the same tools from the same process,
with the daemon's configuration deciding what exists.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from fastapi import FastAPI
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from modeld.daemon.http.views import error
from modeld.daemon.process.runtime import Runtime

__all__ = ["PATH", "McpEndpoint", "mount_mcp"]

PATH = "/mcp"


def mount_mcp(app: FastAPI, runtime: Runtime) -> None:
    """Serve the MCP tools at ``/mcp`` of ``app``, for the app's lifespan."""
    endpoint = McpEndpoint(runtime)
    # an ASGI app as the endpoint: Starlette hands it the raw request
    app.router.routes.append(Route(PATH, endpoint, methods=["GET", "POST", "DELETE"],
                                   include_in_schema=False))
    outer = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        async with endpoint.running(), outer(application) as state:
            yield state

    app.router.lifespan_context = lifespan


class McpEndpoint:
    """The ASGI endpoint at /mcp: the SDK's session manager of the current app lifespan.

    Called on the event loop. The first request builds the tools and starts a session manager
    in the lifespan's task group (a manager runs once, and an app may be started more than
    once, as in-process tests do). Outside a lifespan it answers 503.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._tasks: TaskGroup | None = None
        self._lock = anyio.Lock()
        self._manager: Any = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            try:
                yield
            finally:
                self._tasks = None
                self._manager = None
                tasks.cancel_scope.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        manager = self._manager or await self._start()
        if manager is None:
            await error(503, "the MCP server is not running (the app was started without "
                        "its lifespan)")(scope, receive, send)
            return
        await manager.handle_request(scope, receive, send)

    async def _start(self) -> Any:
        async with self._lock:
            tasks = self._tasks
            if self._manager is None and tasks is not None:
                # the SDK's import and the tools' build take a second: not on the loop
                manager = await anyio.to_thread.run_sync(_build, self.runtime)
                await tasks.start(self._serve, manager)
                self._manager = manager
            return self._manager

    @staticmethod
    async def _serve(manager: Any, *, task_status: TaskStatus[None]) -> None:
        async with manager.run():
            task_status.started()
            await anyio.sleep_forever()


def _build(runtime: Runtime) -> Any:
    from modeld.daemon.http.mcp_tools import session_manager

    return session_manager(runtime, PATH)
