"""CUSUM thresholds set from the reference itself, for a target false-alarm rate.

Each stream's threshold is the smallest whose Siegmund false-alarm rate, averaged over the
sampling error of a finite reference (Gauss-Hermite nodes), stays within its share of
``DriftConfig.target_arl0_records``. Pure numerics: arrays in, thresholds out.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
from scipy import special, stats

from modeld.core.drift.arrays import FloatArray

# Siegmund's correction for the overshoot of a CUSUM over its threshold, in units of the
# increment's standard deviation (2 * 0.583; exact for Gaussian increments, conservative for
# right-skewed ones, whose real overshoot is larger).
_OVERSHOOT: Final = 1.166
# Gauss-Hermite nodes and weights for E[f(Z)], Z ~ N(0, 1): used to average the false-alarm rate
# over the sampling error of a finite reference.
_GH_X, _GH_W = np.polynomial.hermite.hermgauss(7)
_NODES: Final[FloatArray] = _GH_X * math.sqrt(2.0)
_NODE_WEIGHTS: Final[FloatArray] = _GH_W / math.sqrt(math.pi)
# Bivariate-normal lattice for the null distribution of a pair product (deterministic, so that
# thresholds are reproducible across restarts).
_PAIR_LATTICE_HALF: Final = 20
_MAX_H: Final = 400.0


def _tilt_roots(values: FloatArray, log_weights: FloatArray,
                shifts: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per stream and node: theta > 0 with log E[exp(theta (V + shift))] = 0, mean and sd of V + shift.

    ``values`` (s, 1, a), ``log_weights`` (s, g or 1, a), ``shifts`` (s, g). theta is +inf when
    V + shift can never be positive (the CUSUM can never cross) and 0 when the mean is not
    negative (no positive root; the caller treats the stream as drifting).
    """
    weights = np.exp(log_weights)
    raw_mean = (weights * values).sum(-1)
    raw_var = np.maximum((weights * values * values).sum(-1) - raw_mean**2, 1e-300)
    mean = raw_mean + shifts
    reachable = np.where(weights > 0, values, -np.inf).max(-1) + shifts > 0
    solvable = (mean < 0) & reachable
    theta = np.where(solvable, 2.0 * np.abs(mean) / raw_var, 1.0)

    def tilt(th: FloatArray) -> tuple[FloatArray, FloatArray]:
        exponent = th[..., None] * values + log_weights
        top = exponent.max(-1, keepdims=True)
        e = np.exp(exponent - top)
        total = e.sum(-1)
        g = np.log(total) + top[..., 0] + th * shifts
        dg = (e * values).sum(-1) / total + shifts
        return g, dg

    g, dg = tilt(theta)
    for _ in range(80):  # double until right of the root: Newton then descends monotonically
        low = solvable & (g <= 0)
        if not low.any():
            break
        theta = np.where(low, theta * 2.0, theta)
        g, dg = tilt(theta)
    for _ in range(60):
        step = np.where(solvable & (dg > 0), g / np.where(dg > 0, dg, 1.0), 0.0)
        theta = np.maximum(theta - step, 1e-12)
        g, dg = tilt(theta)
        if np.all(np.abs(step) <= 1e-10 * np.maximum(theta, 1e-6)):
            break
    theta = np.where(solvable, theta, np.where(reachable, 0.0, np.inf))
    return theta, mean, np.sqrt(raw_var)


def _false_alarm_rate(h: FloatArray, theta: FloatArray, mean: FloatArray,
                      sd: FloatArray) -> FloatArray:
    """Siegmund's approximation, for general increments: 1 / ARL0 per stream and node."""
    b = h[:, None] + _OVERSHOOT * sd
    finite = np.isfinite(theta) & (theta > 0)
    th = np.where(finite, theta, 1.0)
    tb = np.minimum(th * b, 700.0)
    arl = (np.expm1(tb) - tb) / (th * np.abs(mean))
    drifting = np.where(mean > 0, b / np.maximum(mean, 1e-300), (b / sd) ** 2)
    arl = np.where(finite, arl, np.where(theta == 0, drifting, np.inf))
    return 1.0 / np.maximum(arl, 1.0)


def _thresholds(theta: FloatArray, mean: FloatArray, sd: FloatArray, node_weights: FloatArray,
                target_rate: FloatArray) -> FloatArray:
    """Smallest h whose false-alarm rate, averaged over the nodes, is at most ``target_rate``."""
    lo = np.zeros(theta.shape[0])
    hi = np.full(theta.shape[0], _MAX_H)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        rate = (_false_alarm_rate(mid, theta, mean, sd) * node_weights).sum(-1)
        too_many = rate > target_rate
        lo = np.where(too_many, mid, lo)
        hi = np.where(too_many, hi, mid)
    return hi


def calibrate(values: FloatArray, log_weights: FloatArray, shifts: FloatArray,
               node_weights: FloatArray, target_rate: FloatArray) -> FloatArray:
    theta, mean, sd = _tilt_roots(values[:, None, :], log_weights, shifts)
    return _thresholds(theta, mean, sd, node_weights, target_rate)


def _pair_lattice() -> tuple[FloatArray, FloatArray]:
    """Midpoint cells of width 0.2 over [-4, 4] for a standard normal, and their probabilities."""
    edges = np.linspace(-4.0, 4.0, 2 * _PAIR_LATTICE_HALF + 1)
    mids = (edges[:-1] + edges[1:]) / 2.0
    cdf = special.ndtr(edges)
    cdf[0], cdf[-1] = 0.0, 1.0  # the outer cells take the tails
    return mids, np.diff(cdf)


def _pair_null_atoms(spearman: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Null atoms (u, M) and log-weights (1, 1, M) of the product of two standardised uniform
    scores with the given Spearman correlations (under a Gaussian copula)."""
    mids, probs = _pair_lattice()
    first, second = (a.ravel() for a in np.meshgrid(mids, mids, indexing="ij"))
    weights = np.outer(probs, probs).ravel()
    r = 2.0 * np.sin(np.pi * spearman[:, None] / 6.0)  # Gaussian-copula correlation
    x = math.sqrt(3.0) * (2.0 * special.ndtr(first[None, :]) - 1.0)
    y = math.sqrt(3.0) * (2.0 * special.ndtr(r * first[None, :]
                                             + np.sqrt(1.0 - r * r) * second[None, :]) - 1.0)
    product = x * y
    product += spearman[:, None] - (product * weights).sum(axis=1, keepdims=True)
    return product, np.log(weights)[None, None, :]


def _jeffreys_nodes(events: float, n: int) -> FloatArray:
    """The Gauss-Hermite nodes mapped onto the Jeffreys posterior of a rate."""
    a = events + 0.5
    b = max(n - events, 0.0) + 0.5
    return np.asarray(stats.beta.ppf(special.ndtr(_NODES), a, b), dtype=np.float64)


def bernoulli_lr(p0: float, p1: float) -> tuple[float, float]:
    """(A, B) such that the log-likelihood ratio of one trial x in {0, 1} is A * x + B."""
    b = math.log((1.0 - p1) / (1.0 - p0))
    return math.log(p1 / p0) - b, b


def pair_coefficients(r: float, shift_design: float, sign: float) -> tuple[float, float]:
    """(A, B) of the log-likelihood ratio A * u1 u2 + B of a correlation stream at reference
    correlation ``r`` against ``r + sign * shift`` (the step scaled by the product's spread)."""
    s = math.sqrt(1.0 + r ** 2)
    step = shift_design / s
    return sign * step / s, -sign * step * r / s - step * step / 2.0


def false_alarm_budget(marginal_count: int, pair_count: int,
                       correlation_share: float, target_arl0: float) -> tuple[float, float]:
    """The false-alarm rate per marginal (and rate) stream and per pair stream.

    The pairs share ``correlation_share`` of the total ``1 / target_arl0``, the other streams
    the rest; a group that is alone takes it all."""
    total_rate = 1.0 / target_arl0
    pair_share = correlation_share if pair_count and marginal_count else (
        1.0 if pair_count else 0.0)
    marginal_rate = total_rate * (1.0 - pair_share) / max(marginal_count, 1)
    pair_rate = total_rate * pair_share / max(pair_count, 1)
    return marginal_rate, pair_rate


def _sampling_shifts(values: FloatArray, weights: FloatArray, n: FloatArray) -> FloatArray:
    """The increment means' sampling error of an ``n``-record reference, at the nodes."""
    sd_inc = np.sqrt(np.maximum((weights * values**2).sum(1)
                                - (weights * values).sum(1) ** 2, 0.0))
    shifts: FloatArray = (sd_inc / np.sqrt(n))[:, None] * _NODES[None, :]
    return shifts


def marginal_thresholds(values: FloatArray, pmf: FloatArray, n: FloatArray,
                        rate: float) -> FloatArray:
    """Thresholds of marginal streams: per stream the increment of each mid-rank code
    ``values`` (s, 2Q+1), the codes' null pmf (s, 2Q+1), the reference size ``n`` (s,)."""
    shifts = _sampling_shifts(values, pmf, n)
    with np.errstate(divide="ignore"):
        log_w = np.log(pmf)[:, None, :]
    return calibrate(values, log_w, shifts, _NODE_WEIGHTS, np.full(len(values), rate))


def rate_thresholds(streams: list[tuple[float, int, float, float]], rate: float) -> FloatArray:
    """Thresholds of Bernoulli streams ``(events, n, A, B)`` (increment A x + B), averaged over
    the reference rate's Jeffreys posterior."""
    values = np.asarray([[a + b, b] for _, _, a, b in streams])
    probs = np.stack([_jeffreys_nodes(events, n) for events, n, _, _ in streams])
    probs = np.clip(probs, 1e-300, 1.0 - 1e-16)
    log_w = np.log(np.stack([probs, 1.0 - probs], axis=-1))
    return calibrate(values, log_w, np.zeros_like(probs), _NODE_WEIGHTS,
                     np.full(len(values), rate))


def pair_thresholds(pair_r: FloatArray, n: int, shift_design: float,
                    rate: float) -> FloatArray:
    """Thresholds of the correlation streams, up and down per pair (interleaved), for pairs of
    reference correlations ``pair_r`` estimated from ``n`` rows."""
    # Pairs with (nearly) the same reference correlation share one calibration.
    rounded = np.round(pair_r, 2)
    unique, inverse = np.unique(rounded, return_inverse=True)
    atoms, log_w = _pair_null_atoms(unique)  # (u, M), (1, 1, M)
    weights = np.exp(log_w[0])
    result = np.empty(2 * pair_r.size)
    for sign_index, sign in enumerate((1.0, -1.0)):
        a = np.empty(unique.size)
        b = np.empty(unique.size)
        for u, r in enumerate(unique):
            a[u], b[u] = pair_coefficients(float(r), shift_design, sign)
        values = a[:, None] * atoms + b[:, None]
        shifts = _sampling_shifts(values, weights, np.asarray(float(max(n, 1))))
        h = calibrate(values, log_w, shifts, _NODE_WEIGHTS, np.full(unique.size, rate))
        result[sign_index::2] = h[inverse]
    return result


__all__ = ["bernoulli_lr", "calibrate", "false_alarm_budget", "marginal_thresholds",
           "pair_coefficients", "pair_thresholds", "rate_thresholds"]
