"""modeld's configuration: a YAML file, overridden by ``MODELD_`` environment variables.

The main thread loads it at startup and again on SIGHUP; a configuration that fails to load
raises :class:`modeld.core.errors.ConfigError` naming the first wrong key, and the caller keeps what it
had (at startup: exit status 2).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from modeld.core.drift import DriftConfig
from modeld.core.errors import ConfigError
from modeld.core.loader import DEFAULT_TRUSTED_TYPES, LoadPolicy
from modeld.core.manager import DeploymentPolicy
from modeld.core.registry import REGISTRY_FILE
from modeld.core.shadow import GatePolicy
from modeld.core.trust import load_public_key
from modeld.core.validate import SUPPORTED_TYPES, ValidationPolicy
from modeld.daemon.jobs.alerting import AlertingSettings

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_size(value: int | str) -> int:
    """Bytes from ``10485760``, ``"10MB"``, ``"10MiB"`` or ``"512k"``."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f"not a size: {value!r} (use e.g. 10MB, 512KiB or a number of bytes)")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    base = 1024 if "i" in unit else 1
    scale = _SIZE_UNITS[unit[:1]] if base == 1 else 1024 ** "bkmgt".index(unit[0])
    return int(number * scale)


# The configuration schema this modeld reads: the plan's ``version: '2.0.0'``. A file of
# another major version is refused; the version is reported by /api/v1/status.
SCHEMA_VERSION = "2.0.0"

# model.type as the plan writes it (snake case) and the estimator classes it means
MODEL_TYPES = {
    "isolation_forest": "IsolationForest",
    "local_outlier_factor": "LocalOutlierFactor",
    "one_class_svm": "OneClassSVM",
    "elliptic_envelope": "EllipticEnvelope",
}

LOG_FORMATS = ("auto", "json", "console")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Section):
    """How models are judged and how their scores become flags."""

    # the expected model type: an artifact of another type gets a validation warning
    type: str | None = None
    min_quality_score: float = Field(0.6, ge=0.0, le=1.0)
    anomaly_threshold: float | None = None
    # a flag also needs the score's confidence (its position among the model's reference
    # scores, README "Scores and flags") to reach this
    confidence_threshold: float | None = Field(None, ge=0.0, le=1.0)
    # IsolationForest's max_features for `modeld train` (a share of the features, or a count)
    max_features: int | float = Field(1.0, gt=0)
    warmup_rows: int = Field(16, ge=1, le=10_000)
    max_age_warning_days: float = Field(7, gt=0)
    max_age_stale_days: float = Field(30, gt=0)
    min_estimators: int = Field(50, ge=1)

    @field_validator("type")
    @classmethod
    def _model_type(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value in MODEL_TYPES.values():
            return value
        known = MODEL_TYPES.get(value.strip().lower())
        if known is None:
            raise ValueError(f"{value!r} is not a model type modeld knows; use one of "
                             f"{', '.join(MODEL_TYPES)}")
        return known

    @field_validator("max_features")
    @classmethod
    def _max_features(cls, value: float) -> float:
        if isinstance(value, float) and value > 1.0:
            raise ValueError("a share of the features must be in (0, 1]; a count is an integer")
        return value

    def validation_policy(self) -> ValidationPolicy:
        return ValidationPolicy(
            expected_type=self.type,
            min_quality_score=self.min_quality_score,
            age_warning_days=self.max_age_warning_days,
            age_stale_days=self.max_age_stale_days,
            min_estimators=self.min_estimators,
            warmup_row_count=self.warmup_rows,
        )


class StorageSettings(_Section):
    """The daemon's own store: registry database and imported versions."""

    directory: Path = Path("modeld-state")
    keep_versions: int = Field(5, ge=1)
    retention_days: float = Field(30, ge=0)
    retention_interval: float = Field(3600, gt=0)
    backup_enabled: bool = False
    backup_interval: float = Field(86400, gt=0)
    backup_count: int = Field(7, ge=1)
    # registry backups and stored versions that are not loaded are kept gzip-compressed;
    # checksums stay those of the delivered bytes, verified on decompression
    compression: bool = False
    # a damaged registry at startup: restore the newest good backup (true) or refuse to start
    restore_from_backup: bool = False
    integrity_check_interval: float = Field(300, gt=0)
    # the registry database: empty = the SQLite file registry.sqlite3 in ``directory``;
    # sqlite:///abs/path.sqlite3, or postgresql://user@host/db to join a fleet of daemons
    # that follow one registry (docs: README "Run a fleet")
    registry_url: str | None = None

    @field_validator("registry_url")
    @classmethod
    def _registry_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(
                ("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(f"{value!r} is neither sqlite:///<path> nor "
                             "postgresql://<user>@<host>/<database>")
        return value or None

    def registry_location(self) -> Path | str:
        """The Registry's argument: the default SQLite file, or the URL."""
        return self.registry_url or self.directory.resolve() / REGISTRY_FILE


class FleetSettings(_Section):
    """Daemons that share a PostgreSQL registry (``storage.registry_url``): a fleet."""

    # this daemon's name in `modeld fleet`; empty = <hostname>:<api.port>
    id: str = ""
    # the URL other hosts and the dashboard reach this daemon at; empty = http://<host>:<port>
    url: str = ""
    heartbeat_interval: float = Field(5, gt=0)
    # a daemon follows each deployment at once (NOTIFY) and also re-reads the registry this
    # often, so a lost notification never leaves it on another version
    reconcile_interval: float = Field(15, gt=0)
    # the importer's election: how often a daemon that is not the importer tries the lock
    takeover_interval: float = Field(2, gt=0)
    # two versions served for longer than this is an alarm (a swap takes under a second)
    split_alarm_seconds: float = Field(30, gt=0)


class GateSettings(_Section):
    """``integration.shadow.gate``: what a candidate's comparison must show to be promoted."""

    flag_rate_ratio: tuple[float, float] = (0.5, 2.0)
    min_kappa: float = Field(0.4, ge=-1, le=1)
    max_latency_ratio: float = Field(2.0, gt=0)

    @field_validator("flag_rate_ratio")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] <= value[1]:
            raise ValueError(f"must be [low, high] with 0 <= low <= high, not {list(value)}")
        return value


class ShadowSettings(_Section):
    """``integration.shadow``: how a candidate is scored beside the deployed version."""

    sample: float = Field(1.0, ge=0, le=1)  # the share of scoring requests shadowed
    min_records: int = Field(2000, ge=1)
    queue_size: int = Field(256, ge=1)  # batches waiting; beyond it shadow work is dropped
    cpu_budget: float = Field(0.5, gt=0, le=1)  # the shadow worker's share of one core
    window_records: int = Field(10_000, ge=100)
    gate: GateSettings = GateSettings()

    def gate_policy(self) -> GatePolicy:
        low, high = self.gate.flag_rate_ratio
        return GatePolicy(self.min_records, low, high, self.gate.min_kappa,
                          self.gate.max_latency_ratio)


class CanarySettings(_Section):
    """``integration.canary``: the share of records the candidate answers instead."""

    percent: float = Field(0, ge=0, le=100)
    key: str = Field("host", min_length=1)


class IntegrationSettings(_Section):
    """Where the training service writes, and how modeld picks its artifacts up."""

    training_service_path: Path = Path("training-service")
    import_interval: float = Field(60, gt=0)
    settle_seconds: float = Field(2.0, ge=0, le=60)
    auto_import: bool = True
    auto_deploy: bool = True
    # false skips the quality gate on every import, never the checks that keep an unservable
    # model out
    validate_imports: bool = True
    force_polling: bool = False
    polling_interval: float = Field(1.0, gt=0)
    deploy_policy: Literal["immediate", "shadow", "manual"] = "immediate"
    shadow: ShadowSettings = ShadowSettings()
    canary: CanarySettings = CanarySettings()

    @property
    def models_dir(self) -> Path:
        return self.training_service_path / "models"

    def deployment_policy(self) -> DeploymentPolicy:
        return DeploymentPolicy(self.auto_deploy, self.deploy_policy)


class MonitoringSettings(_Section):
    """What is watched while scoring."""

    # the plan names it enable_drift_detection; both names work
    drift_detection: bool = Field(
        True, validation_alias=AliasChoices("drift_detection", "enable_drift_detection"))
    drift_threshold: float = Field(0.1, gt=0)
    drift_interval: float = Field(300, gt=0)
    baseline_records: int = Field(2000, ge=200)
    # the drift detectors' tuning (docs/drift.md); the defaults are what tests/bench/drift.py
    # measured
    alpha: float = Field(0.01, gt=0, lt=1)
    window_records: int = Field(5000, ge=100)
    min_window_records: int = Field(500, ge=50)
    target_arl0_records: float = Field(50_000, ge=100)
    cooldown_records: int = Field(2000, ge=0)
    series_interval: float = Field(60, gt=0)
    # per-version inference metrics (scoring windows: scores, anomaly rate, latency) kept or not
    performance_tracking: bool = True
    resource_monitoring: bool = True
    model_health_checks: bool = True
    health_check_interval: float = Field(300, gt=0)
    metrics_flush_interval: float = Field(60, gt=0)
    # recent anomalies (GET /api/v1/anomalies): the newest this many per version, at most
    # this many days old
    keep_anomalies: int = Field(1000, ge=1)
    anomaly_retention_days: float = Field(7, gt=0)
    # scored records waiting for the monitoring thread, at most; beyond it a batch is not
    # monitored (counted in modeld_monitoring_dropped) rather than the request waiting
    queue_records: int = Field(100_000, ge=1)
    alerting: AlertingSettings = AlertingSettings()

    @model_validator(mode="after")
    def _drift_config(self) -> MonitoringSettings:
        DriftConfig.from_mapping(self.model_dump())  # raises ConfigError naming the key
        return self


class RotationSettings(_Section):
    max_size: int = 10 * 1024 * 1024
    backup_count: int = Field(5, ge=1)

    @field_validator("max_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)


class LoggingSettings(_Section):
    """Where log events go and how they look."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # auto, json, console, or a Python logging format string such as the plan's
    # '%(asctime)s - %(name)s - %(levelname)s - %(message)s' for text lines (structured
    # fields appended to the message)
    format: str = "auto"
    file: Path | None = None
    rotation: RotationSettings = RotationSettings()

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value in LOG_FORMATS:
            return value
        if "%(" not in value:
            raise ValueError(f"use one of {', '.join(LOG_FORMATS)} or a Python logging format "
                             "string with %(message)s")
        record = logging.LogRecord("modeld", logging.INFO, __file__, 1, "check", None, None)
        try:
            logging.Formatter(value).format(record)
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"not a usable logging format string: {exc!r}") from None
        return value

    @property
    def format_string(self) -> str | None:
        """The Python logging format string, when ``format`` is one."""
        return None if self.format in LOG_FORMATS else self.format


class ApiSettings(_Section):
    """The HTTP API."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: str | None = None
    token_file: Path | None = None
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_records: int = Field(10_000, ge=1)
    # the model's name in the Open Inference Protocol's /v2/models/{name} routes
    model_name: str = Field("wifi-anomaly", min_length=1, max_length=200,
                            pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # names (besides the bound address) that a request's Host may carry: DNS rebinding
    allowed_hosts: tuple[str, ...] = ("localhost",)
    # connections (README "Connections"): what one client may hold, and for how long
    max_connections: int = Field(1000, ge=16)
    header_timeout: float = Field(10.0, gt=0)
    keep_alive_timeout: float = Field(5.0, gt=0)
    max_header_bytes: int = Field(16 * 1024, ge=1024)
    max_headers: int = Field(100, ge=8)
    # serving processes on api.port (README "Workers"); 1: the daemon serves in its own process
    workers: int = Field(1, ge=1, le=64)

    @field_validator("max_request_bytes", "max_header_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class SecuritySettings(_Section):
    """What an artifact must prove, and how its files may be loaded (README "Trust")."""

    max_artifact_bytes: int = 2 * 1024**3
    require_manifest: bool = False
    verify_key: Path | None = None
    allow_pickle: bool = True
    trusted_types: tuple[str, ...] = DEFAULT_TRUSTED_TYPES
    isolate_first_load: bool = True
    # a model type without a servable bundle form (core/bundle.py) may be unpickled in the
    # daemon to serve it; logged unbundled_estimator_served
    allow_unbundled_estimators: bool = False
    canary_time_limit: float = Field(60, gt=0)
    canary_memory_limit: int = 4 * 1024**3

    @field_validator("max_artifact_bytes", "canary_memory_limit", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)

    @field_validator("trusted_types")
    @classmethod
    def _dotted(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if "." not in name or any(c.isspace() for c in name):
                raise ValueError(f"{name!r} is not a dotted type name like "
                                 "sklearn.ensemble._iforest.IsolationForest")
        return value

    def load_policy(self) -> LoadPolicy:
        return LoadPolicy(self.allow_pickle, self.trusted_types)


class McpSettings(_Section):
    """The MCP server at /mcp and ``modeld mcp`` (README "MCP")."""

    # deploy_model and rollback_model exist only when this is true
    allow_changes: bool = False


class Settings(BaseSettings):
    """The whole configuration. Environment variables (``MODELD_API__PORT``) beat the file."""

    model_config = SettingsConfigDict(
        env_prefix="MODELD_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    version: str = SCHEMA_VERSION
    model: ModelSettings = ModelSettings()
    storage: StorageSettings = StorageSettings()
    integration: IntegrationSettings = IntegrationSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    logging: LoggingSettings = LoggingSettings()
    api: ApiSettings = ApiSettings()
    security: SecuritySettings = SecuritySettings()
    mcp: McpSettings = McpSettings()
    fleet: FleetSettings = FleetSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init data; the environment must win over it.
        return env_settings, init_settings

    @field_validator("version", mode="before")
    @classmethod
    def _schema_version(cls, value: Any) -> str:
        text = str(value).strip()
        major = text.split(".")[0]
        if not major.isdigit():
            raise ValueError(f"{text!r} is not a schema version like {SCHEMA_VERSION}")
        if major != SCHEMA_VERSION.split(".", maxsplit=1)[0]:
            raise ValueError(f"schema {text} is not one this modeld reads "
                             f"({SCHEMA_VERSION.split('.', maxsplit=1)[0]}.x)")
        return text

    def api_token(self) -> str | None:
        """The bearer token, from ``api.token`` or the first line of ``api.token_file``."""
        if self.api.token:
            return self.api.token
        if self.api.token_file is None:
            return None
        try:
            token = self.api.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError("api.token_file", f"cannot read {self.api.token_file}: {exc}") from exc
        if not token:
            raise ConfigError("api.token_file", f"{self.api.token_file} is empty")
        return token


def load_settings(path: Path | None) -> Settings:
    """Read the YAML file (when given) and the environment; raise ConfigError on the first fault."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read the configuration file: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(str(path), f"not valid YAML: {exc}".replace("\n", " ")) from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(str(path), "the file must hold a mapping of sections")
        data = loaded or {}
    monitoring = data.get("monitoring")
    if isinstance(monitoring, dict) and "enable_drift_detection" in monitoring:
        # the plan's name, read as modeld's so that MODELD_MONITORING__DRIFT_DETECTION wins
        monitoring = dict(monitoring)
        value = monitoring.pop("enable_drift_detection")
        if monitoring.setdefault("drift_detection", value) != value:
            raise ConfigError("monitoring.enable_drift_detection", "contradicts "
                              "monitoring.drift_detection (two names of one key); keep one")
        data = {**data, "monitoring": monitoring}
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        problem = first["msg"]
        if first["type"] == "extra_forbidden":
            problem = "unknown key"
        raise ConfigError(key, problem) from None
    except SettingsError as exc:  # an environment variable pydantic-settings cannot parse
        raise ConfigError("environment", str(exc)) from None
    except TypeError as exc:  # e.g. a YAML key that is not a string
        raise ConfigError(str(path), f"unusable structure: {exc}") from None
    if settings.logging.file is not None:
        try:
            settings.logging.file.parent.mkdir(parents=True, exist_ok=True)
            with settings.logging.file.open("a", encoding="utf-8"):
                pass
        except OSError as exc:
            raise ConfigError("logging.file", f"cannot write {settings.logging.file}: "
                              f"{exc.strerror}") from None
    if settings.security.verify_key is not None:
        load_public_key(settings.security.verify_key)  # raises ConfigError naming the key
    api = settings.api
    if not api.is_loopback() and settings.api_token() is None:
        raise ConfigError(
            "api.host",
            f"{api.host} is not a loopback address; set api.token or api.token_file first",
        )
    return settings


def config_warnings(settings: Settings) -> list[tuple[str, str]]:
    """What an operator should know about an accepted configuration: (key, warning) pairs.

    A pure function of the settings, called by ``modeld config check`` and once by the daemon
    at startup (each logged as ``config_warning``).
    """
    found: list[tuple[str, str]] = []
    if settings.version != SCHEMA_VERSION:
        found.append(("version", f"schema {settings.version} is read as {SCHEMA_VERSION}"))
    expected = settings.model.type
    if expected is not None and expected not in SUPPORTED_TYPES:
        found.append(("model.type", f"{expected} is not one of modeld's supported types "
                      f"({', '.join(SUPPORTED_TYPES)}): it is served through its own "
                      "score_samples, and every artifact of it carries a validation warning"))
    for key, path in (("storage.directory", settings.storage.directory),
                      ("logging.file", settings.logging.file),
                      ("integration.training_service_path",
                       settings.integration.training_service_path)):
        if path is not None and not path.is_absolute():
            found.append((key, f"{path} is relative: it is {path.absolute()} from the "
                          "daemon's working directory"))
    if not settings.integration.validate_imports:
        found.append(("integration.validate_imports", "false: the quality gate is off, so "
                      "artifacts are accepted whatever their quality score (an artifact that "
                      "cannot be served correctly is still rejected)"))
    if not settings.integration.auto_import:
        found.append(("integration.auto_import", "false: new models are imported only on "
                      "request (POST /api/v1/model-management/import-latest, `modeld models "
                      "import`)"))
    if not settings.monitoring.drift_detection:
        found.append(("monitoring.drift_detection", "false: nothing watches the scored "
                      "records for drift"))
    if not settings.monitoring.performance_tracking:
        found.append(("monitoring.performance_tracking", "false: no per-version inference "
                      "metrics are kept (the dashboard's plots and check_model_drift's "
                      "indicators stay empty)"))
    alerting = settings.monitoring.alerting
    if alerting.enabled and alerting.webhook_url is None and not alerting.email_notifications:
        found.append(("monitoring.alerting.enabled", "true, but no channel is configured "
                      "(webhook_url, email_notifications): alerts are only logged"))
    if alerting.slack_notifications and alerting.webhook_url is None:
        found.append(("monitoring.alerting.slack_notifications", "true, but webhook_url is "
                      "not set: there is no Slack webhook to send to"))
    return found


def config_sections(path: Path | None) -> frozenset[str]:
    """The top-level sections a configuration file names (none when unreadable)."""
    if path is None:
        return frozenset()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return frozenset()
    return frozenset(data) if isinstance(data, dict) else frozenset()


def check_reload(path: Path | None, sections: frozenset[str], token: str | None,
                 new: Settings) -> None:
    """Refuse (ConfigError naming the key) a reload that a file caught mid-write would cause.

    Called by the main thread on SIGHUP after ``new`` loaded. An empty file is never "all
    defaults". A new file that removes or changes the bearer token ``token`` must be complete
    (every section the running file had, a final newline) and name ``api.token`` or
    ``api.token_file`` itself: a file cut before ``api:`` or inside the token is refused.
    """
    if path is None:
        return
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:  # changed again meanwhile
        raise ConfigError(str(path), f"cannot be read again: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(str(path), "the file is empty; a reload never falls back to all "
                          "defaults (the running configuration is kept)")
    if token is None or new.api_token() == token:
        return
    api = data.get("api")
    explicit = isinstance(api, dict) and ("token" in api or "token_file" in api)
    missing = sorted(sections - set(data))
    if not explicit or missing or not text.endswith("\n"):
        why = (f"sections {', '.join(missing)} are missing" if missing else
               "the file does not end with a newline" if not text.endswith("\n") else
               "api.token is not set in the file")
        raise ConfigError("api.token", "the new file would remove or change the API token "
                          f"but looks incomplete ({why}); the old token stays in force. Write "
                          "the whole file with api.token (or api.token_file) to change it")
