"""SystemdNotifier against a real AF_UNIX datagram socket owned by the test, standing in for
systemd's notify socket: a filesystem path and an abstract-namespace address."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from modeld.daemon.process.sdnotify import STATUS_MAX_CHARS, SystemdNotifier


@dataclass
class NotifySocket:
    """The receiving end: what NOTIFY_SOCKET says, and the bound socket to read from."""

    env_value: str
    sock: socket.socket

    def receive(self) -> str:
        return self.sock.recv(8192).decode("utf-8")

    def assert_empty(self) -> None:
        self.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            self.sock.recv(8192)


def _bound(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


@pytest.fixture
def path_socket() -> Iterator[NotifySocket]:
    # Not tmp_path: a socket path must fit in sun_path (108 bytes), which pytest's long
    # per-test folders can exceed.
    with tempfile.TemporaryDirectory(prefix="sdn") as folder:
        path = str(Path(folder) / "notify")
        with _bound(path) as sock:
            yield NotifySocket(path, sock)


@pytest.fixture
def abstract_socket() -> Iterator[NotifySocket]:
    name = f"modeld-test-{uuid.uuid4().hex}"
    with _bound("\0" + name) as sock:
        yield NotifySocket("@" + name, sock)


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest) -> NotifySocket:
    fixture = "path_socket" if request.param == "path" else "abstract_socket"
    return request.getfixturevalue(fixture)


def _notifier(notify_socket: NotifySocket) -> SystemdNotifier:
    return SystemdNotifier.from_env({"NOTIFY_SOCKET": notify_socket.env_value})


def test_ready_with_status_is_one_datagram(notify_socket: NotifySocket) -> None:
    notifier = _notifier(notify_socket)

    assert notifier.enabled
    assert notifier.ready(status="Serving v20261128_101500 (IsolationForest)")
    assert notify_socket.receive() == ("READY=1\nSTATUS=Serving v20261128_101500 (IsolationForest)")
    notify_socket.assert_empty()


def test_reload_sequence(notify_socket: NotifySocket) -> None:
    notifier = _notifier(notify_socket)

    notifier.reloading(123_456_789, status="Reloading configuration")
    notifier.ready()

    assert notify_socket.receive() == (
        "RELOADING=1\nMONOTONIC_USEC=123456789\nSTATUS=Reloading configuration"
    )
    assert notify_socket.receive() == "READY=1"


def test_each_message_format(notify_socket: NotifySocket) -> None:
    notifier = _notifier(notify_socket)

    notifier.reloading(42)
    notifier.stopping()
    notifier.status("No model deployed")
    notifier.watchdog()
    notifier.notify(STATUS="x", ERRNO=0)

    assert [notify_socket.receive() for _ in range(5)] == [
        "RELOADING=1\nMONOTONIC_USEC=42",
        "STOPPING=1",
        "STATUS=No model deployed",
        "WATCHDOG=1",
        "STATUS=x\nERRNO=0",
    ]


def test_a_value_cannot_add_a_field(notify_socket: NotifySocket) -> None:
    # A reload error (a pydantic report, say) spans lines; one of them must not end a reload.
    notifier = _notifier(notify_socket)

    notifier.status("Reload refused: 1 validation error\nREADY=1\r\napi.port: not an int")

    assert notify_socket.receive() == (
        "STATUS=Reload refused: 1 validation error READY=1 api.port: not an int"
    )


def test_long_status_is_cut_to_one_line_for_systemctl(notify_socket: NotifySocket) -> None:
    notifier = _notifier(notify_socket)

    notifier.status("é" * (STATUS_MAX_CHARS * 2))

    received = notify_socket.receive()
    assert received == "STATUS=" + "é" * (STATUS_MAX_CHARS - 1) + "…"


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}])
def test_without_notify_socket_nothing_is_sent_and_nothing_fails(
    environ: dict[str, str],
) -> None:
    notifier = SystemdNotifier.from_env(environ)

    with capture_logs() as logs:
        results = [
            notifier.ready(status="s"),
            notifier.reloading(1),
            notifier.stopping(),
            notifier.status("s"),
            notifier.watchdog(),
            notifier.notify(READY=1),
        ]

    assert not notifier.enabled
    assert results == [False] * 6
    assert logs == []


def test_unsupported_socket_kind_is_logged_and_disabled() -> None:
    with capture_logs() as logs:
        notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})

    assert not notifier.enabled
    assert logs == [
        {
            "event": "sd_notify_socket_unsupported",
            "notify_socket": "vsock:2:1234",
            "log_level": "warning",
        }
    ]


@pytest.mark.parametrize(
    ("env_value", "printed"),
    [("/nonexistent/modeld/notify", "/nonexistent/modeld/notify"), ("@gone", "@gone")],
)
def test_send_failure_is_logged_not_raised(env_value: str, printed: str) -> None:
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": env_value})

    with capture_logs() as logs:
        sent = notifier.ready(status="Serving v3")

    assert sent is False
    assert len(logs) == 1
    assert logs[0]["event"] == "sd_notify_failed"
    assert logs[0]["log_level"] == "warning"
    assert logs[0]["address"] == printed
    assert logs[0]["fields"] == ["READY", "STATUS"]
    assert logs[0]["error"]


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": ""}, 0.25),
        ({"WATCHDOG_USEC": ""}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], interval: float | None) -> None:
    notifier = SystemdNotifier.from_env(environ, pid=4242)

    assert notifier.watchdog_interval() == interval


@pytest.mark.parametrize(
    "environ",
    [
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"},
    ],
)
def test_unusable_watchdog_environment_is_logged_and_ignored(environ: dict[str, str]) -> None:
    with capture_logs() as logs:
        notifier = SystemdNotifier.from_env(environ, pid=4242)

    assert notifier.watchdog_interval() is None
    assert [entry["event"] for entry in logs] == ["sd_watchdog_env_invalid"]


def test_watchdog_pid_defaults_to_this_process() -> None:
    environ = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}

    someone_else = {**environ, "WATCHDOG_PID": str(os.getpid() + 1)}

    assert SystemdNotifier.from_env(environ).watchdog_interval() == 1.0
    assert SystemdNotifier.from_env(someone_else).watchdog_interval() is None
