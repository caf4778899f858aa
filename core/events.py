"""What the manager reports: one frozen dataclass per thing that happened.

The manager builds an event where the thing happened and hands it to :func:`emit`, which logs
it (``name`` and the fields, in order, are the structlog event operators and tests read) and
passes it to the manager's listener. The daemon's metrics and alerting dispatch on the type,
so a misspelt event is a NameError or a mypy error rather than a silent no-op.

Only what other parts react to is an event here; the manager's purely diagnostic lines
(``staging_cleaned``, ``model_restored``, ...) are logged directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

from modeld.core.registry import Actor

Level = Literal["info", "warning", "error"]


@dataclass(frozen=True, slots=True)
class ModelImported:
    """A version was copied into the store and committed to the registry."""

    name: ClassVar[str] = "model_imported"
    level: ClassVar[Level] = "info"
    version: str
    path: str
    quality_score: float | None
    warnings: Sequence[str]
    took_ms: float
    # where ``took_ms`` went, in order: "stage" (copy and hash), "trust" (manifest,
    # signature), "first_load" (the isolated child: load, canary, bundle), "validate"
    # (judging the bundle, building and warming the servable), "commit" (store and registry)
    stages_ms: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ImportRejected:
    """A folder was judged unusable; ``version`` when its metadata.json names one."""

    name: ClassVar[str] = "import_rejected"
    level: ClassVar[Level] = "warning"
    version: str | None
    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class ImportConflict:
    """A folder claims a version already imported with different content; it is refused."""

    name: ClassVar[str] = "import_conflict"
    level: ClassVar[Level] = "warning"
    version: str
    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class StagingFailed:
    """Copying a folder into the store failed on the daemon's own disk; it is tried again."""

    name: ClassVar[str] = "staging_failed"
    level: ClassVar[Level] = "error"
    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class ModelSwapped:
    """``new`` serves now; ``old`` (None at the first deployment) became the fallback."""

    name: ClassVar[str] = "model_swapped"
    level: ClassVar[Level] = "info"
    old: str | None
    new: str
    actor: Actor
    reason: str
    took_ms: float


@dataclass(frozen=True, slots=True)
class SwapFailed:
    """``new`` failed to load or warm; ``old`` keeps serving."""

    name: ClassVar[str] = "swap_failed"
    level: ClassVar[Level] = "error"
    old: str | None
    new: str
    reason: str


@dataclass(frozen=True, slots=True)
class FallbackUsed:
    """The deployed ``version`` raised while scoring; ``fallback`` (or nobody) answered."""

    name: ClassVar[str] = "fallback_used"
    level: ClassVar[Level] = "error"
    version: str
    fallback: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class DeployedVersionUnusable:
    """At startup the registry's deployed version failed its checks; an earlier one serves."""

    name: ClassVar[str] = "deployed_version_unusable"
    level: ClassVar[Level] = "error"
    version: str
    reason: str


@dataclass(frozen=True, slots=True)
class ModelUnhealthy:
    """The deployed ``version`` failed its health check; ``new`` serves instead (or none)."""

    name: ClassVar[str] = "model_unhealthy"
    level: ClassVar[Level] = "error"
    version: str
    reason: str
    new: str | None


@dataclass(frozen=True, slots=True)
class CandidateNominated:
    """``version`` is on trial beside ``champion`` (deploy policy shadow or manual)."""

    name: ClassVar[str] = "candidate_nominated"
    level: ClassVar[Level] = "info"
    version: str
    champion: str | None
    superseded: str | None
    policy: str
    reason: str


@dataclass(frozen=True, slots=True)
class CandidatePromoted:
    """The candidate ``version`` was deployed (by the gate, actor auto, or an operator)."""

    name: ClassVar[str] = "candidate_promoted"
    level: ClassVar[Level] = "info"
    version: str
    old: str | None
    actor: Actor
    reason: str


@dataclass(frozen=True, slots=True)
class CandidateDiscarded:
    """An operator ended the candidate's trial; it stays an available version."""

    name: ClassVar[str] = "candidate_discarded"
    level: ClassVar[Level] = "info"
    version: str
    reason: str


@dataclass(frozen=True, slots=True)
class CandidateHeld:
    """The promotion gate refused the candidate on the ``failed`` conditions; it stays the
    candidate until an operator decides."""

    name: ClassVar[str] = "candidate_held"
    level: ClassVar[Level] = "warning"
    version: str
    failed: str
    reason: str


ManagerEvent = (
    ModelImported | ImportRejected | ImportConflict | StagingFailed | ModelSwapped | SwapFailed
    | FallbackUsed | DeployedVersionUnusable | ModelUnhealthy | CandidateNominated
    | CandidatePromoted | CandidateDiscarded | CandidateHeld
)

Listener = Callable[[ManagerEvent], None]


def event_fields(event: ManagerEvent) -> dict[str, Any]:
    """The event's fields by name, in declaration order (the structlog event's keys)."""
    return {f.name: getattr(event, f.name) for f in fields(event)}


def emit(log: Any, listener: Listener, event: ManagerEvent) -> None:
    """Log ``event`` on ``log`` (a structlog logger) at its level, then tell ``listener``."""
    getattr(log, event.level)(event.name, **event_fields(event))
    listener(event)
