"""``DriftConfig``: the tuning of a ``DriftDetector``, from the daemon's ``monitoring`` settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from modeld.core.errors import ConfigError


def _config_error(name: str, problem: str) -> ConfigError:
    return ConfigError(f"monitoring.{name}", problem)


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """Tuning of one ``DriftDetector``; the defaults are what the benchmark measured.

    Built by the daemon from its ``monitoring`` settings (``from_mapping``); raises
    ``ConfigError`` on a value that cannot work. ``drift_threshold`` keeps the seed's name: it was
    "a 10% change of the mean score"; here it is the minimum effect size (Wasserstein distance
    divided by the reference's standard deviation; for rates the change of rate divided by the
    reference rate's standard deviation; for correlations the change of correlation) that a
    significant windowed test must reach to be reported as drift.
    """

    baseline_records: int = 2000
    drift_threshold: float = 0.1
    alpha: float = 0.01
    window_records: int = 5000
    min_window_records: int = 500
    target_arl0_records: float = 50_000.0
    mean_shift_design: float = 0.5
    variance_ratio_design: float = 1.5
    rate_ratio_design: float = 2.0
    invalid_rate_design: float = 0.01
    correlation_shift_design: float = 0.4
    correlation_budget_share: float = 0.2
    max_correlation_pairs: int = 190
    cooldown_records: int = 2000
    cooldown_seconds: float = 0.0
    latency_warn_ratio: float = 1.5
    reference_levels: int = 256

    def __post_init__(self) -> None:
        positive_ints = ("baseline_records", "window_records", "min_window_records",
                         "reference_levels")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise _config_error(name, "must be at least 1")
        if self.baseline_records < 200:
            raise _config_error("baseline_records", "must be at least 200 for a usable reference")
        if self.reference_levels < 16:
            raise _config_error("reference_levels", "must be at least 16")
        if self.min_window_records > self.window_records:
            raise _config_error("min_window_records", "must not exceed window_records")
        if not 0.0 < self.alpha < 1.0:
            raise _config_error("alpha", "must be in (0, 1)")
        if not 0.0 <= self.correlation_budget_share < 1.0:
            raise _config_error("correlation_budget_share", "must be in [0, 1)")
        if self.target_arl0_records < 100:
            raise _config_error("target_arl0_records", "must be at least 100")
        if self.variance_ratio_design <= 1.0:
            raise _config_error("variance_ratio_design", "must be above 1")
        if self.rate_ratio_design <= 1.0:
            raise _config_error("rate_ratio_design", "must be above 1")
        for name in ("drift_threshold", "mean_shift_design", "invalid_rate_design",
                     "correlation_shift_design", "latency_warn_ratio"):
            if not getattr(self, name) > 0.0:
                raise _config_error(name, "must be positive")
        if self.cooldown_records < 0 or self.cooldown_seconds < 0:
            raise _config_error("cooldown_records", "cooldowns must not be negative")
        if self.max_correlation_pairs < 0:
            raise _config_error("max_correlation_pairs", "must not be negative")

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> DriftConfig:
        """Build from the ``monitoring`` settings; unknown keys are ignored (they belong to others)."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in settings.items():
            if key in known:
                try:
                    values[key] = type(getattr(cls(), key))(value)
                except (TypeError, ValueError) as exc:
                    raise _config_error(key, f"cannot use {value!r}: {exc}") from exc
        return cls(**values)


__all__ = ["DriftConfig"]
