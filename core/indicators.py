"""The seed plan's three drift indicators, from modeld's statistics.

The plan's ``check_model_drift`` answers an anomaly-rate change, a score-distribution change and
an inference-time change. modeld reports all three with every scheduled drift evaluation, but
only the first two describe the data: inference time is an operational signal (a loaded
machine, a bigger batch), so it is reported beside them and never counts toward
``drift_score`` or a drift verdict. Plain computation: the daemon's monitoring job calls
:func:`drift_indicators` when it evaluates and :func:`plan_drift_check` when a reader asks.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

# the indicators that describe the data (their mean is the plan's drift_score)
DATA_INDICATORS: Final = ("anomaly_rate_change", "score_distribution_change")
# reported beside them, never drift
OPERATIONAL_INDICATORS: Final = ("inference_time_change",)
# before a version's first evaluation (copy it: it is a plain dict)
NO_INDICATORS: Final = dict.fromkeys((*DATA_INDICATORS, *OPERATIONAL_INDICATORS), 0.0)


def relative_change(recent: float, before: float) -> float:
    """``|recent - before| / |before|``, the seed plan's drift indicator; 0 without a base."""
    if not (math.isfinite(recent) and math.isfinite(before)) or before == 0:
        return 0.0
    return abs(recent - before) / abs(before)


def halves_change(values: NDArray[np.float64]) -> float:
    """The relative change of the mean from the older half of ``values`` to the newer half."""
    values = values[np.isfinite(values)]
    if len(values) < 20:  # the plan's minimum of ten against ten
        return 0.0
    middle = len(values) // 2
    return relative_change(float(values[middle:].mean()), float(values[:middle].mean()))


def drift_indicators(*, score_effect: float | None, flags: NDArray[np.bool_],
                     reference_rate: float | None,
                     latencies: NDArray[np.float64]) -> dict[str, float]:
    """The plan's three indicators: the anomaly rate's relative change (the window against the
    reference rate, else its older half), the score distribution's change (modeld's effect
    size: Wasserstein distance over the reference's standard deviation) and the inference
    time's relative change (newer half of the recent requests against the older)."""
    rates = flags.astype(np.float64)
    if reference_rate is not None and len(rates):
        rate_change = relative_change(float(rates.mean()), reference_rate)
    else:
        rate_change = halves_change(rates)
    return {
        "anomaly_rate_change": round(rate_change, 6),
        "score_distribution_change": round(score_effect or 0.0, 6),
        "inference_time_change": round(halves_change(latencies), 6),
    }


def plan_drift_check(*, drift_detected: bool, indicators: dict[str, float],
                     threshold: float) -> dict[str, Any]:
    """The seed plan's ``check_model_drift`` answer. ``drift_detected`` is modeld's verdict
    (its drift report says ``drift``); ``drift_score`` is the mean of the data indicators as
    in the plan, without the inference time (``operational_indicators`` lists it)."""
    drift_score = round(float(np.mean([indicators.get(k, 0.0) for k in DATA_INDICATORS])), 6)
    return {"drift_detected": drift_detected, "drift_score": drift_score,
            "confidence": min(drift_score, 1.0), "indicators": dict(indicators),
            "operational_indicators": list(OPERATIONAL_INDICATORS), "threshold": threshold}
