"""Alerting against real receivers: an http.server webhook and an aiosmtpd SMTP server.

Both receivers run in threads on 127.0.0.1; faults (HTTP 500/404, SMTP 451/550, a closed port,
a listener that never answers) are caused for real rather than faked.
"""

from __future__ import annotations

import email
import email.policy
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pydantic
import pytest
from aiosmtpd.controller import Controller
from structlog.testing import capture_logs

from modeld.core.events import ImportConflict, ModelImported, SwapFailed
from modeld.daemon.jobs.alerting import (
    Alert,
    Alerter,
    AlertingSettings,
    backoff_delay,
    manager_alert,
)

WORKER_THREAD = "modeld-alerting"


# --- fixtures: thread hygiene and real receivers ---------------------------------------------


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running (after a short grace period to finish)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    new = [t for t in threading.enumerate() if t not in before]
    for thread in new:
        thread.join(max(deadline - time.monotonic(), 0))
    leaked = [t.name for t in new if t.is_alive()]
    assert not leaked, f"threads leaked: {leaked}"


class WebhookReceiver:
    """Records JSON bodies; answers ``fail_status`` to the first ``fail_first`` requests."""

    def __init__(self) -> None:
        self.url = ""
        self.fail_first = 0
        self.fail_status = 500
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.changed = threading.Condition()

    def wait_for_bodies(self, count: int, timeout: float = 5.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.bodies) >= count, timeout)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    state = WebhookReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            with state.changed:
                state.requests += 1
                fail = state.requests <= state.fail_first
                if not fail:
                    state.bodies.append(json.loads(body))
                    state.headers.append({k.lower(): v for k, v in self.headers.items()})
                state.changed.notify_all()
            self.send_response(state.fail_status if fail else 200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    server = HTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="test-webhook"
    )
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


class Mailbox:
    """An aiosmtpd handler that keeps what it accepted; refuses the first ``refuse_first``."""

    def __init__(self) -> None:
        self.refuse_first = 0
        self.refuse_reply = "451 4.3.0 try again later"
        self.attempts = 0
        self.messages: list[tuple[str, list[str], email.message.EmailMessage]] = []
        self.changed = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.changed:
            self.attempts += 1
            if self.attempts <= self.refuse_first:
                return self.refuse_reply
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
            self.changed.notify_all()
        return "250 2.0.0 accepted"

    def wait_for_messages(self, count: int, timeout: float = 5.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.messages) >= count, timeout)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    handler = Mailbox()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


@pytest.fixture
def closed_port_url() -> str:
    """A URL on which nothing listens: every connection is refused at once."""
    return f"http://127.0.0.1:{free_port()}/hook"


@pytest.fixture
def silent_listener() -> Iterator[tuple[str, socket.socket]]:
    """A URL that accepts TCP connections and never answers; closing it resets them."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook", listener
    listener.close()


def fast_settings(**overrides: Any) -> AlertingSettings:
    values: dict[str, Any] = {
        "enabled": True,
        "dedupe_seconds": 0,
        "max_attempts": 3,
        "backoff_initial_seconds": 0.01,
        "backoff_max_seconds": 0.05,
        "timeout_seconds": 2,
    }
    values.update(overrides)
    return AlertingSettings(**values)


@pytest.fixture
def make_alerter() -> Iterator[Callable[..., Alerter]]:
    """Builds and starts alerters; stops every one at teardown (stop() is idempotent)."""
    made: list[Alerter] = []

    def make(settings: AlertingSettings, **kwargs: Any) -> Alerter:
        alerter = Alerter(settings, **kwargs)
        made.append(alerter)
        alerter.start()
        return alerter

    yield make
    for alerter in made:
        alerter.stop(2)


def drift_alert(title: str = "Drift alarm on v4", version: str | None = "v4") -> Alert:
    return Alert(
        kind="drift_alarm",
        title=title,
        detail="PSI of message_length is 0.41 (threshold 0.2)",
        version=version,
        fields={"feature": "message_length", "psi": 0.41, "window": 5000, "ks_p": math.nan},
        at=1_780_000_000.0,
    )


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def worker_alive() -> bool:
    return any(t.name == WORKER_THREAD for t in threading.enumerate())


# --- settings and value objects --------------------------------------------------------------


def test_settings_defaults_are_off() -> None:
    settings = AlertingSettings()
    assert not settings.enabled
    assert settings.webhook_url is None
    assert settings.email_recipients == []


def test_email_without_recipients_is_rejected_naming_the_key() -> None:
    with pytest.raises(pydantic.ValidationError, match="email_recipients"):
        AlertingSettings(email_notifications=True)


def test_slack_without_webhook_url_is_rejected_naming_the_key() -> None:
    with pytest.raises(pydantic.ValidationError, match="webhook_url"):
        AlertingSettings(slack_notifications=True)


@pytest.mark.parametrize("url", ["ftp://example.org/hook", "example.org/hook", "https://"])
def test_webhook_url_must_be_http_or_https(url: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="webhook_url"):
        AlertingSettings(webhook_url=url)


def test_blank_webhook_url_means_not_configured() -> None:
    assert AlertingSettings(webhook_url="  ").webhook_url is None


def test_unknown_settings_key_is_rejected() -> None:
    with pytest.raises(pydantic.ValidationError, match="slack_channel"):
        AlertingSettings.model_validate({"slack_channel": "#ops"})


def test_smtp_password_is_not_shown_in_repr() -> None:
    settings = AlertingSettings(smtp_username="modeld", smtp_password="hunter2")
    assert "hunter2" not in repr(settings)
    assert settings.smtp_password is not None
    assert settings.smtp_password.get_secret_value() == "hunter2"


def test_alert_kind_is_checked_and_fields_are_frozen() -> None:
    with pytest.raises(ValueError, match="unknown alert kind"):
        Alert(kind="drift", title="t", detail="d")  # type: ignore[arg-type]
    alert = drift_alert()
    with pytest.raises(TypeError):
        alert.fields["psi"] = 1.0  # type: ignore[index]


def test_dedupe_key_is_kind_version_and_title() -> None:
    assert drift_alert().dedupe_key == drift_alert().dedupe_key
    assert drift_alert().dedupe_key != drift_alert(version="v5").dedupe_key
    assert drift_alert().dedupe_key != drift_alert(title="other").dedupe_key


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_delay(n, 1.0, 10.0) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


# --- webhook ---------------------------------------------------------------------------------


def test_webhook_receives_the_alert_as_json(
    receiver: WebhookReceiver, make_alerter: Callable[..., Alerter]
) -> None:
    with capture_logs() as logs:
        alerter = make_alerter(fast_settings(webhook_url=receiver.url))
        assert alerter.send(drift_alert())
        assert receiver.wait_for_bodies(1)
        alerter.stop(5)

    body = receiver.bodies[0]
    assert set(body) == {"kind", "title", "detail", "version", "fields", "at", "host"}
    assert body["kind"] == "drift_alarm"
    assert body["title"] == "Drift alarm on v4"
    assert body["version"] == "v4"
    assert body["at"] == 1_780_000_000.0
    assert body["host"] == socket.gethostname()
    # NaN is not JSON; it arrives as a string rather than breaking strict receivers.
    assert body["fields"] == {
        "feature": "message_length",
        "psi": 0.41,
        "window": 5000,
        "ks_p": "nan",
    }
    assert receiver.headers[0]["content-type"] == "application/json"
    [sent] = events(logs, "alert_sent")
    assert sent["channel"] == "webhook"
    assert sent["kind"] == "drift_alarm"
    assert sent["attempts"] == 1


def test_webhook_is_retried_with_backoff_until_it_succeeds(
    receiver: WebhookReceiver, make_alerter: Callable[..., Alerter]
) -> None:
    receiver.fail_first = 2
    with capture_logs() as logs:
        alerter = make_alerter(fast_settings(webhook_url=receiver.url, max_attempts=5))
        alerter.send(drift_alert())
        assert receiver.wait_for_bodies(1)
        alerter.stop(5)

    assert receiver.requests == 3
    retries = events(logs, "alert_delivery_retrying")
    assert [r["retry_in_s"] for r in retries] == [0.01, 0.02]
    assert all("HTTP 500" in r["error"] for r in retries)
    [sent] = events(logs, "alert_sent")
    assert sent["attempts"] == 3


def test_webhook_gives_up_after_max_attempts(
    receiver: WebhookReceiver, make_alerter: Callable[..., Alerter]
) -> None:
    receiver.fail_first = 100
    with capture_logs() as logs:
        alerter = make_alerter(fast_settings(webhook_url=receiver.url, max_attempts=3))
        alerter.send(drift_alert())
        alerter.stop(5)

    assert receiver.requests == 3
    [failed] = events(logs, "alert_delivery_failed")
    assert failed["channel"] == "webhook"
    assert failed["kind"] == "drift_alarm"
    assert failed["attempts"] == 3
    assert "HTTP 500" in failed["error"]
    assert failed["log_level"] == "error"
    assert not events(logs, "alert_sent")


def test_webhook_client_error_is_not_retried(
    receiver: WebhookReceiver, make_alerter: Callable[..., Alerter]
) -> None:
    receiver.fail_first = 100
    receiver.fail_status = 404
    with capture_logs() as logs:
        alerter = make_alerter(fast_settings(webhook_url=receiver.url, max_attempts=5))
        alerter.send(drift_alert())
        alerter.stop(5)

    assert receiver.requests == 1
    [failed] = events(logs, "alert_delivery_failed")
    assert failed["attempts"] == 1
    assert failed["permanent"] is True


def test_slack_payload_has_text_and_blocks(
    receiver: WebhookReceiver, make_alerter: Callable[..., Alerter]
) -> None:
    with capture_logs() as logs:
        alerter = make_alerter(fast_settings(webhook_url=receiver.url, slack_notifications=True))
        alerter.send(
            Alert(
                kind="swap_failed",
                title="Swap to v5 failed",
                detail="warm-up raised <ValueError> & rolled back",
                version="v5",
                fields={"previous": "v4"},
            )
        )
        assert receiver.wait_for_bodies(1)
        alerter.stop(5)

    body = receiver.bodies[0]
    assert set(body) == {"text", "blocks"}
    assert "Swap to v5 failed" in body["text"]
    header, detail, fields, context = body["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": "Swap to v5 failed"}}
    assert detail["type"] == "section"
    assert detail["text"] == {
        "type": "mrkdwn",
        "text": "warm-up raised &lt;ValueError&gt; &amp; rolled back",
    }
    assert fields["fields"] == [{"type": "mrkdwn", "text": "*previous*\nv4"}]
    assert context["type"] == "context"
    assert "swap_failed" in context["elements"][0]["text"]
    assert events(logs, "alert_sent")[0]["channel"] == "slack"


# --- e-mail ----------------------------------------------------------------------------------


def test_email_arrives_with_subject_and_recipients(
    mailbox: tuple[Mailbox, int], make_alerter: Callable[..., Alerter]
) -> None:
    handler, port = mailbox
    recipients = ["ops@example.org", "ml@example.org"]
    settings = fast_settings(
        email_notifications=True,
        smtp_host="127.0.0.1",
        smtp_port=port,
        email_from="modeld@ap-controller.example.org",
        email_recipients=recipients,
    )
    with capture_logs() as logs:
        alerter = make_alerter(settings)
        assert alerter.send(drift_alert())
        assert handler.wait_for_messages(1)
        alerter.stop(5)

    mail_from, rcpt_tos, message = handler.messages[0]
    assert mail_from == "modeld@ap-controller.example.org"
    assert rcpt_tos == recipients
    assert message["Subject"] == "[modeld] Drift alarm on v4"
    assert message["To"] == "ops@example.org, ml@example.org"
    body = message.get_content()
    assert "PSI of message_length is 0.41" in body
    assert "version: v4" in body
    assert "psi: 0.41" in body
    [sent] = events(logs, "alert_sent")
    assert (sent["channel"], sent["attempts"]) == ("email", 1)


def test_email_temporary_refusal_is_retried(
    mailbox: tuple[Mailbox, int], make_alerter: Callable[..., Alerter]
) -> None:
    handler, port = mailbox
    handler.refuse_first = 1
    settings = fast_settings(
        email_notifications=True,
        smtp_host="127.0.0.1",
        smtp_port=port,
        email_recipients=["ops@example.org"],
    )
    with capture_logs() as logs:
        alerter = make_alerter(settings)
        alerter.send(drift_alert())
        assert handler.wait_for_messages(1)
        alerter.stop(5)

    assert handler.attempts == 2
    [sent] = events(logs, "alert_sent")
    assert sent["attempts"] == 2


def test_email_permanent_refusal_is_not_retried(
    mailbox: tuple[Mailbox, int], make_alerter: Callable[..., Alerter]
) -> None:
    handler, port = mailbox
    handler.refuse_first = 100
    handler.refuse_reply = "550 5.7.1 relaying denied"
    settings = fast_settings(
        email_notifications=True,
        smtp_host="127.0.0.1",
        smtp_port=port,
        email_recipients=["ops@example.org"],
    )
    with capture_logs() as logs:
        alerter = make_alerter(settings)
        alerter.send(drift_alert())
        alerter.stop(5)

    assert handler.attempts == 1
    [failed] = events(logs, "alert_delivery_failed")
    assert (failed["channel"], failed["attempts"], failed["permanent"]) == ("email", 1, True)
    assert "550" in failed["error"]


def test_failing_webhook_does_not_hold_up_email(
    closed_port_url: str,
    mailbox: tuple[Mailbox, int],
    make_alerter: Callable[..., Alerter],
) -> None:
    handler, port = mailbox
    settings = fast_settings(
        webhook_url=closed_port_url,
        email_notifications=True,
        smtp_host="127.0.0.1",
        smtp_port=port,
        email_recipients=["ops@example.org"],
        max_attempts=5,
        backoff_initial_seconds=30,
        backoff_max_seconds=30,
    )
    with capture_logs() as logs:
        alerter = make_alerter(settings)
        alerter.send(drift_alert())
        assert handler.wait_for_messages(1, timeout=3)
        # A second alert also goes out while the first one's webhook retry is 30 s away.
        alerter.send(drift_alert(version="v5"))
        assert handler.wait_for_messages(2, timeout=3)
        started = time.monotonic()
        alerter.stop(1)
        assert time.monotonic() - started < 1.5

    assert len(events(logs, "alert_delivery_retrying")) == 2
    abandoned = events(logs, "alert_delivery_abandoned")
    assert [(a["channel"], a["attempts"]) for a in abandoned] == [("webhook", 1)] * 2


# --- de-duplication, queueing, lifecycle -----------------------------------------------------


def test_duplicates_within_the_window_are_suppressed(
    receiver: WebhookReceiver, make_alerter: Callable[..., Alerter]
) -> None:
    now = [1000.0]
    settings = fast_settings(webhook_url=receiver.url, dedupe_seconds=60)
    with capture_logs() as logs:
        alerter = make_alerter(settings, clock=lambda: now[0])
        assert alerter.send(drift_alert())
        now[0] += 59
        assert not alerter.send(drift_alert())  # same kind, version and title
        assert alerter.send(drift_alert(version="v5"))  # another version is another alarm
        now[0] += 2  # 61 s after the first: the window has passed
        assert alerter.send(drift_alert())
        alerter.stop(5)

    assert [body["version"] for body in receiver.bodies] == ["v4", "v5", "v4"]
    [suppressed] = events(logs, "alert_deduplicated")
    assert suppressed["dedupe_key"] == drift_alert().dedupe_key
    assert suppressed["kind"] == "drift_alarm"


def test_full_queue_drops_without_blocking(
    silent_listener: tuple[str, socket.socket], make_alerter: Callable[..., Alerter]
) -> None:
    url, listener = silent_listener
    settings = fast_settings(webhook_url=url, queue_size=3, timeout_seconds=3)
    with capture_logs() as logs:
        alerter = make_alerter(settings)
        started = time.monotonic()
        accepted = [alerter.send(drift_alert(title=f"alarm {i}")) for i in range(50)]
        took = time.monotonic() - started
        assert took < settings.timeout_seconds  # one blocked send would wait this long
        # The worker is stuck on its first request; the queue holds 3 more at most.
        assert 3 <= sum(accepted) <= 4
        dropped = events(logs, "alert_dropped")
        assert len(dropped) == 50 - sum(accepted)
        assert {d["reason"] for d in dropped} == {"queue_full"}

        started = time.monotonic()
        alerter.stop(0.3)
        assert time.monotonic() - started < 1.0
        assert events(logs, "alerter_stop_timed_out")
        listener.close()  # resets the hung request; the worker then quits
        deadline = time.monotonic() + 5
        while worker_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not worker_alive()
        assert events(logs, "alerts_abandoned")


def test_stop_is_bounded_when_the_receiver_is_unreachable(
    closed_port_url: str, make_alerter: Callable[..., Alerter]
) -> None:
    settings = fast_settings(
        webhook_url=closed_port_url,
        max_attempts=5,
        backoff_initial_seconds=10,
        backoff_max_seconds=60,
    )
    with capture_logs() as logs:
        alerter = make_alerter(settings)
        alerter.send(drift_alert())
        deadline = time.monotonic() + 3
        while not events(logs, "alert_delivery_retrying") and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        alerter.stop(2)
        assert time.monotonic() - started < 1.0  # the 10 s retry is given up, not waited for
        assert not worker_alive()

    [retrying] = events(logs, "alert_delivery_retrying")
    assert retrying["retry_in_s"] == 10
    [abandoned] = events(logs, "alert_delivery_abandoned")
    assert abandoned["attempts"] == 1
    assert events(logs, "alerter_stopped")


def test_stop_drains_queued_alerts(
    receiver: WebhookReceiver, make_alerter: Callable[..., Alerter]
) -> None:
    alerter = make_alerter(fast_settings(webhook_url=receiver.url))
    for i in range(5):
        alerter.send(drift_alert(title=f"alarm {i}"))
    alerter.stop(5)
    assert sorted(body["title"] for body in receiver.bodies) == [f"alarm {i}" for i in range(5)]


def test_send_after_stop_is_dropped(
    receiver: WebhookReceiver, make_alerter: Callable[..., Alerter]
) -> None:
    alerter = make_alerter(fast_settings(webhook_url=receiver.url))
    alerter.stop(1)
    with capture_logs() as logs:
        assert not alerter.send(drift_alert())
    [dropped] = events(logs, "alert_dropped")
    assert dropped["reason"] == "stopped"
    with pytest.raises(RuntimeError, match="cannot be started again"):
        alerter.start()


def test_disabled_alerting_starts_nothing_and_sends_nothing(receiver: WebhookReceiver) -> None:
    alerter = Alerter(AlertingSettings(enabled=False, webhook_url=receiver.url))
    before = threading.active_count()
    with capture_logs() as logs:
        alerter.start()
        assert threading.active_count() == before
        assert not alerter.active
        assert not alerter.send(drift_alert())
        alerter.stop(1)
    assert receiver.requests == 0
    assert [entry["event"] for entry in logs] == ["alerting_disabled"]


def test_enabled_without_channels_warns_and_sends_nothing() -> None:
    alerter = Alerter(AlertingSettings(enabled=True))
    with capture_logs() as logs:
        alerter.start()
        assert not worker_alive()
        assert not alerter.send(drift_alert())
        alerter.stop(1)
    [warning] = events(logs, "alerting_without_channels")
    assert warning["log_level"] == "warning"


def test_manager_events_map_to_their_alerts() -> None:
    swap = manager_alert(SwapFailed(old="v1", new="v2", reason="warmup scores are NaN"))
    assert swap is not None and swap.kind == "swap_failed" and swap.version == "v2"
    assert swap.title == "swap failed: v2" and swap.detail == "warmup scores are NaN"
    assert dict(swap.fields) == {"version": "v2", "reason": "warmup scores are NaN"}
    conflict = manager_alert(ImportConflict("v2", "/models/x", "different content"))
    assert conflict is not None and conflict.kind == "import_rejected"
    assert manager_alert(ModelImported("v3", "/models/v3", 0.9, [], 1.0)) is None
