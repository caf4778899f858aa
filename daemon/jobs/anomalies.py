"""Recent anomalies: every flagged record, with its explanation, kept in the registry.

The scoring path only appends the flagged records to a bounded in-memory buffer (per version,
at most ``monitoring.keep_anomalies``); a scheduled flush (every 2 seconds, or
``monitoring.metrics_flush_interval`` when shorter, and with the monitors' flush at shutdown)
explains them in one batch per version, writes them in one transaction and prunes the table to the newest
``keep_anomalies`` per version and ``anomaly_retention_days``. A read sees the stored rows and
the ones still waiting (explained on the fly), so an agent finds an anomaly the moment it was
scored. A crash loses at most the last two seconds of them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import numpy as np
import structlog

from modeld.core.explain import Explanation, ReferenceWords
from modeld.core.loader import ServableModel
from modeld.core.manager import iso, utc_now
from modeld.core.registry import AnomalyRow, Registry

log = structlog.get_logger("modeld.anomalies")

# How many contributions a kept anomaly carries: the rest are rarely read and make rows big.
KEPT_CONTRIBUTIONS = 5


@dataclass(frozen=True, slots=True)
class PendingAnomaly:
    """A flagged record not yet written: its row (unexplained), and what explains it."""

    servable: ServableModel
    row: AnomalyRow
    features: np.ndarray


class RecentAnomalies:
    """The buffer and its flush. ``add`` is called on request threads (a deque append under a
    lock held for microseconds); ``flush`` on the scheduler's thread; ``read`` on the HTTP
    thread pool. A flush that fails (the database) logs ``anomalies_flush_failed`` and keeps
    the buffer for the next one; records stay in the buffer until they are written."""

    def __init__(self, registry: Registry, keep: Callable[[], tuple[int, float]],
                 words: Callable[[str, Sequence[str]], ReferenceWords]) -> None:
        self.registry = registry
        self._keep = keep
        self._words = words
        self._lock = threading.Lock()  # the buffer; held for microseconds by request threads
        self._visible = threading.Lock()  # a flush's write against reads, never on requests
        # one flush at a time: two (the scheduled one and the shutdown's) would both take and
        # write the same buffered records
        self._flushing = threading.Lock()
        self._pending: dict[str, deque[PendingAnomaly]] = {}

    def add(self, servable: ServableModel, records: Sequence[object], indices: np.ndarray,
            scores: np.ndarray, features: np.ndarray) -> None:
        at = iso(utc_now())
        per_version, _days = self._keep()
        items = [_pending(servable, at, records[i], float(scores[i]), features[i])
                 for i in indices.tolist()]
        with self._lock:
            buffer = self._pending.get(servable.version)
            if buffer is None or buffer.maxlen != per_version:
                buffer = deque(buffer or (), maxlen=per_version)
                self._pending[servable.version] = buffer
            buffer.extend(items)

    def flush(self) -> None:
        with self._flushing:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            taken = {version: list(items) for version, items in self._pending.items() if items}
        rows = [row for items in taken.values() for row in self._explained(items)]
        per_version, days = self._keep()
        # A read sees each anomaly either waiting in the buffer or in the registry, never in
        # neither (taken but not yet written) nor in both: _visible orders reads and this.
        with self._visible:
            try:
                if rows:
                    self.registry.add_anomalies(rows)
                pruned = self.registry.prune_anomalies(
                    per_version, iso(utc_now() - timedelta(days=days)))
            except Exception as exc:
                log.error("anomalies_flush_failed", records=len(rows), reason=str(exc))
                return  # nothing left the buffer: the next flush writes it
            with self._lock:  # written: out of the buffer; what arrived meanwhile stays
                for version, items in taken.items():
                    buffer = self._pending.get(version)
                    if buffer is not None:
                        written = {id(item) for item in items}
                        kept = [item for item in buffer if id(item) not in written]
                        buffer.clear()
                        buffer.extend(kept)
        if rows or pruned:
            log.info("anomalies_flushed", written=len(rows), pruned=pruned)

    def read(self, since: str | None, host: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest first: what waits for the flush, then the registry's rows."""
        with self._visible:
            with self._lock:
                waiting = [item for items in self._pending.values() for item in items
                           if (since is None or item.row.at >= since)
                           and (host is None or item.row.host == host)]
            stored = self.registry.anomalies(since, host, limit)
        waiting.reverse()  # newest first, also among records of one batch (same time)
        waiting.sort(key=lambda item: item.row.at, reverse=True)
        fresh = self._explained(waiting[:limit])
        merged = sorted([*fresh, *stored], key=lambda row: row.at, reverse=True)
        return [row.to_dict() for row in merged[:limit]]

    def _explained(self, items: list[PendingAnomaly]) -> list[AnomalyRow]:
        rows: list[AnomalyRow] = []
        for version in dict.fromkeys(item.servable.version for item in items):
            group = [item for item in items if item.servable.version == version]
            servable = group[0].servable
            explanations = explain_rows(
                servable, np.stack([item.features for item in group]),
                np.array([item.row.score for item in group]),
                self._words(version, servable.feature_names), KEPT_CONTRIBUTIONS)
            rows.extend(replace(item.row, explanation={} if explanation is None
                                else explanation.to_dict())
                        for item, explanation in zip(group, explanations, strict=True))
        return rows


def explain_rows(servable: ServableModel, features: np.ndarray, scores: np.ndarray,
                 words: ReferenceWords, top: int | None) -> list[Explanation | None]:
    """One explanation per row, or None per row when the model cannot explain (or fails:
    an explanation is never worth losing the anomaly or the answer for)."""
    try:
        explanations = servable.explain(features, scores, words, top)
    except Exception as exc:  # third-party estimator state; the score still stands
        log.warning("explanation_failed", version=servable.version,
                    reason=f"{type(exc).__name__}: {exc}")
        explanations = None
    if explanations is None:
        return [None] * len(features)
    return list(explanations)


def _pending(servable: ServableModel, at: str, record: object, score: float,
             features: np.ndarray) -> PendingAnomaly:
    fields = record if isinstance(record, dict) else {}

    def text(name: str) -> str | None:
        value = fields.get(name)
        return None if value is None else str(value)

    row = AnomalyRow(version=servable.version, at=at, timestamp=text("timestamp"),
                     host=text("host"), process=text("process"), message=text("message"),
                     score=score, explanation={})
    return PendingAnomaly(servable, row, np.array(features, dtype=np.float64))
