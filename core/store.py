"""Store: the daemon's own copy of every imported version.

Layout under ``storage.directory``::

    versions/<version>/   one complete version; its files are as delivered, or, with
                          compression, each gzipped as <name>.gz while the version is not
                          loaded (the recorded checksums stay those of the delivered bytes)
    bundles/<digest>/     a version's servable bundle (core/bundle.py), named by its digest
    staging/<id>/         an import in progress; removed or redone after a crash
                          (<id>.bundle/: the bundle the isolated child is writing)
    trash/<id>/           a version being removed (renamed here first, then deleted)

A copy goes file by file into staging; when it is committed, its files and folder are fsynced
(all at once, with its bundle's), then renamed into ``versions/`` and the parent fsynced: the
store never holds a partial version. Compressing or decompressing a file
writes the other form under a temporary name, fsyncs and renames it, then removes the first: a
crash at any moment leaves each file whole in at least one form.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat as stat_module
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from modeld.core._durable import fsync_all
from modeld.core.errors import ArtifactIncomplete, ArtifactUntrusted
from modeld.core.source import (
    SUCCESS_MARKER,
    is_work_in_progress,
    open_regular,
    sha256_file,
)

COPY_CHUNK = 1 << 20
COMPRESSED_SUFFIX = ".gz"
PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True, slots=True)
class FileDigest:
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class StagedArtifact:
    """A private copy of a candidate folder with the digests computed while copying; made
    durable when it is committed (:meth:`ModelStore.commit`)."""

    path: Path
    source: Path
    files: Mapping[str, FileDigest]

    @property
    def content_digest(self) -> str:
        """One digest over every file but the completion marker: the content's identity."""
        digest = hashlib.sha256()
        for name in sorted(self.files):
            if name != SUCCESS_MARKER:
                digest.update(f"{name}\0{self.files[name].sha256}\n".encode())
        return digest.hexdigest()

    def checksums(self) -> dict[str, dict[str, int | str]]:
        return {n: {"size": d.size, "sha256": d.sha256} for n, d in sorted(self.files.items())}


_Move = tuple[Path, Path, Collection[str]]
"""A written folder, where it goes, and the names of the files in it."""


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ModelStore:
    """The versions folder. Called by the manager under its operation lock; not thread-safe.

    ``stage`` raises ArtifactIncomplete when the source vanishes or changes mid-copy,
    ArtifactUntrusted for symlinks, special files or oversized artifacts, and OSError (disk
    full) after removing its partial staging folder.
    """

    def __init__(
        self,
        directory: Path,
        max_artifact_bytes: int = 2 * 1024**3,
    ) -> None:
        self.directory = directory
        self.versions = directory / "versions"
        self.staging = directory / "staging"
        self.trash = directory / "trash"
        self.bundles = directory / "bundles"
        self.max_artifact_bytes = max_artifact_bytes
        for folder in (self.directory, self.versions, self.staging, self.trash, self.bundles):
            folder.mkdir(parents=True, exist_ok=True)

    def path_of(self, version: str) -> Path:
        return self.versions / version

    def new_bundle_path(self) -> Path:
        """Where a bundle is written before it is committed (not created: the writer does)."""
        return self.staging / f"{uuid.uuid4().hex}.bundle"

    def bundle_path(self, digest: str) -> Path:
        return self.bundles / digest

    def commit_bundle(self, written: Path, digest: str, files: Collection[str]) -> Path:
        """Rename a written bundle (its folder, its digest and the names of its files) into
        ``bundles/<digest>``, durably; the same content already there is kept and ``written``
        removed."""
        self._place(self._bundle_move(written, digest, files))
        return self.bundle_path(digest)

    def _bundle_move(self, written: Path, digest: str, files: Collection[str]) -> list[_Move]:
        target = self.bundle_path(digest)
        if target.is_dir():
            shutil.rmtree(written, ignore_errors=True)
            return []
        return [(written, target, files)]

    def _place(self, moves: Sequence[_Move]) -> None:
        """Rename written folders into place, durably: every file in them and the folders
        themselves are made durable first (one batch, so a journaling filesystem commits
        them together: :func:`~modeld.core._durable.fsync_all` runs a batch at once, without
        the interpreter lock), then the renames, then the folders renamed into (one batch). The
        files are named by the caller, who wrote or read them all: listing a folder again
        takes the interpreter lock again for every entry."""
        if not moves:
            return
        fsync_all([*(written / name for written, _, files in moves for name in files),
                   *(written for written, _, _ in moves)])
        for written, target, _ in moves:
            os.rename(written, target)
        fsync_all(sorted({target.parent for _, target, _ in moves}))

    def remove_bundle(self, digest: str) -> None:
        """Delete ``bundles/<digest>``, as :meth:`remove` does a version; a servable still
        mapping its arrays keeps them until it is dropped."""
        _remove_into(self.bundle_path(digest), self.trash / f"{digest}.bundle")

    def clean_leftovers(self) -> list[str]:
        """Remove staging, trash and partial files left by an interrupted import, removal or
        (de)compression."""
        removed = []
        for parent in (self.staging, self.trash):
            for child in parent.iterdir():
                shutil.rmtree(child, ignore_errors=True)
                removed.append(f"{parent.name}/{child.name}")
        for partial in self.versions.glob(f"*/*{PARTIAL_SUFFIX}"):  # an interrupted (de)compression
            partial.unlink()
            removed.append(f"versions/{partial.parent.name}/{partial.name}")
        return removed

    def stage(self, source: Path) -> StagedArtifact:
        """Copy ``source`` into a fresh staging folder, hashing as it goes."""
        target = self.staging / uuid.uuid4().hex
        target.mkdir()
        try:
            files = self._copy_into(source, target)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return StagedArtifact(target, source, files)

    def _copy_into(self, source: Path, target: Path) -> dict[str, FileDigest]:
        files: dict[str, FileDigest] = {}
        total = 0
        try:
            entries = sorted(os.scandir(source), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ArtifactIncomplete(str(source), "the folder disappeared") from exc
        for entry in entries:
            if is_work_in_progress(entry.name):
                raise ArtifactIncomplete(str(source), f"{entry.name} is still being written")
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError as exc:  # the folder was renamed or deleted mid-copy
                raise ArtifactIncomplete(str(source), f"{entry.name} disappeared") from exc
            if stat_module.S_ISLNK(st.st_mode):
                raise ArtifactUntrusted(str(source), f"{entry.name} is a symbolic link")
            if not stat_module.S_ISREG(st.st_mode):
                raise ArtifactUntrusted(str(source), f"{entry.name} is not a regular file")
            total += st.st_size
            if total > self.max_artifact_bytes:
                raise ArtifactUntrusted(
                    str(source), f"the artifact exceeds {self.max_artifact_bytes} bytes"
                )
            files[entry.name] = self._copy_file(source / entry.name, target / entry.name)
        return files

    def _copy_file(self, src: Path, dst: Path) -> FileDigest:
        digest = hashlib.sha256()
        size = 0
        try:
            fd = open_regular(src)
        except FileNotFoundError as exc:
            raise ArtifactIncomplete(str(src.parent), f"{src.name} disappeared") from exc
        except OSError as exc:
            raise ArtifactUntrusted(str(src.parent), f"{src.name} cannot be opened: {exc}") from exc
        # plain reads and writes on the descriptors: file objects would add an fstat, an ioctl
        # and an lseek each, and every system call waits for the interpreter lock again
        try:
            out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            try:
                while chunk := os.read(fd, COPY_CHUNK):
                    size += len(chunk)
                    if size > self.max_artifact_bytes:
                        raise ArtifactUntrusted(
                            str(src.parent), f"{src.name} exceeds {self.max_artifact_bytes} bytes"
                        )
                    digest.update(chunk)
                    _write_all(out, chunk)
            finally:
                os.close(out)
        finally:
            os.close(fd)
        return FileDigest(size, digest.hexdigest())  # made durable when committed

    def commit(self, staged: StagedArtifact, version: str,
               bundle: tuple[Path, str, Collection[str]] | None = None) -> Path:
        """Rename a validated staging folder into ``versions/<version>``, and the ``bundle``
        written for it (its folder, its digest, its files) as :meth:`commit_bundle` does,
        durably: both reach the disk together."""
        target = self.path_of(version)
        if target.exists():
            # Left by a crash after the rename but before the registry commit: same version
            # name, and the registry knows nothing of it, so the new copy replaces it.
            self.remove(version)
        moves: list[_Move] = [(staged.path, target, tuple(staged.files))]
        if bundle is not None:
            moves += self._bundle_move(*bundle)
        self._place(moves)
        return target

    def discard(self, staged: StagedArtifact) -> None:
        shutil.rmtree(staged.path, ignore_errors=True)

    def files_of(self, *folders: Path) -> dict[str, tuple[str, bytes]]:
        """Every file under ``folders`` (a version's folder; whatever it holds, and any other
        store folder the version needs), as store-relative path -> (sha256, bytes): what a
        fleet's registry ships to the other daemons."""
        out = {}
        for folder in folders:
            for file in sorted(p for p in folder.rglob("*") if p.is_file()):
                data = file.read_bytes()
                name = file.relative_to(self.directory).as_posix()
                out[name] = (hashlib.sha256(data).hexdigest(), data)
        return out

    def missing_folders(self, files: Mapping[str, object]) -> list[str]:
        """The store folders (``versions/<v>``, ``<area>/<name>``) that shipped files belong
        to and this store does not hold yet."""
        folders = sorted({"/".join(name.split("/")[:2]) for name in files})
        return [f for f in folders if not (self.directory / f).is_dir()]

    def materialize(self, files: Mapping[str, tuple[str, bytes]]) -> list[Path]:
        """Write shipped files (store-relative path -> (sha256, bytes)) into the store, each
        missing folder whole through fsynced staging and one rename, like an import; a folder
        the store holds already is left as it is. Raises ArtifactIncomplete when a file's
        bytes do not match its digest or its path leaves its folder (that folder is not
        written then)."""
        written = []
        for folder in self.missing_folders(files):
            target = self.directory / folder
            staging = self.staging / uuid.uuid4().hex
            staging.mkdir(parents=True)
            try:
                for name, (digest, data) in files.items():
                    if not name.startswith(folder + "/"):
                        continue
                    if hashlib.sha256(data).hexdigest() != digest:
                        raise ArtifactIncomplete(folder, f"{name}: the shipped bytes do not "
                                                 f"match their digest {digest[:12]}")
                    file = staging / name.removeprefix(folder + "/")
                    if not file.resolve().is_relative_to(staging.resolve()) or (
                            not target.resolve().is_relative_to(self.directory.resolve())):
                        raise ArtifactIncomplete(folder, f"{name}: outside the store")
                    file.parent.mkdir(parents=True, exist_ok=True)
                    with file.open("wb") as fh:
                        fh.write(data)
                        fh.flush()
                        os.fsync(fh.fileno())
                fsync_path(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staging, target)
                fsync_path(target.parent)
                written.append(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return written

    def remove(self, version: str) -> None:
        """Take a version out of the store (renamed to trash first, so it vanishes at once)."""
        _remove_into(self.path_of(version), self.trash / f"{version}-{uuid.uuid4().hex[:8]}")

    def verify(self, version: str, checksums: Mapping[str, Mapping[str, object]]) -> str | None:
        """None when the stored files match the digests recorded at import, else the problem.

        A compressed file is checked by the digest of its decompressed bytes.
        """
        path = self.path_of(version)
        if not path.is_dir():
            return f"{path} is missing"
        for name, expected in checksums.items():
            file = path / name
            packed = _packed(file)
            try:
                if file.exists() or not packed.exists():
                    actual = sha256_file(file)
                else:
                    actual = _copy_hashed(packed, None)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                return f"{file} cannot be read: {getattr(exc, 'strerror', None) or exc}"
            if actual != expected.get("sha256"):
                return f"{file} does not match the checksum recorded at import"
        return None

    def is_compressed(self, version: str) -> bool:
        """True when any file of ``version`` is stored gzipped."""
        path = self.path_of(version)
        return path.is_dir() and any(p.suffix == COMPRESSED_SUFFIX for p in path.iterdir())

    def compress(self, version: str) -> int:
        """Gzip every file of a stored version that is not yet; returns how many were."""
        path = self.path_of(version)
        done = 0
        for file in sorted(path.iterdir()):
            if file.suffix in (COMPRESSED_SUFFIX, PARTIAL_SUFFIX):
                continue
            packed = _packed(file)
            partial = packed.with_name(packed.name + PARTIAL_SUFFIX)
            with file.open("rb") as fin, partial.open("wb") as raw:
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as fout:
                    while chunk := fin.read(COPY_CHUNK):
                        fout.write(chunk)
                raw.flush()
                os.fsync(raw.fileno())
            os.rename(partial, packed)
            fsync_path(path)
            file.unlink()
            done += 1
        if done:
            fsync_path(path)
        return done

    def decompress(self, version: str,
                   checksums: Mapping[str, Mapping[str, object]]) -> str | None:
        """Restore the delivered bytes of every gzipped file of ``version``, each checked
        against the digest recorded at import; None, or the problem (nothing is replaced
        by bytes that do not match)."""
        path = self.path_of(version)
        if not path.is_dir():
            return f"{path} is missing"
        for packed in sorted(path.glob(f"*{COMPRESSED_SUFFIX}")):
            file = packed.with_suffix("")
            if file.exists():  # a crash after writing it, before removing the packed form
                packed.unlink()
                continue
            partial = file.with_name(file.name + PARTIAL_SUFFIX)
            try:
                digest = _copy_hashed(packed, partial)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                partial.unlink(missing_ok=True)
                return f"{packed} cannot be decompressed: {exc}"
            expected = checksums.get(file.name, {}).get("sha256")
            if digest != expected:
                partial.unlink()
                return f"{packed} does not decompress to the bytes recorded at import"
            os.rename(partial, file)
            fsync_path(path)
            packed.unlink()
        return None


def _remove_into(path: Path, doomed: Path) -> None:
    """Rename ``path`` into the trash (so it vanishes at once, durably), then delete it."""
    if not path.exists():
        return
    os.rename(path, doomed)
    fsync_path(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` (``os.write`` may write part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _packed(file: Path) -> Path:
    return file.with_name(file.name + COMPRESSED_SUFFIX)


def _copy_hashed(packed: Path, target: Path | None) -> str:
    """The sha256 of ``packed``'s decompressed bytes, written (fsynced) to ``target`` if given."""
    digest = hashlib.sha256()
    with gzip.open(packed, "rb") as fin:
        fout = None if target is None else target.open("wb")
        try:
            while chunk := fin.read(COPY_CHUNK):
                digest.update(chunk)
                if fout is not None:
                    fout.write(chunk)
            if fout is not None:
                fout.flush()
                os.fsync(fout.fileno())
        finally:
            if fout is not None:
                fout.close()
    return digest.hexdigest()

