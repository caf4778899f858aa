"""What a serving worker's scoring hands the control process for monitoring (``api.workers``).

A worker scores; drift, scoring windows and recent anomalies live in the control process, so
that they see every worker's traffic. The worker's scoring path calls the same
``observe``/``observe_invalid``/``anomalies.add`` as a daemon's (:class:`HandoffMonitors` is a
:class:`Monitors` whose monitoring thread ships instead of observing): a batch goes on the
same bounded queue (full: dropped and counted, scoring never waits), and every
``BATCH_SECONDS`` the thread sends whatever queued, in one message over the worker's link to
the control process, with the worker's status and its metrics. The control process's reader
hands each batch to its own monitors (:func:`deliver`), and alerts each fallback the worker
used (alerting is the control process's).

The other way, the control process hands each worker the words of its loaded versions'
drift references (:func:`pack_words`: each feature's reference quantiles, not the
reference), with every ``follow`` and again when a reference changes (a baseline that
finished collecting), so that an explanation a worker answers reads as the control
process's: the worker's runtime asks its monitors' ``reference_words`` as a daemon's does.

The message is a JSON header and raw arrays (``pack``/``unpack``): nothing is unpickled, and
only the dtypes scoring produces are accepted.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import structlog

from modeld.core.events import FallbackUsed, ManagerEvent
from modeld.core.explain import ReferenceWords
from modeld.core.loader import ServableModel
from modeld.daemon.jobs.alerting import manager_alert
from modeld.daemon.jobs.anomalies import RecentAnomalies
from modeld.daemon.jobs.monitoring import Monitors, Observation

log = structlog.get_logger("modeld.handoff")

BATCH_SECONDS = 0.5  # how often a worker ships what it scored (and its status and metrics)
DTYPES = frozenset({np.dtype(np.float64), np.dtype(np.bool_)})
_LENGTH = struct.Struct("!I")


def pack(kind: str, meta: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> bytes:
    """One message: ``kind``, JSON ``meta`` and ``arrays`` (float64 or bool)."""
    parts = [np.ascontiguousarray(a) for a in arrays]
    header = json.dumps({"kind": kind, "meta": meta,
                         "arrays": [[a.dtype.str, list(a.shape)] for a in parts]}).encode()
    return _LENGTH.pack(len(header)) + header + b"".join(a.tobytes() for a in parts)


def unpack(data: bytes) -> tuple[str, dict[str, Any], list[np.ndarray]]:
    """The kind, meta and arrays of a ``pack``ed message; ValueError when it is not one."""
    (size,) = _LENGTH.unpack_from(data)
    header = json.loads(data[_LENGTH.size:_LENGTH.size + size])
    offset = _LENGTH.size + size
    arrays = []
    for dtype_str, shape in header["arrays"]:
        dtype = np.dtype(dtype_str)
        if dtype not in DTYPES:
            raise ValueError(f"a handed array of dtype {dtype} (only float64 and bool)")
        count = int(np.prod(shape, dtype=np.int64))
        if offset + count * dtype.itemsize > len(data):
            raise ValueError(f"a handed message of {len(data)} bytes is cut short")
        arrays.append(np.frombuffer(data, dtype, count, offset).reshape(shape))
        offset += count * dtype.itemsize
    if offset != len(data):
        raise ValueError(f"a handed message of {len(data)} bytes holds {offset}")
    return str(header["kind"]), dict(header["meta"]), arrays


def pack_words(words: dict[str, ReferenceWords]) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The meta and arrays of versions' reference words: per version its feature names and
    which have quantiles, and one float64 array per feature that has."""
    meta, arrays = [], []
    for version, of_version in words.items():
        meta.append({"version": version, "features": list(of_version.feature_names),
                     "quantiles": [c is not None for c in of_version.cuts]})
        arrays += [np.asarray(c, dtype=np.float64) for c in of_version.cuts if c is not None]
    return {"words": meta}, arrays


def unpack_words(meta: dict[str, Any], arrays: list[np.ndarray]) -> dict[str, ReferenceWords]:
    """What :func:`pack_words` packed, as each version's ReferenceWords."""
    parts = iter(arrays)
    return {str(item["version"]): ReferenceWords(
                item["features"], [next(parts) if has else None for has in item["quantiles"]])
            for item in meta["words"]}


class _HandedAnomalies(RecentAnomalies):
    """A worker's flagged records: kept for the next shipment, explained and written by the
    control process (which holds the same versions loaded)."""

    def __init__(self, monitors: HandoffMonitors) -> None:
        super().__init__(monitors.registry, lambda: (0, 0.0), monitors.reference_words)
        self._monitors = monitors

    def add(self, servable: ServableModel, records: Sequence[object], indices: np.ndarray,
            scores: np.ndarray, features: np.ndarray) -> None:
        rows = indices.tolist()
        self._monitors.keep_flagged(servable.version, [records[i] for i in rows],
                                    scores[indices], features[indices])


class HandoffMonitors(Monitors):
    """A worker's monitors: the scoring path's queue, shipped to the control process by the
    monitoring thread (``start``/``close`` as a daemon's). ``send`` writes one message to the
    link; ``status`` and ``metrics`` are the worker's own, sent with every shipment (the
    control process's ``modeld status`` and aggregated /metrics), with the fallbacks used
    since the last one (``keep_event``: the control process alerts them). A shipment that
    cannot be sent (the control process is gone) is logged; the worker stops when its link
    closes. ``reference_words`` are those the control process handed (``take_words``)."""

    def __init__(self, *args: Any, send: Callable[[bytes], None],
                 status: Callable[[], dict[str, Any]], metrics: Callable[[], str]) -> None:
        super().__init__(*args)
        self.anomalies = _HandedAnomalies(self)
        self._send = send
        self._status = status
        self._metrics = metrics
        self._outgoing: list[Observation] = []
        self._flagged: list[tuple[str, list[object], np.ndarray, np.ndarray]] = []
        self._flagged_lock = threading.Lock()
        self._fallbacks: list[FallbackUsed] = []
        self._given: dict[str, ReferenceWords] = {}

    def prepare(self, version: str, feature_names: Sequence[str]) -> None:
        """Nothing: the control process builds every version's window and detector."""

    def reference_words(self, version: str, feature_names: Sequence[str]) -> ReferenceWords:
        """The words the control process handed for ``version`` (none before it did)."""
        words = self._given.get(version)
        if words is None:
            return ReferenceWords(feature_names, [None] * len(feature_names))
        return words

    def take_words(self, words: dict[str, ReferenceWords]) -> None:
        """The control process's words of every version it has loaded (replacing the last)."""
        self._given = words

    def keep_event(self, event: ManagerEvent) -> None:
        """Chained to the worker's manager listener: a fallback used, for the next shipment."""
        if isinstance(event, FallbackUsed):
            with self._flagged_lock:
                self._fallbacks.append(event)

    def keep_flagged(self, version: str, records: list[object], scores: np.ndarray,
                     features: np.ndarray) -> None:
        with self._flagged_lock:
            self._flagged.append((version, records, scores, features))

    def _process(self, run: list[Observation]) -> None:
        self._outgoing.extend(run)  # on the monitoring thread, under drain()'s lock

    def _run(self) -> None:
        stopping = False
        while not stopping:
            with self._queue_changed:
                self._queue_changed.wait_for(lambda: self._stopping, BATCH_SECONDS)
                stopping = self._stopping
            self.drain()
            self.ship()

    def ship(self) -> None:
        """Send what was taken off the queue, the flagged records, the status and metrics."""
        taken, self._outgoing = self._outgoing, []
        with self._flagged_lock:
            flagged, self._flagged = self._flagged, []
            fallbacks, self._fallbacks = self._fallbacks, []
        observations, arrays = [], []
        for item in taken:
            observations.append({"version": item.version, "latency_s": item.latency_s,
                                 "at": item.at, "invalid": item.features is None})
            if item.features is not None:
                arrays += [item.features, item.scores, item.flags]
        anomalies = []
        for version, records, scores, features in flagged:
            anomalies.append({"version": version, "records": records})
            arrays += [scores, features]
        message = pack("batch", {"observations": observations, "anomalies": anomalies,
                                 "fallbacks": [{"version": e.version, "fallback": e.fallback,
                                                "reason": e.reason} for e in fallbacks],
                                 "status": self._status(), "metrics": self._metrics()},
                       arrays)
        try:
            self._send(message)
        except (OSError, ValueError) as exc:
            log.warning("handoff_failed", observations=len(observations),
                        reason=f"the control process cannot be reached: {exc}")


def deliver(monitors: Monitors, servable: Callable[[str], ServableModel | None],
            meta: dict[str, Any], arrays: list[np.ndarray]) -> None:
    """Hand a worker's shipment to the control process's ``monitors`` (its reader thread):
    each batch to the monitoring queue as if scored here, each flagged record to the recent
    anomalies (explained with the control process's own ``servable`` of its version), and
    each fallback the worker used to the alerter, as the control process alerts its own."""
    parts = iter(arrays)
    for item in meta["observations"]:
        version = str(item["version"])
        if item["invalid"]:
            monitors.observe_invalid(version)
            continue
        features, scores, flags = next(parts), next(parts), next(parts)
        monitors.hand(Observation(version, features, scores, flags, float(item["latency_s"]),
                                  float(item["at"])))
    for item in meta["anomalies"]:
        scores, features = next(parts), next(parts)
        model = servable(str(item["version"]))
        if model is not None:  # released here since: as a swap drops a daemon's buffer
            monitors.anomalies.add(model, item["records"], np.arange(len(scores)), scores,
                                   features)
    for item in meta["fallbacks"]:
        alert = manager_alert(FallbackUsed(str(item["version"]), item["fallback"],
                                           str(item["reason"])))
        if alert is not None:
            monitors.alerter.send(alert)
