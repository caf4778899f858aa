"""Structured logging: one event per thing that happened, as JSON, console text or journal lines.

Configured once by the main thread at startup (and again after a reload that changes the
``logging`` section). Every library logger (uvicorn, apscheduler, watchdog) goes through the
same handlers, so the output has one shape.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

from modeld.daemon.process.settings import LoggingSettings

# syslog priorities, which journald reads from a "<N>" line prefix
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}


def stderr_is_journal(stream: TextIO, environ: dict[str, str] | os._Environ[str]) -> bool:
    """True when systemd connected ``stream`` to the journal (``JOURNAL_STREAM=dev:inode``)."""
    value = environ.get("JOURNAL_STREAM", "")
    try:
        dev, inode = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == inode


class _JournalRenderer:
    """``<N>event key=value ...``: journald strips the prefix as the priority; no timestamp."""

    def __init__(self) -> None:
        self._kv = structlog.processors.KeyValueRenderer(
            key_order=["event"], drop_missing=True, sort_keys=True
        )

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> str:
        priority = _PRIORITY.get(event.get("level", method), 6)
        event.pop("timestamp", None)
        return f"<{priority}>" + self._kv(logger, method, event).replace("\n", "\\n")


class _TextRenderer:
    """The message of a text line: the event, then its structured fields as ``key=value``.

    Used with ``logging.format`` as a Python logging format string: the format supplies time,
    logger name and level (``%(asctime)s``, ``%(name)s``, ``%(levelname)s``), this supplies
    ``%(message)s``.
    """

    _SHOWN_BY_FORMAT = ("level", "logger", "timestamp")

    def __call__(self, _logger: Any, _method: str, event: MutableMapping[str, Any]) -> str:
        message = str(event.pop("event", ""))
        exception = event.pop("exception", None)
        fields = " ".join(f"{key}={value!r}" for key, value in sorted(event.items())
                          if key not in self._SHOWN_BY_FORMAT)
        text = f"{message} {fields}" if fields else message
        return f"{text}\n{exception}" if exception else text


def _with_fields(fields: Mapping[str, object]) -> Any:
    def add(_logger: Any, _method: str, event: MutableMapping[str, Any]
            ) -> MutableMapping[str, Any]:
        for key, value in fields.items():
            event.setdefault(key, value)
        return event

    return add


def configure_logging(
    settings: LoggingSettings,
    stream: TextIO | None = None,
    environ: dict[str, str] | os._Environ[str] = os.environ,
    fields: Mapping[str, object] | None = None,
) -> None:
    """Route structlog and stdlib logging to stderr (and the rotated file when configured).
    ``fields`` are carried by every event of this process, on any thread (a serving worker's
    index, so that its lines are told from its control process's in one journal)."""
    stream = stream or sys.stderr
    journal = stderr_is_journal(stream, environ)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        *([_with_fields(fields)] if fields else []),
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    text_format = settings.format_string
    if journal:
        renderer: Any = _JournalRenderer()
    elif text_format is not None:
        renderer = _TextRenderer()
    elif settings.format == "console" or (settings.format == "auto" and stream.isatty()):
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()

    handler: logging.Handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=shared, fmt=None if journal else text_format,
    ))
    handlers = [handler]
    if settings.file is not None:
        settings.file.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            settings.file,
            maxBytes=settings.rotation.max_size,
            backupCount=settings.rotation.backup_count,
            encoding="utf-8",
        )
        # the file is JSON lines unless a format string asks for text
        rotating.setFormatter(structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                (structlog.processors.JSONRenderer() if text_format is None
                 else _TextRenderer()),
            ],
            foreign_pre_chain=shared, fmt=text_format,
        ))
        handlers.append(rotating)

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for new in handlers:
        root.addHandler(new)
    root.setLevel(settings.level)
    for noisy in ("apscheduler", "watchdog", "uvicorn.access", "httpx", "httpcore", "mcp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
