"""Source: finds candidate artifact folders in the training service's ``models/`` folder.

A scan is a pure function of what ``listdir``/``stat`` report and of the clock; filesystem
events only ever say "look again". :class:`SettleTracker` decides when a folder is complete
enough to import: a ``_SUCCESS`` marker, a matching ``files`` manifest or a rename into place
proves it at once; otherwise the folder must have been quiet for ``settle_seconds``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat as stat_module
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modeld.core.errors import ArtifactInvalid

MODEL_FILES = ("model.joblib", "model.skops")
METADATA_FILE = "metadata.json"
SUCCESS_MARKER = "_SUCCESS"
MAX_METADATA_BYTES = 4 * 1024 * 1024
READ_CHUNK = 1 << 20
# An artifact is a handful of files; past this many entries a folder is judged without
# stat-ing each one (a folder of 100k tiny files must not cost a scan seconds, every scan).
MAX_FOLDER_ENTRIES = 1000


def printable(text: str) -> str:
    """``text`` as valid UTF-8: the bytes of a file name that were not (held as surrogate
    escapes) are shown as ``\\xNN``, so the name can be logged and stored."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_utf8(name: str) -> bool:
    return printable(name) == name


def open_regular(path: Path) -> int:
    """A read-only descriptor of ``path`` if it is a regular file; never blocks, never follows
    a symlink. A FIFO named like an artifact's file would block a plain ``open()`` for ever.

    Raises OSError: FileNotFoundError when it is gone, IsADirectoryError/OSError(ELOOP) for
    a folder or symlink, and OSError naming the type for any other special file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat_module.S_ISREG(mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    os.set_blocking(fd, True)
    return fd


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_regular`), but at most ``limit`` + 1,
    so that the caller can tell a file larger than ``limit``. Plain reads on the descriptor: a
    buffered file object would add an fstat, an ioctl and an lseek, and under load every system
    call an import thread makes waits for the interpreter lock again. Raises OSError."""
    fd = open_regular(path)
    try:
        chunks = []
        left = limit + 1
        while left and (chunk := os.read(fd, min(left, READ_CHUNK))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def is_work_in_progress(name: str) -> bool:
    """The contract's names for a producer's work in progress, never to be touched."""
    return name.startswith((".", "_tmp")) or name.endswith((".tmp", ".part"))


@dataclass(frozen=True, slots=True)
class FileState:
    """One regular file of a candidate folder as ``stat`` saw it."""

    name: str
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class ArtifactFolder:
    """A candidate folder found on disk; ``fingerprint`` changes whenever any file does."""

    path: Path
    files: tuple[FileState, ...]
    in_progress: bool
    odd_entries: tuple[str, ...] = ()
    problem: str | None = None

    @property
    def name(self) -> str:
        """The folder's name as the registry and the log know it (always valid UTF-8)."""
        return printable(self.path.name)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for f in self.files:
            digest.update(f"{f.name}\0{f.size}\0{f.mtime_ns}\n".encode())
        for name in self.odd_entries:
            digest.update(f"odd:{name}\n".encode())
        if self.problem is not None:
            digest.update(f"problem:{self.problem}\n".encode())
        return digest.hexdigest()[:32]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.files)

    @property
    def newest_mtime(self) -> float:
        return max((f.mtime_ns for f in self.files), default=0) / 1e9

    @property
    def has_required_files(self) -> bool:
        return METADATA_FILE in self.names and any(m in self.names for m in MODEL_FILES)

    @property
    def has_marker(self) -> bool:
        return SUCCESS_MARKER in self.names


def list_entries(path: Path) -> list[os.DirEntry[str]]:
    """The entries of one folder, sorted by name (the default filesystem edge)."""
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


ListDir = Callable[[Path], list[os.DirEntry[str]]]


def scan_models_folder(models_dir: Path, listdir: ListDir = list_entries,
                       names: Collection[str] | None = None) -> list[ArtifactFolder]:
    """Every candidate folder directly under ``models_dir`` (those of ``names`` only, when
    given: a stat each, not a listing of the models folder, which takes the interpreter lock
    again for every entry and grows with every version the producer leaves there), skipping
    work in progress.

    Raises FileNotFoundError when ``models_dir`` does not exist (the caller waits for it).
    Folders that vanish mid-scan are skipped: the next scan sees the new truth.
    """
    if names is None:
        candidates = [Path(entry.path) for entry in listdir(models_dir)
                      if not is_work_in_progress(entry.name)
                      and entry.is_dir(follow_symlinks=False)]
    else:
        os.stat(models_dir)  # missing: FileNotFoundError, as a listing would raise
        candidates = [models_dir / name for name in sorted(names)
                      if not is_work_in_progress(name) and _is_folder(models_dir / name)]
    found = []
    for path in candidates:
        try:
            found.append(inspect_folder(path, listdir))
        except FileNotFoundError:
            continue
        except OSError as exc:  # unreadable: judged (and rejected) with the reason
            found.append(ArtifactFolder(path, (), False,
                                        problem=f"cannot read the folder: {exc.strerror}"))
    return found


def _is_folder(path: Path) -> bool:
    """Whether ``path`` is a folder itself (not a symlink to one); False when it is gone."""
    try:
        return stat_module.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def inspect_folder(path: Path, listdir: ListDir = list_entries) -> ArtifactFolder:
    """Stat every entry of one candidate folder (not following symlinks).

    A name that is not valid UTF-8, a special file, or more than ``MAX_FOLDER_ENTRIES``
    entries is the folder's ``problem``: it is rejected with that reason, at the cost of one listing.
    """
    entries = listdir(path)
    if not is_utf8(path.name):
        return ArtifactFolder(path, (), False, problem="the folder name is not valid UTF-8")
    if len(entries) > MAX_FOLDER_ENTRIES:
        return ArtifactFolder(path, (), False, problem=f"the folder holds {len(entries)} "
                              f"entries, more than {MAX_FOLDER_ENTRIES}")
    files = []
    odd = []
    in_progress = False
    for entry in entries:
        if not is_utf8(entry.name):
            return ArtifactFolder(path, (), False, problem=f"the file name "
                                  f"{printable(entry.name)!r} is not valid UTF-8")
        if is_work_in_progress(entry.name):
            in_progress = True
            continue
        st = entry.stat(follow_symlinks=False)
        if stat_module.S_ISREG(st.st_mode):
            files.append(FileState(entry.name, st.st_size, st.st_mtime_ns))
        elif stat_module.S_ISDIR(st.st_mode) or stat_module.S_ISLNK(st.st_mode):
            odd.append(entry.name)  # judged when staging (a symlink is never followed)
        else:  # a FIFO, socket or device: no artifact holds one, and opening it may block
            return ArtifactFolder(path, (), False, problem=f"{entry.name} is a special file "
                                  "(FIFO, socket or device), not a regular file")
    return ArtifactFolder(path, tuple(files), in_progress, tuple(odd))


def read_metadata(folder: Path) -> dict[str, Any]:
    """Read and decode metadata.json; raises ArtifactInvalid naming what is wrong."""
    try:
        raw = read_regular(folder / METADATA_FILE, MAX_METADATA_BYTES)
    except OSError as exc:
        raise ArtifactInvalid(str(folder), f"cannot read metadata.json: {exc.strerror}") from exc
    if len(raw) > MAX_METADATA_BYTES:
        raise ArtifactInvalid(
            str(folder), f"metadata.json is larger than {MAX_METADATA_BYTES} bytes"
        )
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ArtifactInvalid(str(folder), f"metadata.json is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ArtifactInvalid(str(folder), "metadata.json is nested too deeply") from exc
    if not isinstance(data, dict):
        raise ArtifactInvalid(str(folder), "metadata.json must hold a JSON object")
    return data


def read_manifest(folder: Path) -> Mapping[str, Mapping[str, object]] | None:
    """The ``files`` manifest of a folder's metadata.json, or None when absent or unreadable."""
    try:
        return manifest_in(read_metadata(folder))
    except ArtifactInvalid:
        return None


def manifest_in(metadata: Mapping[str, Any]) -> Mapping[str, Mapping[str, object]] | None:
    """The ``files`` manifest of a decoded metadata.json, or None when it has none."""
    files = metadata.get("files")
    return files if isinstance(files, dict) and files else None


def manifest_sizes_match(manifest: Mapping[str, Mapping[str, object]],
                         sizes: Mapping[str, int]) -> bool:
    """Whether every file the manifest lists is there with the size it says: a stat each,
    no byte read. The digests are checked on the staged copy, which is hashed as it is
    copied (core.trust.check_manifest), never here on the scan's thread."""
    for name, entry in manifest.items():
        if not isinstance(entry, Mapping) or name not in sizes:
            return False
        if "size" in entry and entry["size"] != sizes[name]:
            return False
    return True


def sha256_file(path: Path) -> str:
    """The sha256 of the regular file ``path``, read as :func:`read_regular` does."""
    digest = hashlib.sha256()
    fd = open_regular(path)
    try:
        while chunk := os.read(fd, READ_CHUNK):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether a folder may be imported now, and if not, until when to wait."""

    ready: bool
    reason: str
    wait_until: float | None = None


@dataclass(slots=True)
class SettleTracker:
    """Remembers when each folder's fingerprint was first seen, to tell quiet from still changing.

    Called by the scan on one thread at a time; holds no resources. ``moved_in`` records folders
    that a filesystem event reported as renamed into place (completeness proven).
    """

    settle_seconds: float
    _first_seen: dict[str, tuple[str, float]] = field(default_factory=dict)
    _moved_in: set[str] = field(default_factory=set)

    def note_moved_in(self, name: str) -> None:
        self._moved_in.add(name)

    def forget_missing(self, present: Iterable[str]) -> None:
        keep = set(present)
        for name in list(self._first_seen):
            if name not in keep:
                del self._first_seen[name]
        self._moved_in &= keep

    def readiness(self, folder: ArtifactFolder, now: float) -> Readiness:
        """Judge one folder at wall-clock time ``now`` (seconds since the epoch)."""
        seen = self._first_seen.get(folder.name)
        if seen is None or seen[0] != folder.fingerprint:
            seen = (folder.fingerprint, now)
            self._first_seen[folder.name] = seen
        if folder.problem is not None:
            return Readiness(True, folder.problem)
        if folder.in_progress:
            return Readiness(False, "the folder holds work in progress (.tmp/.part/dot files)")
        # A marker or a rename proves the producer is done, even with files missing: then
        # the import rejects it with the reason rather than waiting for ever.
        if folder.has_marker:
            return Readiness(True, "_SUCCESS marker present")
        if folder.name in self._moved_in:
            return Readiness(True, "renamed into place")
        if not folder.has_required_files:
            return Readiness(False, "metadata.json or model file not there yet")
        manifest = read_manifest(folder.path)
        if manifest is not None and manifest_sizes_match(
                manifest, {f.name: f.size for f in folder.files}):
            return Readiness(True, "files manifest sizes match")
        quiet_since = max(seen[1], folder.newest_mtime)
        settled_at = quiet_since + self.settle_seconds
        if now >= settled_at:
            return Readiness(True, f"quiet for {self.settle_seconds:g} s")
        return Readiness(False, "still changing", wait_until=settled_at)
