"""The dashboard: ``GET /``, a server-rendered page the daemon serves itself (no build step).

The page is one HTML template (``templates/dashboard.html``) with its CSS and JavaScript
(``static/``) inlined, so it works offline and needs one open path. Python renders every table
(state, models, history) both into the first page and, as fragments, for the script's refreshes
(``GET /api/v1/dashboard/sections``): one renderer, so the refreshed page is the page. The
script draws the plots in SVG from ``GET /api/v1/dashboard/series`` and from the drift API
(``/api/v1/drift``, ``/api/v1/drift/history``) when the daemon has it, and calls the ordinary
JSON API for deploy and rollback.

Handlers run in uvicorn's thread pool. They read the serving slot's state once, the registry
through its own lock, and the scoring windows under ``runtime.monitors.lock`` only long enough to
copy what they need. Nothing here writes anything but the sampler's memory.
"""

from __future__ import annotations

import html
import math
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import structlog
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from modeld.daemon.http.auth import bearer_ok
from modeld.daemon.http.shadow import shadow_view
from modeld.daemon.http.views import candidate_version, version_view

if TYPE_CHECKING:
    from modeld.daemon.process.runtime import Runtime

log = structlog.get_logger("modeld.dashboard")

HERE: Final = Path(__file__).parent
TEMPLATE: Final = HERE / "templates" / "dashboard.html"
STYLESHEET: Final = HERE / "static" / "dashboard.css"
SCRIPT: Final = HERE / "static" / "dashboard.js"

REFRESH_SECONDS: Final = 3.0
SAMPLE_SECONDS: Final = 1.0
MAX_SAMPLES: Final = 1200
HISTORY_ROWS: Final = 15
HISTOGRAM_BINS: Final = 40
DEPLOYABLE: Final = frozenset({"available", "retired", "fallback", "candidate"})


# --------------------------------------------------------------------------- series


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """One point of a version's time series: what scoring saw between ``start`` and ``t``."""

    t: float
    start: float
    records: int
    anomalies: int
    anomaly_rate: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    score_p50: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.t, "start": self.start, "records": self.records,
                "anomalies": self.anomalies, "anomaly_rate": self.anomaly_rate,
                "latency_p50_ms": self.latency_p50_ms, "latency_p99_ms": self.latency_p99_ms,
                "score_p50": self.score_p50}


@dataclass(frozen=True, slots=True)
class _Totals:
    at: float
    records: int
    anomalies: int
    requests: int


def _quantile(values: np.ndarray, q: float) -> float | None:
    finite = values[np.isfinite(values)]
    return float(np.quantile(finite, q)) if finite.size else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 4)


class SeriesSampler:
    """Fine-grained recent points of each version's scoring, between the windows' intervals.

    A ``ScoringWindow`` closes an interval when the scheduler rolls it (a minute or more); a
    dashboard wants to see the last seconds. Each call of ``sample`` (from the series handler,
    at most once per ``SAMPLE_SECONDS`` per version) turns what the window's totals and rings
    gained since the previous call into one point: exact counts, and latency and score
    quantiles of exactly those requests and records (the rings keep the newest ones in order).
    Points are kept in memory only (``MAX_SAMPLES`` per version); the windows' own intervals
    are the durable history. Thread-safe: one lock around its own state.
    """

    def __init__(self, max_samples: int = MAX_SAMPLES, every: float = SAMPLE_SECONDS) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, _Totals] = {}
        self._points: dict[str, deque[SeriesPoint]] = {}
        self.max_samples = max_samples
        self.every = every

    def sample(self, runtime: Runtime, now: float) -> None:
        with self._lock:
            due = [v for v in list(runtime.monitors.windows)
                   if v not in self._last or now - self._last[v].at >= self.every]
            for version in due:
                point = self._read(runtime, version, now)
                if point is not None:
                    self._points.setdefault(version, deque(maxlen=self.max_samples)).append(point)

    def _read(self, runtime: Runtime, version: str, now: float) -> SeriesPoint | None:
        with runtime.monitors.lock:
            window = runtime.monitors.windows.get(version)
            if window is None:
                return None
            totals = _Totals(now, int(window.records), int(window.anomalies),
                             int(window.requests))
            previous = self._last.get(version)
            if previous is None or totals.records < previous.records:
                self._last[version] = totals  # first look (or a restored window): a baseline
                return None
            new_records = totals.records - previous.records
            new_requests = totals.requests - previous.requests
            scores = window.recent_scores(new_records) if new_records else np.zeros(0)
            latencies = window.recent_latencies(new_requests) if new_requests else np.zeros(0)
        self._last[version] = totals
        if not new_records and not new_requests:
            return None
        anomalies = totals.anomalies - previous.anomalies
        return SeriesPoint(
            t=now, start=previous.at, records=new_records, anomalies=anomalies,
            anomaly_rate=anomalies / new_records if new_records else None,
            latency_p50_ms=_ms(_quantile(latencies, 0.5)),
            latency_p99_ms=_ms(_quantile(latencies, 0.99)),
            score_p50=_quantile(scores, 0.5),
        )

    def points(self, version: str, after: float) -> list[SeriesPoint]:
        with self._lock:
            return [p for p in self._points.get(version, ()) if p.t > after]


def _interval_points(intervals: Iterable[Mapping[str, Any]]) -> list[SeriesPoint]:
    """The window's closed intervals (``ScoringWindow.time_series()``) as series points."""
    points = []
    for item in intervals:
        try:
            points.append(SeriesPoint(
                t=float(item["end"]), start=float(item["start"]),
                records=int(item["records"]), anomalies=int(item["anomalies"]),
                anomaly_rate=item.get("anomaly_rate"),
                latency_p50_ms=_ms(item.get("latency_p50_s")),
                latency_p99_ms=_ms(item.get("latency_p99_s")),
                score_p50=item.get("score_p50"),
            ))
        except (KeyError, TypeError, ValueError):
            continue
    return points


class ReferenceScores:
    """The reference anomaly scores of each version (``reference.npz`` in the daemon's store).

    Versions are immutable once stored, so each is read once and kept (None when the artifact
    has no reference scores).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[str, np.ndarray | None] = {}

    def get(self, runtime: Runtime, version: str) -> np.ndarray | None:
        with self._lock:
            if version in self._cache:
                return self._cache[version]
        scores = self._load(runtime, version)
        with self._lock:
            self._cache[version] = scores
        return scores

    @staticmethod
    def _load(runtime: Runtime, version: str) -> np.ndarray | None:
        row = runtime.manager.registry.get_version(version)
        if row is None or not row.store_path:
            return None
        path = Path(row.store_path) / "reference.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if "scores" not in data.files:
                    return None
                scores = np.asarray(data["scores"], dtype=np.float64).ravel()
        except (OSError, ValueError) as exc:
            log.warning("reference_unreadable", version=version, path=str(path), reason=str(exc))
            return None
        return scores[np.isfinite(scores)]


def score_histogram(live: np.ndarray, reference: np.ndarray | None,
                    bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """The share of live and of reference scores in each of ``bins`` shared bins.

    The bins span the bulk of the reference (0.5-99.5 %) widened to the middle 90 % of the live
    scores; values beyond the ends are counted in the end bins (``clipped`` says how many live
    ones) rather than squeezing the bulk into one bar. Anomaly scores can be heavy-tailed (a
    LocalOutlierFactor's reach fifty times their median): when all are positive and the range
    spans more than a factor of ten above the median, the bins are logarithmic (``scale``).
    """
    live = live[np.isfinite(live)]
    ref = reference[np.isfinite(reference)] if reference is not None else np.zeros(0)
    if not live.size and not ref.size:
        return {"edges": [], "live": [], "reference": None, "live_count": 0,
                "reference_count": 0, "clipped": 0, "scale": "linear"}
    spans = []
    if ref.size:
        spans.append(np.quantile(ref, [0.005, 0.995]))
    if live.size:
        spans.append(np.quantile(live, [0.05, 0.95] if ref.size else [0.005, 0.995]))
    low = float(min(s[0] for s in spans))
    high = float(max(s[1] for s in spans))
    if not high > low:
        low, high = low - 0.05, high + 0.05
    median = float(np.median(ref if ref.size else live))
    logarithmic = low > 0 and median > 0 and high / median > 10
    edges = np.geomspace(low, high, bins + 1) if logarithmic else np.linspace(low, high, bins + 1)

    def share(values: np.ndarray) -> list[float]:
        counts, _ = np.histogram(np.clip(values, low, high), bins=edges)
        return [round(float(c) / values.size, 6) for c in counts]

    return {
        "edges": [round(float(e), 6) for e in edges],
        "live": share(live) if live.size else [],
        "reference": share(ref) if ref.size else None,
        "live_count": int(live.size),
        "reference_count": int(ref.size),
        "clipped": int(np.count_nonzero((live < low) | (live > high))),
        "scale": "log" if logarithmic else "linear",
    }


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def build_series(runtime: Runtime, sampler: SeriesSampler, references: ReferenceScores,
                 now: float) -> dict[str, Any]:
    """What the plots need, per version: anomaly rate, latency and score median over time, the
    deployed version's live score distribution against its reference, and the swaps."""
    sampler.sample(runtime, now)
    state = runtime.slot.state
    deployed = state.deployed.version if state.deployed else None
    intervals: dict[str, list[dict[str, Any]]] = {}
    live = np.zeros(0)
    with runtime.monitors.lock:
        for version, window in list(runtime.monitors.windows.items()):
            intervals[version] = window.time_series()
        if deployed is not None and deployed in runtime.monitors.windows:
            live = runtime.monitors.windows[deployed].recent_scores()
    versions: dict[str, Any] = {}
    for version, closed in intervals.items():
        points = _interval_points(closed)
        last_end = points[-1].t if points else -math.inf
        points += sampler.points(version, last_end)
        versions[version] = {"points": [p.to_dict() for p in points]}
    reference = references.get(runtime, deployed) if deployed else None
    histogram = score_histogram(live, reference)
    swaps = []
    for row in reversed(runtime.manager.registry.deployments(50)):
        at = _epoch(row.at)
        if at is not None:
            swaps.append({"t": at, "from": row.from_version, "to": row.to_version,
                          "actor": row.actor})
    return {
        "now": now,
        "deployed_version": deployed,
        "fallback_version": state.fallback.version if state.fallback else None,
        "scores": {"version": deployed, **histogram,
                   "reference_source": "reference.npz" if reference is not None else None},
        "versions": versions,
        "swaps": swaps,
    }


# --------------------------------------------------------------------------- rendering


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(text: str | None) -> str:
    """An ISO timestamp as a short UTC time with the full value on hover."""
    if not text:
        return '<span class="muted">-</span>'
    epoch = _epoch(text)
    if epoch is None:
        return _e(text)
    shown = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f'<time datetime="{_e(text)}" title="{_e(text)}">{shown}</time>'


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _number(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def _version_link(version: str | None) -> str:
    if not version:
        return '<span class="muted">none</span>'
    return f'<code>{_e(version)}</code>'


def render_state(status: Mapping[str, Any], totals: Mapping[str, Any] | None) -> str:
    deployed = status.get("deployed_version")
    fallback = status.get("fallback_version")
    health = status.get("health") or {}
    unhealthy = [name for name, ok in health.items() if not ok]
    if deployed is None:
        state, css = "waiting for a valid model", "warn"
    elif unhealthy:
        state, css = f"degraded ({', '.join(unhealthy)})", "bad"
    else:
        state, css = "serving", "good"
    reload = status.get("last_reload")
    reload_text = "-"
    if reload:
        reload_text = ("applied" if reload.get("ok") else f"refused: {reload.get('error')}")
        reload_text += f" (generation {reload.get('generation')})"
    cards = [
        ("Deployed", f'<span id="deployed-version" data-version="{_e(deployed or "")}">'
                     f"{_version_link(deployed)}</span>"),
        ("Fallback", f'<span id="fallback-version" data-version="{_e(fallback or "")}">'
                     f"{_version_link(fallback)}</span>"),
        ("State", f'<span class="pill {css}" id="daemon-state">{_e(state)}</span>'),
        ("Model type", _e(status.get("model_type") or "-")),
    ]
    if totals:
        rate = totals.get("anomaly_rate")
        latency = totals.get("latency_s") or {}
        cards += [
            ("Records scored", f"{int(totals.get('records') or 0):,}"),
            ("Anomalies", f"{int(totals.get('anomalies') or 0):,}"
                          + (f" ({rate * 100:.1f} %)" if rate is not None else "")),
            ("Latency p50 / p99",
             f"{_number(_ms(latency.get('p50')), 2)} / {_number(_ms(latency.get('p99')), 2)} ms"),
        ]
    details = [
        ("Uptime", _duration(float(status.get("uptime_seconds") or 0))),
        ("Auto-deploy", "on" if status.get("auto_deploy") else "off"),
        ("Configuration", f"generation {_e(status.get('config_generation'))}; last reload "
                          f"{_e(reload_text)}"),
        ("Training models folder", f"<code>{_e(status.get('training_models_dir'))}</code>"),
        ("Features", _e(", ".join(status.get("feature_names") or []) or "-")),
    ]
    card_html = "".join(f'<div class="card"><div class="label">{label}</div>'
                        f'<div class="value">{value}</div></div>' for label, value in cards)
    detail_html = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in details)
    return f'<div class="cards">{card_html}</div><dl class="details">{detail_html}</dl>'


def _metrics_cell(metrics: Mapping[str, Any] | None) -> str:
    if not metrics:
        return '<span class="muted" title="the artifact carries no evaluation metrics">none</span>'
    names = (("f1_score", "F1"), ("roc_auc", "AUC"), ("precision", "P"), ("recall", "R"))
    parts = [f"{short} {_number(metrics[key], 2)}" for key, short in names
             if isinstance(metrics.get(key), int | float)]
    return _e(" · ".join(parts) or "-")


def _findings_cell(errors: Sequence[str], warnings: Sequence[str]) -> str:
    if not errors and not warnings:
        return '<span class="muted">none</span>'
    summary = []
    if errors:
        summary.append(f'<span class="bad-text">{len(errors)} error{"s" * (len(errors) > 1)}'
                       "</span>")
    if warnings:
        summary.append(f'<span class="warn-text">{len(warnings)} warning'
                       f'{"s" * (len(warnings) > 1)}</span>')
    items = "".join(f'<li class="bad-text">{_e(m)}</li>' for m in errors)
    items += "".join(f'<li class="warn-text">{_e(m)}</li>' for m in warnings)
    return f"<details><summary>{', '.join(summary)}</summary><ul>{items}</ul></details>"


def _quality_cell(score: float | None) -> str:
    if score is None:
        return '<span class="muted">-</span>'
    css = "good" if score >= 0.8 else "warn" if score >= 0.6 else "bad"
    return f'<span class="pill {css}">{score:.2f}</span>'


def render_models(models: Sequence[Mapping[str, Any]]) -> str:
    if not models:
        return ('<p class="muted">No model imported yet. Drop an artifact into the training '
                "service's models folder (<code>modeld train</code> writes one).</p>")
    rows = []
    for m in models:
        version = str(m["version"])
        status = str(m["status"])
        actions = ""
        if status == "deployed":
            actions = (f'<button type="button" class="secondary" data-action="rollback" '
                       f'data-version="{_e(version)}">Roll back</button>')
        elif status in DEPLOYABLE:
            actions = (f'<button type="button" data-action="deploy" '
                       f'data-version="{_e(version)}">Deploy</button>')
        reason = f'<div class="muted small">{_e(m.get("reason"))}</div>' if m.get("reason") else ""
        rows.append(
            f'<tr data-version="{_e(version)}" data-status="{_e(status)}">'
            f"<td><code>{_e(version)}</code>{reason}</td>"
            f'<td><span class="status {_e(status)}">{_e(status)}</span></td>'
            f"<td>{_e(m.get('model_type') or '-')}</td>"
            f"<td>{_quality_cell(m.get('quality_score'))}</td>"
            f"<td>{_metrics_cell(m.get('metrics'))}</td>"
            f"<td>{_findings_cell(m.get('errors') or [], m.get('warnings') or [])}</td>"
            f"<td>{_when(m.get('created_at'))}</td>"
            f"<td>{_when(m.get('imported_at'))}</td>"
            f'<td class="actions">{actions}</td></tr>'
        )
    head = ("<tr><th>Version</th><th>Status</th><th>Type</th><th>Quality</th><th>Metrics</th>"
            "<th>Validation</th><th>Created</th><th>Imported</th><th></th></tr>")
    return f'<table class="models"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def render_shadow(view: Mapping[str, Any]) -> str:
    """The candidate panel: its trial's report and gate, with promote and discard buttons."""
    policy = _e(view["deploy_policy"])
    candidate = view.get("candidate")
    if candidate is None:
        last = view["history"][0] if view["history"] else None
        after = (f" Last: <code>{_e(last['version'])}</code> {_e(last['state'])} by "
                 f"{_e(last['actor'])} {_when(last['decided_at'])}." if last else "")
        return (f'<p class="muted">No candidate (deploy policy <code>{policy}</code>).{after}'
                "</p>")
    version = str(candidate["version"])
    report, gate = view.get("report") or {}, view.get("gate") or {}
    held = (f'<p class="status rejected">held: {_e(candidate["held"])}</p>'
            if candidate.get("held") else "")
    latency = report.get("latency_ms") or {}
    rates = report.get("flag_rate") or {}

    def pair(a: Any, b: Any) -> str:
        return f"{_number(a)} / {_number(b)}"

    rows = [
        ("records compared", f"{report.get('records_compared', 0)} of "
         f"{view['shadow']['min_records']} for the gate"),
        ("flag agreement", _number(report.get("flag_agreement"))),
        ("Cohen's kappa", _number(report.get("kappa"))),
        ("flag rate (deployed / candidate)", pair(rates.get("champion"), rates.get("candidate"))),
        ("Spearman of scores", _number(report.get("spearman"))),
        ("score difference p05 / p50 / p95", " / ".join(
            _number((report.get("score_difference_quantiles") or {}).get(q))
            for q in ("p05", "p50", "p95"))),
        ("latency p50 ms (deployed / candidate)",
         pair((latency.get("champion") or {}).get("p50"),
              (latency.get("candidate") or {}).get("p50"))),
        ("latency p99 ms (deployed / candidate)",
         pair((latency.get("champion") or {}).get("p99"),
              (latency.get("candidate") or {}).get("p99"))),
        ("shadow queue", f"{view['shadow']['queue_depth']} / {view['shadow']['queue_size']}, "
         f"{view['shadow']['dropped']} dropped"),
    ]
    stats = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    conditions = "".join(
        f'<li class="{"good" if c["holds"] else "bad"}">{_e(c["name"])} '
        f'{_number(c["observed"]) if isinstance(c["observed"], float) else _e(c["observed"])} '
        f'{"meets" if c["holds"] else "fails"} {_e(c["required"])}</li>'
        for c in gate.get("conditions", []))
    worst = "".join(
        f"<tr><td>{_number(d['champion_score'])} / {_number(d['candidate_score'])}</td>"
        f"<td>{'yes' if d['champion_flag'] else 'no'} / {'yes' if d['candidate_flag'] else 'no'}"
        f"</td><td>{_e(d['record'].get('host', '-'))}</td>"
        f'<td class="path">{_e(d["record"].get("message", ""))}</td></tr>'
        for d in report.get("top_disagreements", [])[:5])
    worst_html = ("<table><thead><tr><th>Score (deployed / candidate)</th><th>Flag</th>"
                  f"<th>Host</th><th>Message</th></tr></thead><tbody>{worst}</tbody></table>"
                  if worst else "")
    buttons = (f'<button type="button" data-action="promote" data-version="{_e(version)}">'
               f'Promote</button> <button type="button" class="secondary" '
               f'data-action="discard" data-version="{_e(version)}">Discard</button>')
    return (f'<p>Candidate <code>{_e(version)}</code> beside '
            f'{_version_link(candidate.get("champion"))} since {_when(candidate["since"])} '
            f'(deploy policy <code>{policy}</code>, canary {_number(view["canary"]["percent"])}%'
            f' by <code>{_e(view["canary"]["key"])}</code>) {buttons}</p>{held}'
            f'<div class="two"><div><table class="shadow">{stats}</table></div>'
            f'<div><h3>Gate</h3><ul class="gate">{conditions}</ul>'
            f"<h3>Largest disagreements</h3>{worst_html}</div></div>")


def render_history(deployments: Sequence[Any], transfers: Sequence[Any]) -> str:
    if deployments:
        rows = "".join(
            f"<tr><td>{_when(d.at)}</td><td>{_version_link(d.from_version)} &rarr; "
            f"{_version_link(d.to_version)}</td><td>{_e(d.actor)}</td><td>{_e(d.reason)}</td></tr>"
            for d in deployments)
        deploy_html = ("<table><thead><tr><th>When</th><th>Change</th><th>Who</th><th>Why</th>"
                       f"</tr></thead><tbody>{rows}</tbody></table>")
    else:
        deploy_html = '<p class="muted">No deployment yet.</p>'
    if transfers:
        rows = "".join(
            f'<tr><td>{_when(t.transferred_at)}</td><td>{_version_link(t.version)}</td>'
            f'<td><span class="status {_e(t.status)}">{_e(t.status)}</span></td>'
            f'<td class="path" title="{_e(t.source_path)}">{_e(Path(t.source_path).name)}</td>'
            f"<td>{_e(t.detail or '')}</td></tr>"
            for t in transfers)
        transfer_html = ("<table><thead><tr><th>When</th><th>Version</th><th>Outcome</th>"
                         f"<th>Folder</th><th>Detail</th></tr></thead><tbody>{rows}</tbody>"
                         "</table>")
    else:
        transfer_html = '<p class="muted">No import attempt yet.</p>'
    return (f'<div class="two"><div><h3>Deployments</h3>{deploy_html}</div>'
            f"<div><h3>Transfers</h3>{transfer_html}</div></div>")


def render_anomalies(anomalies: Sequence[Mapping[str, Any]]) -> str:
    """The recent anomalies, newest first, each with the top reasons in words."""
    if not anomalies:
        return '<p class="muted">No anomaly yet.</p>'
    rows = "".join(
        f"<tr><td>{_when(a['at'])}</td><td>{_e(a['host'] or '')}</td>"
        f"<td>{_e(a['process'] or '')}</td>"
        f'<td class="message" title="{_e(a["message"] or "")}">{_e(a["message"] or "")}</td>'
        f"<td>{_number(a['score'])}</td><td>{_version_link(a['version'])}</td>"
        f"<td>{_e(a['explanation'].get('summary', ''))}</td></tr>"
        for a in anomalies)
    return ('<table class="anomalies"><thead><tr><th>When</th><th>Host</th><th>Process</th>'
            "<th>Message</th><th>Score</th><th>Version</th><th>Why</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def render_fleet(view: Mapping[str, Any]) -> str:
    """Who serves what: every daemon heartbeating into this registry, and the fleet's alarm."""
    members = view["members"]
    if not members:
        return '<p class="muted">No heartbeat yet.</p>'
    rows = "".join(
        f"<tr><td>{_e(m['id'])}{' (this one)' if m['id'] == view['self'] else ''}</td>"
        f"<td>{_e(m['role'])}</td><td>{_version_link(m['version'])}</td>"
        f"<td>{_when(m['since'])}</td><td>{_when(m['last_reconcile'])}</td>"
        f"<td>{_number(m['heartbeat_age_seconds'], 1)} s</td>"
        f'<td><span class="status {"deployed" if m["alive"] else "rejected"}">'
        f"{'alive' if m['alive'] else 'gone'}</span></td></tr>"
        for m in members)
    alarm = (f'<p class="fleet-alarm">{_e(view["alarm"])}</p>' if view["alarm"] else
             f'<p class="muted">Swapping since {_when(view["split_since"])}.</p>'
             if view["split_since"] else "")
    return (f"{alarm}<table><thead><tr><th>Daemon</th><th>Role</th><th>Serves</th>"
            "<th>Since</th><th>Last reconcile</th><th>Heartbeat</th><th>State</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")


def _deployed_totals(runtime: Runtime, deployed: str | None) -> dict[str, Any] | None:
    if deployed is None:
        return None
    with runtime.monitors.lock:
        window = runtime.monitors.windows.get(deployed)
        if window is None:
            return None
        return dict(window.snapshot())


def render_sections(runtime: Runtime) -> dict[str, Any]:
    """Every server-rendered section of the page, from one read of each source."""
    status = runtime.status()
    deployed, fallback = status["deployed_version"], status["fallback_version"]
    registry = runtime.manager.registry
    candidate = candidate_version(runtime.slot)
    models = [version_view(r, deployed, fallback, candidate) for r in registry.list_versions()]
    return {
        "deployed_version": deployed,
        "fallback_version": fallback,
        "sections": {
            "state": render_state(status, _deployed_totals(runtime, deployed)),
            "models": render_models(models),
            "shadow": render_shadow(shadow_view(runtime)),
            "history": render_history(registry.deployments(HISTORY_ROWS),
                                      registry.transfers(HISTORY_ROWS)),
            "anomalies": render_anomalies(runtime.monitors.anomalies.read(None, None,
                                                                          HISTORY_ROWS)),
            "fleet": render_fleet(runtime.fleet_view()),
        },
    }


_SLOT = re.compile(r"\{\{(\w+)\}\}")


class DashboardPage:
    """The page template with its stylesheet and script, read once at mount."""

    def __init__(self, template: Path = TEMPLATE, stylesheet: Path = STYLESHEET,
                 script: Path = SCRIPT) -> None:
        self.template = template.read_text(encoding="utf-8")
        self.stylesheet = stylesheet.read_text(encoding="utf-8")
        self.script = script.read_text(encoding="utf-8")

    def render(self, sections: Mapping[str, str] | None, token_required: bool) -> str:
        locked = ('<p class="muted">This daemon requires an API token: the page asks for it '
                  "and keeps it for this browser tab only.</p>")
        values = {
            "style": self.stylesheet,
            "script": self.script.replace("</", "<\\/"),
            "token_required": "true" if token_required else "false",
            "refresh_ms": str(int(REFRESH_SECONDS * 1000)),
            "state": sections["state"] if sections else locked,
            "models": sections["models"] if sections else "",
            "shadow": sections["shadow"] if sections else "",
            "history": sections["history"] if sections else "",
            "anomalies": sections["anomalies"] if sections else "",
            "fleet": sections["fleet"] if sections else "",
        }
        return _SLOT.sub(lambda m: values[m.group(1)], self.template)


def dashboard_router(runtime: Runtime) -> APIRouter:
    """``GET /`` and the dashboard's two JSON endpoints.

    Included once by ``create_app``. With a token configured, ``/`` renders data only for a
    request that carries the token; otherwise the page is an empty shell whose script asks for
    the token and fills itself in through the (token-guarded) JSON endpoints.
    """
    router = APIRouter()
    page = DashboardPage()
    sampler = SeriesSampler()
    references = ReferenceScores()

    @router.get("/", include_in_schema=False, response_class=HTMLResponse)
    async def dashboard(request: Request) -> HTMLResponse:
        authorized = bearer_ok(runtime.token, request.headers.get("authorization"))
        sections = None
        if authorized:
            sections = (await run_in_threadpool(render_sections, runtime))["sections"]
        body = page.render(sections, token_required=runtime.token is not None)
        return HTMLResponse(body, headers={"Cache-Control": "no-store"})

    @router.get("/api/v1/dashboard/sections",
             summary="The dashboard's server-rendered HTML sections (state, models, history)")
    async def sections() -> dict[str, Any]:
        return await run_in_threadpool(render_sections, runtime)

    @router.get("/api/v1/dashboard/series",
             summary="Time series and score distributions for the dashboard's plots")
    async def series() -> dict[str, Any]:
        return await run_in_threadpool(build_series, runtime, sampler, references, time.time())

    return router
