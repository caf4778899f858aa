"""Finding artifacts: a watchdog observer whose events only ask for a rescan, the one
worker thread that runs the scans, and the few threads that import what the scans find.

The scan thread only discovers and dispatches (listings and stats); each ready folder's
staging (copy and hash), checks, validation and commit run on one of ``IMPORT_THREADS``
import threads, so a big or slow artifact holds no other folder back, nor the next scan. A
folder is dispatched once at a time: the scans skip it while its import is under way.

The observer falls back to polling when inotify cannot be used (watch or instance limit,
network filesystem) and says so in the log. A missing models folder is waited for: the worker
keeps rescanning on schedule, and the watch is (re)established once the folder exists, also
after it was deleted and recreated.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
from watchdog.observers.polling import PollingObserver

from modeld.core.manager import ModelManager
from modeld.core.source import ArtifactFolder, is_work_in_progress

log = structlog.get_logger("modeld.watch")

# Imports at once: enough that one slow artifact leaves a thread for the others, few enough
# that staging and validating (a copy and a loaded model each) stay bounded in disk and memory.
IMPORT_THREADS = 2
# After a failed scan or import, the next try.
RETRY_SECONDS = 5.0

# watchdog holds a rename's first half (IN_MOVED_FROM) for this long to pair it with the
# second; when its queue looks at that half before the second is put, it sleeps out the whole
# delay even though the pair arrives at once, and every later event waits behind it. Under
# load that was a quarter of renames into place at 0.5 s, and two of three at 50 ms
# (tests/bench/swap_under_load.py). The kernel queues both halves within one rename(2) and
# watchdog's reader puts them one after the other, so 5 ms pairs them (other watchers wait
# 5-10 ms); and with full events (below) a half left unpaired still arrives as a move, never
# as a create, so a rename into place is known as one either way.
InotifyMoveEventGrouper.delay = 0.005

# The interpreter's switch interval while an import runs: how long a thread that waits for
# the lock lets the one holding it run before asking for it. The daemon's 0.5 ms
# (daemon/process/main.py) keeps the single-record tail low; but each of an import's ~300
# calls that let go of the lock (system calls, SQLite steps) waits up to that long to get it
# back from the busy HTTP thread. At 0.1 ms always, the single-record p99 was worse; at 0.1 ms
# while an import runs, rename to serving p50 107-117 ms against 146-188, and the p99 during
# swaps 2.12-2.36x steady against 1.80-1.89x: the import's lock time, the same, comes in a
# shorter stretch (docs/performance.md, "The switch interval while an import runs").
IMPORT_SWITCH_INTERVAL = 0.0001

# The events asked of the kernel: everything but a file opened and a file closed unwritten.
# Those say nothing of an artifact, and the daemon's own reads of one (the scan, the staging
# copy) made two each, every one read, grouped and dispatched by watchdog's three threads,
# each taking the interpreter lock from the requests being served.
WATCHED_EVENTS = [FileCreatedEvent, DirCreatedEvent, FileModifiedEvent, DirModifiedEvent,
                  FileMovedEvent, DirMovedEvent, FileDeletedEvent, DirDeletedEvent,
                  FileClosedEvent]

NETWORK_FILESYSTEMS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p",
                                 "ceph", "glusterfs", "fuse.gcsfuse", "fuse.s3fs", "afs"})


def filesystem_type(path: Path, mounts: Path = Path("/proc/mounts")) -> str | None:
    """The type of the filesystem holding ``path`` (longest matching mount point)."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    target = str(path.resolve())
    best: tuple[int, str] | None = None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and (
            best is None or len(point) > best[0]
        ):
            best = (len(point), parts[2])
    return None if best is None else best[1]


class _Hint(FileSystemEventHandler):
    def __init__(self, models_dir: Path, request: Callable[[str | None, bool], None]) -> None:
        self._models_dir = str(models_dir)
        self._request = request

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_synthetic:
            return  # watchdog's copy, for each entry, of a folder's own event
        if isinstance(event, DirModifiedEvent) and \
                os.fsdecode(event.src_path) == self._models_dir:
            return  # its entries' own events (created, deleted, moved) say what changed
        paths = [os.fsdecode(event.src_path)]
        if event.dest_path:
            paths.append(os.fsdecode(event.dest_path))
        tops = [self._top(path) for path in paths]
        if all(top is not None and is_work_in_progress(top) for top in tops):
            # inside a producer's folder in progress (``_tmp*``, ``.*``): the scans skip it,
            # and a rescan per file it writes held the rename that follows behind it
            return
        if isinstance(event, DirMovedEvent):
            dest = os.fsdecode(event.dest_path)
            if os.path.dirname(dest) == self._models_dir:
                self._request(os.path.basename(dest), True)
                return
        # One entry's own content changed (a file in it, the folder itself modified): that
        # entry alone is looked at. watchdog reports the files of a folder renamed in before
        # it was watched as created in it, after the rename: each asked for a scan of every
        # folder, which the next rename into place waited behind. An entry deleted or moved
        # away, or anything else, asks for the whole folder.
        entry = tops[0] if len(set(tops)) == 1 else None
        gone = event.event_type in ("deleted", "moved") and \
            os.path.dirname(paths[0]) == self._models_dir
        self._request(None if gone else entry, False)

    def _top(self, path: str) -> str | None:
        """The models folder's entry that ``path`` is, or is inside; None for the models folder
        itself, a path outside it, or no path (the source of a folder renamed in from
        outside the watched tree)."""
        if not path:
            return None
        top = os.path.relpath(path, self._models_dir).split(os.sep, 1)[0]
        return None if top in (os.curdir, os.pardir) else top


class SwitchInterval:
    """The interpreter's switch interval at ``during`` while any import runs (``running()``),
    back to what it was when the last of the overlapping imports ends."""

    def __init__(self, during: float = IMPORT_SWITCH_INTERVAL) -> None:
        self.during = during
        self._lock = threading.Lock()
        self._running = 0
        self._before = sys.getswitchinterval()

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._lock:
            if not self._running:
                self._before = sys.getswitchinterval()
                sys.setswitchinterval(self.during)
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if not self._running:
                    sys.setswitchinterval(self._before)


class PollWorker:
    """The one thread that scans, and the import threads; requests coalesce into the next scan.

    ``request()`` is called from the observer thread, the scheduler, SIGHUP handling and the
    API; it never blocks. A scan or an import that raises is logged, reported to
    ``on_failure`` once per streak of failures (scans and imports each), and retried in 5 s.
    """

    def __init__(
        self,
        manager: ModelManager,
        force_polling: bool,
        polling_interval: float,
        enabled: bool = True,
        on_failure: Callable[[str], object] = lambda _reason: None,
    ) -> None:
        self.manager = manager
        # the daemon's alerting: a scan that keeps failing must reach an operator, not only
        # the log (called once per streak of failures, on the failing thread)
        self.on_failure = on_failure
        self._failing = {"scan": False, "import": False}
        self.enabled = enabled  # integration.auto_import: off means operators import by hand
        self.force_polling = force_polling
        self.polling_interval = polling_interval
        self._wake = threading.Condition()
        self._requested = False
        self._folders: set[str] = set()  # entries to look at, when not the whole folder
        self._moved_in: list[str] = []  # of those, the ones renamed into place
        self._whole = False  # a request for the whole folder
        self._deadline: float | None = None  # the scans' own next look
        self._retry: float | None = None  # an import's: incomplete, or failed
        self._stopping = False
        self._in_flight: set[str] = set()  # folder names dispatched and not done
        self._ready: queue.SimpleQueue[ArtifactFolder | None] = queue.SimpleQueue()
        self._switch = SwitchInterval()
        self._thread = threading.Thread(target=self._run, name="modeld-poll", daemon=True)
        self._importers = [threading.Thread(target=self._import_loop, daemon=True,
                                            name=f"modeld-import-{i}")
                           for i in range(IMPORT_THREADS)]
        self._observer: BaseObserver | None = None
        self._watched: tuple[int, int] | None = None
        self._missing_logged = False

    def start(self) -> None:
        for importer in self._importers:
            importer.start()
        self._thread.start()
        self.request()

    def request(self, folder: str | None = None, renamed_in: bool = False) -> None:
        """Ask for a scan of the whole models folder, or of its entry ``folder`` alone (an
        event in it; its rename into place with ``renamed_in``)."""
        with self._wake:
            self._requested = True
            if folder is None:
                self._whole = True
            else:
                self._folders.add(folder)
                if renamed_in:
                    self._moved_in.append(folder)
            self._wake.notify()

    def alive(self) -> bool:
        observer_ok = self._observer is None or self._observer.is_alive()
        importers_ok = all(i.is_alive() for i in self._importers)
        return self._thread.is_alive() and importers_ok and observer_ok

    def stop(self, timeout: float) -> None:
        """Stop scanning and dispatching; an import under way finishes (its commit is one
        transaction), none queued starts."""
        deadline = time.monotonic() + timeout
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("poll_worker_stop_timed_out", timeout=timeout)
        for _ in self._importers:
            self._ready.put(None)
        for importer in self._importers:
            importer.join(max(0.0, deadline - time.monotonic()))
            if importer.is_alive():
                log.error("import_thread_stop_timed_out", thread=importer.name,
                          timeout=timeout)
        self._unwatch()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._requested and not self._stopping:
                    wake_at = min((t for t in (self._deadline, self._retry) if t is not None),
                                  default=None)
                    timeout = None
                    if wake_at is not None:
                        timeout = max(0.0, wake_at - time.time())
                        if timeout == 0.0:
                            break
                    self._wake.wait(timeout)
                if self._stopping:
                    return
                # a rename into place alone looks at the folders renamed in: one listing, not
                # every folder's (under load each stat waits for the interpreter lock again)
                whole = self._whole or not self._requested  # or the scans' own next look
                self._requested = self._whole = False
                if self._retry is not None and self._retry <= time.time():
                    self._retry = None
                folders, self._folders = self._folders, set()
                moved_in, self._moved_in = self._moved_in, []
            if not self.enabled:
                self._deadline = None
                self._unwatch()
                continue
            for name in moved_in:
                self.manager.note_moved_in(name)
            try:
                self._ensure_watch()
                scan = self.manager.discover(None if whole else folders)
            except Exception as exc:
                self._failed("scan", exc)
                self._deadline = time.time() + RETRY_SECONDS
                continue
            self._failing["scan"] = False
            if whole:  # a look at a few folders says nothing of when to look at the others
                self._deadline = scan.next_check
            elif scan.next_check is not None:  # but when to look at them again (written in place)
                self._deadline = min(self._deadline or scan.next_check, scan.next_check)
            if scan.folder_missing:  # nothing to watch yet: look again soon
                self._deadline = time.time() + self.polling_interval
            with self._wake:
                for folder in scan.ready:
                    if folder.name not in self._in_flight:
                        self._in_flight.add(folder.name)
                        self._ready.put(folder)

    def _import_loop(self) -> None:
        while (folder := self._ready.get()) is not None:
            retry = None
            try:
                if not self._stopping:
                    with self._switch.running():
                        outcome = self.manager.import_ready(folder)
                    with self._wake:
                        self._failing["import"] = False
                    if outcome.status == "incomplete":
                        retry = self.manager.retry_at()
            except Exception as exc:  # the daemon's own disk or database
                self._failed("import", exc, str(folder.path))
                retry = time.time() + RETRY_SECONDS
            finally:
                with self._wake:
                    self._in_flight.discard(folder.name)
                    if retry is not None:
                        self._retry = min(self._retry or retry, retry)
                        self._wake.notify()

    def _failed(self, what: str, exc: Exception, path: str | None = None) -> None:
        where = path or str(self.manager.models_dir)
        log.exception(f"{what}_failed", path=where)
        with self._wake:  # two import threads may fail at once: one alert
            first, self._failing[what] = not self._failing[what], True
        if first:
            self.on_failure(f"{where}: {type(exc).__name__}: {exc}")

    # the observer -------------------------------------------------------------------------

    def _ensure_watch(self) -> None:
        models_dir = self.manager.models_dir
        try:
            st = models_dir.stat()
        except OSError:
            if self._watched is not None:
                log.warning("models_folder_gone", path=str(models_dir))
                self._unwatch()
            elif not self._missing_logged:
                log.warning("models_folder_missing", path=str(models_dir),
                            reason="waiting for the training service to create it")
                self._missing_logged = True
            return
        identity = (st.st_dev, st.st_ino)
        if self._watched == identity and self._observer is not None:
            return
        self._unwatch()
        self._missing_logged = False
        self._observer = self._start_observer(models_dir)
        self._watched = identity

    def _start_observer(self, models_dir: Path) -> BaseObserver:
        handler = _Hint(models_dir, self.request)
        fs_type = filesystem_type(models_dir)
        reason = None
        if self.force_polling:
            reason = "integration.force_polling is set"
        elif fs_type in NETWORK_FILESYSTEMS:
            reason = f"{models_dir} is on a network filesystem ({fs_type})"
        if reason is None:
            # full events: a folder renamed in from outside the watched tree (a producer's
            # temporary folder elsewhere on the filesystem) is a move, which proves it complete
            observer: BaseObserver = InotifyObserver(generate_full_events=True)
            try:
                observer.schedule(handler, str(models_dir), recursive=True,
                                  event_filter=WATCHED_EVENTS)
                observer.start()
                log.info("watching", path=str(models_dir), method=type(observer).__name__)
                return observer
            except OSError as exc:
                reason = f"inotify unavailable: {exc}"
                observer.stop()
        observer = PollingObserver(timeout=self.polling_interval)
        observer.schedule(handler, str(models_dir), recursive=True, event_filter=WATCHED_EVENTS)
        observer.start()
        log.warning("watch_fallback_polling", path=str(models_dir), reason=reason,
                    interval=self.polling_interval)
        return observer

    def _unwatch(self) -> None:
        observer, self._observer, self._watched = self._observer, None, None
        if observer is None:
            return
        observer.stop()
        observer.join(2)
        if observer.is_alive():
            log.error("observer_stop_timed_out")
