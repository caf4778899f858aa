"""Type stub for the compiled tree walk and TreeSHAP lookups, core/_forest.c (see
core/forest.py and core/explain.py).

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
