"""A real, throwaway PostgreSQL cluster for the tests: Debian's server binaries, initdb and
pg_ctl in a temporary folder, listening on a unix socket only (no port is taken).

The tests run as root and PostgreSQL refuses to, so the server runs as the ``postgres`` user
(``runuser``). One cluster serves the whole session (``pg_cluster`` in conftest.py); each test
gets a database of its own.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg


def _server_bin() -> Path:
    """Debian's newest installed server (15 on bookworm), or MODELD_TEST_PG_BIN."""
    if "MODELD_TEST_PG_BIN" in os.environ:
        return Path(os.environ["MODELD_TEST_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


BIN = _server_bin()
PORT = 5432  # only names the socket file, in a folder of our own


def missing() -> str | None:
    """Why the cluster cannot be started here, or None."""
    if not (BIN / "initdb").exists():
        return f"PostgreSQL's server binaries are not at {BIN} (apt-get install postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "runuser is needed to start PostgreSQL as the postgres user"
    return None


class PostgresCluster:
    """initdb + pg_ctl in a temporary folder; ``url(db)`` names a database on its socket."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="modeld-pg-"))
        self.data = self.root / "data"
        self.socket = self.root / "socket"
        self.socket.mkdir()
        self._names = itertools.count(1)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.socket, "postgres")
        self._run(str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "--no-sync", "-E", "UTF8")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"listen_addresses = ''\nunix_socket_directories = '{self.socket}'\n"
                       f"port = {PORT}\nfsync = off\nsynchronous_commit = off\n"
                       "full_page_writes = off\nmax_connections = 200\n")

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *argv], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                  "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                  "-m", "fast", "-w", "restart")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket}&port={PORT}"

    def new_database(self) -> str:
        """A fresh empty database; returns its URL."""
        name = f"modeld_test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
