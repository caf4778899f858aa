"""Drift detection for one deployed model version, judged against that version's reference.

Two detectors share one reference (see docs/drift.md for the statistics and the numbers):

- a streaming detector, updated for every scored record in O(1) memory: each value is mapped
  through the reference CDF (exact for ties) to a normal score, and likelihood-ratio CUSUMs
  watch each feature and the anomaly score for mean and spread changes, each pair of features
  for a correlation change, and 0/1 features, the anomaly flag and the missing/invalid flag as
  Bernoulli rates; a model that sees the hour is judged like hour to like hour (seasonal.py). Thresholds are set from
  the reference itself so that the whole set of CUSUMs raises a false alarm about once every
  ``DriftConfig.target_arl0_records`` records;
- a windowed test run by ``DriftDetector.evaluate`` on the scheduler's tick: Kolmogorov-Smirnov
  per feature and for the score, exact tests for the rates, Fisher's z for correlations, Holm's
  correction across signals, and an effect-size gate (``drift_threshold``) so that large windows
  do not alarm on trivial differences.

Everything here is plain computation: no threads, no I/O, no clock (``now`` is an argument).
One module per concern, each importing only those above it:

- ``arrays``: the array types and their JSON form;
- ``config``: ``DriftConfig``;
- ``ranks``: quantile levels, mid-rank codes against a reference grid, their score tables;
- ``seasonal``: the daily cycle: which part of the reference judges a record (clock features
  are the key, not data);
- ``reference``: ``Reference`` and its parts (per part of the day too), ``BaselineCollector``;
- ``calibration``: CUSUM thresholds for a target false-alarm rate;
- ``engine``: the CUSUM streams compiled for one reference (``Engine``);
- ``results``: ``DriftAlarm``, ``SignalResult``, ``DriftReport``;
- ``windowed``: the windowed tests (the one KS test, Fisher, Fisher's z, Holm);
- ``wording``: an alarm in the signal's own units;
- ``detector``: ``DriftDetector``, which owns the state, the episodes of change and the
  evaluation window.

Callers import the public names from here.
"""

from __future__ import annotations

from modeld.core.drift.config import DriftConfig
from modeld.core.drift.detector import DriftDetector
from modeld.core.drift.reference import (
    BaselineCollector,
    Correlation,
    Distribution,
    Rate,
    Reference,
)
from modeld.core.drift.results import DriftAlarm, DriftReport, SignalResult

__all__ = [
    "BaselineCollector",
    "Correlation",
    "Distribution",
    "DriftAlarm",
    "DriftConfig",
    "DriftDetector",
    "DriftReport",
    "Rate",
    "Reference",
    "SignalResult",
]
