"""Bounded connections: what one client may hold of the daemon, and for how long.

uvicorn alone waits for ever for a connection's first request and for the rest of half-sent
headers, and (with httptools) buffers headers of any size. The daemon therefore serves HTTP/1.1
with h11 and ``api.max_header_bytes``, and this protocol adds:

- a deadline (``api.header_timeout``) for each request's headers, from the moment the
  connection opens or the previous response ended, which a byte every few seconds does not
  extend (slowloris);
- a cap on open connections below the process's file limit (``api.max_connections``, and
  never more than ``RLIMIT_NOFILE`` minus ``FD_RESERVE``, so imports, the registry and the store
  always have descriptors). At the cap a new connection takes the place of the oldest idle one,
  so idle sockets cannot lock scoring out; when none is idle the new one is closed;
- one write per response: uvicorn writes a response's head and its body separately, and each
  write is a send() made holding the interpreter lock, which on loopback wakes the client and
  on a busy machine is where the thread is preempted (py-spy --gil: 58 % of the HTTP thread's
  samples at one record per request were in that first write). :class:`_CorkedTransport`
  holds the head until the body follows in the same turn of the loop.

The protocol runs on uvicorn's event loop thread, one instance per connection. It never
raises; a connection it closes is logged at debug level only, since under a flood a line per
connection would be the next problem.
"""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any, cast

import h11
import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

from modeld.daemon.process.settings import ApiSettings

__all__ = ["FD_RESERVE", "connection_cap", "server_limits"]

log = structlog.get_logger("modeld.http")

FD_RESERVE = 128


def connection_cap(max_connections: int) -> int:
    """``api.max_connections``, lowered to the file limit minus ``FD_RESERVE`` (read each time:
    ``prlimit`` may change it while the daemon runs)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(8, min(max_connections, soft - FD_RESERVE))


class _CorkedTransport:
    """A connection's transport that sends a response's head together with its body.

    A write is held until the next write or the loop's next turn, whichever comes first:
    starlette sends a response's start and its body without yielding to the loop, so the two
    leave in one send(); a streamed response's head still leaves as soon as the handler
    awaits anything. Everything but ``write`` and ``close`` is the transport's own.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._held = None
            self._transport.write(held + data)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _BoundedH11(H11Protocol):
    header_timeout: float = 10.0
    max_connections: int = 1000

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        corked = _CorkedTransport(transport, self.loop)
        super().connection_made(cast(asyncio.Transport, corked))
        self.opened_at = time.monotonic()
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()
        self._shed_over_cap()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are complete
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def idle(self) -> bool:
        """Between requests, or before the first one's headers are complete."""
        return self.conn.their_state is h11.IDLE and (
            self.cycle is None or self.cycle.response_complete)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_overdue)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_overdue(self) -> None:
        self._header_timer = None
        if self.idle() and not self.transport.is_closing():
            log.debug("http_connection_timed_out", client=str(self.client),
                      reason=f"no complete request within {self.header_timeout:g} s "
                      "(api.header_timeout)")
            self.transport.close()

    def _shed_over_cap(self) -> None:
        cap = connection_cap(self.max_connections)
        if len(self.connections) <= cap:
            return
        idle = [c for c in self.connections
                if c is not self and isinstance(c, _BoundedH11) and c.idle()
                and not c.transport.is_closing()]
        victim = min(idle, key=lambda c: c.opened_at) if idle else self
        log.debug("http_connection_shed", client=str(victim.client), cap=cap,
                  reason="api.max_connections or the file limit reached")
        victim.transport.close()


def server_limits(api: ApiSettings) -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.Config`` that bound connections (see the module)."""
    protocol = type("BoundedH11Protocol", (_BoundedH11,), {
        "header_timeout": api.header_timeout, "max_connections": api.max_connections})
    return {
        "http": protocol,
        "h11_max_incomplete_event_size": api.max_header_bytes,
        "timeout_keep_alive": api.keep_alive_timeout,
        # in-flight requests too: past it uvicorn answers 503 rather than queueing without end
        "limit_concurrency": api.max_connections + 1,
    }
