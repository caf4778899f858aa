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
    itself is not thread-safe. Memory never grows past the array, and its pages become
    resident as rows are written, not when the ring is built: a version's monitors hold rings
    of 5,000 records (about 0.75 MiB for four features, measured), which a loaded version that
    scores little (a fallback) would otherwise hold resident from its load on. Only written
    slots are ever read; ``skip`` writes ``fill`` into the slots it passes for the first time.
    A batch longer than the ring keeps only its newest ``capacity`` rows. Writing a row of the
    wrong shape raises numpy's ``ValueError`` (a caller bug).
    """

    __slots__ = ("_fill", "_rows", "_touched", "capacity", "row_shape", "written")

    def __init__(self, capacity: int, row_shape: tuple[int, ...] = (),
                 dtype: DTypeLike = np.float64, fill: Any = 0.0) -> None:
        if capacity < 1:
            raise ValueError("a ring holds at least 1 row")
        self._rows: NDArray[Any] = np.empty((capacity, *row_shape), dtype=dtype)
        self._fill = fill
        # Slots below this were written once (rows fill from slot 0 on), before a ``clear``.
        self._touched = 0
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
        """Advance past ``n`` rows that have no value in this ring (their slots keep old rows,
        or hold ``fill`` when never written), so that it stays in step with rings that did
        receive them."""
        touched = max(self._touched, min(self.written, self.capacity))
        end = min(self.written + n, self.capacity)
        if end > touched:
            self._rows[touched:end] = self._fill
        self._touched = max(touched, end)
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
        self._touched = max(self._touched, min(self.written, self.capacity))
        self.written = 0


__all__ = ["Ring"]
