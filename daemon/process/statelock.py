"""One daemon per state directory: an exclusive ``flock`` on ``storage.directory/modeld.lock``.

Taken by the main thread at startup before the registry is opened, and held for the life of
the process: the kernel releases it when the process ends, however it ends (no stale lock
after a SIGKILL). A second ``modeld run`` on the same directory raises StateDirectoryLocked
naming the pid that holds it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from modeld.core.errors import StateDirectoryLocked

__all__ = ["LOCK_FILE", "hold_state_lock"]

LOCK_FILE = "modeld.lock"


def hold_state_lock(directory: Path) -> int:
    """Lock ``directory`` for this process; returns the descriptor (close it to release)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        raise StateDirectoryLocked(str(directory.resolve()),
                                   f"pid {holder}" if holder else "a process") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
