from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import postgres
from tests.helpers import DaemonProcess, Receiver


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[postgres.PostgresCluster]:
    """One real PostgreSQL cluster for the session (skipped, saying why, without one)."""
    reason = postgres.missing()
    if reason is not None:
        pytest.skip(reason)
    cluster = postgres.PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster: postgres.PostgresCluster) -> str:
    """A fresh database on the session's cluster."""
    return pg_cluster.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The registry on each backend: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'registry.sqlite3'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """A test that leaves a thread of its own running fails (watchdog's tests do the same)."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()
              and not t.name.startswith(("asyncio_", "AnyIO", "ThreadPoolExecutor"))]
    for thread in leaked:
        thread.join(2)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"threads leaked: {still}"


@pytest.fixture(autouse=True)
def no_daemon_left_running() -> Iterator[None]:
    """A test that failed half-way must not leave its daemon to the next test."""
    yield
    while DaemonProcess.started:
        proc = DaemonProcess.started.pop()
        if proc.proc is not None:
            proc.kill()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A real modeld process on temporary folders, stopped after the test."""
    proc = DaemonProcess(tmp_path)
    proc.models_dir.mkdir(parents=True)
    yield proc
    if proc.proc is not None:
        proc.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on loopback, for alerts sent by a real daemon."""
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, name="receiver")
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()
