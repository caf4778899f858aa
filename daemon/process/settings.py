"""modeld's configuration: a YAML file, overridden by ``MODELD_`` environment variables.

The main thread loads it at startup and again on SIGHUP; a configuration that fails to load
raises :class:`modeld.core.errors.ConfigError` naming the first wrong key, and the caller keeps what it
had (at startup: exit status 2).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
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
from modeld.core.shadow import GatePolicy
from modeld.core.trust import load_public_key
from modeld.core.validate import ValidationPolicy
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


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Section):
    """How models are judged and how their scores become flags."""

    min_quality_score: float = Field(0.6, ge=0.0, le=1.0)
    anomaly_threshold: float | None = None
    confidence_threshold: float | None = Field(None, ge=0.0, le=1.0)
    warmup_rows: int = Field(16, ge=1, le=10_000)
    max_age_warning_days: float = Field(7, gt=0)
    max_age_stale_days: float = Field(30, gt=0)
    min_estimators: int = Field(50, ge=1)

    def validation_policy(self) -> ValidationPolicy:
        return ValidationPolicy(
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
    compression: bool = False

    @field_validator("compression")
    @classmethod
    def _no_compression(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "compression is not supported: versions are stored byte for byte as delivered "
                "so that their recorded checksums stay verifiable; set it to false"
            )
        return value


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

    drift_detection: bool = True
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
    resource_monitoring: bool = True
    model_health_checks: bool = True
    health_check_interval: float = Field(300, gt=0)
    metrics_flush_interval: float = Field(60, gt=0)
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
    format: Literal["auto", "json", "console"] = "auto"
    file: Path | None = None
    rotation: RotationSettings = RotationSettings()

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class ApiSettings(_Section):
    """The HTTP API."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: str | None = None
    token_file: Path | None = None
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_records: int = Field(10_000, ge=1)

    @field_validator("max_request_bytes", mode="before")
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


class Settings(BaseSettings):
    """The whole configuration. Environment variables (``MODELD_API__PORT``) beat the file."""

    model_config = SettingsConfigDict(
        env_prefix="MODELD_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    model: ModelSettings = ModelSettings()
    storage: StorageSettings = StorageSettings()
    integration: IntegrationSettings = IntegrationSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    logging: LoggingSettings = LoggingSettings()
    api: ApiSettings = ApiSettings()
    security: SecuritySettings = SecuritySettings()

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
