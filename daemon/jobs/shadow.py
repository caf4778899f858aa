"""The shadow worker: the candidate scores what the deployed version scored, off the request path.

The scoring path calls :meth:`ShadowWorker.offer` after it has its answer: the batch (with
the answer and its latency) is sampled (``integration.shadow.sample``) and put on a bounded
queue without waiting. When the queue is full the batch is dropped and counted
(``modeld_shadow_dropped_total``); no response ever waits for shadow work. One thread,
``modeld-shadow``, scores each batch with the other model of the pair (the candidate for
batches the deployed version answered, the deployed version for a canary's share), feeds the
comparison (:class:`modeld.core.shadow.ShadowComparison`), keeps the report and the Prometheus
gauges current, and under ``integration.deploy_policy: shadow`` applies the promotion gate
once ``integration.shadow.min_records`` are compared: promote (actor ``auto``) or hold (one
``candidate_held`` event, which the runtime alerts). It paces itself to
``integration.shadow.cpu_budget`` of one core by sleeping after each batch in proportion to
the CPU time the batch cost it. The comparison is saved in the registry every SAVE_SECONDS
and at stop, and continued after a restart while the same pair is on trial.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from modeld.core.dialect import DATABASE_ERRORS
from modeld.core.errors import ModeldError
from modeld.core.loader import Scores, ServableModel
from modeld.core.manager import ModelManager, iso, utc_now
from modeld.core.shadow import GateVerdict, ShadowComparison, ShadowReport, judge
from modeld.daemon.process.metrics import DaemonMetrics
from modeld.daemon.process.settings import IntegrationSettings

log = structlog.get_logger("modeld.shadow")

REPORT_SECONDS = 1.0  # the report and gauges are at most this old while records arrive
SAVE_SECONDS = 30.0  # the comparison is saved to the registry this often (and at stop)
IDLE_WAIT = 0.2
STATE_KIND = "shadow"


@dataclass(frozen=True, slots=True)
class ShadowTask:
    """One answered batch waiting to be scored by the other model of the pair."""

    records: Sequence[object]
    answer: Scores
    answer_seconds: float
    champion: ServableModel
    candidate: ServableModel
    by_candidate: bool  # the canary's share: the candidate answered, the champion shadows


@dataclass(frozen=True, slots=True)
class ShadowView:
    """What the worker knows now, for the API, the CLI and the dashboard."""

    report: ShadowReport | None
    verdict: GateVerdict | None
    queue_depth: int
    queue_size: int
    dropped: int
    errors: int


class ShadowWorker:
    """See the module docstring. One per daemon: ``offer`` and ``view`` from any thread,
    ``start``/``stop``/``configure`` from the daemon's main thread. A failure of the other
    model is logged once per candidate and counted (``modeld_shadow_errors_total``); a
    failure to apply the gate is logged, and the worker goes on."""

    def __init__(self, manager: ModelManager, metrics: DaemonMetrics,
                 settings: IntegrationSettings) -> None:
        self.manager = manager
        self.metrics = metrics
        self.settings = settings
        self._queue: queue.Queue[ShadowTask] = queue.Queue(settings.shadow.queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards the comparison between worker and readers
        self._comparison: ShadowComparison | None = None
        self._decided = False
        self._failed_logged = False
        self._view_report: ShadowReport | None = None
        self._view_verdict: GateVerdict | None = None
        self._reported_at = 0.0
        self._saved_at = time.monotonic()
        self._unsaved = False
        self._dirty = False
        self._drop_lock = threading.Lock()
        self.dropped = 0
        self.errors = 0

    # the scoring path ----------------------------------------------------------------------

    def offer(self, records: Sequence[object], answer: Scores, seconds: float,
              champion: ServableModel, candidate: ServableModel, by_candidate: bool) -> None:
        """Queue an answered batch for shadow scoring, or drop it; never waits."""
        sample = self.settings.shadow.sample
        if sample < 1.0 and random.random() >= sample:
            return
        try:
            self._queue.put_nowait(ShadowTask(records, answer, seconds, champion, candidate,
                                              by_candidate))
        except queue.Full:
            with self._drop_lock:  # only taken when dropping: the overloaded path
                self.dropped += 1
            self.metrics.shadow_dropped.inc()

    # lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="modeld-shadow", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._save()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def configure(self, settings: IntegrationSettings) -> None:
        """A reload: new sampling, budget and gate at once; a new queue size gets a new
        (empty) queue, whose waiting shadow work is dropped uncounted."""
        if settings.shadow.queue_size != self.settings.shadow.queue_size:
            self._queue = queue.Queue(settings.shadow.queue_size)
        self.settings = settings
        with self._lock:
            self._dirty = True

    # reading -------------------------------------------------------------------------------

    def view(self) -> ShadowView:
        with self._lock:
            report, verdict = self._view_report, self._view_verdict
        return ShadowView(report, verdict, self._queue.qsize(), self._queue.maxsize,
                          self.dropped, self.errors)

    # the worker thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                task = self._queue.get(timeout=IDLE_WAIT)
            except queue.Empty:
                self._refresh()
                if self._unsaved and time.monotonic() - self._saved_at >= SAVE_SECONDS:
                    self._save()
                continue
            cpu = time.thread_time()
            try:
                self._compare(task)
                self._refresh()
            except Exception:  # the worker must outlive anything one batch does
                log.exception("shadow_batch_failed", candidate=task.candidate.version)
            if time.monotonic() - self._saved_at >= SAVE_SECONDS:
                self._save()
            cost = time.thread_time() - cpu
            budget = self.settings.shadow.cpu_budget
            if budget < 1.0 and cost > 0:
                self._stop.wait(cost * (1.0 / budget - 1.0))

    def _compare(self, task: ShadowTask) -> None:
        other = task.champion if task.by_candidate else task.candidate
        started = time.thread_time()  # CPU time, as the scoring path measures its own
        try:
            result = self.manager.slot.score_with(other, task.records)
        except Exception as exc:  # the other model is third-party code; never a response
            self.errors += 1
            self.metrics.shadow_errors.inc()
            if not self._failed_logged:
                self._failed_logged = True
                log.error("shadow_scoring_failed", version=other.version,
                          reason=f"{type(exc).__name__}: {exc}")
            return
        seconds = time.thread_time() - started
        champion, candidate = (result, task.answer) if task.by_candidate else (task.answer, result)
        champion_s, candidate_s = ((seconds, task.answer_seconds) if task.by_candidate
                                   else (task.answer_seconds, seconds))
        records = [r if isinstance(r, dict) else {} for r in task.records]
        with self._lock:
            comparison = self._comparison
            if (comparison is None or comparison.candidate != task.candidate.version
                    or comparison.champion != task.champion.version):
                comparison = self._resume(task.candidate.version, task.champion.version)
                self._comparison = comparison
                self._decided = False
                self._failed_logged = False
                self.metrics.clear_shadow()
                log.info("shadow_comparison_started", candidate=task.candidate.version,
                         champion=task.champion.version, resumed_at=comparison.records)
            comparison.add(records, champion.scores, champion.flags, candidate.scores,
                           candidate.flags, champion_s, candidate_s, candidate.features,
                           candidate.feature_names)
            self._dirty = self._unsaved = True

    def _resume(self, candidate: str, champion: str) -> ShadowComparison:
        """The saved comparison of this pair (after a restart), else a new one."""
        window = self.settings.shadow.window_records
        state = self.manager.registry.load_state(STATE_KIND, candidate)
        if state is not None and state.get("champion") == champion:
            try:
                return ShadowComparison.from_state(state, window)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("shadow_state_unusable", version=candidate, reason=repr(exc))
        return ShadowComparison(candidate, champion, window=window)

    def _save(self) -> None:
        """Write the comparison to the registry; a failing disk is logged, not raised."""
        with self._lock:
            comparison = self._comparison
            if comparison is None or not self._unsaved:
                return
            state = comparison.to_state()
            self._unsaved = False
        self._saved_at = time.monotonic()
        try:
            self.manager.registry.save_state(STATE_KIND, comparison.candidate, state,
                                             iso(utc_now()))
        except DATABASE_ERRORS as exc:
            log.error("shadow_state_not_saved", version=comparison.candidate, reason=str(exc))

    def _refresh(self) -> None:
        """Rebuild the report (at most every REPORT_SECONDS), the gauges, and apply the gate."""
        now = time.monotonic()
        with self._lock:
            comparison = self._comparison
            if comparison is None or not self._dirty:
                return
            crossed = (not self._decided and self.settings.deploy_policy == "shadow"
                       and comparison.records >= self.settings.shadow.min_records)
            if not (crossed or now - self._reported_at >= REPORT_SECONDS):
                return
            report = comparison.report()
            verdict = judge(report, self.settings.shadow.gate_policy())
            self._view_report, self._view_verdict = report, verdict
            self._reported_at, self._dirty = now, False
        self.metrics.set_shadow(report, verdict, self._queue.qsize())
        if crossed and verdict.ready:
            self._apply_gate(report, verdict)

    def _apply_gate(self, report: ShadowReport, verdict: GateVerdict) -> None:
        """Promote or hold the candidate, once per comparison."""
        with self._lock:
            if self._decided:
                return
            self._decided = True
        row = self.manager.registry.candidate()
        if row is None or row.version != report.candidate or row.held is not None:
            return  # gone, replaced, or held before a restart: an operator decides now
        summary = verdict.summary()
        try:
            if verdict.passed:
                self.manager.promote(report.candidate, actor="auto",
                                     reason=f"shadow gate passed: {summary}",
                                     report=self._record(report, verdict))
            else:
                failed = tuple(c.name for c in verdict.failed)
                reason = (f"shadow gate failed on {', '.join(failed)}: "
                          + "; ".join(c.describe() for c in verdict.failed)
                          + f" ({report.records_compared} records compared)")
                self.manager.hold(report.candidate, reason, failed)
        except ModeldError as exc:  # the candidate changed under us, or cannot load
            log.warning("shadow_gate_not_applied", version=report.candidate, reason=str(exc))

    @staticmethod
    def _record(report: ShadowReport, verdict: GateVerdict) -> dict[str, Any]:
        return {"comparison": report.to_dict(), "gate": verdict.to_dict()}
