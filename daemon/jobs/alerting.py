"""Alerts to people: a webhook (plain JSON or Slack-compatible) and e-mail over SMTP.

The daemon's jobs (drift checks, imports, swaps, fallbacks, health checks) build an `Alert` and
hand it to `Alerter.send()`, which only de-duplicates and enqueues: it never waits on the
network, so scoring and imports never slow down because a webhook or a mail server is slow or
down. One worker thread delivers each alert to every configured channel, retrying each channel on
its own schedule (see `Alerter`). Settings live at ``monitoring.alerting``.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import math
import queue
import smtplib
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from types import MappingProxyType
from typing import Any, Literal, Protocol, Self, get_args
from urllib.parse import urlsplit

import httpx
import pydantic
import structlog
from pydantic import ConfigDict, Field, SecretStr

from modeld.core.events import (
    CandidateHeld,
    DeployedVersionUnusable,
    FallbackUsed,
    ImportConflict,
    ImportRejected,
    ManagerEvent,
    ModelUnhealthy,
    SwapFailed,
)

log = structlog.get_logger()

AlertKind = Literal[
    "drift_alarm", "import_rejected", "swap_failed", "fallback_used", "model_unhealthy",
    "candidate_held",
    "scan_failed", "registry_damaged", "version_files_missing",
]
ALERT_KINDS: frozenset[str] = frozenset(get_args(AlertKind))

FieldValue = str | int | float | None


class AlertingSettings(pydantic.BaseModel):
    """The ``monitoring.alerting`` section of the daemon's settings.

    Validated once when the settings are loaded (on the main thread, before anything starts); a
    wrong value raises pydantic's ``ValidationError`` naming the key, and the daemon does not
    start. ``webhook_url`` may carry a secret token (Slack's do), so it is never logged.
    """

    model_config = ConfigDict(extra="forbid")

    # None: on as soon as a channel is configured (a webhook_url, or email_notifications);
    # false turns a configured channel off.
    enabled: bool | None = None
    webhook_url: str | None = None
    slack_notifications: bool = False
    email_notifications: bool = False
    smtp_host: str = Field(default="localhost", min_length=1)
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    email_from: str = Field(default="modeld@localhost", min_length=3)
    email_recipients: list[str] = Field(default_factory=list)
    dedupe_seconds: float = Field(default=600, ge=0)
    max_attempts: int = Field(default=5, ge=1)
    backoff_initial_seconds: float = Field(default=1.0, ge=0)
    backoff_max_seconds: float = Field(default=60, ge=0)
    timeout_seconds: float = Field(default=5, gt=0)
    queue_size: int = Field(default=1000, ge=1)
    # at most rate_limit_count alerts per channel in any rate_limit_seconds: an alert storm
    # cannot reach a person; what is held back is logged and counted (modeld_alerts_held_back)
    rate_limit_count: int = Field(default=20, ge=1)
    rate_limit_seconds: float = Field(default=3600, gt=0)

    @pydantic.field_validator("webhook_url", mode="before")
    @classmethod
    def _blank_url_means_none(cls, value: object) -> object:
        # Seed configs and env overrides write "" for "not configured".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @pydantic.field_validator("webhook_url")
    @classmethod
    def _webhook_url_is_http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            # The value itself is left out: it may contain a token.
            raise ValueError("webhook_url must be an http:// or https:// URL with a host")
        return value.strip()

    @pydantic.field_validator("email_recipients")
    @classmethod
    def _recipients_look_like_addresses(cls, value: list[str]) -> list[str]:
        cleaned = [address.strip() for address in value]
        bad = [address for address in cleaned if "@" not in address]
        if bad:
            raise ValueError(f"email_recipients has entries that are not addresses: {bad}")
        return cleaned

    @pydantic.model_validator(mode="after")
    def _channels_are_complete(self) -> Self:
        if self.email_notifications and not self.email_recipients:
            raise ValueError(
                "email_notifications is true but email_recipients is empty: "
                "list at least one address in email_recipients"
            )
        if self.slack_notifications and self.webhook_url is None:
            raise ValueError(
                "slack_notifications is true but webhook_url is not set: "
                "set webhook_url to the Slack incoming-webhook URL"
            )
        if self.backoff_max_seconds < self.backoff_initial_seconds:
            raise ValueError(
                "backoff_max_seconds must be at least backoff_initial_seconds "
                f"({self.backoff_max_seconds} < {self.backoff_initial_seconds})"
            )
        return self


@dataclass(frozen=True, slots=True)
class Alert:
    """One thing a person should know about, as the daemon saw it.

    Built by whichever job noticed the problem, on its own thread, and passed to
    `Alerter.send()`. An unknown ``kind`` raises ``ValueError`` at construction, so a typo fails
    in the caller's tests and not silently in delivery. ``fields`` is copied and frozen.
    """

    kind: AlertKind
    title: str
    detail: str
    version: str | None = None
    fields: Mapping[str, FieldValue] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.kind not in ALERT_KINDS:
            expected = ", ".join(sorted(ALERT_KINDS))
            raise ValueError(f"unknown alert kind {self.kind!r}; expected one of {expected}")
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))

    @property
    def dedupe_key(self) -> str:
        """What makes two alerts "the same" for de-duplication: kind, version and title."""
        return f"{self.kind}|{self.version or '-'}|{self.title}"


def manager_alert(event: ManagerEvent) -> Alert | None:
    """The alert a manager event raises, or None: called by the manager's listener."""
    match event:
        case ImportRejected(version=version, path=path, reason=reason) | ImportConflict(
            version=version, path=path, reason=reason
        ):
            return _event_alert("import_rejected", "import rejected", version, reason,
                                {"version": version, "path": path, "reason": reason})
        case SwapFailed(new=version, reason=reason):
            return _event_alert("swap_failed", "swap failed", version, reason,
                                {"version": version, "reason": reason})
        case FallbackUsed(version=version, fallback=fallback, reason=reason):
            return _event_alert("fallback_used", "fallback used", version, reason,
                                {"version": version, "fallback": fallback, "reason": reason})
        case DeployedVersionUnusable(version=version, reason=reason):
            return _event_alert("fallback_used", "fell back to an earlier version", version,
                                reason, {"version": version, "reason": reason})
        case ModelUnhealthy(version=version, reason=reason):
            return _event_alert("model_unhealthy", "deployed model failed its health check",
                                version, reason, {"version": version, "reason": reason})
        case CandidateHeld(version=version, failed=failed, reason=reason):
            return _event_alert("candidate_held", f"candidate held by the shadow gate on "
                                f"{failed}", version, reason,
                                {"version": version, "failed": failed, "reason": reason})
        case _:
            return None


def _event_alert(kind: AlertKind, title: str, version: str | None, reason: str,
                 fields: Mapping[str, FieldValue]) -> Alert:
    return Alert(kind=kind, title=f"{title}: {version}" if version else title, detail=reason,
                 version=version, fields=fields)


def backoff_delay(attempts: int, initial: float, maximum: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: doubling, capped at maximum."""
    return min(initial * 2.0 ** max(attempts - 1, 0), maximum)


class _PermanentDeliveryError(Exception):
    """The receiver refused the alert for good (HTTP 4xx, SMTP 5xx): retrying cannot help."""


class _Channel(Protocol):
    """Where an alert goes. Called only on the alerter's worker thread.

    ``deliver`` returns when the receiver accepted the alert and raises otherwise:
    `_PermanentDeliveryError` when a retry cannot help, any other exception when it might.
    """

    name: str

    def deliver(self, alert: Alert) -> None: ...

    def close(self) -> None: ...


def _json_safe(value: FieldValue) -> FieldValue:
    # Drift statistics can be NaN or infinite; strict JSON receivers reject those tokens.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def webhook_payload(alert: Alert, host: str) -> dict[str, Any]:
    """The generic webhook body: the alert's fields as JSON, plus the sending host."""
    return {
        "kind": alert.kind,
        "title": alert.title,
        "detail": alert.detail,
        "version": alert.version,
        "fields": {key: _json_safe(value) for key, value in alert.fields.items()},
        "at": alert.at,
        "host": host,
    }


def _mrkdwn(text: str) -> str:
    # Slack's mrkdwn treats these three as control characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_payload(alert: Alert, host: str) -> dict[str, Any]:
    """A Slack incoming-webhook body: fallback ``text`` plus header/section/context blocks.

    Texts are clipped to Slack's block limits (header 150, section 3000, at most 10 fields), so a
    long detail never makes Slack reject the whole message.
    """
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(alert.title, 150)}},
    ]
    if alert.detail:
        detail = _clip(_mrkdwn(alert.detail), 3000)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": detail}})
    if alert.fields:
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": _clip(f"*{_mrkdwn(key)}*\n{_mrkdwn(str(v))}", 2000)}
                    for key, v in list(alert.fields.items())[:10]
                ],
            }
        )
    context = f"{alert.kind} · version {alert.version or '-'} · {host} · {_iso(alert.at)}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _mrkdwn(context)}]})
    return {"text": _clip(f"[modeld] {alert.title}: {alert.detail}", 3000), "blocks": blocks}


class _WebhookChannel:
    """POSTs one JSON body per alert. The HTTP client is created on first use, on the worker."""

    def __init__(
        self,
        name: str,
        url: str,
        timeout: float,
        host: str,
        payload: Callable[[Alert, str], dict[str, Any]],
    ) -> None:
        self.name = name
        self._url = url
        self._timeout = timeout
        self._host = host
        self._payload = payload
        self._client: httpx.Client | None = None

    def deliver(self, alert: Alert) -> None:
        if self._client is None:
            self._client = httpx.Client(
                timeout=self._timeout, headers={"user-agent": "modeld-alerting"}
            )
        body = json.dumps(self._payload(alert, self._host), allow_nan=False).encode()
        response = self._client.post(
            self._url, content=body, headers={"content-type": "application/json"}
        )
        status = response.status_code
        if 200 <= status < 300:
            return
        # Our own message: httpx's would include the URL, which may hold a token.
        problem = f"HTTP {status} from webhook"
        if status in {408, 429} or status >= 500:
            raise RuntimeError(problem)
        raise _PermanentDeliveryError(problem)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class _EmailChannel:
    """Sends one plain-text message per alert over SMTP, one connection per message."""

    name = "email"

    def __init__(self, settings: AlertingSettings, host: str) -> None:
        self._settings = settings
        self._host = host

    def message(self, alert: Alert) -> EmailMessage:
        settings = self._settings
        message = EmailMessage()
        # Header values must not contain line breaks; a title is one line by intent.
        message["Subject"] = "[modeld] " + " ".join(alert.title.split())
        message["From"] = settings.email_from
        message["To"] = ", ".join(settings.email_recipients)
        message["Date"] = formatdate(alert.at, usegmt=True)
        message["Message-ID"] = make_msgid(domain=self._host)
        lines = [
            alert.detail,
            "",
            f"kind: {alert.kind}",
            f"version: {alert.version or '-'}",
            f"host: {self._host}",
            f"at: {_iso(alert.at)}",
        ]
        lines += [f"{key}: {value}" for key, value in alert.fields.items()]
        message.set_content("\n".join(lines) + "\n")
        return message

    def deliver(self, alert: Alert) -> None:
        settings = self._settings
        message = self.message(alert)
        try:
            # local_hostname avoids smtplib's getfqdn(), a DNS lookup that can stall for seconds.
            with smtplib.SMTP(
                settings.smtp_host,
                settings.smtp_port,
                local_hostname=self._host,
                timeout=settings.timeout_seconds,
            ) as smtp:
                if settings.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if settings.smtp_username is not None:
                    password = settings.smtp_password
                    smtp.login(
                        settings.smtp_username,
                        password.get_secret_value() if password is not None else "",
                    )
                smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if all(code >= 500 for code in codes):
                raise _PermanentDeliveryError(f"SMTP refused every recipient: {codes}") from exc
            raise
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code >= 500:
                raise _PermanentDeliveryError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}") from exc
            raise

    def close(self) -> None:
        pass


@dataclass(slots=True)
class _Delivery:
    """One alert on its way to one channel; owned by the worker thread."""

    alert: Alert
    channel: _Channel
    attempts: int = 0


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Alerter:
    """De-duplicates alerts and delivers them, off the caller's thread, to every channel.

    Callers: the daemon builds one from the loaded settings, calls `start()` before the jobs
    that send alerts and `stop()` after those jobs have stopped (reverse order), so their last
    alerts still drain. Any thread may call `send()`: it de-duplicates and puts the alert on a bounded queue
    without ever blocking; a full queue drops the alert (logged ``alert_dropped``).

    One daemon worker thread does all delivery. Each (alert, channel) pair is a separate
    delivery with its own attempt count; failed attempts are rescheduled by time
    (``backoff_initial_seconds`` doubling up to ``backoff_max_seconds``) on a heap ordered by
    due time, and the worker takes new alerts while it waits. So a webhook that keeps failing
    delays nothing else except by the duration of its own attempts (each bounded by
    ``timeout_seconds``): the same alert's e-mail, and later alerts, go out in between. After
    ``max_attempts`` (or at once, for a refusal that retrying cannot fix: HTTP 4xx other than
    408/429, SMTP 5xx) the delivery is given up and logged ``alert_delivery_failed``. A bug in a
    channel is caught and treated as a failed attempt, so it never kills the worker.

    Each channel delivers at most ``rate_limit_count`` alerts in any ``rate_limit_seconds``
    (a sliding window, counted when an alert is taken for the channel, retries not counted
    again): an alert beyond it is held back for that channel, logged ``alert_held_back`` and
    reported to ``held_back`` with the channel's name (the daemon counts it in /metrics). So
    no storm of distinct alerts reaches a person, whatever raises them.

    ``clock`` is a monotonic clock in seconds; it drives de-duplication, the rate limit and the
    retry schedule.
    There is deliberately no injectable ``sleep``: the wait for the next retry is the wait on the
    queue, so a new alert or `stop()` ends it at once; a separate sleep could not be woken.
    With ``enabled`` false, or no channel configured, nothing starts and `send()` returns False;
    ``enabled`` left unset means on whenever a channel is configured.
    """

    def __init__(
        self,
        settings: AlertingSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        held_back: Callable[[str], None] = lambda channel: None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._held_back = held_back
        # per channel, when its latest deliveries (at most rate_limit_count) were taken
        self._taken: dict[str, deque[float]] = {}
        self._host = socket.gethostname()
        self._channels = self._build_channels(settings, self._host)
        self._active = settings.enabled is not False and bool(self._channels)
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize=settings.queue_size)
        self._lock = threading.Lock()  # guards _last_sent, _closed and the send/stop handoff
        self._last_sent: dict[str, float] = {}
        self._closed = False
        self._thread: threading.Thread | None = None
        # Written by stop() on the caller's thread, read by the worker: a float assignment.
        self._drain_deadline: float | None = None
        self._abandon = threading.Event()

    @staticmethod
    def _build_channels(settings: AlertingSettings, host: str) -> list[_Channel]:
        channels: list[_Channel] = []
        if settings.webhook_url is not None:
            slack = settings.slack_notifications
            channels.append(
                _WebhookChannel(
                    "slack" if slack else "webhook",
                    settings.webhook_url,
                    settings.timeout_seconds,
                    host,
                    slack_payload if slack else webhook_payload,
                )
            )
        if settings.email_notifications:
            channels.append(_EmailChannel(settings, host))
        return channels

    @property
    def settings(self) -> AlertingSettings:
        return self._settings

    @property
    def active(self) -> bool:
        """True when alerts are delivered at all (enabled and at least one channel)."""
        return self._active

    @property
    def channels(self) -> tuple[str, ...]:
        """Names of the configured channels: ``webhook`` or ``slack``, and ``email``."""
        return tuple(channel.name for channel in self._channels)

    def start(self) -> None:
        """Start the worker thread; called once by the daemon on the main thread.

        A no-op when alerting is inactive (logged ``alerting_disabled`` or
        ``alerting_without_channels``) or already started. Raises ``RuntimeError`` after `stop()`.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("an Alerter cannot be started again after stop()")
            if self._thread is not None:
                return
            if self._settings.enabled is False:
                log.info("alerting_disabled")
                return
            if not self._channels:
                if self._settings.enabled:
                    log.warning(
                        "alerting_without_channels",
                        hint="set webhook_url or email_notifications under monitoring.alerting",
                    )
                return
            settings = self._settings
            if settings.smtp_username is not None and not settings.smtp_starttls:
                log.warning("smtp_login_without_starttls", smtp_host=settings.smtp_host)
            self._thread = threading.Thread(target=self._run, name="modeld-alerting", daemon=True)
            self._thread.start()
        log.info("alerter_started", channels=list(self.channels))

    def send(self, alert: Alert) -> bool:
        """Queue ``alert`` for delivery; never blocks, never raises. Any thread may call it.

        Returns True when queued. Returns False when alerting is inactive, when the same
        `Alert.dedupe_key` was queued less than ``dedupe_seconds`` ago (logged
        ``alert_deduplicated``; the window counts from the last alert that was queued, so a
        condition that persists alerts again once per window), or when the queue is full or the
        alerter is stopped (logged ``alert_dropped``). Alerts sent before `start()` wait in the
        queue.
        """
        if not self._active:
            return False
        key = alert.dedupe_key
        since_last: float | None = None
        with self._lock:
            if self._closed:
                reason = "stopped"
            else:
                now = self._clock()
                last = self._last_sent.get(key)
                if last is not None and now - last < self._settings.dedupe_seconds:
                    since_last = now - last
                else:
                    try:
                        self._queue.put_nowait(alert)
                    except queue.Full:
                        reason = "queue_full"
                    else:
                        self._last_sent[key] = now
                        self._forget_old_keys(now)
                        return True
        if since_last is not None:
            log.info(
                "alert_deduplicated",
                kind=alert.kind,
                version=alert.version,
                dedupe_key=key,
                seconds_since_last=round(since_last, 3),
            )
        else:
            log.warning(
                "alert_dropped",
                reason=reason,
                kind=alert.kind,
                version=alert.version,
                title=alert.title,
            )
        return False

    def _forget_old_keys(self, now: float) -> None:
        # Keeps the de-duplication memory bounded; cheap because it runs only past a size.
        if len(self._last_sent) > 1024:
            window = self._settings.dedupe_seconds
            self._last_sent = {k: t for k, t in self._last_sent.items() if now - t < window}

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what can be delivered within ``timeout`` seconds, then stop the worker.

        Called once by the daemon during shutdown, on the main thread. New alerts are refused
        from now on. Queued alerts get their attempts and retries that fall due before the
        deadline; retries due later are given up (logged ``alert_delivery_abandoned``). Returns
        after at most ``timeout`` seconds: if an attempt is still in flight then (a receiver
        that accepts but never answers), the worker is told to quit after it and
        ``alerter_stop_timed_out`` is logged; it is a daemon thread, so it cannot hold up process
        exit. Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is None:
            self._abandon_queued()  # sent before a start() that never came
            return
        self._drain_deadline = self._clock() + max(timeout, 0.0)
        self._wake_worker()
        thread.join(max(timeout, 0.0))
        if thread.is_alive():
            self._abandon.set()
            self._wake_worker()
            log.warning("alerter_stop_timed_out", timeout_s=timeout, queued=self._queue.qsize())
        else:
            log.info("alerter_stopped")

    def _wake_worker(self) -> None:
        # A full queue needs no wake-up: the worker is not blocked on an empty one.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

    # --- worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._deliver_until_stopped()
        except Exception:
            log.exception("alerter_worker_crashed")
        finally:
            for channel in self._channels:
                try:
                    channel.close()
                except Exception:
                    log.exception("alert_channel_close_failed", channel=channel.name)

    def _deliver_until_stopped(self) -> None:
        schedule: list[tuple[float, int, _Delivery]] = []  # (due, tiebreak, delivery)
        tiebreak = itertools.count()
        # Retries count against the same bound as the queue, so memory stays bounded when every
        # channel is down: once the schedule is full, the queue fills and send() drops.
        capacity = self._settings.queue_size
        while not self._abandon.is_set():
            now = self._clock()
            deadline = self._drain_deadline
            if deadline is not None:
                if schedule and schedule[0][0] > deadline:
                    self._abandon_scheduled(schedule)
                if now >= deadline:
                    break
            if schedule and schedule[0][0] <= now:
                _, _, delivery = heapq.heappop(schedule)
                retry_at = self._attempt(delivery)
                if retry_at is not None:
                    heapq.heappush(schedule, (retry_at, next(tiebreak), delivery))
                continue
            wait = schedule[0][0] - now if schedule else None
            if len(schedule) >= capacity:
                self._abandon.wait(wait)
                continue
            try:
                if deadline is not None and wait is None:
                    item = self._queue.get_nowait()  # draining: an empty queue means done
                else:
                    item = self._queue.get(timeout=wait)
            except queue.Empty:
                if deadline is not None and not schedule:
                    break
                continue
            if item is None:
                continue  # a wake-up from stop()
            taken_at = self._clock()  # not ``now``: the wait for it may have been long
            for channel in self._channels:
                if self._within_rate(channel, item, taken_at):
                    heapq.heappush(schedule, (now, next(tiebreak), _Delivery(item, channel)))
        self._abandon_scheduled(schedule)
        self._abandon_queued()

    def _within_rate(self, channel: _Channel, alert: Alert, now: float) -> bool:
        """Take one of the channel's ``rate_limit_count`` deliveries per ``rate_limit_seconds``,
        or hold the alert back for it (logged, reported); worker thread only."""
        settings = self._settings
        taken = self._taken.setdefault(channel.name, deque())
        while taken and now - taken[0] >= settings.rate_limit_seconds:
            taken.popleft()
        if len(taken) < settings.rate_limit_count:
            taken.append(now)
            return True
        log.warning("alert_held_back", channel=channel.name, kind=alert.kind,
                    version=alert.version, title=alert.title, reason="rate_limit",
                    limit=settings.rate_limit_count, per_seconds=settings.rate_limit_seconds)
        self._held_back(channel.name)
        return False

    def _attempt(self, delivery: _Delivery) -> float | None:
        """One attempt; returns when to retry, or None when the delivery is finished."""
        settings = self._settings
        delivery.attempts += 1
        bound = log.bind(
            channel=delivery.channel.name,
            kind=delivery.alert.kind,
            version=delivery.alert.version,
            attempts=delivery.attempts,
        )
        try:
            delivery.channel.deliver(delivery.alert)
        except _PermanentDeliveryError as exc:
            bound.error("alert_delivery_failed", error=_describe(exc), permanent=True)
            return None
        except Exception as exc:
            if delivery.attempts >= settings.max_attempts:
                bound.error("alert_delivery_failed", error=_describe(exc), permanent=False)
                return None
            delay = backoff_delay(
                delivery.attempts, settings.backoff_initial_seconds, settings.backoff_max_seconds
            )
            bound.warning("alert_delivery_retrying", error=_describe(exc), retry_in_s=delay)
            return self._clock() + delay
        bound.info("alert_sent")
        return None

    def _abandon_scheduled(self, schedule: list[tuple[float, int, _Delivery]]) -> None:
        for _, _, delivery in schedule:
            log.warning(
                "alert_delivery_abandoned",
                channel=delivery.channel.name,
                kind=delivery.alert.kind,
                version=delivery.alert.version,
                attempts=delivery.attempts,
                reason="stopping",
            )
        schedule.clear()

    def _abandon_queued(self) -> None:
        count = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                count += 1
        if count:
            log.warning("alerts_abandoned", count=count, reason="stopping")
