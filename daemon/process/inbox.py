"""Signals for a main loop: the handlers only record them; the loop waits and acts.

A handler must not take a lock (it may interrupt the main thread while that holds it): it
appends to a deque, and Python writes the signal number to a pipe (``set_wakeup_fd``) that
:meth:`SignalInbox.wait` selects on. Other threads may :meth:`wake` the loop the same way.
Used by the daemon's main loop and by a serving worker's.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections import deque
from collections.abc import Iterable
from types import FrameType


class SignalInbox:
    """Built before ``install`` on the main thread; ``wait`` on the main thread only."""

    def __init__(self) -> None:
        self._signals: deque[int] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    def install(self, signums: Iterable[int]) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in signums:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)

    def wake(self) -> None:
        """Make the current (or next) ``wait`` return now (any thread)."""
        with contextlib.suppress(BlockingIOError):  # full: a wake is already pending
            os.write(self._wake_w, b"\0")

    def wait(self, timeout: float) -> set[int]:
        """Wait up to ``timeout`` seconds for a signal or a wake; the signals received since
        the last call (a burst of one signal is one)."""
        if select.select([self._wake_r], [], [], timeout)[0]:
            os.read(self._wake_r, 4096)
        received = set()
        while self._signals:
            received.add(self._signals.popleft())
        return received
