"""Issue 19, findings 7 and 11: one odd folder never stops imports. Each hazard is judged on its
own at a bounded cost and rejected with its reason while a good folder beside it imports; a
folder renamed or deleted mid-copy is ``incomplete``; a rejection records the version that
metadata.json names. Real files, FIFOs and sparse files in ``tmp_path``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs
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
    FileSystemEventHandler,
)

from modeld.core.events import ModelImported, ModelSwapped
from modeld.core.manager import ModelManager, describe_folder
from modeld.core.source import MAX_FOLDER_ENTRIES, scan_models_folder
from modeld.core.store import FileDigest, ModelStore
from modeld.daemon.jobs.alerting import Alert, Alerter
from modeld.daemon.jobs.watch import IMPORT_SWITCH_INTERVAL, PollWorker, SwitchInterval, _Hint
from tests.helpers import artifact_files, metadata, write_in_place
from tests.test_alerting import (
    WebhookReceiver,
    fast_settings,
    receiver,  # noqa: F401 (a fixture)
)
from tests.test_api import build_runtime
from tests.test_core import Clock, created, drop, make_manager

GIB = 1024**3


def _odd_name(models: Path) -> Path:
    folder = Path(os.fsdecode(bytes(models) + b"/caf\xe9-latin1"))
    drop_files(folder, artifact_files("v-latin1", created_at=created(2)))
    return folder


def _odd_file_name(models: Path) -> Path:
    folder = models / "odd-file"
    drop_files(folder, artifact_files("v-oddfile", created_at=created(2)))
    (Path(os.fsdecode(bytes(folder) + b"/notes-\xff.txt"))).write_bytes(b"notes")
    return folder


def _deep_metadata(models: Path) -> Path:
    folder = models / "deep"
    files = artifact_files("v-deep", created_at=created(2))
    files["metadata.json"] = b"[" * 100_000 + b"]" * 100_000
    drop_files(folder, files)
    return folder


def _fifo_metadata(models: Path) -> Path:
    folder = models / "fifo"
    files = artifact_files("v-fifo", created_at=created(2))
    del files["metadata.json"]
    drop_files(folder, files)
    os.mkfifo(folder / "metadata.json")
    return folder


def _sparse_with_manifest(models: Path) -> Path:
    # a 10 GiB sparse model whose manifest matches its size: before, the readiness check
    # hashed all 10 GiB on the poll thread before any size limit was consulted
    folder = models / "sparse"
    meta = metadata("v-sparse", created_at=created(2),
                    files={"model.joblib": {"size": 10 * GIB, "sha256": "0" * 64}})
    drop_files(folder, {"metadata.json": json.dumps(meta).encode()})
    with (folder / "model.joblib").open("wb") as fh:
        fh.truncate(10 * GIB)
    return folder


def _many_files(models: Path) -> Path:
    folder = models / "many"
    drop_files(folder, artifact_files("v-many", created_at=created(2)))
    for i in range(MAX_FOLDER_ENTRIES):
        (folder / f"part-{i:05d}.txt").write_bytes(b"x")
    return folder


def drop_files(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)


HAZARDS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "folder name not UTF-8": (_odd_name, "the folder name is not valid UTF-8"),
    "file name not UTF-8": (_odd_file_name, "is not valid UTF-8"),
    "metadata.json nested 100k deep": (_deep_metadata, "metadata.json is nested too deeply"),
    "FIFO named metadata.json": (_fifo_metadata, "metadata.json is a special file"),
    "10 GiB sparse file": (_sparse_with_manifest, "security.max_artifact_bytes"),
    "more files than an artifact has": (_many_files, f"more than {MAX_FOLDER_ENTRIES}"),
}


def _release_fifos(models: Path) -> None:
    """Open every FIFO's write end, so a reader blocked in open() returns (before the fix)."""
    for path in models.rglob("*"):
        if path.is_fifo():
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def _polls(manager: ModelManager, clock: Clock) -> list[str]:
    """Two scans (the second after the settle time); what each did, or how it failed."""
    done: list[str] = []

    def run() -> None:
        try:
            for _ in range(2):
                result = manager.poll_once()
                done.append(",".join(f"{o.status}:{o.version}" for o in result.outcomes))
                clock.advance(5)
            for folder in scan_models_folder(manager.models_dir):  # what the API lists
                describe_folder(folder)
            done.append("listed")
        except Exception as exc:
            done.append(f"raised {exc!r}")

    worker = threading.Thread(target=run, name="modeld-test-poll")
    worker.start()
    worker.join(60)  # a hang guard, not a timing assertion: before the fix a FIFO blocked here
    if worker.is_alive():
        _release_fifos(manager.models_dir)
        worker.join(10)
        pytest.fail(f"a scan blocked: {done}")
    return done


@pytest.mark.parametrize("hazard", list(HAZARDS))
def test_an_odd_folder_is_rejected_with_its_reason_and_the_good_one_imports(
        tmp_path: Path, hazard: str) -> None:
    clock = Clock(datetime.now(UTC))  # the files' mtimes are real: so is the settle clock
    manager = make_manager(tmp_path, clock=clock)
    write, reason = HAZARDS[hazard]
    odd = write(manager.models_dir)
    drop(manager, "good", artifact_files("v-good", created_at=created(1)))

    done = _polls(manager, clock)

    assert not any(d.startswith("raised") for d in done), done
    assert manager.slot.state.deployed is not None
    assert manager.slot.state.deployed.version == "v-good"
    rows = {Path(t.source_path).name: t for t in manager.registry.transfers()}
    odd_name = os.fsencode(odd.name).decode("utf-8", "backslashreplace")
    assert rows[odd_name].status == "rejected", rows
    assert reason in rows[odd_name].detail
    manager.registry.close()


class _ProducerMovesAfterFirstFile(ModelStore):
    """A store whose first copied file is the moment the producer moves the folder away."""

    def __init__(self, directory: Path, move: Callable[[Path], object]) -> None:
        super().__init__(directory)
        self.move = move
        self.moved = False

    def _copy_file(self, src: Path, dst: Path) -> FileDigest:
        digest = super()._copy_file(src, dst)
        if not self.moved:
            self.moved = True
            self.move(src.parent)
        return digest


def test_a_folder_renamed_or_deleted_mid_copy_is_incomplete_not_an_error(tmp_path: Path) -> None:
    # Before: status "failed" and a staging_failed error (FileNotFoundError from the stat of
    # the next file), as if the daemon's own disk had failed.
    moves: list[Callable[[Path], object]] = [
        lambda folder: folder.rename(folder.with_name(folder.name + "-moved")),
        shutil.rmtree,
    ]
    for i, move in enumerate(moves):
        root = tmp_path / str(i)
        root.mkdir()
        manager = make_manager(root)
        drop(manager, "v1", artifact_files("v1", created_at=created(1)))
        manager.store = _ProducerMovesAfterFirstFile(root / "store", move)
        with capture_logs() as logs:
            outcome = manager.poll_once().outcomes[0]
        assert outcome.status == "incomplete", outcome
        assert not [e for e in logs if e["log_level"] == "error"], logs
        manager.registry.close()


def test_a_rejection_before_validation_records_the_version_metadata_names(
        tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    folder = drop(manager, "linked", artifact_files("v-linked", created_at=created(1)))
    (folder / "extra.bin").symlink_to("/etc/hostname")
    outcome = manager.poll_once().outcomes[0]
    assert outcome.status == "rejected" and outcome.version == "v-linked"
    row = manager.registry.get_version("v-linked")
    assert row is not None and row.status == "rejected" and "symbolic link" in row.reason
    manager.registry.close()


def test_a_scan_that_keeps_failing_is_alerted_once_per_streak(
        tmp_path: Path, receiver: WebhookReceiver) -> None:  # noqa: F811
    # Before: scan_failed was only a log line, every 5 s, for ever.
    runtime = build_runtime(tmp_path)
    runtime.alerter = Alerter(fast_settings(webhook_url=receiver.url))
    runtime.alerter.start()
    models = runtime.manager.models_dir
    models.rmdir()
    models.symlink_to(models)  # a symlink loop: every scan fails with ELOOP
    worker = PollWorker(runtime.manager, force_polling=True, polling_interval=0.1,
                        on_failure=lambda reason: runtime.alerter.send(Alert(
                            kind="scan_failed", title="scan failed", detail=reason)))
    worker.start()
    try:
        assert receiver.wait_for_bodies(1)
        for _ in range(3):
            worker.request()  # three more failing scans: the same streak
        assert not receiver.wait_for_bodies(2, timeout=1.0)
    finally:
        worker.stop(5)
        runtime.alerter.stop(2)
        runtime.close()
    alert = receiver.bodies[0]
    assert alert["kind"] == "scan_failed" and "Too many levels of symbolic links" in alert["detail"]


def test_a_rename_into_place_asks_for_its_folder_alone(tmp_path: Path) -> None:
    # Before: every file written into a _tmp folder asked for a rescan of the whole models
    # folder, and so did the rename's echoes (the folder's modification, watchdog's moves of
    # each file, the files of a folder renamed in before it was watched reported as created
    # in it): the rename into place waited behind those scans of every folder.
    models = tmp_path / "models"
    asked: list[tuple[str | None, bool]] = []
    hint = _Hint(models, lambda folder, renamed_in: asked.append((folder, renamed_in)))
    for event in (DirCreatedEvent(str(models / "_tmp_v1")),
                  FileModifiedEvent(str(models / "_tmp_v1" / "model.joblib")),
                  FileClosedEvent(str(models / ".v2" / "metadata.json")),
                  DirModifiedEvent(str(models)),
                  FileMovedEvent(str(models / "_tmp_v1" / "model.joblib"),
                                 str(models / "v1" / "model.joblib"), is_synthetic=True)):
        hint.on_any_event(event)
    assert asked == []
    for event in (DirMovedEvent(str(models / "_tmp_v1"), str(models / "v1")),
                  DirMovedEvent("", str(models / "v4")),  # from outside the watched tree
                  FileCreatedEvent(str(models / "v1" / "model.joblib")),  # watchdog's echo
                  FileDeletedEvent(str(models / "v3" / "model.joblib.part")),
                  DirModifiedEvent(str(models / "v3")),
                  DirCreatedEvent(str(models / "v5")),  # written in place
                  FileMovedEvent(str(models / "v5" / "a"), str(models / "v5" / "b"))):
        hint.on_any_event(event)
    # a rename names its folder as renamed in; an event inside one folder names it alone
    assert asked == [("v1", True), ("v4", True), ("v1", False), ("v3", False), ("v3", False),
                     ("v5", False), ("v5", False)]
    asked.clear()
    for event in (DirDeletedEvent(str(models / "v3")),  # gone: the whole folder is looked at
                  DirMovedEvent(str(models / "v5"), ""),  # moved out of the watched tree
                  FileMovedEvent(str(models / "v1" / "a"), str(tmp_path / "elsewhere")),
                  DirModifiedEvent(str(tmp_path))):
        hint.on_any_event(event)
    assert asked == [(None, False)] * 4


def test_the_observer_is_told_of_writes_but_never_of_reads(tmp_path: Path) -> None:
    # The daemon's own reads of an artifact (the scan, the staging copy) made two inotify
    # events a file, opened and closed unwritten, each read, grouped and dispatched by
    # watchdog's threads under the interpreter lock the requests wait for; they are no longer
    # asked of the kernel.
    manager = make_manager(tmp_path)
    drop(manager, "a", artifact_files("v-a"))
    worker = PollWorker(manager, force_polling=False, polling_interval=3600)
    asked: list[str | None] = []
    worker.request = lambda folder=None, renamed_in=False: asked.append(folder)  # type: ignore[method-assign]
    seen: list[str] = []
    observer = worker._start_observer(manager.models_dir)
    try:
        assert type(observer).__name__ == "InotifyObserver"
        recorder = FileSystemEventHandler()
        recorder.on_any_event = lambda event: seen.append(event.event_type)  # type: ignore[method-assign]
        (emitter,) = observer.emitters
        observer.add_handler_for_watch(recorder, emitter.watch)
        for file in sorted((manager.models_dir / "a").iterdir()):
            file.read_bytes()
        (manager.models_dir / "a" / "notes.txt").write_text("written")
        _wait_for(lambda: "closed" in seen, "the write seen")
        assert "opened" not in seen and "closed_no_write" not in seen
        assert set(asked) == {"a"}
    finally:
        observer.stop()
        observer.join(5)
    manager.registry.close()


class _WallClock(Clock):
    def __call__(self) -> datetime:
        return datetime.now(UTC)


def test_a_folder_written_in_place_is_looked_at_again_once_it_settles(tmp_path: Path) -> None:
    # An event inside one folder asks for a scan of that folder alone; when the folder is
    # still changing, that scan must still say when to look again: no other event may come.
    manager = make_manager(tmp_path, clock=_WallClock(), settle=0.3)
    imported: list[str] = []
    manager.listener = lambda event: imported.append(event.version) \
        if isinstance(event, ModelImported) else None
    worker = PollWorker(manager, force_polling=True, polling_interval=3600)  # no polled events
    worker.start()
    try:
        drop(manager, "a", artifact_files("v-a", created_at=created(1)))
        worker.request("a", True)
        _wait_for(lambda: imported == ["v-a"], "v-a imported")  # the whole first scan is over
        write_in_place(manager.models_dir / "b", artifact_files("v-b", created_at=created(2)))
        worker.request("b")  # what the observer asks for a file created in it
        _wait_for(lambda: imported == ["v-a", "v-b"], "v-b imported once it settled")
    finally:
        worker.stop(30)
    manager.registry.close()


def test_an_import_runs_at_the_shorter_switch_interval_and_gives_it_back(
        tmp_path: Path) -> None:
    # The import thread's blocking calls get the interpreter lock back sooner while it runs;
    # the requests' interval is the daemon's again as soon as it is done.
    manager = make_manager(tmp_path)
    during: list[float] = []
    manager.listener = lambda event: during.append(sys.getswitchinterval()) \
        if isinstance(event, ModelImported) else None
    before = sys.getswitchinterval()
    worker = PollWorker(manager, force_polling=True, polling_interval=3600)
    worker.start()
    try:
        drop(manager, "a", artifact_files("v-a", created_at=created(1)))
        worker.request("a", True)
        _wait_for(lambda: len(during) == 1, "v-a imported")
        _wait_for(lambda: sys.getswitchinterval() == before, "the interval given back")
    finally:
        worker.stop(30)
    manager.registry.close()
    assert before != pytest.approx(IMPORT_SWITCH_INTERVAL)  # else nothing here is checked
    assert during == [pytest.approx(IMPORT_SWITCH_INTERVAL)]


def test_overlapping_imports_give_the_interval_back_when_the_last_ends() -> None:
    before = sys.getswitchinterval()
    switch = SwitchInterval(during=before / 4)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, float] = {}

    def first() -> None:
        with switch.running():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with contextlib.suppress(RuntimeError), switch.running():
            second_in.set()
            first_out.wait(10)
            seen["after the first ended"] = sys.getswitchinterval()
            raise RuntimeError("an import that fails")
        seen["after both, one failed"] = sys.getswitchinterval()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == {"after the first ended": pytest.approx(before / 4),
                    "after both, one failed": pytest.approx(before)}


def test_a_scan_of_the_folders_renamed_in_reads_no_other(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    drop(manager, "a-old", artifact_files("v-old", created_at=created(1)))
    drop(manager, "b-new", artifact_files("v-new", created_at=created(2)))
    assert [f.name for f in manager.discover({"b-new"}).ready] == ["b-new"]
    assert [f.name for f in manager.discover().ready] == ["a-old", "b-new"]  # both renamed in
    manager.registry.close()


class _GatedStore(ModelStore):
    """A store whose copy of one file waits until the test lets it finish: the slow artifact
    is a real 64 MiB sparse file, and the gate makes "the normal one is done first" the
    case to check rather than a race against the machine's load."""

    def __init__(self, directory: Path, slow_file: str, gate: threading.Event) -> None:
        super().__init__(directory)
        self.slow_file = slow_file
        self.gate = gate
        self.slow_copies = 0

    def _copy_file(self, src: Path, dst: Path) -> FileDigest:
        if src.name == self.slow_file:
            self.slow_copies += 1
            self.gate.wait(120)  # a hang guard: before the fix the scan thread sat here
        return super()._copy_file(src, dst)


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition with a hang guard (not a timing assertion)."""
    for _ in range(1200):
        if condition():
            return
        threading.Event().wait(0.05)
    pytest.fail(f"never happened: {what}")


def test_a_slow_artifact_does_not_hold_the_next_one_back(tmp_path: Path) -> None:
    # Before: the scan thread staged folders one after the other, in name order: "b-normal"
    # waited for all of "a-slow" to be copied and hashed, and so did every later scan.
    manager = make_manager(tmp_path)
    gate = threading.Event()
    manager.store = _GatedStore(tmp_path / "store", "weights.bin", gate)
    events: list[tuple[str, str]] = []

    def listen(event: object) -> None:
        if isinstance(event, ModelImported):
            events.append(("imported", event.version))
        elif isinstance(event, ModelSwapped):
            events.append(("swapped", event.new))

    manager.listener = listen
    slow = drop(manager, "a-slow", artifact_files("v-slow", created_at=created(1)))
    with (slow / "weights.bin").open("wb") as fh:
        fh.truncate(64 * 1024**2)
    drop(manager, "b-normal", artifact_files("v-normal", created_at=created(2)))
    worker = PollWorker(manager, force_polling=True, polling_interval=0.1)
    worker.start()
    try:
        _wait_for(lambda: ("swapped", "v-normal") in events, "v-normal deployed")
        # a later folder, and more scans, while the slow one is still being copied
        drop_files(manager.models_dir / "c-later",
                   {**artifact_files("v-later", created_at=created(3)), "_SUCCESS": b""})
        worker.request()
        _wait_for(lambda: ("imported", "v-later") in events, "v-later imported")
        assert ("imported", "v-slow") not in events
        gate.set()
        _wait_for(lambda: ("swapped", "v-slow") in events, "v-slow deployed")
    finally:
        gate.set()
        worker.stop(30)
    # v-slow is newer (created_at): it serves, as it would had it been first; v-later is
    # older than what served when it came, so it never did
    assert events == [("imported", "v-normal"), ("swapped", "v-normal"),
                      ("imported", "v-later"), ("imported", "v-slow"), ("swapped", "v-slow")]
    assert manager.slot.state.deployed is not None
    assert manager.slot.state.deployed.version == "v-slow"
    # each folder imported exactly once, though scans ran while the slow one was in flight
    completed = sorted(t.version or "" for t in manager.registry.transfers()
                       if t.status == "completed")
    assert completed == ["v-later", "v-normal", "v-slow"]
    assert manager.store.slow_copies == 1
    manager.registry.close()


def test_a_scan_of_folders_renamed_in_stats_them_and_never_lists_the_models_folder(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    for name in ("v1", "v2", "_tmp_v3"):
        write_in_place(models / name, artifact_files(name))
    (models / "file").write_text("not a folder")
    os.symlink(models / "v1", models / "link")
    listed: list[Path] = []

    def listdir(path: Path) -> list[os.DirEntry[str]]:
        listed.append(path)
        with os.scandir(path) as entries:
            return sorted(entries, key=lambda e: e.name)

    found = scan_models_folder(models, listdir, names={"v2", "_tmp_v3", "file", "link", "gone"})
    assert [f.name for f in found] == ["v2"]
    assert models not in listed and listed == [models / "v2"]
    assert [f.name for f in scan_models_folder(models, listdir)] == ["v1", "v2"]  # the whole
    with pytest.raises(FileNotFoundError):
        scan_models_folder(tmp_path / "missing", listdir, names={"v1"})
