"""The systemd notify protocol (sd_notify(3)), spoken by the daemon.

A message is a few ``KEY=VALUE`` lines in one datagram to the AF_UNIX socket named by
``$NOTIFY_SOCKET``; a name starting with ``@`` is in the abstract namespace. That is all of
the protocol modeld needs, so it is written here rather than taken from a library.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger()

# systemd reads at most one pipe buffer (4096 bytes) per message and drops a longer one.
# A STATUS= is a line for `systemctl status`; the rest of a long error belongs in the log.
STATUS_MAX_CHARS = 1000
# A datagram to a busy systemd waits at most this long; the caller's loop must not hang on it.
SEND_TIMEOUT_S = 1.0


class SystemdNotifier:
    """Tells systemd what the daemon is doing: ready, reloading, stopping, alive, and a STATUS=.

    Built once at start-up with ``SystemdNotifier.from_env(os.environ)`` and called by the
    daemon's main loop (the signal handlers only record signals; the loop sends the messages).
    Any thread may call it: each message opens, sends and closes its own socket, and nothing
    else is shared.

    On failure nothing is raised: a message that cannot be sent (socket gone, systemd busy past
    ``SEND_TIMEOUT_S``) is logged as ``sd_notify_failed`` and dropped, and the method returns
    False; a daemon must not stop because its supervisor cannot hear it. Without
    ``$NOTIFY_SOCKET`` (run by hand, or in a test) every method is a silent no-op returning
    False.
    """

    __slots__ = ("_address", "_watchdog_usec")

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        """Send to ``address`` (a path, or ``"\\0name"`` for an abstract one; None: send
        nothing), and expect a ``WATCHDOG=1`` every ``watchdog_usec`` (None: no watchdog)."""
        self._address = address
        self._watchdog_usec = watchdog_usec

    @classmethod
    def from_env(cls, environ: Mapping[str, str], pid: int | None = None) -> SystemdNotifier:
        """The notifier systemd asked for in ``environ``.

        ``pid`` is this process's id (default: ``os.getpid()``): the watchdog applies only
        when ``$WATCHDOG_PID`` is unset or names it, so a child that inherited the
        environment does not ping on its parent's behalf. Unusable values are logged and
        treated as absent.
        """
        own_pid = os.getpid() if pid is None else pid
        return cls(
            _parse_notify_socket(environ.get("NOTIFY_SOCKET", "")),
            _parse_watchdog_usec(environ, own_pid),
        )

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere at all."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between two ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``, as
        sd_watchdog_enabled(3) advises), or None when systemd expects none."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def notify(self, **fields: str | int) -> bool:
        """Send ``fields`` as one message (``notify(READY=1, STATUS="...")``).

        Line breaks inside a value become spaces, so that no value can add a field of its
        own. Returns whether the message was handed to the socket.
        """
        if self._address is None or not fields:
            return False
        message = "\n".join(f"{key}={_one_line(str(value))}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(SEND_TIMEOUT_S)
                sock.sendto(message.encode("utf-8"), self._address)
        except OSError as exc:
            log.warning(
                "sd_notify_failed",
                address=_printable(self._address),
                fields=sorted(fields),
                error=str(exc),
            )
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up, or a reload announced by ``reloading()``, is complete (refused or not)."""
        return self.notify(READY=1, **_status_field(status))

    def reloading(self, monotonic_usec: int, status: str | None = None) -> bool:
        """A reload has begun; ``monotonic_usec`` is CLOCK_MONOTONIC now, in microseconds
        (``time.monotonic_ns() // 1000``). ``ready()`` must follow, whatever the outcome."""
        return self.notify(RELOADING=1, MONOTONIC_USEC=monotonic_usec, **_status_field(status))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun."""
        return self.notify(STOPPING=1, **_status_field(status))

    def status(self, text: str) -> bool:
        """Replace the one line ``systemctl status modeld`` shows."""
        return self.notify(**_status_field(text))

    def watchdog(self) -> bool:
        """The keep-alive ping. Send it only while the daemon is healthy: a ping withheld for
        ``WatchdogSec=`` makes systemd kill and restart the daemon."""
        return self.notify(WATCHDOG=1)


def _parse_notify_socket(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # systemd 254 added vsock: addresses (for virtual machines); the hosts run 252.
    log.warning("sd_notify_socket_unsupported", notify_socket=value)
    return None


def _parse_watchdog_usec(environ: Mapping[str, str], own_pid: int) -> int | None:
    usec_text = environ.get("WATCHDOG_USEC", "")
    if not usec_text:
        return None
    pid_text = environ.get("WATCHDOG_PID", "")
    try:
        usec = int(usec_text)
        watchdog_pid = int(pid_text) if pid_text else None
    except ValueError:
        usec, watchdog_pid = 0, None
    if usec <= 0:
        log.warning("sd_watchdog_env_invalid", watchdog_usec=usec_text, watchdog_pid=pid_text)
        return None
    if watchdog_pid is not None and watchdog_pid != own_pid:
        return None
    return usec


def _status_field(text: str | None) -> dict[str, str]:
    if text is None:
        return {}
    line = _one_line(text)
    if len(line) > STATUS_MAX_CHARS:
        line = line[: STATUS_MAX_CHARS - 1] + "…"
    return {"STATUS": line}


def _one_line(value: str) -> str:
    return " ".join(value.splitlines())


def _printable(address: str) -> str:
    return "@" + address[1:] if address.startswith("\0") else address
