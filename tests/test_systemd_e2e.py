"""The daemon's side of systemd's protocols, on a real process and a socket the test owns."""

from __future__ import annotations

import itertools
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import DaemonProcess

pytestmark = pytest.mark.e2e


class NotifyReceiver:
    """The notify socket's reader, on a thread of its own as systemd reads it.

    A datagram socket's queue is short (net.unix.max_dgram_qlen, 10 on these machines): read
    only between the test's steps, watchdog pings queued during a slow CLI call would fill it,
    and the daemon's next message (STOPPING=1) would be dropped, which systemd never does.
    """

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name="notify-receiver")
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def drain(self, seconds: float) -> None:
        time.sleep(seconds)

    def until(self, predicate: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate in m for _, m in list(self.messages)):
                return
            time.sleep(0.05)
        raise AssertionError(f"no {predicate!r} in {self.kinds()}")

    def close(self) -> None:
        self._stop.set()
        self._reader.join(2)
        self.sock.close()

    def kinds(self) -> list[str]:
        return [m.split("\n")[0].split("=")[0] for _, m in self.messages]


def reload_cli(daemon: DaemonProcess) -> subprocess.CompletedProcess[str]:
    assert daemon.proc is not None
    return subprocess.run(
        [sys.executable, "-m", "modeld.daemon.cli", "reload", "--config", str(daemon.config_path),
         "--pid", str(daemon.proc.pid), "--timeout", "20"],
        capture_output=True, text=True, timeout=60,
    )


def test_notify_sequence_reload_watchdog_and_stop(tmp_path: Path) -> None:
    receiver = NotifyReceiver(tmp_path / "notify.sock")
    daemon = DaemonProcess(tmp_path, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                                          "WATCHDOG_USEC": "1000000"})
    daemon.models_dir.mkdir(parents=True)
    try:
        daemon.start()
        receiver.until("READY=1")
        receiver.drain(2.2)
        kinds = receiver.kinds()
        assert kinds[0] == "READY" and "STATUS" in kinds[:3]
        status = next(m for _, m in receiver.messages if m.startswith("STATUS="))
        assert status == "STATUS=Waiting for a valid model; none deployed"
        pings = [t for t, m in receiver.messages if m == "WATCHDOG=1"]
        assert len(pings) >= 3  # half of WATCHDOG_USEC: every 0.5 s
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert all(0.3 < g < 0.9 for g in gaps), gaps

        # a good reload through the ExecReload command: new configuration in force
        config = daemon.config()
        config["integration"]["auto_deploy"] = False
        daemon.write_config(config)
        receiver.messages.clear()
        done = reload_cli(daemon)
        assert done.returncode == 0, done.stderr
        assert daemon.status()["auto_deploy"] is False
        receiver.until("READY=1")
        reload_messages = [m for _, m in receiver.messages if m != "WATCHDOG=1"]
        assert reload_messages[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
        usec = int(reload_messages[0].split("MONOTONIC_USEC=")[1])
        assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 30_000_000
        assert "READY=1" in reload_messages[1]

        # a refused reload: READY=1 all the same, old configuration kept, exit status 1
        daemon.config_path.write_text("api:\n  port: -1\n")
        receiver.messages.clear()
        refused = reload_cli(daemon)
        assert refused.returncode == 1 and "api.port" in refused.stderr
        receiver.until("Reload refused")
        kinds = [k for k in receiver.kinds() if k != "WATCHDOG"]
        assert kinds[:3] == ["RELOADING", "READY", "STATUS"]
        assert daemon.status()["auto_deploy"] is False
        daemon.write_config(config)  # fixed again: the next reload is not fooled by the refusal
        assert reload_cli(daemon).returncode == 0

        receiver.messages.clear()
        daemon.signal(signal.SIGTERM)
        assert daemon.proc is not None
        assert daemon.proc.wait(15) == 0
        receiver.drain(0.3)
        assert "STOPPING=1" in [m for _, m in receiver.messages]
    finally:
        daemon.stop()
        receiver.close()


def test_no_notify_socket_sends_nothing_and_runs(daemon: DaemonProcess) -> None:
    daemon.env.pop("NOTIFY_SOCKET", None)
    daemon.env["WATCHDOG_USEC"] = "1000000"
    daemon.start()
    time.sleep(1.2)
    assert daemon.get("/healthz").status_code == 200
    assert daemon.stop() == 0
