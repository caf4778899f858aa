"""Values placed against a reference: quantile levels, mid-rank codes and their score tables.

A reference distribution is kept as ``Q`` quantiles at levels ``(i + 0.5) / Q``. A value is coded
by its mid-rank against that grid, and the code indexes precomputed tables: the null
probability of each code, the standardised normal score the CUSUMs watch and the standardised
uniform (Spearman) score the correlations use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from modeld.core._forest import mid_ranks
from modeld.core.drift.arrays import BoolArray, FloatArray, IntArray


def quantile_levels(count: int) -> FloatArray:
    """The levels ``(i + 0.5) / count`` at which a reference keeps its quantiles."""
    return (np.arange(count, dtype=np.float64) + 0.5) / count


class RankTransform:
    """Maps values of F columns to mid-rank codes ``m = #(grid < x) + #(grid <= x)`` in [0, 2Q].

    A code is returned as ``column * stride + m`` with ``stride = 2Q + 2``, so one ``take``
    from a ``flat_table`` serves a record of any width. The search is the compiled
    ``mid_ranks`` (core/_forest.c): a binary search inside the value's own column's grid,
    exact for ties and for values however close.
    """

    def __init__(self, grids: FloatArray) -> None:
        columns, q = grids.shape
        self.columns = columns
        self.levels = q
        self.stride = 2 * q + 2
        # quantiles are sorted; rounding in their making must not break the order searched
        self._grid = np.ascontiguousarray(np.maximum.accumulate(grids, axis=1), dtype=np.float64)
        self.fill = self._grid[:, q // 2].copy()

    def flat_table(self, table: FloatArray) -> FloatArray:
        """A per-column table (F, 2Q+1) laid out for indexing by ``flat_codes``."""
        padded = np.zeros((self.columns, self.stride))
        padded[:, : self.stride - 1] = table
        return padded.ravel()

    def flat_codes(self, values: FloatArray) -> IntArray:
        """Index ``column * stride + m`` for finite values of shape (n, columns)."""
        codes = np.empty(values.shape, dtype=np.int64)
        mid_ranks(self._grid, np.ascontiguousarray(values, dtype=np.float64), 0, codes)
        return codes


def _normal_score_table(levels: int) -> FloatArray:
    codes = np.arange(2 * levels + 1, dtype=np.float64)
    return np.asarray(special.ndtri((codes + 1.0) / (2.0 * levels + 2.0)), dtype=np.float64)


def _code_pmf(grid: FloatArray, oversample: int = 8) -> FloatArray:
    """Null distribution of the mid-rank code for a value drawn from the reference.

    The reference is the piecewise-linear quantile function through the grid: flat (an atom)
    where grid values tie, continuous elsewhere. A tail beyond the outermost grid point is an atom
    when the two outermost grid values tie, a continuous tail otherwise.
    """
    q = grid.size
    fine = quantile_levels(oversample * q)
    values = np.interp(fine, quantile_levels(q), grid)
    if grid[0] != grid[1]:
        values[fine < 0.5 / q] = -np.inf
    if grid[-1] != grid[-2]:
        values[fine > 1.0 - 0.5 / q] = np.inf
    codes = np.searchsorted(grid, values, side="left") + np.searchsorted(grid, values,
                                                                          side="right")
    return np.bincount(codes, minlength=2 * q + 1).astype(np.float64) / fine.size


@dataclass(frozen=True, slots=True)
class ColumnTables:
    """Per column, per mid-rank code: the null pmf and the two standardised scores."""

    pmf: FloatArray  # (F, 2Q+1)
    normal: FloatArray  # (F, 2Q+1) normal scores, mean 0 and sd 1 under the reference
    uniform: FloatArray  # (F, 2Q+1) uniform (Spearman) scores, mean 0 and sd 1
    normal_sd: FloatArray  # (F,) sd of the raw normal score; 0 for a constant column


def _standardise(table: FloatArray, pmf: FloatArray) -> tuple[FloatArray, FloatArray]:
    mean = pmf @ table
    sd = np.sqrt(np.maximum(pmf @ table**2 - mean**2, 0.0))
    return (table[None, :] - mean[:, None]) / np.where(sd > 1e-9, sd, 1.0)[:, None], sd


def column_tables(grids: FloatArray, present: BoolArray,
                  code_counts: Sequence[FloatArray | None] | None = None) -> ColumnTables:
    """The tables of reference grids (F, Q); a column not ``present`` has a zero pmf.

    A column with ``code_counts`` (its reference sample counted by code) gets their exact
    pmf, ties and all; the others the pmf of the quantile function through the grid."""
    columns, q = grids.shape
    pmf = np.zeros((columns, 2 * q + 1))
    for c in np.flatnonzero(present).tolist():
        counts = None if code_counts is None else code_counts[c]
        pmf[c] = _code_pmf(grids[c]) if counts is None else counts / counts.sum()
    normal, sd = _standardise(_normal_score_table(q), pmf)
    codes = np.arange(2 * q + 1, dtype=np.float64)
    uniform, _ = _standardise((codes + 1.0) / (q + 1.0) - 1.0, pmf)
    return ColumnTables(pmf, normal, uniform, sd)


__all__ = ["ColumnTables", "RankTransform", "column_tables", "quantile_levels"]
