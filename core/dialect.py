"""The registry's thin dialect layer: one SQL text, run on SQLite or on PostgreSQL.

The registry writes its SQL once, in SQLite's spelling with ``?`` placeholders and upserts as
``INSERT ... ON CONFLICT (key) DO UPDATE`` (both databases understand that). What differs is
kept here and nowhere else: the placeholder (``%s`` for psycopg), the autoincrementing key
(``BIGSERIAL``), bytes (``BYTEA``), how a transaction is opened, how the append-only
deployments table refuses an UPDATE or DELETE (a trigger each way), and the NOTIFY that tells
every daemon of a fleet that a deployment was recorded.

``storage.registry_url`` names the database: ``sqlite:///abs/path`` (the embedded default, a
file in storage.directory) or ``postgresql://user@host/db`` (a fleet).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

DEPLOY_CHANNEL = "modeld_deployments"  # NOTIFY'd with the new deployment's id on every insert

try:  # psycopg is a dependency, but the embedded SQLite registry must not need it to import
    import psycopg
    from psycopg.rows import dict_row

    DATABASE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)
except ImportError:  # pragma: no cover - installed with modeld
    psycopg = None  # type: ignore[assignment]
    DATABASE_ERRORS = (sqlite3.Error,)


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class RegistryLocation:
    """Where the registry lives: a SQLite file, or a PostgreSQL database (its URL)."""

    kind: str  # "sqlite" | "postgresql"
    path: Path | None = None
    url: str | None = None

    @property
    def shared(self) -> bool:
        """True when other daemons may use the same registry (a fleet)."""
        return self.kind == "postgresql"

    def describe(self) -> str:
        if self.path is not None:
            return str(self.path)
        assert self.url is not None
        return re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", self.url)  # no password in logs


def parse_location(target: Path | str) -> RegistryLocation:
    """A Path (the SQLite file) or a URL, ``sqlite:///...`` or ``postgresql://...``."""
    if isinstance(target, Path):
        return RegistryLocation("sqlite", path=target)
    if target.startswith("sqlite:///"):
        return RegistryLocation("sqlite", path=Path(target.removeprefix("sqlite://")))
    if target.startswith(("postgresql://", "postgres://")):
        return RegistryLocation("postgresql", url=target)
    raise ValueError(f"registry_url {target!r} is neither sqlite:///<path> nor "
                     "postgresql://<user>@<host>/<database>")


class Dialect:
    """SQLite: the SQL as written; a connection in autocommit with explicit BEGIN IMMEDIATE."""

    name = "sqlite"
    begin = "BEGIN IMMEDIATE"

    def __init__(self, location: RegistryLocation) -> None:
        self.location = location

    def connect(self) -> Any:
        assert self.location.path is not None
        self.location.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.location.path, check_same_thread=False,
                               isolation_level=None, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def sql(self, text: str) -> str:
        return text

    def ddl(self, script: str) -> list[str]:
        """A schema script as statements (the registry's SCHEMA is SQLite's spelling)."""
        return [s.strip() for s in script.split(";\n") if s.strip()]

    def append_only(self, table: str) -> list[str]:
        return [
            f"CREATE TRIGGER IF NOT EXISTS {table}_append_only_u BEFORE UPDATE ON {table} "
            f"BEGIN SELECT RAISE(ABORT, 'the {_history(table)} is append-only'); END",
            f"CREATE TRIGGER IF NOT EXISTS {table}_append_only_d BEFORE DELETE ON {table} "
            f"BEGIN SELECT RAISE(ABORT, 'the {_history(table)} is append-only'); END",
        ]

    def notify_deployments(self) -> list[str]:
        return []  # one daemon: nobody to tell

    def lock_schema(self) -> str | None:
        return None  # BEGIN IMMEDIATE already excludes every other writer

    def lock_key(self, key: str) -> tuple[str, tuple[Any, ...]] | None:
        return None

    def table_sql(self, conn: Any, table: str) -> str | None:
        row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                           (table,)).fetchone()
        return None if row is None else str(row["sql"])

    def is_connection_lost(self, conn: Any) -> bool:
        return False


class PostgresDialect(Dialect):
    """PostgreSQL through psycopg 3: ``%s`` placeholders, BIGSERIAL, BYTEA, plpgsql triggers."""

    name = "postgresql"
    begin = "BEGIN"

    def connect(self) -> Any:
        if psycopg is None:  # pragma: no cover
            raise RuntimeError("psycopg is not installed: pip install 'psycopg[binary]'")
        assert self.location.url is not None
        # keepalives: a cut network is noticed in about 10 s, not at the next write
        return psycopg.connect(self.location.url, autocommit=True, row_factory=dict_row,
                               connect_timeout=5, keepalives=1, keepalives_idle=5,
                               keepalives_interval=2, keepalives_count=2)

    def sql(self, text: str) -> str:
        return text.replace("%", "%%").replace("?", "%s")

    def ddl(self, script: str) -> list[str]:
        out = []
        for written in super().ddl(script):
            if written.startswith(("CREATE TRIGGER", "DROP TRIGGER")):
                continue  # SQLite's spelling; append_only() gives PostgreSQL's
            spelled = written.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
            spelled = re.sub(r"\bBLOB\b", "BYTEA", spelled)
            out.append(re.sub(r"\bREAL\b", "DOUBLE PRECISION", spelled))
        return out

    def append_only(self, table: str) -> list[str]:
        return [
            f"CREATE OR REPLACE FUNCTION {table}_append_only() RETURNS trigger AS $$ BEGIN "
            f"RAISE EXCEPTION 'the {_history(table)} is append-only'; END; $$ LANGUAGE plpgsql",
            f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}",
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()",
        ]

    def notify_deployments(self) -> list[str]:
        return [
            "CREATE OR REPLACE FUNCTION deployments_notify() RETURNS trigger AS $$ BEGIN "
            f"PERFORM pg_notify('{DEPLOY_CHANNEL}', NEW.id::text); RETURN NEW; END; $$ "
            "LANGUAGE plpgsql",
            "DROP TRIGGER IF EXISTS deployments_notify ON deployments",
            "CREATE TRIGGER deployments_notify AFTER INSERT ON deployments "
            "FOR EACH ROW EXECUTE FUNCTION deployments_notify()",
        ]

    def lock_schema(self) -> str | None:
        # daemons of a fleet start together: one migrates, the others wait, then see it done
        return "SELECT pg_advisory_xact_lock(hashtext('modeld schema'))"

    def lock_key(self, key: str) -> tuple[str, tuple[Any, ...]] | None:
        return "SELECT pg_advisory_xact_lock(hashtext(?))", (key,)

    def table_sql(self, conn: Any, table: str) -> str | None:
        row = conn.execute("SELECT to_regclass(?)::text AS t", (table,)).fetchone()
        return None if row["t"] is None else table

    def is_connection_lost(self, conn: Any) -> bool:
        return bool(conn.closed or conn.broken)


def _history(table: str) -> str:
    return "deployment history" if table == "deployments" else f"{table} history"


def dialect_for(location: RegistryLocation) -> Dialect:
    return PostgresDialect(location) if location.kind == "postgresql" else Dialect(location)


class Connection:
    """A DB-API connection speaking the registry's SQL: ``?`` placeholders on either database."""

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self.raw = raw
        self.dialect = dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if self.dialect.name == "sqlite":
            return self.raw.execute(sql, params)  # type: ignore[no-any-return]
        return self.raw.execute(self.dialect.sql(sql), params)  # type: ignore[no-any-return]

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Cursor:
        if self.dialect.name == "sqlite":
            return self.raw.executemany(sql, rows)  # type: ignore[no-any-return]
        cursor = self.raw.cursor()
        cursor.executemany(self.dialect.sql(sql), list(rows))
        return cursor  # type: ignore[no-any-return]

    def script(self, statements: Iterable[str]) -> None:
        """Statements with no parameters, as written (DDL)."""
        for statement in statements:
            self.raw.execute(statement)

    def close(self) -> None:
        self.raw.close()
