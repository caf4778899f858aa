"""Test-only crash points: ``MODELD_TEST_CRASH_AT=<step>`` SIGKILLs the daemon at one step.

tests/test_crash_safety.py kills the daemon at each step of an import and of a deployment and
checks that a restart loses nothing. The steps sit at the seams the manager already has (the
store, the registry and the event listener), so the production classes carry no trace of
them: the composition root (:func:`modeld.daemon.process.wiring.build_runtime`) builds the
store and registry from here only when the variable is set. Production never sets it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Collection
from pathlib import Path

from modeld.core.events import ManagerEvent, ModelImported
from modeld.core.registry import Actor, Registry
from modeld.core.store import FileDigest, ModelStore, StagedArtifact

CRASH_ENV = "MODELD_TEST_CRASH_AT"

IMPORT_STEPS = ("stage_file_copied", "staged", "validated", "store_renamed", "registered")
DEPLOY_STEPS = ("loaded", "deployment_recorded")


class CrashPoint:
    """SIGKILLs this process when it reaches ``step``; called on whichever thread gets there."""

    def __init__(self, step: str) -> None:
        if step not in IMPORT_STEPS + DEPLOY_STEPS:
            raise ValueError(f"{CRASH_ENV}={step!r} is not one of "
                             f"{', '.join(IMPORT_STEPS + DEPLOY_STEPS)}")
        self.step = step

    def reached(self, step: str) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def store(self, directory: Path, max_artifact_bytes: int) -> ModelStore:
        return _CrashingStore(directory, max_artifact_bytes, self)

    def registry(self, location: Path | str) -> Registry:
        return _CrashingRegistry(location, self)

    def on_event(self, event: ManagerEvent) -> None:
        """Listens beside the daemon: ``registered`` is the moment the import was committed."""
        if isinstance(event, ModelImported):
            self.reached("registered")


class _CrashingStore(ModelStore):
    def __init__(self, directory: Path, max_artifact_bytes: int, crash: CrashPoint) -> None:
        super().__init__(directory, max_artifact_bytes)
        self._crash = crash

    def _copy_file(self, src: Path, dst: Path) -> FileDigest:
        digest = super()._copy_file(src, dst)
        self._crash.reached("stage_file_copied")
        return digest

    def stage(self, source: Path) -> StagedArtifact:
        staged = super().stage(source)
        self._crash.reached("staged")
        return staged

    def commit(self, staged: StagedArtifact, version: str,
               bundle: tuple[Path, str, Collection[str]] | None = None) -> Path:
        self._crash.reached("validated")  # the manager commits only what passed validation
        target = super().commit(staged, version, bundle)
        self._crash.reached("store_renamed")  # in the store, not yet in the registry
        return target


class _CrashingRegistry(Registry):
    def __init__(self, location: Path | str, crash: CrashPoint) -> None:
        super().__init__(location)
        self._crash = crash

    def record_deployment(self, from_version: str | None, to_version: str | None, at: str,
                          reason: str, actor: Actor) -> None:
        self._crash.reached("loaded")  # the new version is loaded and warm, nothing recorded
        super().record_deployment(from_version, to_version, at, reason, actor)
        self._crash.reached("deployment_recorded")  # recorded, the slot not yet swapped
