"""Registry: the daemon's durable memory: one SQLite file (WAL, synchronous=FULL) by default,
or one PostgreSQL database shared by a fleet of daemons (``storage.registry_url``).

It remembers every version (status, quality score, report, metadata, checksums), the seed's
transfer history, an append-only deployment history, what was decided about each folder of the
training service (so a stable folder is judged once), and the monitors' persisted state.
Each method is one transaction; a crash at any moment leaves the last committed state.
The deployed version is never stored as a flag: it is the ``to_version`` of the newest
deployment row.

One implementation serves both databases; :mod:`modeld.core.dialect` holds what differs.
SCHEMA (SQLite's spelling) is applied at every start and only ever adds what is missing
(``IF NOT EXISTS``); a change to an existing table is a numbered step in MIGRATIONS, recorded
in ``schema_version``. A database whose schema is newer than this code is refused.
With PostgreSQL a version's stored files also live in the database (``blobs``, content
addressed by sha256, and ``version_files``, its manifest), so a fleet needs nothing else.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from modeld.core.dialect import (
    Connection,
    RegistryLocation,
    dialect_for,
    parse_location,
)
from modeld.core.errors import RegistryDamaged, SchemaTooNew
from modeld.core.store import fsync_path

# How a rollback's row reads; an agent's rollback (actor "mcp") is told apart from its deploys
# by this, so auto-deploy respects it as it does an operator's rollback.
ROLLBACK_REASON = "rollback from "

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    version TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('available', 'rejected', 'removed')),
    model_type TEXT,
    quality_score REAL,
    report TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at TEXT,
    imported_at TEXT NOT NULL,
    source_path TEXT NOT NULL,
    store_path TEXT,
    checksums TEXT NOT NULL,
    content_digest TEXT,
    reason TEXT NOT NULL DEFAULT '',
    considered INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS transfers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version TEXT,
    source_path TEXT NOT NULL,
    local_path TEXT,
    transferred_at TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    from_version TEXT,
    to_version TEXT,
    at TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL CHECK (actor IN ('auto', 'operator', 'rollback', 'fallback', 'startup',
                                         'mcp'))
);
CREATE TABLE IF NOT EXISTS folders (
    name TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    outcome TEXT NOT NULL,
    version TEXT,
    reason TEXT NOT NULL DEFAULT '',
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS monitor_state (
    kind TEXT NOT NULL,
    version TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (kind, version)
);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version TEXT NOT NULL,
    champion TEXT,
    state TEXT NOT NULL CHECK (state IN ('candidate', 'promoted', 'discarded', 'superseded')),
    since TEXT NOT NULL,
    reason TEXT NOT NULL,
    held TEXT,
    decided_at TEXT,
    actor TEXT,
    decision TEXT,
    report TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS one_candidate ON candidates (state) WHERE state = 'candidate';
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    version TEXT,
    at TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_kind_version ON events (kind, version, id);
CREATE INDEX IF NOT EXISTS events_at ON events (at);
CREATE TABLE IF NOT EXISTS anomalies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version TEXT NOT NULL,
    at TEXT NOT NULL,
    timestamp TEXT,
    host TEXT,
    process TEXT,
    message TEXT,
    score REAL NOT NULL,
    explanation TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS anomalies_at ON anomalies (at);
CREATE INDEX IF NOT EXISTS anomalies_version ON anomalies (version, id);
CREATE TABLE IF NOT EXISTS bundles (
    version TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL,
    applied_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    bytes BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS version_files (
    version TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL REFERENCES blobs (sha256),
    PRIMARY KEY (version, path)
);
CREATE TABLE IF NOT EXISTS daemons (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    url TEXT NOT NULL,
    role TEXT NOT NULL,
    version TEXT,
    since TEXT,
    last_reconcile TEXT,
    started_at TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
);
"""

# Numbered changes to tables SCHEMA already made, in order: (number, what, SQL statements).
# Step n runs once, in the transaction that records schema_version n.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "the schema as of the fleet: versions, deployments, blobs, version files, daemons", ()),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

# Registries made before the actor 'mcp' existed have the older CHECK on deployments; SQLite
# cannot alter a CHECK, so the table is rebuilt once, rows and ids unchanged, in one transaction.
_ACTORS_BEFORE_MCP = "'fallback', 'startup'))"
_DEPLOYMENTS_REBUILD = """
DROP TRIGGER IF EXISTS deployments_append_only_u;
DROP TRIGGER IF EXISTS deployments_append_only_d;
ALTER TABLE deployments RENAME TO deployments_before_mcp;
{create}
INSERT INTO deployments (id, from_version, to_version, at, reason, actor)
    SELECT id, from_version, to_version, at, reason, actor FROM deployments_before_mcp;
DROP TABLE deployments_before_mcp;
"""

REGISTRY_FILE = "registry.sqlite3"  # in storage.directory

Actor = Literal["auto", "operator", "rollback", "fallback", "startup", "mcp"]


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One version as the registry knows it."""

    version: str
    status: str
    model_type: str | None
    quality_score: float | None
    report: Mapping[str, Any]
    metadata: Mapping[str, Any]
    created_at: str | None
    imported_at: str
    source_path: str
    store_path: str | None
    checksums: Mapping[str, Mapping[str, Any]]
    content_digest: str | None
    reason: str
    considered: bool
    deployed_at: str | None


@dataclass(frozen=True, slots=True)
class DeploymentRow:
    id: int
    from_version: str | None
    to_version: str | None
    at: str
    reason: str
    actor: str


@dataclass(frozen=True, slots=True)
class CandidateRow:
    """One version's time as the candidate: nominated, then promoted, discarded or superseded.

    ``held`` is the gate's failed conditions once it has judged and refused; ``report`` the
    comparison report when the candidacy was decided.
    """

    id: int
    version: str
    champion: str | None
    state: str
    since: str
    reason: str
    held: str | None
    decided_at: str | None
    actor: str | None
    decision: str | None
    report: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class FolderRow:
    name: str
    fingerprint: str
    outcome: str
    version: str | None
    reason: str
    at: str


@dataclass(frozen=True, slots=True)
class BundleRow:
    """The servable bundle of a version (``core/bundle.py``): ``bundles/<digest>/`` in the
    store, ``size`` bytes, written at ``created``."""

    version: str
    digest: str
    size: int
    created: str


@dataclass(frozen=True, slots=True)
class AnomalyRow:
    """One flagged record, kept for operators and agents (``GET /api/v1/anomalies``)."""

    version: str
    at: str
    timestamp: str | None
    host: str | None
    process: str | None
    message: str | None
    score: float
    explanation: Mapping[str, Any]
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at, "timestamp": self.timestamp, "host": self.host,
                "process": self.process, "message": self.message, "score": self.score,
                "version": self.version, "explanation": dict(self.explanation)}


@dataclass(frozen=True, slots=True)
class TransferRow:
    id: int
    version: str | None
    source_path: str
    local_path: str | None
    transferred_at: str
    status: str
    detail: str


@dataclass(frozen=True, slots=True)
class DaemonRow:
    """One daemon of the fleet as its last heartbeat described it."""

    id: str
    host: str
    pid: int
    url: str
    role: str  # "importer" | "follower"
    version: str | None  # what it serves
    since: str | None  # serving that version since
    last_reconcile: str | None
    started_at: str
    heartbeat_at: str


class Registry:
    """The registry on SQLite or PostgreSQL. Safe to call from any thread: one connection
    behind one lock.

    ``location`` is the SQLite file's Path or a ``storage.registry_url``. Raises one of
    modeld.core.dialect.DATABASE_ERRORS when the database itself fails (disk full, corrupt,
    unreachable); callers log it and keep the in-memory state unchanged. A lost PostgreSQL
    connection is opened again by the next call. Raises SchemaTooNew when the database was
    migrated by newer code. SQL added here is written once, in SQLite's spelling with ``?``
    placeholders; an upsert is :func:`_upsert` (``INSERT OR REPLACE`` is SQLite's alone).
    """

    def __init__(self, location: Path | str) -> None:
        self.location: RegistryLocation = parse_location(location)
        self.path: Path | None = self.location.path
        self.dialect = dialect_for(self.location)
        self._lock = threading.RLock()
        self._depth = 0
        self._conn = Connection(self.dialect.connect(), self.dialect)
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    @property
    def shared(self) -> bool:
        """True on PostgreSQL: other daemons follow this registry, and it ships the files."""
        return self.location.shared

    def _migrate(self) -> None:
        with self.transaction() as conn:
            lock = self.dialect.lock_schema()
            if lock is not None:
                conn.execute(lock)
            known = self.dialect.table_sql(conn, "schema_version")
            found = 0
            if known is not None:
                row = conn.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
                found = int(row["v"] or 0)
            if found > SCHEMA_VERSION:
                raise SchemaTooNew(self.location.describe(), found, SCHEMA_VERSION)
            conn.script(self.dialect.ddl(SCHEMA))
            self._allow_mcp_actor(conn)
            conn.script(self.dialect.append_only("deployments"))
            conn.script(self.dialect.notify_deployments())
            for number, _what, statements in MIGRATIONS:
                if number > found:
                    conn.script(statements)
                    conn.execute("INSERT INTO schema_version (version, applied_at) "
                                 "VALUES (?, ?)", (number, datetime.now(UTC).isoformat()))

    def _allow_mcp_actor(self, conn: Connection) -> None:
        """SQLite registries made before the actor 'mcp' have the older CHECK (SQLite cannot
        alter one): the table is rebuilt, rows and ids unchanged, inside the migration."""
        table = self.dialect.table_sql(conn, "deployments")
        if table is None or _ACTORS_BEFORE_MCP not in table:
            return
        create = SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS deployments"):]
        create = create[: create.index(");") + 2]
        conn.script(self.dialect.ddl(_DEPLOYMENTS_REBUILD.format(create=create)))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _connection(self) -> Connection:
        """The connection, opened again when PostgreSQL dropped it (a restart, a network cut);
        raises the driver's error while the database cannot be reached."""
        if self._depth == 0 and self.dialect.is_connection_lost(self._conn.raw):
            self._conn = Connection(self.dialect.connect(), self.dialect)
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One atomic unit of writes; nested calls join the outer transaction."""
        with self._lock:
            conn = self._connection()
            if self._depth:
                yield conn
                return
            conn.execute(self.dialect.begin)
            self._depth = 1
            try:
                yield conn
            except BaseException:
                self._depth = 0
                if not self.dialect.is_connection_lost(conn.raw):
                    conn.execute("ROLLBACK")
                raise
            self._depth = 0
            conn.execute("COMMIT")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return list(self._connection().execute(sql, params))

    def lock_version(self, version: str) -> None:
        """Inside a transaction: wait until no other daemon is committing ``version``, so the
        caller's check-then-insert imports each artifact once fleet-wide (SQLite's BEGIN
        IMMEDIATE already serialises every writer)."""
        lock = self.dialect.lock_key(f"modeld version {version}")
        if lock is not None:
            with self.transaction() as conn:
                conn.execute(*lock)

    # versions ---------------------------------------------------------------------------

    _VERSION_SELECT = """
        SELECT v.*, (SELECT MAX(d.at) FROM deployments d WHERE d.to_version = v.version)
               AS deployed_at
        FROM versions v
    """

    @staticmethod
    def _version(row: Any) -> VersionRow:
        return VersionRow(
            version=row["version"],
            status=row["status"],
            model_type=row["model_type"],
            quality_score=row["quality_score"],
            report=json.loads(row["report"]),
            metadata=json.loads(row["metadata"]),
            created_at=row["created_at"],
            imported_at=row["imported_at"],
            source_path=row["source_path"],
            store_path=row["store_path"],
            checksums=json.loads(row["checksums"]),
            content_digest=row["content_digest"],
            reason=row["reason"],
            considered=bool(row["considered"]),
            deployed_at=row["deployed_at"],
        )

    def get_version(self, version: str) -> VersionRow | None:
        rows = self._query(self._VERSION_SELECT + " WHERE v.version = ?", (version,))
        return self._version(rows[0]) if rows else None

    def list_versions(self) -> list[VersionRow]:
        rows = self._query(self._VERSION_SELECT + " ORDER BY v.imported_at DESC, v.version DESC")
        return [self._version(r) for r in rows]

    def put_version(self, row: VersionRow) -> None:
        """Insert a version, or replace a rejected one of the same name."""
        with self.transaction() as conn:
            conn.execute(
                _upsert("versions", ("version", "status", "model_type", "quality_score",
                                     "report", "metadata", "created_at", "imported_at",
                                     "source_path", "store_path", "checksums",
                                     "content_digest", "reason", "considered"), 1),
                (
                    row.version, row.status, row.model_type, row.quality_score,
                    json.dumps(row.report), json.dumps(row.metadata), row.created_at,
                    row.imported_at, row.source_path, row.store_path, json.dumps(row.checksums),
                    row.content_digest, row.reason, int(row.considered),
                ),
            )

    def set_status(self, version: str, status: str, reason: str = "") -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE versions SET status = ?, reason = ? WHERE version = ?",
                (status, reason, version),
            )

    def set_report(self, version: str, report: Mapping[str, Any], score: float) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE versions SET report = ?, quality_score = ? WHERE version = ?",
                (json.dumps(report), score, version),
            )

    def mark_considered(self, version: str) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE versions SET considered = 1 WHERE version = ?", (version,))

    # deployments ------------------------------------------------------------------------

    def record_deployment(
        self, from_version: str | None, to_version: str | None, at: str, reason: str, actor: Actor
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO deployments (from_version, to_version, at, reason, actor) "
                "VALUES (?, ?, ?, ?, ?)",
                (from_version, to_version, at, reason, actor),
            )

    def deployments(self, limit: int = 1000) -> list[DeploymentRow]:
        """The deployment history, newest first."""
        rows = self._query("SELECT * FROM deployments ORDER BY id DESC LIMIT ?", (limit,))
        return [DeploymentRow(**dict(r)) for r in rows]

    def rollbacks(self) -> list[DeploymentRow]:
        """The deployments that rolled back (by actor, or by a reason that says so), newest
        first: what a deployment decision reads of the history (the versions never to deploy
        again on their own), without a row read for every deployment ever made."""
        rows = self._query("SELECT * FROM deployments WHERE from_version IS NOT NULL AND "
                           "(actor = 'rollback' OR reason LIKE ?) ORDER BY id DESC",
                           (f"{ROLLBACK_REASON}%",))
        return [DeploymentRow(**dict(r)) for r in rows]

    def deployed_version(self) -> str | None:
        rows = self._query("SELECT to_version FROM deployments ORDER BY id DESC LIMIT 1")
        return rows[0]["to_version"] if rows else None

    # candidates -------------------------------------------------------------------------

    @staticmethod
    def _candidate(row: Any) -> CandidateRow:
        data = dict(row)
        data["report"] = None if row["report"] is None else json.loads(row["report"])
        return CandidateRow(**data)

    def candidate(self) -> CandidateRow | None:
        """The current candidate (at most one), if any."""
        rows = self._query("SELECT * FROM candidates WHERE state = 'candidate'")
        return self._candidate(rows[0]) if rows else None

    def candidates(self, limit: int = 100) -> list[CandidateRow]:
        """Every candidacy, newest first."""
        rows = self._query("SELECT * FROM candidates ORDER BY id DESC LIMIT ?", (limit,))
        return [self._candidate(r) for r in rows]

    def nominate(self, version: str, champion: str | None, at: str, reason: str) -> None:
        """Make ``version`` the candidate; a candidate before it is superseded."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE candidates SET state = 'superseded', decided_at = ?, actor = 'auto', "
                "decision = ? WHERE state = 'candidate'", (at, f"superseded by {version}"))
            conn.execute(
                "INSERT INTO candidates (version, champion, state, since, reason) "
                "VALUES (?, ?, 'candidate', ?, ?)", (version, champion, at, reason))

    def hold_candidate(self, version: str, held: str) -> None:
        """Write down that the gate refused the candidate (it stays the candidate)."""
        with self.transaction() as conn:
            conn.execute("UPDATE candidates SET held = ? WHERE state = 'candidate' AND "
                         "version = ?", (held, version))

    def close_candidate(self, version: str, state: Literal["promoted", "discarded"], at: str,
                        actor: Actor, decision: str, report: Mapping[str, Any] | None) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE candidates SET state = ?, decided_at = ?, actor = ?, decision = ?, "
                "report = ? WHERE state = 'candidate' AND version = ?",
                (state, at, actor, decision, None if report is None else json.dumps(report),
                 version))

    # folders and transfers --------------------------------------------------------------

    def folder(self, name: str) -> FolderRow | None:
        rows = self._query("SELECT * FROM folders WHERE name = ?", (name,))
        return FolderRow(**dict(rows[0])) if rows else None

    def folders(self, names: Collection[str] | None = None) -> dict[str, FolderRow]:
        """Every folder's record, or those of ``names`` only (a rename into place: one row
        read, not one per folder ever seen, each of which takes the interpreter lock again)."""
        if names is None:
            rows = self._query("SELECT * FROM folders")
        elif not names:
            return {}
        else:
            marks = ", ".join("?" * len(names))  # placeholders only: the names are parameters
            rows = self._query(f"SELECT * FROM folders WHERE name IN ({marks})",  # noqa: S608
                               tuple(names))
        return {r["name"]: FolderRow(**dict(r)) for r in rows}

    def record_folder(self, row: FolderRow) -> None:
        with self.transaction() as conn:
            conn.execute(
                _upsert("folders", ("name", "fingerprint", "outcome", "version", "reason",
                                    "at"), 1),
                (row.name, row.fingerprint, row.outcome, row.version, row.reason, row.at),
            )

    def add_transfer(
        self,
        version: str | None,
        source_path: str,
        local_path: str | None,
        at: str,
        status: str,
        detail: str = "",
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO transfers (version, source_path, local_path, transferred_at, status, "
                "detail) VALUES (?, ?, ?, ?, ?, ?)",
                (version, source_path, local_path, at, status, detail),
            )

    def transfers(self, limit: int = 1000) -> list[TransferRow]:
        rows = self._query("SELECT * FROM transfers ORDER BY id DESC LIMIT ?", (limit,))
        return [TransferRow(**dict(r)) for r in rows]

    # monitor state and events -----------------------------------------------------------

    def save_state(self, kind: str, version: str, state: Mapping[str, Any], at: str) -> None:
        """Save a monitor's state as JSON (a number that is not finite as null, as the states
        already spell one). Encoded by orjson: a drift detector's state is 60-180 KB of floats,
        and ``json.dumps`` spent 3 ms on one of them holding the interpreter lock (a request
        served meanwhile waits that long: after every swap, which saves the versions it
        retired, and at every scheduled flush), orjson 0.17 ms."""
        text = orjson.dumps(state, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
        with self.transaction() as conn:
            conn.execute(
                _upsert("monitor_state", ("kind", "version", "state", "updated_at"), 2),
                (kind, version, text.decode(), at),
            )

    def load_state(self, kind: str, version: str) -> dict[str, Any] | None:
        rows = self._query(
            "SELECT state FROM monitor_state WHERE kind = ? AND version = ?", (kind, version)
        )
        return json.loads(rows[0]["state"]) if rows else None

    def add_event(self, kind: str, version: str | None, at: str, detail: Mapping[str, Any]) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO events (kind, version, at, detail) VALUES (?, ?, ?, ?)",
                (kind, version, at, json.dumps(detail)),
            )

    def events(self, kind: str, limit: int = 500) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT * FROM events WHERE kind = ? ORDER BY id DESC LIMIT ?", (kind, limit)
        )
        return [self._event(r) for r in rows]

    @staticmethod
    def _event(row: Any) -> dict[str, Any]:
        return {"id": row["id"], "kind": row["kind"], "version": row["version"],
                "at": row["at"], **json.loads(row["detail"])}

    def last_event(self, kind: str, version: str) -> dict[str, Any] | None:
        """The newest event of ``kind`` about ``version`` (its last drift evaluation), if any."""
        rows = self._query(
            "SELECT * FROM events WHERE kind = ? AND version = ? ORDER BY id DESC LIMIT 1",
            (kind, version))
        return self._event(rows[0]) if rows else None

    def prune_events(self, older_than: str) -> int:
        """Delete events (drift evaluations and alarms) recorded before ``older_than``;
        returns how many went. The scheduled retention job bounds the table with it."""
        with self.transaction() as conn:
            return int(conn.execute("DELETE FROM events WHERE at < ?", (older_than,)).rowcount)

    # servable bundles (one row per version) ---------------------------------------------

    def put_bundle(self, row: BundleRow) -> None:
        with self.transaction() as conn:
            conn.execute(_upsert("bundles", ("version", "digest", "size", "created"), 1),
                         (row.version, row.digest, row.size, row.created))

    def bundle(self, version: str) -> BundleRow | None:
        rows = self._query("SELECT version, digest, size, created FROM bundles WHERE version = ?",
                           (version,))
        return None if not rows else BundleRow(rows[0]["version"], rows[0]["digest"],
                                               int(rows[0]["size"]), rows[0]["created"])

    def bundles(self) -> list[BundleRow]:
        return [BundleRow(r["version"], r["digest"], int(r["size"]), r["created"])
                for r in self._query("SELECT version, digest, size, created FROM bundles "
                                     "ORDER BY version")]

    def drop_bundle(self, version: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM bundles WHERE version = ?", (version,))

    # recent anomalies --------------------------------------------------------------------

    def add_anomalies(self, rows: list[AnomalyRow]) -> None:
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO anomalies (version, at, timestamp, host, process, message, score, "
                "explanation) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.version, r.at, r.timestamp, r.host, r.process, r.message, r.score,
                  json.dumps(r.explanation)) for r in rows],
            )

    def anomalies(self, since: str | None = None, host: str | None = None,
                  limit: int = 100) -> list[AnomalyRow]:
        """Newest first; ``since`` compares with the time modeld scored the record."""
        rows = self._query(
            "SELECT * FROM anomalies WHERE (CAST(? AS TEXT) IS NULL OR at >= ?) AND "
            "(CAST(? AS TEXT) IS NULL OR host = ?) "
            "ORDER BY at DESC, id DESC LIMIT ?", (since, since, host, host, limit))
        return [AnomalyRow(version=r["version"], at=r["at"], timestamp=r["timestamp"],
                           host=r["host"], process=r["process"], message=r["message"],
                           score=r["score"], explanation=json.loads(r["explanation"]),
                           id=r["id"]) for r in rows]

    def prune_anomalies(self, keep_per_version: int, older_than: str) -> int:
        """Delete anomalies scored before ``older_than`` and all but the newest
        ``keep_per_version`` of each version; returns how many went."""
        with self.transaction() as conn:
            old = conn.execute("DELETE FROM anomalies WHERE at < ?", (older_than,)).rowcount
            extra = conn.execute(
                "DELETE FROM anomalies WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() "
                "OVER (PARTITION BY version ORDER BY id DESC) AS n FROM anomalies) AS ranked "
                "WHERE n > ?)",
                (keep_per_version,)).rowcount
        return int(old) + int(extra)

    # stored files, content addressed (shipped to the fleet) ---------------------------------

    def put_files(self, version: str, files: Mapping[str, tuple[str, bytes]]) -> None:
        """Record ``version``'s stored files: store-relative path (``versions/<v>/...``) ->
        (sha256, bytes). A blob already held (the same bytes in another version) is not
        written again."""
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO blobs (sha256, size, bytes) VALUES (?, ?, ?) "
                "ON CONFLICT (sha256) DO NOTHING",
                [(digest, len(data), data) for digest, data in files.values()])
            conn.execute("DELETE FROM version_files WHERE version = ?", (version,))
            conn.executemany(
                "INSERT INTO version_files (version, path, sha256) VALUES (?, ?, ?)",
                [(version, path, digest) for path, (digest, _) in sorted(files.items())])

    def file_manifest(self, version: str) -> dict[str, str]:
        """``version``'s stored files as store-relative path -> sha256 ({} when none were
        shipped)."""
        rows = self._query("SELECT path, sha256 FROM version_files WHERE version = ? "
                           "ORDER BY path", (version,))
        return {r["path"]: r["sha256"] for r in rows}

    def blob(self, sha256: str) -> bytes | None:
        rows = self._query("SELECT bytes FROM blobs WHERE sha256 = ?", (sha256,))
        return None if not rows else bytes(rows[0]["bytes"])

    # the fleet ----------------------------------------------------------------------------

    def heartbeat(self, row: DaemonRow) -> None:
        with self.transaction() as conn:
            conn.execute(
                _upsert("daemons", ("id", "host", "pid", "url", "role", "version", "since",
                                    "last_reconcile", "started_at", "heartbeat_at"), 1),
                (row.id, row.host, row.pid, row.url, row.role, row.version, row.since,
                 row.last_reconcile, row.started_at, row.heartbeat_at))

    def daemons(self) -> list[DaemonRow]:
        """Every daemon that ever heartbeat here, newest heartbeat first."""
        rows = self._query("SELECT * FROM daemons ORDER BY heartbeat_at DESC, id")
        return [DaemonRow(**dict(r)) for r in rows]

    def forget_daemon(self, daemon_id: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM daemons WHERE id = ?", (daemon_id,))

    def backup(self, target: Path) -> None:
        """Copy the live database with SQLite's online backup API (PostgreSQL is backed up
        with its own tools: pg_dump, base backups).

        Reads through a connection of its own, never this registry's lock: in WAL mode the
        copy is one consistent snapshot while scoring and the API go on reading and writing.
        """
        if self.path is None:
            raise ValueError(f"{self.location.describe()} is backed up with PostgreSQL's tools")
        source = sqlite3.connect(self.path, timeout=30)
        try:
            dest = sqlite3.connect(target)
            try:
                source.backup(dest)
            finally:
                dest.close()
        finally:
            source.close()

    def check(self) -> str | None:
        """None when the file passes SQLite's quick check, else what is wrong (scheduled).
        A PostgreSQL registry is checked by its server; reaching it is the fleet's business."""
        return None if self.path is None else registry_problem(self.path)


def _upsert(table: str, columns: Iterable[str], key_count: int) -> str:
    """INSERT, or UPDATE every non-key column when the first ``key_count`` columns exist:
    one spelling for both databases."""
    cols = list(columns)
    keys, rest = cols[:key_count], cols[key_count:]
    return (f"INSERT INTO {table} ({', '.join(cols)}) "  # noqa: S608 - the registry's own names
            f"VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in rest))


def registry_problem(path: Path) -> str | None:
    """What is wrong with the registry file at ``path``, or None when it is sound (or absent).

    Read through a fresh read-only connection, so damage on disk is seen even while a live
    connection still holds the pages in its cache. Never writes, never creates the file.
    """
    if not path.exists():
        return None
    if path.stat().st_size == 0:
        return "the file is empty (0 bytes)"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        return f"cannot be opened: {exc}"
    try:
        rows = [r[0] for r in conn.execute("PRAGMA quick_check")]
        if rows != ["ok"]:
            return "integrity check failed: " + "; ".join(str(r) for r in rows[:3])
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"versions", "deployments"} <= tables:
            return "it holds no versions or deployments table"
    except sqlite3.Error as exc:
        return f"not a readable SQLite database: {exc}"
    finally:
        conn.close()
    return None


def backups(folder: Path) -> list[Path]:
    """The registry backups in ``folder``, plain or gzipped (storage.compression), oldest
    first (their names sort by time)."""
    found = (p for p in folder.glob("registry-*.sqlite3*")
             if p.name.endswith((".sqlite3", ".sqlite3.gz")))
    return sorted(found, key=lambda p: p.name.split(".")[0])


@contextmanager
def _unpacked(backup: Path) -> Iterator[Path]:
    """``backup`` as a plain SQLite file: itself, or a gzipped one decompressed beside it into
    a ``.partial`` file (removed after; cleaned at startup if the process dies)."""
    if not backup.name.endswith(".gz"):
        yield backup
        return
    plain = backup.with_name(backup.name.removesuffix(".sqlite3.gz") + ".unpacked.partial")
    try:
        with gzip.open(backup, "rb") as fin, plain.open("wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    except (OSError, EOFError):  # an unreadable archive: judged as the empty file it leaves
        plain.write_bytes(b"")
    try:
        yield plain
    finally:
        plain.unlink(missing_ok=True)


def backup_problem(backup: Path) -> str | None:
    """What is wrong with a backup, plain or gzipped, or None when it is sound."""
    if not backup.exists():
        return "no such file"
    with _unpacked(backup) as plain:
        return registry_problem(plain)


def newest_good_backup(folder: Path) -> Path | None:
    for candidate in reversed(backups(folder)):
        if backup_problem(candidate) is None:
            return candidate
    return None


def clean_partial_backups(folder: Path) -> list[Path]:
    """Remove what a backup killed mid-copy left (``*.partial``); called at startup."""
    removed = sorted(folder.glob("registry-*.partial"))
    for partial in removed:
        partial.unlink(missing_ok=True)
    return removed


def restore_registry(backup: Path, path: Path, stamp: str) -> Path | None:
    """Put ``backup`` in place of the registry at ``path``; the daemon must not be running.

    The current file (and its -wal/-shm) is kept beside it as ``<name>.damaged-<stamp>``,
    never deleted; returns that path (None when there was no file). Raises RegistryDamaged
    when ``backup`` itself is not sound, before anything is moved.
    """
    problem = backup_problem(backup)
    if problem is not None:
        raise RegistryDamaged(str(backup), problem, "choose another backup")
    partial = path.with_name(path.name + ".restoring")
    with _unpacked(backup) as plain:
        shutil.copyfile(plain, partial)
    with partial.open("rb") as fh:
        os.fsync(fh.fileno())
    kept = None
    for suffix in ("", "-wal", "-shm"):
        current = path.with_name(path.name + suffix)
        if current.exists():
            aside = path.with_name(f"{path.name}.damaged-{stamp}{suffix}")
            current.rename(aside)
            kept = kept or aside
    partial.rename(path)
    fsync_path(path.parent)
    return kept


def backup_registry(registry: Registry, folder: Path, keep: int, stamp: str,
                    compress: bool = False) -> Path:
    """Write ``registry-<stamp>.sqlite3`` (``.sqlite3.gz`` with ``compress``) with the online
    backup API; keep the newest ``keep`` backups of either form."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"registry-{stamp}.sqlite3"
    partial = target.with_suffix(".partial")
    registry.backup(partial)
    if compress:
        packed = folder / f"{target.name}.gz.partial"
        with partial.open("rb") as fin, gzip.open(packed, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        partial.unlink()
        partial, target = packed, folder / f"{target.name}.gz"
    partial.replace(target)
    for old in backups(folder)[:-keep]:
        old.unlink()
    return target
