"""The manager: turns found folders into imported versions and decides what is deployed.

It ties source -> validate -> store -> registry -> serving together. Every operation that
changes the registry or the serving slot (an import, a deploy, a rollback, a fallback, a
retention pass) runs under one operation lock, so the registry and the slot always agree and
the deployment history shows every change in order. Decisions are pure functions of a registry
snapshot (:func:`next_deployment`, :func:`rollback_target`); the manager carries them out.

Imports of different folders may finish in any order (the daemon stages them on a small pool
so that a slow one holds no other back); the decisions do not depend on it: "newer" is by
created_at, then by version for equal created_at, so the same folders lead to the same
deployed version and candidate whichever import finishes first.

Called from the daemon's poll worker, its import threads, its HTTP handlers and its
scheduler jobs. It never
raises for a bad artifact (that is an outcome); it raises ModeldError subclasses for refused
operator requests and lets database errors (DATABASE_ERRORS) and OSError through for
failures of the daemon's own disk and registry.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import structlog

from modeld.core.bundle import Bundle, read_bundle, servable_from_bundle
from modeld.core.dialect import DATABASE_ERRORS
from modeld.core.errors import (
    ArtifactError,
    ArtifactIncomplete,
    ArtifactInvalid,
    ArtifactUntrusted,
    EstimatorUnbundled,
    ModelLoadFailed,
    NotTheImporter,
    PathOutsideModels,
    UnknownVersion,
    VersionConflict,
)
from modeld.core.events import (
    CandidateDiscarded,
    CandidateHeld,
    CandidateNominated,
    CandidatePromoted,
    DeployedVersionUnusable,
    FallbackUsed,
    ImportConflict,
    ImportRejected,
    Listener,
    ManagerEvent,
    ModelImported,
    ModelSwapped,
    ModelUnhealthy,
    StagingFailed,
    SwapFailed,
    emit,
)
from modeld.core.loader import DEFAULT_LOADER, ModelLoader, ServableModel, load_servable
from modeld.core.registry import (
    ROLLBACK_REASON,
    Actor,
    BundleRow,
    DeploymentRow,
    FolderRow,
    Registry,
    VersionRow,
)
from modeld.core.serving import ServingSlot
from modeld.core.source import (
    ArtifactFolder,
    SettleTracker,
    inspect_folder,
    is_work_in_progress,
    manifest_in,
    printable,
    read_metadata,
    scan_models_folder,
)
from modeld.core.store import ModelStore, StagedArtifact
from modeld.core.trust import check_manifest, verify_signature
from modeld.core.validate import (
    ArtifactMetadata,
    Validation,
    ValidationPolicy,
    bundle_folder,
    parse_metadata,
    parse_timestamp,
    validate_folder,
)

log = structlog.get_logger("modeld.manager")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


DeployPolicy = Literal["immediate", "shadow", "manual"]


@dataclass(frozen=True, slots=True)
class DeploymentPolicy:
    """What auto-deployment may do (``integration.auto_deploy``, ``integration.deploy_policy``).

    ``deploy_policy``: ``immediate`` deploys a newer valid version at once; ``shadow`` and
    ``manual`` make it the candidate beside the deployed version instead (under ``shadow`` the
    promotion gate may promote it, under ``manual`` only an operator).
    """

    auto_deploy: bool = True
    deploy_policy: DeployPolicy = "immediate"


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """What an artifact must prove before any of its files is unpickled (``security``)."""

    require_manifest: bool = False
    verify_key: Path | None = None


@dataclass(frozen=True, slots=True)
class ManagerPolicy:
    """Everything a reload may change about imports and deployments, as one value.

    The daemon builds it from its settings; a reload swaps it with
    :meth:`ModelManager.set_policy` in one step, as the serving slot swaps its state. An
    import reads it once when it starts and finishes on that policy.
    """

    validation: ValidationPolicy = field(default_factory=ValidationPolicy)
    deployment: DeploymentPolicy = field(default_factory=DeploymentPolicy)
    settle_seconds: float = 2.0
    loader: ModelLoader = DEFAULT_LOADER
    trust: TrustPolicy = field(default_factory=TrustPolicy)
    # integration.validate_imports: the quality gate of automatic imports, and of requested
    # ones that do not say
    validate_imports: bool = True
    # storage.compression: versions that are not loaded are kept gzipped (see compact())
    compress_stored: bool = False
    # security.allow_unbundled_estimators: a model without a bundle form may be unpickled in
    # this process to serve it (logged unbundled_estimator_served)
    allow_unbundled: bool = False


class FirstLoad(Protocol):
    """Runs the Loader stage (``core/loader.py``) on an artifact once somewhere safe and writes
    its servable bundle (``core/bundle.py``) to ``out`` (the daemon: a limited child process,
    ``daemon/jobs/sandbox.py``): the manager itself then reads only the bundle. ``digests`` are
    the sha256 of each file of ``folder``, which must not change.

    Called on the import thread without the lock (a staged artifact), and under the lock for a
    stored version that has no bundle yet. Raises ArtifactInvalid, ArtifactUntrusted or
    ModelLoadFailed with the reason. Without one (None) the manager bundles in its own process
    (:func:`~core.validate.bundle_folder`).
    """

    def __call__(self, folder: Path, digests: Mapping[str, str], out: Path) -> None: ...


@dataclass(frozen=True, slots=True)
class Decision:
    """What a policy function asks the manager to do: deploy ``version``, or nominate it as
    the candidate."""

    version: str
    reason: str
    actor: Actor
    action: Literal["deploy", "nominate"] = "deploy"


@dataclass(frozen=True, slots=True)
class RegistrySnapshot:
    """The facts a deployment decision depends on. ``history`` is the deployment history,
    newest first; deciding whether an import deploys reads only its rollbacks
    (:attr:`rolled_back_from`), so the manager then gives only those
    (:meth:`Registry.rollbacks`)."""

    deployed: VersionRow | None
    history: tuple[DeploymentRow, ...]
    candidate: VersionRow | None = None

    @property
    def rolled_back_from(self) -> frozenset[str]:
        return frozenset(
            d.from_version for d in self.history
            if d.from_version and (d.actor == "rollback" or d.reason.startswith(ROLLBACK_REASON))
        )


def next_deployment(
    snapshot: RegistrySnapshot, candidate: VersionRow, policy: DeploymentPolicy
) -> Decision | None:
    """Deploy a newly imported version when auto-deploy is on and it is newer than what serves.

    Never a version that an operator rolled back from; never a rejected one. Under the
    ``shadow`` and ``manual`` deploy policies a newer version becomes the candidate instead
    (when it is newer than the candidate too); the first version is deployed, as there is
    nothing to compare it with.
    """
    if not policy.auto_deploy or candidate.status != "available":
        return None
    if candidate.version in snapshot.rolled_back_from:
        return None
    deployed = snapshot.deployed
    if deployed is None:
        return Decision(candidate.version, "first valid version", "auto")
    if deployed.version == candidate.version:
        return None
    if _newness(candidate) <= _newness(deployed):
        return None
    reason = f"newer than {deployed.version} ({candidate.created_at} > {deployed.created_at})"
    if policy.deploy_policy == "immediate":
        return Decision(candidate.version, reason, "auto")
    current = snapshot.candidate
    if current is not None and (current.version == candidate.version
                                or _newness(candidate) <= _newness(current)):
        return None
    return Decision(candidate.version, f"{reason}; {policy.deploy_policy} policy: on trial "
                    "beside the deployed version", "auto", "nominate")


def rollback_target(
    snapshot: RegistrySnapshot, available: Mapping[str, VersionRow]
) -> str | None:
    """The previously deployed version: newest in the history that is not serving now, was
    not rolled back from, and is still available."""
    current = snapshot.deployed.version if snapshot.deployed else None
    skip = snapshot.rolled_back_from | {current}
    for row in snapshot.history:
        for version in (row.to_version, row.from_version):
            if version and version not in skip and version in available:
                return version
    return None


def _created(row: VersionRow) -> datetime:
    return _moment(row.created_at)


def _newness(row: VersionRow) -> tuple[datetime, str]:
    """What "newer" compares: created_at, and for equal ones the version, so that which of
    two imports finished first never decides which serves."""
    return _created(row), row.version


def _moment(value: object) -> datetime:
    """A created_at for ordering: unreadable ones sort as the oldest."""
    try:
        return parse_timestamp(value)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    """What became of one candidate folder."""

    path: str
    status: str  # imported | rejected | duplicate | conflict | incomplete | failed
    version: str | None = None
    reason: str = ""
    report: Mapping[str, Any] | None = None
    deployed: bool = False


@dataclass(frozen=True, slots=True)
class Scan:
    """One look at the models folder: the folders to import now, in scan order, the names of
    those still waited for, and when to look again (epoch seconds, by the manager's clock)."""

    ready: tuple[ArtifactFolder, ...] = ()
    pending: tuple[str, ...] = ()
    next_check: float | None = None
    folder_missing: bool = False


@dataclass(frozen=True, slots=True)
class PollResult:
    """One scan of the models folder and the imports it led to."""

    outcomes: tuple[ImportOutcome, ...] = ()
    pending: tuple[str, ...] = ()
    next_check: float | None = None


@dataclass(slots=True)
class _Stages:
    """Where one import's time goes, stage by stage (``ModelImported.stages_ms``)."""

    started: float = field(default_factory=time.perf_counter)
    last: float = field(init=False)
    ms: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.last = self.started

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self.ms[stage] = round((now - self.last) * 1000, 2)
        self.last = now

    def took_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 2)


@dataclass(slots=True)
class ModelManager:
    """See the module docstring. One instance per daemon process."""

    registry: Registry
    store: ModelStore
    slot: ServingSlot
    models_dir: Path
    policy: ManagerPolicy = field(default_factory=ManagerPolicy)
    first_load: FirstLoad | None = None
    clock: Clock = utc_now
    listener: Listener = lambda _event: None
    lock: threading.RLock = field(default_factory=threading.RLock)
    # False on a fleet's daemon that is not the importer: it imports nothing, decides no
    # automatic deployment and trials no candidate; it follows (:meth:`follow`) what the
    # importer and operators record
    leads: bool = True
    tracker: SettleTracker = field(init=False)

    def __post_init__(self) -> None:
        self.tracker = SettleTracker(self.policy.settle_seconds)

    def set_policy(self, policy: ManagerPolicy) -> None:
        """Swap in a reloaded policy; an import under way finishes on the one it started with."""
        with self.lock:
            self.policy = policy
            self.tracker.settle_seconds = policy.settle_seconds

    def _emit(self, event: ManagerEvent) -> None:
        emit(log, self.listener, event)

    # startup ------------------------------------------------------------------------------

    def start(self) -> None:
        """Recover after any stop: clean staging, drop orphans, serve the registry's version."""
        with self.lock:
            for leftover in self.store.clean_leftovers():
                log.warning("staging_cleaned", path=leftover, reason="left by an interrupted run")
            known = {r.version for r in self.registry.list_versions() if r.status == "available"}
            self._refetch_missing()
            for child in sorted(self.store.versions.iterdir()):
                if child.name not in known:
                    self.store.remove(child.name)
                    log.warning("orphan_version_removed", version=child.name,
                                reason="in the store but not committed to the registry")
            self._remove_unused_bundles()
            self._bundle_missing()
            self._restore()
            if self.leads:
                self._consider_pending()

    def serve_registry(self) -> None:
        """A serving worker's start (the daemon's ``api.workers``): serve the registry's
        deployed version and its fallback from the store its control process keeps, which
        has recovered it (:meth:`start`); nothing is cleaned, removed or bundled here."""
        with self.lock:
            self._restore()

    def _consider_pending(self) -> None:
        """Decide on every imported version no decision was made for (an importer that
        stopped between the import and the decision)."""
        for row in reversed(self.registry.list_versions()):
            if row.status == "available" and not row.considered:
                self._consider(row, None)

    def lead(self) -> None:
        """This daemon became its fleet's importer: finish what the last one left undecided
        and put the fleet's candidate on trial here."""
        with self.lock:
            self.leads = True
            if self.slot.state.candidate is None:
                self._restore_candidate()
            self._consider_pending()

    def resign(self) -> None:
        """This daemon stopped being its fleet's importer (its registry session was lost):
        it imports and decides nothing more, and its candidate's trial stops here."""
        with self.lock:
            self.leads = False
            self.slot.set_candidate(None)

    def follow(self) -> str | None:
        """Serve the version the registry says is deployed, when the slot serves another
        (a deployment recorded by another daemon of the fleet); returns the version served.

        A version that cannot be loaded here is logged and the old one keeps serving: one
        daemon's trouble does not rewrite the fleet's history. Raises one of DATABASE_ERRORS
        when the registry cannot be read.
        """
        with self.lock:
            current = self.slot.state.deployed
            old = None if current is None else current.version
            history = self.registry.deployments(limit=1)
            if not history or history[0].to_version == old:
                return old
            latest = history[0]
            deployed = latest.to_version
            started = time.perf_counter()
            if deployed is None:
                self.slot.set(None, None)
                log.warning("follow_undeployed", old=old, reason=latest.reason)
                return None
            try:
                new = self._load(deployed)
            except (ModelLoadFailed, UnknownVersion) as exc:
                log.error("follow_failed", version=deployed, old=old, reason=str(exc))
                return old
            self.slot.swap(new)
            self._emit(ModelSwapped(old, deployed, cast(Actor, latest.actor),
                                    f"following the registry: {latest.reason}",
                                    round((time.perf_counter() - started) * 1000, 2)))
            return deployed

    def _remove_unused_bundles(self) -> None:
        """Drop bundles no available version uses (a crash between writing one and committing
        its version, or a version removed since)."""
        available = self._available()
        used = set()
        for row in self.registry.bundles():
            if row.version in available:
                used.add(row.digest)
            else:
                self.registry.drop_bundle(row.version)
        for child in self.store.bundles.iterdir():
            if child.name not in used:
                self.store.remove_bundle(child.name)
                log.warning("orphan_bundle_removed", digest=child.name,
                            reason="no available version uses it")

    def _bundle_missing(self) -> None:
        """Bundle, once, every available version stored before bundles existed."""
        for row in self._available().values():
            if self.registry.bundle(row.version) is not None:
                continue
            try:
                self._bundle_stored(row)
            except ModelLoadFailed as exc:
                log.error("bundle_conversion_failed", version=row.version, reason=exc.reason)

    def _bundle_stored(self, row: VersionRow) -> Bundle:
        """Write, commit and record the bundle of a stored version that has none (through the
        first load: the isolated child in the daemon). Raises ModelLoadFailed."""
        version = row.version
        problem = self._unpacked(row) or self.store.verify(version, row.checksums)
        if problem is not None:
            raise ModelLoadFailed(version, problem)
        folder = self.store.path_of(version)
        digests = {name: str(c["sha256"]) for name, c in row.checksums.items()}
        out = self.store.new_bundle_path()
        policy = self.policy
        try:
            if self.first_load is None:
                bundle_folder(folder, out, policy.loader, policy.validation.warmup_row_count)
            else:
                self.first_load(folder, digests, out)
            written = read_bundle(out, version)
            path = self.store.commit_bundle(out, written.digest, written.files)
        except (ArtifactInvalid, ArtifactUntrusted) as exc:
            raise ModelLoadFailed(version, f"cannot be bundled: {exc.reason}") from exc
        finally:
            shutil.rmtree(out, ignore_errors=True)
        now = iso(self.clock())
        with self.registry.transaction():
            self.registry.put_bundle(BundleRow(version, written.digest, written.size, now))
            if self.registry.shared:
                self.registry.put_files(version, self.store.files_of(folder, path))
            self.registry.add_event("bundle_converted", version, now,
                                    {"digest": written.digest, "size": written.size})
        log.info("bundle_converted", version=version, digest=written.digest, size=written.size)
        return replace(written, path=path)  # its files, hashed above, renamed: not again

    def _bundle_of(self, row: VersionRow) -> Bundle:
        """The version's recorded bundle, checked against its digest (written now when it has
        none). Raises ModelLoadFailed (BundleInvalid when it is damaged)."""
        recorded = self.registry.bundle(row.version)
        if recorded is None:
            return self._bundle_stored(row)
        return read_bundle(self.store.bundle_path(recorded.digest), row.version,
                           recorded.digest)

    def missing_files(self) -> list[str]:
        """Available versions whose store folder is gone (the daemon's scheduled state check;
        a stat each, no hashing)."""
        return [r.version for r in self.registry.list_versions()
                if r.status == "available" and not self.store.path_of(r.version).is_dir()]

    def _refetch_missing(self) -> None:
        """Copy a version whose stored files are gone back: from a fleet's registry, which
        ships them, else from its training folder when that still holds the same content
        (the same digest as at import)."""
        for version in self.missing_files():
            row = self.registry.get_version(version)
            assert row is not None
            if self.registry.shared:
                problem = self._fetch(version)
                if problem is not None:
                    log.error("version_files_missing", version=version,
                              path=str(self.store.path_of(version)), reason=problem)
                continue
            try:
                staged = self.store.stage(Path(row.source_path))
            except (ArtifactError, OSError) as exc:
                log.error("version_files_missing", version=version,
                          path=str(self.store.path_of(version)),
                          reason=f"not re-imported: {row.source_path}: {exc}")
                continue
            try:
                if staged.content_digest != row.content_digest:
                    log.error("version_files_missing", version=version,
                              path=str(self.store.path_of(version)),
                              reason=f"not re-imported: {row.source_path} changed since import")
                    continue
                self.store.commit(staged, version)
                log.warning("version_files_reimported", version=version,
                            source=row.source_path, reason="its stored files were gone")
            finally:
                self.store.discard(staged)

    def _restore(self) -> None:
        deployed = self.registry.deployed_version()
        if deployed is None:
            return
        try:
            servable = self._load(deployed)
        except ModelLoadFailed as exc:
            if not self.leads:  # a follower's trouble does not rewrite the fleet's history
                log.error("follow_failed", version=deployed, reason=exc.reason)
                return
            self._emit(DeployedVersionUnusable(deployed, exc.reason))
            self.registry.set_status(deployed, "rejected", f"unusable at startup: {exc.reason}")
            self._fall_back(deployed, f"deployed version unusable at startup: {exc.reason}")
            return
        fallback = None
        target = rollback_target(self._snapshot(), self._available())
        if target is not None:
            try:
                fallback = self._load(target)
            except ModelLoadFailed as exc:
                log.warning("fallback_unusable", version=target, reason=exc.reason)
        self.slot.set(servable, fallback)
        log.info("model_restored", version=deployed,
                 fallback=None if fallback is None else fallback.version)
        if self.leads:  # a fleet's candidate is on trial at its importer only
            self._restore_candidate()

    def _restore_candidate(self) -> None:
        row = self.registry.candidate()
        if row is None:
            return
        try:
            self.slot.set_candidate(self._load(row.version))
        except (ModelLoadFailed, UnknownVersion) as exc:
            reason = f"unusable at startup: {exc}"
            self.registry.close_candidate(row.version, "discarded", iso(self.clock()), "startup",
                                          reason, None)
            log.warning("candidate_unusable", version=row.version, reason=reason)
            return
        log.info("candidate_restored", version=row.version, held=row.held)

    def _fall_back(self, bad: str, reason: str) -> None:
        """Serve the newest earlier good version (or nothing) after ``bad`` failed."""
        for row in self.registry.deployments():
            for version in (row.to_version, row.from_version):
                if not version or version == bad or version not in self._available():
                    continue
                try:
                    servable = self._load(version)
                except ModelLoadFailed as exc:
                    self.registry.set_status(version, "rejected", f"unusable: {exc.reason}")
                    continue
                self.registry.record_deployment(bad, version, iso(self.clock()), reason,
                                                "fallback")
                self.slot.set(servable, None)
                log.warning("fallback_deployed", old=bad, new=version, reason=reason)
                return
        self.registry.record_deployment(bad, None, iso(self.clock()), reason, "fallback")
        self.slot.set(None, None)
        log.error("no_good_version", old=bad, reason=reason)

    # finding and importing ---------------------------------------------------------------

    def poll_once(self) -> PollResult:
        """Scan the models folder once and import every folder that is ready, one after the
        other (on a fleet, only the importer does). The daemon's PollWorker runs the same two steps with the imports on its own
        threads (:meth:`discover`, :meth:`import_ready`), so a slow one holds no other back."""
        scan = self.discover()
        outcomes, pending, next_check = [], list(scan.pending), scan.next_check
        for folder in scan.ready:
            outcome = self.import_ready(folder)
            outcomes.append(outcome)
            if outcome.status == "incomplete":
                pending.append(folder.name)
                retry = self.retry_at()
                next_check = min(next_check or retry, retry)
        return PollResult(tuple(outcomes), tuple(pending), next_check)

    def discover(self, names: Collection[str] | None = None) -> Scan:
        """Which folders are ready to import now, in scan order, and which are still waited
        for: listings and stats only, nothing hashed or copied (the scan's cost does not grow
        with the artifacts' size). With ``names`` (folders just renamed into place), only
        those are looked at, and the scan says nothing of the others. Called from one thread
        at a time (the settle tracker). Nothing is ready on a fleet's daemon that is not its
        importer."""
        if not self.leads:
            return Scan()
        try:
            folders = scan_models_folder(self.models_dir, names=names)
        except (FileNotFoundError, NotADirectoryError):
            return Scan(folder_missing=True)
        if names is None:
            self.tracker.forget_missing(f.name for f in folders)
        known = self.registry.folders(None if names is None else [f.name for f in folders])
        ready, pending = [], []
        next_check: float | None = None
        now = self.clock().timestamp()
        for found in folders:
            folder = self._bounded(found)
            record = known.get(folder.name)
            if record is not None and record.fingerprint == folder.fingerprint:
                continue
            readiness = self.tracker.readiness(folder, now)
            if readiness.ready:
                ready.append(folder)
                continue
            pending.append(folder.name)
            if readiness.wait_until is not None:
                next_check = min(next_check or readiness.wait_until, readiness.wait_until)
        return Scan(tuple(ready), tuple(pending), next_check)

    def import_ready(self, folder: ArtifactFolder) -> ImportOutcome:
        """Stage, check, validate and commit one folder that :meth:`discover` found ready.
        Any thread; imports of different folders may run at once (commits and deployment
        decisions are serialised by the lock). Raises OSError or one of DATABASE_ERRORS for the
        daemon's own disk or database (retried); anything else is the folder's rejection."""
        try:
            return self._import_folder(folder, quality_gate=self.policy.validate_imports,
                                       actor="auto")
        except (OSError, *DATABASE_ERRORS):  # type: ignore[misc]
            raise
        except Exception as exc:  # one odd folder must not stop the others
            log.exception("import_crashed", path=str(folder.path), reason=repr(exc))
            return self._reject(folder, f"import failed: {exc!r}")

    def retry_at(self) -> float:
        """When to look again at a folder whose import came back ``incomplete``."""
        return self.clock().timestamp() + max(self.policy.settle_seconds, 0.2)

    def _bounded(self, folder: ArtifactFolder) -> ArtifactFolder:
        """The folder, with its problem when it is too big to hash or copy at all: judged by
        its sizes before any byte is read (a 10 GiB sparse file costs a stat, not a hash)."""
        limit = self.store.max_artifact_bytes
        if folder.problem is None and folder.total_bytes > limit:
            return replace(folder, problem=f"the artifact holds {folder.total_bytes} bytes, "
                           f"more than {limit} (security.max_artifact_bytes)")
        return folder

    def note_moved_in(self, name: str) -> None:
        self.tracker.note_moved_in(name)

    def resolve_import_path(self, path: str) -> Path:
        """An operator's import path, which must be a folder inside the models folder.

        Relative paths are taken from the models folder (or the training service's folder).
        Symlinks are resolved before the check, so none leads out. Nothing is opened before the check passes.
        """
        root = self.models_dir.resolve()
        raw = Path(path)
        # relative: to the models folder, to the training service's folder ("models/<name>"),
        # or an absolute path whose leading "/" a URL join dropped ("import/srv/.../models/x")
        candidates = [raw] if raw.is_absolute() else [root / raw, root.parent / raw, "/" / raw]
        for candidate in candidates:
            try:
                resolved = candidate.resolve()
                inside = resolved.parent == root and resolved.is_dir()
            except (OSError, ValueError):  # NUL bytes, names too long, loops
                inside = False
            if inside and not is_work_in_progress(resolved.name):
                return resolved
        raise PathOutsideModels(path, str(root))

    def import_path(self, path: str, quality_gate: bool | None = None) -> ImportOutcome:
        """Import one folder now (operator request); raises on a refused path or conflict.

        ``quality_gate`` None follows ``validate_imports``.
        """
        if not self.leads:
            importers = [d for d in self.registry.daemons() if d.role == "importer"]
            raise NotTheImporter(importers[0].url if importers else None)
        folder = self._bounded(inspect_folder(self.resolve_import_path(path)))
        gate = self.policy.validate_imports if quality_gate is None else quality_gate
        outcome = self._import_folder(folder, quality_gate=gate, actor="operator")
        if outcome.status == "conflict":
            raise VersionConflict(outcome.version or "?", outcome.reason)
        return outcome

    def latest_folder(self, only_new: bool = False) -> ArtifactFolder | None:
        """The training folder's newest complete-looking artifact by created_at; with
        ``only_new``, the newest not imported yet (the seed plan's import-latest)."""
        skip = ({row["folder"] for row in self.training_models() if row["imported"]}
                if only_new else set())
        best: tuple[datetime, ArtifactFolder] | None = None
        for folder in scan_models_folder(self.models_dir):
            info = describe_folder(folder)
            created = info.get("created_at")
            if (not folder.has_required_files or not isinstance(created, str)
                    or folder.name in skip):
                continue
            try:
                moment = parse_timestamp(created)
            except ValueError:
                continue
            if best is None or moment > best[0]:
                best = (moment, folder)
        return None if best is None else best[1]

    def training_models(self) -> list[dict[str, Any]]:
        """What the training folder holds now, newest first (created_at): each folder's
        metadata, whether it is imported (its version is in the store, or this very content
        was imported), and what was decided about it. Reads only; [] when the folder is
        missing."""
        try:
            folders = scan_models_folder(self.models_dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        known = self.registry.folders()
        stored = {r.version for r in self.registry.list_versions() if r.status != "rejected"}
        rows = []
        for folder in folders:
            record = known.get(folder.name)
            outcome = (record.outcome if record is not None
                       and record.fingerprint == folder.fingerprint else None)
            info = describe_folder(folder)
            rows.append({
                "folder": folder.name,
                "path": str(folder.path),
                **info,
                "imported": outcome in ("imported", "duplicate") or info.get("version") in stored,
                "outcome": outcome or "pending",
                "rejected_reason": record.reason if record is not None
                and outcome in ("rejected", "conflict") else None,
            })
        rows.sort(key=lambda row: _moment(row.get("created_at")), reverse=True)
        return rows

    def _import_folder(
        self, folder: ArtifactFolder, quality_gate: bool, actor: Actor
    ) -> ImportOutcome:
        """Stage, check and validate without the lock; commit and deploy under it."""
        stages = _Stages()
        if folder.problem is not None:
            return self._reject(folder, folder.problem)
        try:
            staged = self.store.stage(folder.path)
        except ArtifactIncomplete as exc:
            return ImportOutcome(str(folder.path), "incomplete", reason=exc.reason)
        except ArtifactUntrusted as exc:
            return self._reject(folder, exc.reason)
        except OSError as exc:
            self._emit(StagingFailed(str(folder.path), str(exc)))
            return ImportOutcome(str(folder.path), "failed", reason=f"staging failed: {exc}")
        stages.done("stage")
        try:
            return self._import_staged(folder, staged, quality_gate, actor, stages)
        finally:
            self.store.discard(staged)

    def _import_staged(
        self,
        folder: ArtifactFolder,
        staged: StagedArtifact,
        quality_gate: bool,
        actor: Actor,
        stages: _Stages,
    ) -> ImportOutcome:
        try:
            after = inspect_folder(folder.path)
        except FileNotFoundError:
            return ImportOutcome(str(folder.path), "incomplete", reason="the folder disappeared")
        if after.fingerprint != folder.fingerprint:
            return ImportOutcome(str(folder.path), "incomplete", reason="changed while copying")
        digests = {name: d.sha256 for name, d in staged.files.items()}
        policy = self.policy  # read once: a reload mid-import does not mix two policies
        out = self.store.new_bundle_path()  # committed with the version, else removed
        try:
            try:
                # Everything here reads the staged copy, which the producer cannot touch: what
                # is checked is what is loaded. Nothing is unpickled before the signature
                # passes, and nothing at all in this process when a first load bundles it.
                # read once, for the manifest here and for validation: the canary is checked
                # below not to have changed any staged file (daemon/jobs/sandbox.py)
                try:
                    metadata: dict[str, Any] | None = read_metadata(staged.path)
                except ArtifactInvalid:
                    metadata = None  # validation reads it again and says what is wrong
                check_manifest(staged.files, None if metadata is None else manifest_in(metadata),
                               policy.trust.require_manifest, str(folder.path))
                if policy.trust.verify_key is not None:
                    verify_signature(staged.path, policy.trust.verify_key, digests)
                stages.done("trust")
                bundle = None
                if self.first_load is not None:
                    self.first_load(staged.path, digests, out)
                    bundle = read_bundle(out, folder.name)
                    stages.done("first_load")
            except (ArtifactUntrusted, ArtifactInvalid, ModelLoadFailed) as exc:
                return self._reject(folder, exc.reason, meta=peek_metadata(staged.path))
            validation = validate_folder(
                staged.path, policy.validation, self.clock(), policy.loader, quality_gate,
                bundle, out, policy.allow_unbundled, metadata,
            )
            stages.done("validate")
            accepted = validation.bundle
            if accepted is not None and accepted.kind is None and validation.metadata:
                log.warning("unbundled_estimator_served", version=validation.metadata.version,
                            model_type=accepted.facts.model_type,
                            reason="security.allow_unbundled_estimators: unpickled here")
            with self.lock:
                return self._commit(folder, staged, validation, actor, stages)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def _commit(
        self,
        folder: ArtifactFolder,
        staged: StagedArtifact,
        validation: Validation,
        actor: Actor,
        stages: _Stages,
    ) -> ImportOutcome:
        meta = validation.metadata
        # One transaction from the check to the record: on a fleet's registry the version's
        # lock makes a second importer wait, then find the version and not import it again.
        with self.registry.transaction():
            if meta is not None:
                self.registry.lock_version(meta.version)
                existing = self.registry.get_version(meta.version)
                if existing is not None and existing.status != "rejected":
                    return self._existing(folder, existing, staged)
            if not validation.report.accepted:
                return self._reject(folder, validation.report.reason, validation)
            assert meta is not None and validation.servable is not None
            bundle = validation.bundle
            assert bundle is not None
            stored = self.store.commit(staged, meta.version,
                                       (bundle.path, bundle.digest, bundle.files))
            bundled = self.store.bundle_path(bundle.digest)
            now = iso(self.clock())
            row = VersionRow(
                version=meta.version, status="available", model_type=meta.model_type,
                quality_score=validation.report.quality_score,
                report=validation.report.to_dict(),
                metadata=with_import_info(meta.raw, now, str(folder.path), actor),
                created_at=iso(meta.created_at), imported_at=now,
                source_path=str(folder.path), store_path=str(stored),
                checksums=staged.checksums(), content_digest=staged.content_digest, reason="",
                considered=False, deployed_at=None,
            )
            self.registry.put_version(row)
            self.registry.put_bundle(BundleRow(meta.version, bundle.digest, bundle.size, now))
            if self.registry.shared:  # what the other daemons of the fleet load it from
                self.registry.put_files(meta.version, self.store.files_of(stored, bundled))
            self.registry.add_transfer(meta.version, str(folder.path), str(stored), now,
                                       "completed")
            self.registry.record_folder(FolderRow(folder.name, folder.fingerprint, "imported",
                                                  meta.version, "", now))
        stages.done("commit")
        self._emit(ModelImported(meta.version, str(folder.path), row.quality_score,
                                 validation.report.warnings, stages.took_ms(), dict(stages.ms)))
        deployed = self._consider(row, validation.servable)
        return ImportOutcome(str(folder.path), "imported", meta.version, "",
                             validation.report.to_dict(), deployed)

    def _existing(
        self, folder: ArtifactFolder, existing: VersionRow, staged: StagedArtifact
    ) -> ImportOutcome:
        now = iso(self.clock())
        if existing.content_digest == staged.content_digest:
            self.registry.record_folder(FolderRow(folder.name, folder.fingerprint, "duplicate",
                                                  existing.version, "already imported", now))
            log.info("import_duplicate", version=existing.version, path=str(folder.path))
            return ImportOutcome(str(folder.path), "duplicate", existing.version,
                                 "already imported with the same content", existing.report)
        reason = (f"version {existing.version} was already imported from "
                  f"{existing.source_path} with different content")
        with self.registry.transaction():
            self.registry.record_folder(FolderRow(folder.name, folder.fingerprint, "conflict",
                                                  existing.version, reason, now))
            self.registry.add_transfer(existing.version, str(folder.path), None, now,
                                       "conflict", reason)
        self._emit(ImportConflict(existing.version, str(folder.path), reason))
        return ImportOutcome(str(folder.path), "conflict", existing.version, reason,
                             existing.report)

    def _reject(
        self,
        folder: ArtifactFolder,
        reason: str,
        validation: Validation | None = None,
        meta: ArtifactMetadata | None = None,
    ) -> ImportOutcome:
        """Record a rejected folder (and its version, when metadata.json names one)."""
        now = iso(self.clock())
        path = printable(str(folder.path))
        if validation is not None:
            report = validation.report.to_dict()
            meta = validation.metadata
            score: float | None = validation.report.quality_score
        else:
            report = {"accepted": False, "reason": reason, "errors": [reason], "warnings": [],
                      "blocking_errors": [reason], "quality_score": None}
            score = None
        if meta is None and validation is None:  # judged before validation read it
            meta = peek_metadata(folder.path)
        version = None if meta is None else meta.version
        existing = None if version is None else self.registry.get_version(version)
        with self.registry.transaction():
            if meta is not None and (existing is None or existing.status == "rejected"):
                self.registry.put_version(VersionRow(
                    version=meta.version, status="rejected", model_type=meta.model_type,
                    quality_score=score, report=report, metadata=dict(meta.raw),
                    created_at=iso(meta.created_at), imported_at=now,
                    source_path=path, store_path=None, checksums={},
                    content_digest=None, reason=reason, considered=True, deployed_at=None,
                ))
            self.registry.add_transfer(version, path, None, now, "rejected", reason)
            self.registry.record_folder(FolderRow(folder.name, folder.fingerprint, "rejected",
                                                  version, reason, now))
        self._emit(ImportRejected(version, path, reason))
        return ImportOutcome(path, "rejected", version, reason, report)

    # deploying ----------------------------------------------------------------------------

    def _snapshot(self, whole_history: bool = True) -> RegistrySnapshot:
        """The registry's facts; with ``whole_history`` false, the history's rollbacks only
        (each row read takes the interpreter lock again, and the history grows with every
        deployment)."""
        history = self.registry.deployments() if whole_history else self.registry.rollbacks()
        deployed = self.registry.deployed_version()
        row = None if deployed is None else self.registry.get_version(deployed)
        nominee = self.registry.candidate()
        candidate = None if nominee is None else self.registry.get_version(nominee.version)
        return RegistrySnapshot(row, tuple(history), candidate)

    def _available(self) -> dict[str, VersionRow]:
        return {r.version: r for r in self.registry.list_versions() if r.status == "available"}

    def _consider(self, row: VersionRow, servable: ServableModel | None) -> bool:
        decision = next_deployment(self._snapshot(whole_history=False), row,
                                   self.policy.deployment)
        deployed = False
        if decision is not None and decision.action == "nominate":
            self._nominate(decision, servable)
        elif decision is not None:
            try:
                self._deploy(decision, servable)
                deployed = True
            except ModelLoadFailed:
                pass  # recorded by _deploy; the old version keeps serving
        self.registry.mark_considered(row.version)
        return deployed

    def _load(self, version: str) -> ServableModel:
        """A servable for ``version``: the one in memory, or loaded from the verified store."""
        state = self.slot.state
        for loaded in (state.deployed, state.fallback, state.candidate):
            if loaded is not None and loaded.version == version:
                return loaded
        row = self.registry.get_version(version)
        if row is None:
            raise UnknownVersion(version)
        problem = (self._fetch(version) or self._unpacked(row)
                   or self.store.verify(version, row.checksums))
        if problem is not None:
            raise ModelLoadFailed(version, problem)
        folder = self.store.path_of(version)
        try:
            meta = parse_metadata(read_metadata(folder), folder)
        except ArtifactInvalid as exc:
            raise ModelLoadFailed(version, exc.reason) from exc
        bundle = self._bundle_of(row)
        try:
            return servable_from_bundle(bundle, meta)
        except EstimatorUnbundled:
            policy = self.policy
            if not policy.allow_unbundled:
                raise
            log.warning("unbundled_estimator_served", version=version,
                        model_type=bundle.facts.model_type,
                        reason="security.allow_unbundled_estimators: unpickled here")
            return load_servable(folder, meta, policy.validation.warmup_row_count,
                                 policy.loader)

    def _fetch(self, version: str) -> str | None:
        """Put what a fleet's registry ships for ``version`` (its store folder, and any other
        store folder it needs) into this daemon's store when it is not there yet, each file
        checked against its digest; None, or the problem. A version the registry holds no
        files for is left to the store."""
        if not self.registry.shared:
            return None
        manifest = self.registry.file_manifest(version)
        if not self.store.missing_folders(manifest):
            return None
        files = {}
        for name, digest in manifest.items():
            data = self.registry.blob(digest)
            if data is None:
                return f"the registry holds no bytes for {name} ({digest[:12]})"
            files[name] = (digest, data)
        try:
            written = self.store.materialize(files)
        except ArtifactIncomplete as exc:
            return exc.reason
        log.info("version_fetched", version=version, path=[str(p) for p in written],
                 files=len(files), reason="shipped through the registry")
        return None

    def _unpacked(self, row: VersionRow) -> str | None:
        """Decompress a compressed stored version (checked against its checksums) so that it
        can be read; None, or the problem."""
        if not self.store.is_compressed(row.version):
            return None
        problem: str | None = self.store.decompress(row.version, row.checksums)
        if problem is None:
            log.info("version_decompressed", version=row.version)
        return problem

    def compact(self) -> list[str]:
        """With ``compress_stored``, gzip every stored version that is not loaded (deployed,
        fallback or candidate); returns the versions compressed. Called by the daemon's scheduler."""
        if not self.policy.compress_stored:
            return []
        with self.lock:
            state = self.slot.state
            loaded = {m.version for m in state.loaded()}
            done = []
            for version in self._available():
                if version in loaded:
                    continue
                started = time.perf_counter()
                if self.store.compress(version):
                    done.append(version)
                    log.info("version_compressed", version=version,
                             took_ms=round((time.perf_counter() - started) * 1000, 2))
            return done

    def _deploy(self, decision: Decision, servable: ServableModel | None = None,
                report: Mapping[str, Any] | None = None) -> str:
        """Load (unless given) and swap in ``decision.version``; a candidate deployed this way
        is promoted, with ``report`` recorded. Raises ModelLoadFailed (recorded)."""
        started = time.perf_counter()
        current = self.slot.state.deployed
        old = None if current is None else current.version
        if old == decision.version:
            return old
        try:
            new = servable if servable is not None else self._load(decision.version)
        except ModelLoadFailed as exc:
            now = iso(self.clock())
            self.registry.add_event("swap_failed", decision.version, now,
                                    {"reason": exc.reason, "actor": decision.actor})
            self._emit(SwapFailed(old, decision.version, exc.reason))
            raise
        nominee = self.registry.candidate()
        promoted = nominee is not None and nominee.version == decision.version
        with self.registry.transaction():  # a promotion is one step: never half-recorded
            self.registry.record_deployment(old, decision.version, iso(self.clock()),
                                            decision.reason, decision.actor)
            if promoted:
                self.registry.close_candidate(decision.version, "promoted", iso(self.clock()),
                                              decision.actor, decision.reason, report)
        if promoted:
            self._emit(CandidatePromoted(decision.version, old, decision.actor,
                                         decision.reason))
        self.slot.swap(new)
        took_ms = round((time.perf_counter() - started) * 1000, 2)
        self._emit(ModelSwapped(old, decision.version, decision.actor, decision.reason,
                                took_ms))
        return decision.version

    def deploy(self, version: str, reason: str = "deployed by an operator",
               actor: Actor = "operator") -> str:
        """Deploy a named version (operator, or an agent: actor "mcp"); raises UnknownVersion,
        VersionConflict or ModelLoadFailed. Returns the version now serving."""
        with self.lock:
            row = self.registry.get_version(version)
            if row is None:
                raise UnknownVersion(version)
            if row.status != "available":
                raise VersionConflict(version, f"is {row.status} and cannot be deployed"
                                      + (f" ({row.reason})" if row.reason else ""))
            return self._deploy(Decision(version, reason, actor))

    def rollback(self, version: str | None = None, actor: Actor = "rollback") -> str:
        """Go back to ``version``, or to the previous deployed version; returns what serves."""
        with self.lock:
            snapshot = self._snapshot()
            if version is None:
                target = rollback_target(snapshot, self._available())
                if target is None:
                    raise VersionConflict(
                        snapshot.deployed.version if snapshot.deployed else "-",
                        "there is no earlier deployed version to roll back to",
                    )
            else:
                row = self.registry.get_version(version)
                if row is None:
                    raise UnknownVersion(version)
                if row.status != "available":
                    raise VersionConflict(version, f"is {row.status} and cannot be deployed")
                target = version
            current = snapshot.deployed.version if snapshot.deployed else None
            return self._deploy(Decision(target, f"{ROLLBACK_REASON}{current}", actor))

    # candidates ---------------------------------------------------------------------------

    def _nominate(self, decision: Decision, servable: ServableModel | None) -> None:
        """Put ``decision.version`` on trial beside the deployed version (registry first)."""
        try:
            new = servable if servable is not None else self._load(decision.version)
        except ModelLoadFailed as exc:
            current = self.slot.state.deployed
            self._emit(SwapFailed(None if current is None else current.version,
                                  decision.version, exc.reason))
            return
        current = self.slot.state.deployed
        champion = None if current is None else current.version
        previous = self.slot.state.candidate
        self.registry.nominate(decision.version, champion, iso(self.clock()), decision.reason)
        self.slot.set_candidate(new)
        self._emit(CandidateNominated(decision.version, champion,
                                      None if previous is None else previous.version,
                                      self.policy.deployment.deploy_policy, decision.reason))

    def _the_candidate(self, version: str | None) -> str:
        row = self.registry.candidate()
        if row is None:
            raise VersionConflict(version or "-", "there is no candidate")
        if version is not None and version != row.version:
            if self.registry.get_version(version) is None:
                raise UnknownVersion(version)
            raise VersionConflict(version, f"is not the candidate (the candidate is "
                                  f"{row.version})")
        return row.version

    def promote(self, version: str | None = None, actor: Actor = "operator",
                reason: str = "promoted by an operator",
                report: Mapping[str, Any] | None = None) -> str:
        """Deploy the candidate (``version``, when given, must be it); returns what serves.

        Called by operators (API, CLI, dashboard) and by the shadow worker when the gate holds
        (actor ``auto``, the gate's summary as the reason, its report recorded). Raises
        VersionConflict when there is no such candidate, ModelLoadFailed (recorded) when it
        cannot serve.
        """
        with self.lock:
            target = self._the_candidate(version)
            loaded = self.slot.state.candidate
            servable = loaded if loaded is not None and loaded.version == target else None
            return self._deploy(Decision(target, reason, actor), servable, report)

    def discard(self, version: str | None = None, reason: str = "discarded by an operator",
                report: Mapping[str, Any] | None = None) -> str:
        """Stop the trial of the candidate; it stays an available version. Returns it."""
        with self.lock:
            target = self._the_candidate(version)
            self.registry.close_candidate(target, "discarded", iso(self.clock()), "operator",
                                          reason, report)
            self.slot.set_candidate(None)
            self._emit(CandidateDiscarded(target, reason))
            return target

    def hold(self, version: str, reason: str, failed: tuple[str, ...]) -> bool:
        """Write down that the gate refused ``version``; it stays the candidate. True the
        first time (the caller alerts then), False when already held or no longer candidate."""
        with self.lock:
            row = self.registry.candidate()
            if row is None or row.version != version or row.held is not None:
                return False
            self.registry.hold_candidate(version, reason)
            self._emit(CandidateHeld(version, ", ".join(failed), reason))
            return True

    def revalidate(self, version: str) -> dict[str, Any]:
        """Re-run validation of a stored version; the new report is recorded and returned."""
        with self.lock:
            row = self.registry.get_version(version)
            if row is None:
                raise UnknownVersion(version)
            if row.store_path is None or row.status != "available":
                raise VersionConflict(version, f"is {row.status}: there are no stored files "
                                      "to validate")
            problem = self._unpacked(row)
            if problem is not None:
                raise ModelLoadFailed(version, problem)
            policy = self.policy
            validation = validate_folder(self.store.path_of(version), policy.validation,
                                         self.clock(), policy.loader, True,
                                         self._bundle_of(row), None, policy.allow_unbundled)
            report = validation.report.to_dict()
            self.registry.set_report(version, report, validation.report.quality_score)
            log.info("model_revalidated", version=version, accepted=validation.report.accepted,
                     quality_score=validation.report.quality_score)
            return report

    def scoring_failed(self, deployed: str, fallback: str | None, reason: str) -> None:
        """The deployed model raised while scoring and the fallback answered (or nobody)."""
        self.registry.add_event("fallback_used", deployed, iso(self.clock()),
                                {"fallback": fallback, "reason": reason})
        self._emit(FallbackUsed(deployed, fallback, reason))

    def check_health(self) -> str | None:
        """Re-score the deployed model's warmup rows; replace it when they differ or fail.

        Called by the daemon's scheduler (``monitoring.model_health_checks``). Returns the
        problem found, or None when the model is healthy (or none is deployed).
        """
        deployed = self.slot.state.deployed
        if deployed is None:
            return None
        problem = deployed.health_check()
        if problem is None:
            return None
        self.replace_unhealthy(deployed.version, problem)
        return problem

    def replace_unhealthy(self, version: str, reason: str) -> str | None:
        """Take an unhealthy deployed model out of service in favour of the fallback."""
        with self.lock:
            state = self.slot.state
            if state.deployed is None or state.deployed.version != version:
                return None
            if state.fallback is not None:
                fallback = state.fallback.version
                self.registry.record_deployment(version, fallback, iso(self.clock()),
                                                f"health check failed: {reason}", "fallback")
                self.slot.set(state.fallback, None)
            else:
                self._fall_back(version, f"health check failed: {reason}")
            serving = self.registry.deployed_version()
            self._emit(ModelUnhealthy(version, reason, serving))
            return serving

    # retention ----------------------------------------------------------------------------

    def retention(self, keep_versions: int, retention_days: float) -> list[str]:
        """Remove stored versions older than ``retention_days`` beyond the newest
        ``keep_versions``; never the deployed or fallback version. On a fleet only the
        importer decides (the others keep their copies until they restart)."""
        if not self.leads:
            return []
        with self.lock:
            state = self.slot.state
            protected = {m.version for m in (state.deployed, state.fallback, state.candidate)
                         if m is not None}
            available = sorted(self._available().values(), key=_created, reverse=True)
            cutoff = self.clock() - timedelta(days=retention_days)
            removed = []
            for row in available[keep_versions:]:
                if row.version in protected or _created(row) >= cutoff:
                    continue
                self.registry.set_status(row.version, "removed",
                                         f"retention: older than {retention_days:g} days")
                self.store.remove(row.version)
                bundle = self.registry.bundle(row.version)
                self.registry.drop_bundle(row.version)
                if bundle is not None and all(b.digest != bundle.digest
                                              for b in self.registry.bundles()):
                    self.store.remove_bundle(bundle.digest)
                removed.append(row.version)
                log.info("version_removed", version=row.version, reason="retention",
                         created_at=row.created_at)
            return removed


def with_import_info(raw: Mapping[str, Any], imported_at: str, original_path: str,
                     actor: Actor) -> dict[str, Any]:
    """metadata.json as the registry keeps it: the seed plan's ``import_info`` added and
    ``deployment_info.status`` set to ``available``. The stored files stay as delivered."""
    deployment = raw.get("deployment_info")
    return {
        **raw,
        "import_info": {"imported_at": imported_at, "original_path": original_path,
                        "imported_by": "system" if actor == "auto" else actor},
        "deployment_info": {**(deployment if isinstance(deployment, dict) else {}),
                            "status": "available"},
    }


def peek_metadata(folder: Path) -> ArtifactMetadata | None:
    """metadata.json read without judging the rest (for rejection records), if it parses."""
    try:
        return parse_metadata(read_metadata(folder), folder)
    except ArtifactInvalid:
        return None


def describe_folder(folder: ArtifactFolder) -> dict[str, Any]:
    """What metadata.json of a training-service folder says, read leniently for listings."""
    try:
        data = read_metadata(folder.path)
    except ArtifactInvalid as exc:  # a listing shows the problem rather than failing
        return {"metadata_error": exc.reason}

    def section(name: str) -> dict[str, Any]:
        value = data.get(name)
        return value if isinstance(value, dict) else {}

    info, training = section("model_info"), section("training_info")
    evaluation = section("evaluation_info")
    return {
        "version": info.get("version"),
        "created_at": info.get("created_at"),
        "model_type": info.get("model_type"),
        "training_samples": training.get("training_samples"),
        "metrics": evaluation.get("basic_metrics"),
    }

