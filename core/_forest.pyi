"""Type stub for the compiled tree walk, TreeSHAP lookups and drift kernels, core/_forest.c
(see core/forest.py, core/explain.py and core/drift/).

The C code takes any buffer of the right item type; numpy arrays are what modeld passes.
"""

from typing import Any

import numpy as np
import numpy.typing as npt

class Forest:
    """An IsolationForest's node arrays, checked and packed for the walk."""

    def __init__(
        self,
        feature: npt.NDArray[np.integer[Any]],
        threshold: npt.NDArray[np.float32],
        left_child: npt.NDArray[np.integer[Any]],
        nan_goes_right: npt.NDArray[np.bool_],
        leaf_path_length: npt.NDArray[np.float64],
        roots: npt.NDArray[np.integer[Any]],
        n_levels: int,
        n_features: int,
    ) -> None: ...
    @property
    def n_trees(self) -> int: ...
    @property
    def n_features(self) -> int: ...
    def path_length_sums(
        self, x: npt.NDArray[np.float32], out: npt.NDArray[np.float64], /
    ) -> None: ...

class Patterns:
    """core/explain.py's TreeSHAP tables, checked and packed for one pass per record."""

    def __init__(
        self,
        test_feature: npt.NDArray[np.integer[Any]],
        test_threshold: npt.NDArray[np.float32],
        test_nan_right: npt.NDArray[np.bool_],
        test_goes_right: npt.NDArray[np.bool_],
        test_bit: npt.NDArray[np.integer[Any]],
        twig_tests: npt.NDArray[np.integer[Any]],
        slot_feature: npt.NDArray[np.integer[Any]],
        twig_slots: npt.NDArray[np.integer[Any]],
        twig_values: npt.NDArray[np.integer[Any]],
        values: npt.NDArray[np.float64],
        n_features: int,
    ) -> None: ...
    def add(self, x: npt.NDArray[np.float32], out: npt.NDArray[np.float64], /) -> None: ...

class Increments:
    """A drift engine's streams (core/drift/engine.py), checked and packed."""

    def __init__(
        self,
        table: npt.NDArray[np.float64],
        utable: npt.NDArray[np.float64],
        ctable: npt.NDArray[np.float64],
        columns: int,
        a_stat: npt.NDArray[np.integer[Any]],
        b_stat: npt.NDArray[np.integer[Any]],
        coef_a: npt.NDArray[np.float64],
        coef_b: npt.NDArray[np.float64],
    ) -> None: ...
    def add(
        self,
        codes: npt.NDArray[np.int64],
        flags: npt.NDArray[np.bool_],
        missing: npt.NDArray[np.bool_] | None,
        out: npt.NDArray[np.float64],
        /,
    ) -> None: ...
    def stream(
        self, codes: npt.NDArray[np.int64], k: int, out: npt.NDArray[np.float64], /
    ) -> None: ...

def mid_ranks(
    grid: npt.NDArray[np.float64],
    values: npt.NDArray[np.float64],
    first: int,
    out: npt.NDArray[np.int64],
    /,
) -> None: ...
def lindley(
    cusum: npt.NDArray[np.float64],
    increments: npt.NDArray[np.float64],
    peak: npt.NDArray[np.float64],
    /,
) -> None: ...
def given_matrix(
    records: list[object], names: tuple[str, ...], out: npt.NDArray[np.float64], /
) -> bool: ...
