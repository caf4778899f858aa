"""The one error hierarchy of modeld.

core/ raises these; only the edges translate them (the HTTP layer into status codes with a
``detail``, the CLI into exit codes and one readable line). Every message is built in
``__init__`` from the error's fields, so every raise site reads the same.
"""

from __future__ import annotations


class ModeldError(Exception):
    """Base of every error modeld raises on purpose."""


class ConfigError(ModeldError):
    """A configuration key has a wrong value, or the configuration cannot be read."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"configuration error at {key}: {problem}")


class ArtifactError(ModeldError):
    """An artifact folder cannot be imported."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ArtifactIncomplete(ArtifactError):
    """The artifact is still being written (or its manifest does not match yet)."""


class ArtifactInvalid(ArtifactError):
    """The artifact is complete but cannot be served correctly."""


class EstimatorUnloadable(ArtifactInvalid):
    """An estimator file (the model or the scaler) raised while it was being loaded.

    ``cause`` is what the loader raised (an unpickling error, a MemoryError, ...).
    """

    def __init__(self, path: str, file: str, cause: Exception) -> None:
        self.file = file
        self.cause = cause
        self.problem = f"{type(cause).__name__}: {cause}"
        super().__init__(path, f"{file} cannot be loaded: {self.problem}")


class ArtifactUntrusted(ArtifactError):
    """The artifact fails an integrity or trust check; none of its files was unpickled."""


class PathOutsideModels(ModeldError):
    """An import path that does not resolve to a folder inside the training models folder."""

    def __init__(self, path: str, models_dir: str) -> None:
        self.path = path
        self.models_dir = models_dir
        super().__init__(
            f"path {path!r} is not a finished artifact folder directly inside {models_dir}"
        )


class UnknownVersion(ModeldError):
    """No version with this name is in the registry."""

    def __init__(self, version: str) -> None:
        self.version = version
        super().__init__(f"unknown model version {version!r}")


class VersionNotLoaded(ModeldError):
    """Scoring with a named version was asked for, and that version is not loaded."""

    def __init__(self, version: str, loaded: tuple[str, ...]) -> None:
        self.version = version
        self.loaded = loaded
        super().__init__(
            f"model version {version!r} is not loaded; loaded now: "
            f"{', '.join(loaded) if loaded else 'none'}"
        )


class VersionConflict(ModeldError):
    """The request conflicts with the registry's state (content differs, status forbids it)."""

    def __init__(self, version: str, reason: str) -> None:
        self.version = version
        self.reason = reason
        super().__init__(f"version {version!r}: {reason}")


class NoModelDeployed(ModeldError):
    """Scoring was asked for while no model is deployed."""

    def __init__(self) -> None:
        super().__init__("no model is deployed yet; import a valid artifact first")


class ModelLoadFailed(ModeldError):
    """A stored version could not be loaded or warmed for serving."""

    def __init__(self, version: str, reason: str) -> None:
        self.version = version
        self.reason = reason
        super().__init__(f"version {version!r} could not be loaded: {reason}")


class WarmupNonFinite(ModelLoadFailed):
    """Scoring the warmup rows gave NaN or infinite scores (``bad`` of ``rows``)."""

    def __init__(self, version: str, bad: int, rows: int) -> None:
        self.bad = bad
        self.rows = rows
        super().__init__(version, "scoring the warmup rows gave non-finite scores")


class BundleInvalid(ModelLoadFailed):
    """A servable bundle cannot be read (missing or altered file, digest mismatch, unknown
    format) or does not score as scikit-learn did when the isolated child wrote it."""

    def __init__(self, version: str, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(version, f"bundle {path}: {problem}")


class EstimatorUnbundled(ModelLoadFailed):
    """The estimator has no bundle form and ``security.allow_unbundled_estimators`` is off, so
    serving it would mean unpickling it in the daemon."""

    def __init__(self, version: str, model_type: str) -> None:
        self.model_type = model_type
        super().__init__(version, f"{model_type} has no servable bundle form; serving it "
                         "means unpickling it in the daemon, which needs "
                         "security.allow_unbundled_estimators: true")


class RecordInvalid(ModeldError):
    """A record of a scoring batch cannot be turned into features."""

    def __init__(self, index: int, problem: str) -> None:
        self.index = index
        self.problem = problem
        super().__init__(f"record {index}: {problem}")


class StateDirectoryLocked(ModeldError):
    """Another modeld process holds the state directory (``storage.directory``)."""

    def __init__(self, directory: str, holder: str) -> None:
        self.directory = directory
        self.holder = holder
        super().__init__(
            f"another modeld ({holder}) is running on storage.directory {directory}; "
            "one daemon per state directory"
        )


class RegistryDamaged(ModeldError):
    """The registry file cannot be trusted; the store next to it must not be judged by it."""

    def __init__(self, path: str, problem: str, remedy: str) -> None:
        self.path = path
        self.problem = problem
        self.remedy = remedy
        super().__init__(f"the registry {path} is damaged: {problem}; {remedy}")
