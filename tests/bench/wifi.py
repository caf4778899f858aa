"""The WiFi model the benchmarks share: the IsolationForest modeld's own trainer makes (100
trees, the default feature set) on a week of simulated access-point logs, and feature rows of
traffic it did not see. Imported by the scripts beside it (run as files, not as a package)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import joblib
import numpy as np
import numpy.typing as npt
from sklearn.ensemble import IsolationForest

from modeld.core.features import FeatureExtractor
from modeld.daemon.producer.simulator import simulate_wifi_logs
from modeld.daemon.producer.trainer import DEFAULT_FEATURES, train_artifact

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)


def wifi_model(records: int = 6000) -> tuple[IsolationForest, npt.NDArray[np.float64]]:
    """The trained model and the feature rows of the week it was trained on."""
    logs = simulate_wifi_logs(records, NOW - timedelta(days=7), seed=1, anomaly_burst=True)
    artifact = train_artifact(logs, n_estimators=100, version="bench", now=NOW)
    model: IsolationForest = joblib.load(io.BytesIO(artifact.files["model.joblib"]))
    return model, FeatureExtractor(DEFAULT_FEATURES).transform(logs)


def wifi_traffic(records: int) -> npt.NDArray[np.float64]:
    """Feature rows of the following days on another seed, with a scenario kept out of every
    tuning loop (a roaming storm) in it: what the model scores in production."""
    logs = simulate_wifi_logs(records, NOW, seed=7, anomaly_burst=True, scenario="roaming_storm")
    return FeatureExtractor(DEFAULT_FEATURES).transform(logs)
