"""Fleet membership: one thread that elects the importer, follows deployments and heartbeats.

On a PostgreSQL registry (``storage.registry_url``) every daemon holds one dedicated session
of its own, beside the registry's connection:

- **the importer's election**: ``pg_try_advisory_lock`` on that session, tried every
  ``fleet.takeover_interval`` seconds by whoever does not hold it. The holder imports (the
  poll worker watches the training folder); the lock goes with the session, so when the holder
  dies or its connection breaks, the next try of another daemon wins it.
- **following**: the session LISTENs on the channel the deployments table NOTIFYs on every
  insert; a notification makes the daemon load and swap in what the registry now says
  (:meth:`ModelManager.follow`). It also reconciles every ``fleet.reconcile_interval`` seconds
  and after every reconnect, so a lost notification never leaves it on another version.
- **a lost registry**: the daemon keeps serving its last version, says so (``status()``, which
  /readyz and ``modeld status`` show), reconnects every second and catches up.

Every daemon, on either database, heartbeats (who, where, what it serves since when, its last
reconcile) for ``GET /api/v1/fleet``. On SQLite the one daemon is always the importer.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from modeld.core.dialect import DATABASE_ERRORS, DEPLOY_CHANNEL
from modeld.core.fleet import fleet_view
from modeld.core.manager import ModelManager, iso, utc_now
from modeld.core.registry import DaemonRow
from modeld.daemon.jobs.alerting import Alert, Alerter
from modeld.daemon.process.settings import FleetSettings

log = structlog.get_logger("modeld.fleet")

IMPORTER_LOCK = 0x6D6F64656C64  # "modeld": the advisory lock the importer holds
RECONNECT_SECONDS = 1.0
WAIT_SLICE = 0.25  # how long one wait for a notification lasts (stop stays prompt)


class FleetMember:
    """See the module docstring. ``on_lead(True)`` runs when this daemon becomes the importer,
    ``on_lead(False)`` when it stops being it (on this member's thread)."""

    def __init__(self, manager: ModelManager, settings: FleetSettings, daemon_id: str,
                 url: str, on_lead: Callable[[bool], None],
                 alerter: Callable[[], Alerter]) -> None:
        self.manager = manager
        self.registry = manager.registry
        self.settings = settings
        self.id = daemon_id
        self.url = url
        self.host = socket.gethostname()
        self.on_lead = on_lead
        self.alerter = alerter
        self.shared = self.registry.shared
        self.importer = not self.shared  # SQLite: the one daemon imports
        self.started_at = iso(utc_now())
        self.reachable = True
        self.unreachable_since: str | None = None
        self.last_reconcile: str | None = None
        self.since: str | None = None
        self._served: str | None = None
        self._alarm: str | None = None
        self._conn: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modeld-fleet", daemon=True)

    # lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._note_served()
        self._heartbeat()
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("fleet_stop_timed_out", timeout=timeout)
        self._disconnect()
        try:
            self.registry.forget_daemon(self.id)
        except DATABASE_ERRORS as exc:
            log.warning("fleet_leave_failed", reason=str(exc))

    def status(self) -> dict[str, Any]:
        """This daemon's part in the fleet, for /api/v1/status and /readyz."""
        return {
            "id": self.id,
            "backend": self.registry.dialect.name,
            "role": "importer" if self.importer else "follower",
            "registry_reachable": self.reachable,
            "registry_unreachable_since": self.unreachable_since,
            "last_reconcile": self.last_reconcile,
        }

    # the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        now = time.monotonic()
        next_heartbeat = now + self.settings.heartbeat_interval
        next_reconcile = now + self.settings.reconcile_interval
        next_lock_try = now
        while not self._stop.is_set():
            if self.shared and self._conn is None and not self._connect():
                self._stop.wait(RECONNECT_SECONDS)
                continue
            now = time.monotonic()
            try:
                if self.shared and not self.importer and now >= next_lock_try:
                    next_lock_try = now + self.settings.takeover_interval
                    self._try_lock()
                notified = self._wait_for_notification()
                now = time.monotonic()
                if notified or now >= next_reconcile:
                    self._reconcile()
                    next_reconcile = now + self.settings.reconcile_interval
                if now >= next_heartbeat:
                    next_heartbeat = now + self.settings.heartbeat_interval
                    self._heartbeat()
            except DATABASE_ERRORS as exc:
                self._lost(exc)

    def _connect(self) -> bool:
        """Open the dedicated session, LISTEN and catch up; False while the registry is away."""
        try:
            conn = self.registry.dialect.connect()
            conn.execute(f"LISTEN {DEPLOY_CHANNEL}")
        except DATABASE_ERRORS as exc:
            self._lost(exc)
            return False
        self._conn = conn
        if not self.reachable:
            log.info("registry_reachable", registry=self.registry.location.describe(),
                     reason=f"unreachable since {self.unreachable_since}")
        self.reachable, self.unreachable_since = True, None
        try:
            self._reconcile()  # whatever was deployed while this daemon was not listening
        except DATABASE_ERRORS as exc:
            self._lost(exc)
            return False
        return True

    def _lost(self, exc: BaseException) -> None:
        self._disconnect()
        if self.importer and self.shared:
            self.importer = False
            log.warning("importer_resigned", id=self.id, reason=f"registry session lost: {exc}")
            self.on_lead(False)
        if self.reachable:
            self.reachable = False
            self.unreachable_since = iso(utc_now())
            log.error("registry_unreachable", registry=self.registry.location.describe(),
                      version=self._served, reason=str(exc).strip() or type(exc).__name__)

    def _disconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(*DATABASE_ERRORS):
                self._conn.close()
            self._conn = None

    def _try_lock(self) -> None:
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s) AS held",
                                 (IMPORTER_LOCK,)).fetchone()
        if row["held"]:
            self.importer = True
            log.info("importer_elected", id=self.id, reason="holds the importer's lock")
            self.on_lead(True)
            self._heartbeat()

    def _wait_for_notification(self) -> bool:
        if not self.shared:
            self._stop.wait(WAIT_SLICE)
            return False
        got = False
        for _ in self._conn.notifies(timeout=WAIT_SLICE, stop_after=1):
            got = True
        return got

    def _reconcile(self) -> None:
        if self.shared:  # one daemon on SQLite: every change went through its own slot
            self.manager.follow()
        self.last_reconcile = iso(utc_now())
        if self._note_served():
            self._heartbeat()

    def _note_served(self) -> bool:
        deployed = self.manager.slot.state.deployed
        version = None if deployed is None else deployed.version
        if version == self._served and self.since is not None:
            return False
        self._served, self.since = version, iso(utc_now())
        return True

    def _heartbeat(self) -> None:
        self._note_served()
        now = utc_now()
        self.registry.heartbeat(DaemonRow(
            id=self.id, host=self.host, pid=os.getpid(), url=self.url,
            role="importer" if self.importer else "follower", version=self._served,
            since=self.since, last_reconcile=self.last_reconcile, started_at=self.started_at,
            heartbeat_at=iso(now)))
        if self.importer:  # one daemon watches the fleet's agreement
            self._watch_split(now)

    def _watch_split(self, now: Any) -> None:
        view = fleet_view(self.registry.daemons(), now, self.settings.heartbeat_interval,
                          self.settings.split_alarm_seconds)
        if view.alarm is not None and self._alarm is None:
            log.error("fleet_split", reason=view.alarm)
            self.alerter().send(Alert(kind="fleet_split", title="the fleet serves more than "
                                      "one version", detail=view.alarm))
        self._alarm = view.alarm
