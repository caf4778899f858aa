"""Validate: judges one artifact folder and returns a report of errors, warnings and a score.

One validator merges the seed plan's two. Findings that mean the artifact cannot be served
correctly are *blocking*: the artifact is rejected whatever its score. Everything else counts
toward the seed's quality score (1 - 0.2 per error - 0.05 per warning, clamped to [0, 1]),
which must reach the configured minimum.
"""

from __future__ import annotations

import contextlib
import math
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import sklearn

from modeld.core.bundle import (
    Bundle,
    EstimatorFacts,
    read_bundle,
    servable_from_bundle,
    write_bundle,
)
from modeld.core.errors import (
    ArtifactInvalid,
    ArtifactUntrusted,
    EstimatorUnbundled,
    ModelLoadFailed,
)
from modeld.core.loader import (
    DEFAULT_LOADER,
    ModelLoader,
    ServableModel,
    load_artifact,
    load_servable,
)
from modeld.core.source import read_metadata

SUPPORTED_TYPES = ("IsolationForest", "LocalOutlierFactor")
# the seed plan's feature checks: fewer features than this, or any of these missing, warn
MIN_FEATURES = 5
EXPECTED_FEATURES = ("hour_of_day", "day_of_week", "message_length")
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
FUTURE_TOLERANCE = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class ValidationPolicy:
    """The operator's thresholds (from the ``model`` configuration section)."""

    expected_type: str | None = None
    min_quality_score: float = 0.6
    age_warning_days: float = 7
    age_stale_days: float = 30
    min_estimators: int = 50
    warmup_row_count: int = 16


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the validator noticed."""

    code: str
    message: str
    severity: Literal["error", "warning"]
    blocking: bool = False


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """The verdict on one artifact; stored with the version as JSON."""

    findings: tuple[Finding, ...]
    quality_score: float
    min_quality_score: float
    quality_gate: bool
    recommendations: tuple[str, ...]
    checked_at: str

    @property
    def errors(self) -> list[str]:
        return [f.message for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[str]:
        return [f.message for f in self.findings if f.severity == "warning"]

    @property
    def blocking(self) -> list[str]:
        return [f.message for f in self.findings if f.blocking]

    @property
    def accepted(self) -> bool:
        if self.blocking:
            return False
        return not self.quality_gate or self.quality_score >= self.min_quality_score

    @property
    def reason(self) -> str:
        """One line saying why the artifact was rejected ("" when accepted)."""
        if self.blocking:
            return "; ".join(self.blocking)
        if self.accepted:
            return ""
        return (
            f"quality score {self.quality_score:.2f} is below the minimum "
            f"{self.min_quality_score:.2f} ({'; '.join(self.errors + self.warnings)})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reason": self.reason,
            "quality_score": self.quality_score,
            "min_quality_score": self.min_quality_score,
            "quality_gate": self.quality_gate,
            "errors": self.errors,
            "warnings": self.warnings,
            "blocking_errors": self.blocking,
            "findings": [
                {"code": f.code, "message": f.message, "severity": f.severity, "blocking": f.blocking}
                for f in self.findings
            ],
            "recommendations": list(self.recommendations),
            "checked_at": self.checked_at,
        }


@dataclass(frozen=True, slots=True)
class ArtifactMetadata:
    """The parts of metadata.json modeld relies on, checked for type."""

    version: str
    model_type: str
    created_at: datetime
    feature_names: tuple[str, ...]
    training_samples: int | None
    metrics: Mapping[str, float]
    sklearn_version: str | None
    warmup: tuple[Any, ...]
    raw: Mapping[str, Any] = field(repr=False)


def quality_score(errors: int, warnings_count: int) -> float:
    return round(min(1.0, max(0.0, 1.0 - 0.2 * errors - 0.05 * warnings_count)), 4)


def parse_timestamp(value: object) -> datetime:
    """ISO-8601 to an aware UTC datetime; naive means UTC. Raises ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO-8601 string, got {type(value).__name__}")
    parsed = datetime.fromisoformat(value.strip().upper())  # a lower-case "z" is UTC too
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError(f"{value!r} is out of range in UTC") from exc


def _section(data: Mapping[str, Any], name: str, folder: Path) -> Mapping[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ArtifactInvalid(str(folder), f"metadata.json: {name} must be an object")
    return value


def parse_metadata(data: Mapping[str, Any], folder: Path) -> ArtifactMetadata:
    """Check the structure of metadata.json; raises ArtifactInvalid naming the field."""
    model_info = _section(data, "model_info", folder)
    training_info = _section(data, "training_info", folder)
    evaluation = _section(data, "evaluation_info", folder)

    def bad(field_name: str, problem: str) -> ArtifactInvalid:
        return ArtifactInvalid(str(folder), f"metadata.json: {field_name} {problem}")

    version = model_info.get("version")
    if not isinstance(version, str) or not version:
        raise bad("model_info.version", "is missing or not a string")
    if not VERSION_PATTERN.match(version):
        raise bad(
            "model_info.version",
            f"{version[:80]!r} must be 1-128 letters, digits, '.', '_' or '-'",
        )
    model_type = model_info.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise bad("model_info.model_type", "is missing or not a string")
    try:
        created_at = parse_timestamp(model_info.get("created_at"))
    except ValueError as exc:
        raise bad("model_info.created_at", f"is not an ISO-8601 timestamp ({exc})") from exc
    names = training_info.get("feature_names")
    if not isinstance(names, list) or not names:
        raise bad("training_info.feature_names", "is missing or empty")
    if not all(isinstance(n, str) and n for n in names):
        raise bad("training_info.feature_names", "must be a list of non-empty strings")
    if len(set(names)) != len(names):
        raise bad("training_info.feature_names", "has duplicate names")
    samples = training_info.get("training_samples")
    if isinstance(samples, float) and samples.is_integer():
        samples = int(samples)
    if samples is not None and (not isinstance(samples, int) or isinstance(samples, bool)):
        raise bad("training_info.training_samples", "must be an integer")
    basic = evaluation.get("basic_metrics", {})
    if not isinstance(basic, dict):
        raise bad("evaluation_info.basic_metrics", "must be an object")
    # Liberal here: a producer without labels may write null; such metrics are left out and
    # reported as a warning by the validator.
    metrics = {
        key: float(value) for key, value in basic.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
        and math.isfinite(value)
    }
    sklearn_version = model_info.get("sklearn_version")
    warmup = data.get("warmup", [])
    if not isinstance(warmup, list):
        raise bad("warmup", "must be a list of records")
    return ArtifactMetadata(
        version=version,
        model_type=model_type,
        created_at=created_at,
        feature_names=tuple(names),
        training_samples=samples,
        metrics=metrics,
        sklearn_version=sklearn_version if isinstance(sklearn_version, str) else None,
        warmup=tuple(warmup),
        raw=data,
    )


@dataclass(frozen=True, slots=True)
class Validation:
    """What validating a folder produced: the report, and what could be read on the way."""

    report: ValidationReport
    metadata: ArtifactMetadata | None
    servable: ServableModel | None
    bundle: Bundle | None = None


def _metric_findings(metrics: Mapping[str, float], given: Mapping[str, Any]) -> list[Finding]:
    found = [
        Finding("metric_ignored", f"evaluation_info.basic_metrics.{key} is not a number "
                f"({value!r:.40}); ignored", "warning")
        for key, value in given.items() if key not in metrics
    ]
    if not metrics:
        return [*found, Finding("no_metrics", "no evaluation metrics in metadata.json",
                                "warning")]
    f1, auc = metrics.get("f1_score"), metrics.get("roc_auc")
    if f1 is not None:
        if f1 < 0.5:
            found.append(Finding("f1_low", f"F1 score {f1:.3f} is below 0.5", "error"))
        elif f1 < 0.7:
            found.append(Finding("f1_fair", f"F1 score {f1:.3f} is below 0.7", "warning"))
    if auc is not None:
        if auc < 0.6:
            found.append(Finding("auc_low", f"ROC AUC {auc:.3f} is below 0.6", "error"))
        elif auc < 0.8:
            found.append(Finding("auc_fair", f"ROC AUC {auc:.3f} is below 0.8", "warning"))
    for name in ("precision", "recall"):
        value = metrics.get(name)
        if value is not None and value < 0.5:
            found.append(Finding(f"{name}_low", f"{name} {value:.3f} is below 0.5", "warning"))
    return found


def _feature_findings(feature_names: Sequence[str]) -> list[Finding]:
    found = []
    if len(feature_names) < MIN_FEATURES:
        found.append(Finding("few_features", f"only {len(feature_names)} features (< "
                             f"{MIN_FEATURES}): a low feature count may limit model performance",
                             "warning"))
    missing = [name for name in EXPECTED_FEATURES if name not in feature_names]
    if missing:
        found.append(Finding("missing_features", f"missing expected features: {missing}",
                             "warning"))
    return found


def _age_findings(created_at: datetime, now: datetime, policy: ValidationPolicy) -> list[Finding]:
    age = now - created_at
    if age < -FUTURE_TOLERANCE:
        return [
            Finding(
                "created_in_future",
                f"created_at {created_at.isoformat()} is in the future; it would win every "
                "newer-than comparison",
                "error",
                blocking=True,
            )
        ]
    if created_at.year < 2000:
        return [
            Finding("created_implausible", f"created_at {created_at.isoformat()} is before "
                    "2000: not a real training time", "error", blocking=True)
        ]
    days = age.total_seconds() / 86400
    if days > policy.age_stale_days:
        return [Finding("stale", f"the model is {days:.0f} days old (> {policy.age_stale_days:g})",
                        "warning")]
    if days > policy.age_warning_days:
        return [Finding("old", f"the model is {days:.0f} days old (> {policy.age_warning_days:g})",
                        "warning")]
    return []


def _estimator_findings(
    facts: EstimatorFacts, meta: ArtifactMetadata, policy: ValidationPolicy
) -> list[Finding]:
    found = []
    kind = facts.model_type
    expected = policy.expected_type
    if expected is not None and kind != expected:
        found.append(Finding("type_unexpected", f"model.type expects {expected}, the artifact "
                             f"holds {kind}", "warning"))
    if kind != meta.model_type:
        found.append(Finding("type_mismatch", f"metadata says {meta.model_type}, the file holds "
                             f"{kind}", "warning"))
    if kind not in SUPPORTED_TYPES:
        found.append(Finding("unsupported_type", f"{kind} is not a supported model type "
                             f"({', '.join(SUPPORTED_TYPES)})", "warning"))
    if kind == "LocalOutlierFactor" and not facts.novelty:
        found.append(Finding("lof_not_novelty", "LocalOutlierFactor was fitted without "
                             "novelty=True and cannot score new records", "error", blocking=True))
    for method in ("predict", "score_samples"):
        if method not in facts.methods and kind != "LocalOutlierFactor":
            found.append(Finding("cannot_score", f"the model has no {method}()", "error",
                                 blocking=True))
    width = facts.n_features_in
    if width is None:
        found.append(Finding("not_fitted", "the model has no n_features_in_ (not fitted?)",
                             "error", blocking=True))
    elif width != len(meta.feature_names):
        found.append(Finding("feature_count", f"metadata lists {len(meta.feature_names)} feature "
                             f"names, the model takes {width} features", "error", blocking=True))
    n_estimators = facts.n_estimators
    if n_estimators is not None and n_estimators < policy.min_estimators:
        found.append(Finding("few_estimators", f"only {n_estimators} estimators "
                             f"(< {policy.min_estimators})", "warning"))
    return found


def _scaler_findings(facts: EstimatorFacts, width: int) -> list[Finding]:
    if not facts.scaler_has_transform:
        return [Finding("scaler_no_transform", "scaler.joblib has no transform()", "error",
                        blocking=True)]
    n_in = facts.scaler_n_features_in
    if n_in is not None and n_in != width:
        return [Finding("scaler_width", f"the scaler takes {n_in} features, the model {width}",
                        "error", blocking=True)]
    return []


def _recommendations(findings: Sequence[Finding]) -> tuple[str, ...]:
    advice = {
        "f1_low": "retrain with better labelled validation data or tune contamination",
        "f1_fair": "Consider retraining with more data or different parameters",
        "auc_low": "retrain: the model barely separates anomalies from normal records",
        "auc_fair": "Consider feature engineering or model tuning",
        "stale": "retrain on recent logs: the model is more than a month old",
        "old": "consider retraining on recent logs",
        "version_mismatch": "retrain with the scikit-learn version modeld runs",
        "few_estimators": "train with more estimators for stabler scores",
        "few_samples": "train on more records",
        "no_metrics": "have the training service evaluate on held-out labelled data",
    }
    return tuple(dict.fromkeys(advice[f.code] for f in findings if f.code in advice))


def metadata_or_none(folder: Path) -> ArtifactMetadata | None:
    """The folder's parsed metadata.json, or None when it is unreadable (validation says why)."""
    try:
        return parse_metadata(read_metadata(folder), folder)
    except ArtifactInvalid:
        return None


def bundle_folder(folder: Path, out: Path, loader: ModelLoader, warmup_row_count: int) -> None:
    """Load the artifact in ``folder`` in this process and write its bundle to ``out``.

    What the canary child does (``daemon/jobs/sandbox.py``), here: used when isolation is off
    (``security.isolate_first_load: false``), by a manager without a child, and by
    :func:`validate_folder` when no bundle is given. Raises ArtifactInvalid or
    ArtifactUntrusted when the artifact cannot be loaded, ModelLoadFailed when scikit-learn
    cannot score its warmup rows.
    """
    write_bundle(load_artifact(folder, loader), folder, out, metadata_or_none(folder),
                 warmup_row_count)


def validate_folder(
    folder: Path,
    policy: ValidationPolicy,
    now: datetime,
    loader: ModelLoader = DEFAULT_LOADER,
    quality_gate: bool = True,
    bundle: Bundle | None = None,
    bundle_to: Path | None = None,
    allow_unbundled: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> Validation:
    """Judge the artifact in ``folder`` (already in the daemon's staging) and prepare it to serve.

    Called by the manager on its import thread (and for a re-validation) with the ``bundle``
    the isolated child wrote (``core/bundle.py``): the estimators are judged by the facts in it
    and the servable is built from it, so nothing is unpickled here. Without a bundle, one is
    written here first with ``loader`` (:func:`bundle_folder`), to ``bundle_to`` (a temporary
    folder without it; its arrays are then read into memory). A model without a bundle form
    is rejected unless ``allow_unbundled`` (``security.allow_unbundled_estimators``): then it is
    loaded here with ``loader``. ``metadata`` is the folder's metadata.json as the caller has
    already read it (None: it is read here). Never raises for a bad artifact: every problem
    becomes a finding. With ``quality_gate`` false the score is reported but does not reject; blocking
    findings always do.
    """
    findings: list[Finding] = []

    def finish(meta: ArtifactMetadata | None, servable: ServableModel | None) -> Validation:
        errors = sum(f.severity == "error" for f in findings)
        warns = sum(f.severity == "warning" for f in findings)
        report = ValidationReport(
            tuple(findings), quality_score(errors, warns), policy.min_quality_score,
            quality_gate, _recommendations(findings), now.isoformat(),
        )
        accepted = report.accepted
        return Validation(report, meta, servable if accepted else None,
                          bundle if accepted else None)

    try:
        meta = parse_metadata(read_metadata(folder) if metadata is None else metadata, folder)
    except ArtifactInvalid as exc:
        findings.append(Finding("metadata", exc.reason, "error", blocking=True))
        return finish(None, None)

    basic = (meta.raw.get("evaluation_info") or {}).get("basic_metrics") or {}
    findings += _metric_findings(meta.metrics, basic)
    findings += _feature_findings(meta.feature_names)
    findings += _age_findings(meta.created_at, now, policy)
    if meta.training_samples is not None and meta.training_samples < 1000:
        findings.append(Finding("few_samples", f"trained on only {meta.training_samples} "
                                "samples", "warning"))
    if meta.sklearn_version and meta.sklearn_version != sklearn.__version__:
        findings.append(Finding("version_mismatch", f"trained with scikit-learn "
                                f"{meta.sklearn_version}, modeld runs {sklearn.__version__}",
                                "warning"))

    if bundle is None:
        with contextlib.ExitStack() as stack:
            out = bundle_to or Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="modeld-bundle-"))) / "bundle"
            try:
                bundle_folder(folder, out, loader, policy.warmup_row_count)
                bundle = read_bundle(out, meta.version, mmap=bundle_to is not None)
            except (ArtifactInvalid, ArtifactUntrusted) as exc:
                findings.append(Finding("load_failed", exc.reason, "error", blocking=True))
                return finish(meta, None)
            except ModelLoadFailed as exc:
                findings.append(cannot_score(exc))
                return finish(meta, None)
    facts = bundle.facts
    findings += [Finding("version_mismatch", line, "warning") for line in facts.version_warnings]
    findings += _estimator_findings(facts, meta, policy)
    if facts.scaler_type is not None:
        findings += _scaler_findings(facts, len(meta.feature_names))
    findings = list({(f.code, f.message): f for f in findings}.values())
    if any(f.blocking for f in findings):
        return finish(meta, None)
    try:
        servable = servable_from_bundle(bundle, meta)
    except EstimatorUnbundled as exc:
        if not allow_unbundled:
            findings.append(Finding("unbundled", exc.reason, "error", blocking=True))
            return finish(meta, None)
        try:
            servable = load_servable(folder, meta, policy.warmup_row_count, loader)
        except ModelLoadFailed as failed:
            findings.append(cannot_score(failed))
            return finish(meta, None)
    except ModelLoadFailed as exc:
        findings.append(cannot_score(exc))
        return finish(meta, None)
    return finish(meta, servable)


def cannot_score(exc: ModelLoadFailed) -> Finding:
    return Finding("cannot_score", f"scoring sample rows failed: {exc.reason}", "error",
                   blocking=True)
