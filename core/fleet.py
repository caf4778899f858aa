"""The fleet as the registry's heartbeats show it: who serves what, and whether they agree.

Pure: :func:`fleet_view` judges heartbeat rows at a moment. A daemon whose heartbeat is older
than three intervals is counted as gone (it stays listed, marked so). Two versions served by
live daemons for longer than ``split_alarm_seconds`` is an alarm: a swap takes under a second,
so a split that lasts is a daemon that cannot load or cannot hear the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modeld.core.registry import DaemonRow

MISSED_HEARTBEATS = 3  # a daemon silent this many intervals is gone


@dataclass(frozen=True, slots=True)
class FleetView:
    members: tuple[dict[str, Any], ...]
    versions: dict[str, list[str]]  # version served -> the live daemons serving it
    split_since: str | None  # when live daemons began serving more than one version
    alarm: str | None  # why the fleet is in trouble, or None

    def to_dict(self) -> dict[str, Any]:
        return {"members": list(self.members), "versions": self.versions,
                "split_since": self.split_since, "alarm": self.alarm}


def fleet_view(rows: list[DaemonRow], now: datetime, heartbeat_interval: float,
               split_alarm_seconds: float) -> FleetView:
    members = []
    firsts: dict[str, datetime] = {}  # per version served, since when (the earliest member)
    versions: dict[str, list[str]] = {}
    for row in rows:
        age = (now - datetime.fromisoformat(row.heartbeat_at)).total_seconds()
        alive = age <= MISSED_HEARTBEATS * heartbeat_interval
        members.append({
            "id": row.id, "host": row.host, "pid": row.pid, "url": row.url, "role": row.role,
            "version": row.version, "since": row.since, "last_reconcile": row.last_reconcile,
            "started_at": row.started_at,
            "heartbeat_at": row.heartbeat_at, "heartbeat_age_seconds": round(age, 3),
            "alive": alive,
        })
        if not alive:
            continue
        key = row.version or "(none)"
        versions.setdefault(key, []).append(row.id)
        since = datetime.fromisoformat(row.since or row.started_at)
        firsts[key] = min(firsts.get(key, since), since)
    split_since = None
    alarm = None
    if len(firsts) > 1:
        began = sorted(firsts.values())[1]  # when a second version began to be served
        split_since = began.isoformat()
        lasted = (now - began).total_seconds()
        if lasted > split_alarm_seconds:
            alarm = (f"{len(firsts)} versions served for {lasted:.0f} s: "
                     + "; ".join(f"{v} by {', '.join(ids)}" for v, ids in sorted(versions.items())))
    return FleetView(tuple(members), versions, split_since, alarm)
