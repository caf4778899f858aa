"""Reading a joblib file with pickle's C unpickler.

``joblib.load`` unpickles with pickle's pure-Python ``_Unpickler``: joblib writes each numpy
array's bytes into the stream right after a ``NumpyArrayWrapper`` object and reads them back
by overriding the BUILD opcode, which only the Python unpickler allows. For an
IsolationForest of 60 trees that is 20-37 ms, tens of thousands of opcodes at a Python call
each, and it is most of a canary child's time (``daemon/jobs/sandbox.py``).

:func:`load_joblib` reads the same stream with the C unpickler. The wrapper's class is
resolved to :class:`_StreamedArray`, an ndarray subclass: BUILD hands it the wrapper's state
(shape, order, dtype, alignment), and its ``__setstate__`` reads the array's bytes that follow
and becomes that array, as numpy's own unpickling does with the bytes of a pickled array. The
file is read without ``peek``, so the C unpickler reads exactly what it parses and the file's
position is always right after the BUILD it is executing (joblib ends a frame right before an
array's bytes). What this does not read as joblib would, it leaves to ``joblib.load``: a
compressed file, the formats of joblib before 0.10, a wrapped array that is a subclass
(``np.memmap``, ``np.matrix``) or of the other byte order.

Unpickling runs whatever code the file names, here as with joblib: only behind the checks of
``core/trust.py`` and ``core/loader.py``.
"""

from __future__ import annotations

import io
import math
import pickle
import threading
from pathlib import Path
from typing import Any

import numpy as np

PICKLE_PROTOCOL_2_OR_LATER = b"\x80"  # a compressed file starts with its compressor's magic
_WRAPPER = ("joblib.numpy_pickle", "NumpyArrayWrapper")
_reading = threading.local()  # the stream the current thread's load reads arrays from


class _NotStreamable(Exception):
    """What the stream holds is for ``joblib.load`` to read."""


class _Stream:
    """The open file as the C unpickler sees it: no ``peek``, so it never reads ahead."""

    __slots__ = ("read", "readinto", "readline")

    def __init__(self, file: io.BufferedReader) -> None:
        self.read, self.readinto, self.readline = file.read, file.readinto, file.readline


class _StreamedArray(np.ndarray):
    """Stands for joblib's ``NumpyArrayWrapper`` in the C unpickler: created empty by the
    wrapper's NEWOBJ, it becomes the array when BUILD gives it the wrapper's state."""

    __slots__ = ()

    def __new__(cls, *_args: Any) -> _StreamedArray:
        return np.ndarray.__new__(cls, (0,), np.uint8)

    def __setstate__(self, state: Any) -> None:
        stream: _Stream = _reading.stream
        dtype = np.dtype(state["dtype"])
        shape = tuple(int(n) for n in state["shape"])
        if state.get("subclass", np.ndarray) is not np.ndarray or not dtype.isnative:
            raise _NotStreamable
        if dtype.hasobject:  # joblib pickles these as a stream of their own
            array = _Unpickler(stream).load()
            np.ndarray.__setstate__(self, array.__reduce__()[2])
            return
        if state.get("numpy_array_alignment_bytes") is not None:  # joblib >= 1.2 pads
            padding = stream.read(1)
            if len(padding) != 1:
                raise pickle.UnpicklingError("the file ends inside an array's padding")
            stream.read(padding[0])
        size = math.prod(shape) * dtype.itemsize
        data = stream.read(size)
        if len(data) != size:
            raise pickle.UnpicklingError(
                f"the file ends inside an array: {len(data)} of {size} bytes")
        np.ndarray.__setstate__(self, (1, shape, dtype, state.get("order") == "F", data))

    def __reduce__(self) -> Any:
        return np.asarray(self).__reduce__()  # pickled again as the plain array it is


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == _WRAPPER:
            return _StreamedArray
        if module.startswith("joblib."):  # the formats of joblib before 0.10, and the like
            raise _NotStreamable
        return super().find_class(module, name)


def load_joblib(path: Path) -> Any:
    """The object in the joblib file at ``path``, as ``joblib.load(path)`` returns it, with
    its arrays read by the C unpickler (see the module docstring); what it cannot read that
    way, joblib reads. Raises what unpickling the file raises."""
    with path.open("rb") as file:
        if file.read(1) == PICKLE_PROTOCOL_2_OR_LATER:
            file.seek(0)
            _reading.stream = stream = _Stream(file)
            try:
                return _Unpickler(stream).load()
            except _NotStreamable:
                pass
            finally:
                del _reading.stream
    import joblib

    return joblib.load(path)
