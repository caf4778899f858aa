"""The one ring buffer of the scoring side: the newest ``capacity`` rows of a stream.

``ScoringWindow`` (core/monitor.py) keeps recent scores, flags, features and latencies in rings
for its quantiles; ``DriftDetector`` (core/drift/) keeps the evaluation window of its windowed
tests in rings. Several rings written together (scores and flags of the same records) stay in
step because each write advances every ring by the same number of rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray


class Ring:
    """The newest ``capacity`` rows of a stream, in one array allocated at construction.

    Written on the scoring path (``append`` for one row, ``extend`` for a batch) and read by the
    scheduler or the HTTP layer (``held``, ``recent``), always under the owner's lock: the ring
    itself is not thread-safe. Memory never grows. A batch longer than the ring keeps only its
    newest ``capacity`` rows. Writing a row of the wrong shape raises numpy's ``ValueError``
    (a caller bug).
    """

    __slots__ = ("_rows", "capacity", "row_shape", "written")

    def __init__(self, capacity: int, row_shape: tuple[int, ...] = (),
                 dtype: DTypeLike = np.float64, fill: Any = 0.0) -> None:
        if capacity < 1:
            raise ValueError("a ring holds at least 1 row")
        self._rows: NDArray[Any] = np.full((capacity, *row_shape), fill, dtype=dtype)
        self.capacity = capacity
        self.row_shape = tuple(row_shape)
        # Rows offered since construction or ``clear``; the write position is this modulo the
        # capacity, so rings written in step stay aligned whatever the batch sizes.
        self.written = 0

    @property
    def held(self) -> int:
        """How many rows the ring holds now."""
        return min(self.written, self.capacity)

    def append(self, row: Any) -> None:
        """Write one row (the common case on the scoring path: one index, no allocation)."""
        written = self.written
        self._rows[written % self.capacity] = row
        self.written = written + 1

    def extend(self, rows: NDArray[Any]) -> None:
        """Write a batch, oldest row first; only the newest ``capacity`` rows are kept."""
        n = rows.shape[0]
        cap = self.capacity
        start = self.written % cap
        if n <= cap - start:  # the common case: no wrap
            self._rows[start:start + n] = rows
        else:
            kept = rows[-cap:] if n > cap else rows
            start = (self.written + n - kept.shape[0]) % cap
            first = cap - start
            self._rows[start:] = kept[:first]
            self._rows[: kept.shape[0] - first] = kept[first:]
        self.written += n

    def skip(self, n: int) -> None:
        """Advance past ``n`` rows that have no value in this ring (their slots keep old rows),
        so that it stays in step with rings that did receive them."""
        self.written += n

    def held_rows(self) -> NDArray[Any]:
        """The rows held now, as a view in storage order: arrival order until the ring wraps,
        rotated after. For statistics that do not depend on order (sorts, counts, means)."""
        return self._rows[: self.held]

    def recent(self, last: int) -> NDArray[Any]:
        """The newest ``last`` rows (fewer if fewer are held), oldest first, as a copy."""
        count = min(last, self.held)
        index = (self.written - count + np.arange(count)) % self.capacity
        recent: NDArray[Any] = self._rows[index]
        return recent

    def clear(self) -> None:
        """Forget every row (their slots are overwritten before they are read again)."""
        self.written = 0


__all__ = ["Ring"]
