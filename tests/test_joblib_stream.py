"""core/joblib_stream.py: joblib files read by the C unpickler are what joblib.load reads.

Real files written by joblib.dump in tmp_path, real estimators; every case compares against
joblib.load of the same file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.preprocessing import StandardScaler

from modeld.core.joblib_stream import load_joblib

# every kind the C path reads itself (native byte order, no subclass)
DTYPES = st.sampled_from(["<f8", "<f4", "<i8", "<i4", "u1", "?", "<c16"])


def same(a: Any, b: Any, where: str = "") -> None:
    """``b`` is ``a``: the same types (an array counts as an array), values and array layouts,
    all the way down."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), where
        assert (a.dtype, a.shape, a.flags.c_contiguous, a.flags.f_contiguous) == \
            (b.dtype, b.shape, b.flags.c_contiguous, b.flags.f_contiguous), where
        if a.dtype.names:  # field by field: the padding between fields is nobody's data
            for name in a.dtype.names:
                same(a[name], b[name], f"{where}.{name}")
        elif a.dtype.hasobject:
            same(a.tolist(), b.tolist(), where)
        else:
            assert a.tobytes("A") == b.tobytes("A"), where
        return
    assert type(a) is type(b), where
    if isinstance(a, type):
        assert a is b, where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    elif hasattr(a, "__getstate__") and hasattr(a, "__dict__"):
        same(a.__getstate__(), b.__getstate__(), where)
    elif hasattr(a, "__reduce__") and type(a).__module__.startswith("sklearn"):
        same(a.__reduce__()[1:], b.__reduce__()[1:], where)  # a Tree: its arrays
    else:
        assert a == b, where


@pytest.fixture
def joblib_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files load_joblib left to joblib.load (which still reads them)."""
    calls: list[Path] = []
    real = joblib.load

    def recorded(path: Path, *args: Any, **kwargs: Any) -> Any:
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(joblib, "load", recorded)
    return calls


def dumped(tmp_path: Path, obj: Any, **options: Any) -> Path:
    path = tmp_path / "m.joblib"
    joblib.dump(obj, path, **options)
    return path


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_fitted_estimators_read_as_joblib_reads_them(tmp_path: Path, protocol: int,
                                                     joblib_reads: list[Path]) -> None:
    rng = np.random.default_rng(protocol)
    rows = rng.normal(size=(200, 4))
    models = {"forest": IsolationForest(n_estimators=20, random_state=0).fit(rows),
              # a DataFrame's feature_names_in_: an object array, which joblib pickles as a
              # stream of its own
              "names": np.array(["a", "b", "c", "d"], dtype=object),
              "lof": LocalOutlierFactor(n_neighbors=10, novelty=True).fit(rows),
              "scaler": StandardScaler().fit(rows)}
    path = dumped(tmp_path, models, protocol=protocol)
    got, expected = load_joblib(path), joblib.load(path)
    assert joblib_reads == [path]  # the test's own read: load_joblib read it itself
    same(expected, got)
    probe = rng.normal(size=(50, 4))
    np.testing.assert_array_equal(got["forest"].score_samples(probe),
                                  expected["forest"].score_samples(probe))
    np.testing.assert_array_equal(got["lof"].score_samples(probe),
                                  expected["lof"].score_samples(probe))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrays=st.lists(hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                            max_side=6)), max_size=4),
       fortran=st.booleans(), protocol=st.integers(2, 5))
def test_any_arrays_read_as_joblib_reads_them(tmp_path: Path, joblib_reads: list[Path],
                                              arrays: list[np.ndarray], fortran: bool,
                                              protocol: int) -> None:
    if fortran:
        arrays = [np.asfortranarray(a) for a in arrays]
    obj = {"arrays": arrays, "shared": arrays[:1] * 2, "text": "x", "labels":
           np.array(["a", None, 3], dtype=object)}
    path = dumped(tmp_path, obj, protocol=protocol)
    got = load_joblib(path)
    assert not joblib_reads
    same(joblib.load(path), got)
    joblib_reads.clear()


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("case", ["compressed", "big-endian", "memmap", "matrix"])
def test_what_the_c_path_does_not_read_joblib_reads(tmp_path: Path, case: str,
                                                    joblib_reads: list[Path]) -> None:
    data = np.arange(12, dtype=np.float64).reshape(3, 4)
    obj, options = {
        "compressed": ({"a": data}, {"compress": 3}),
        "big-endian": ({"a": data.astype(">f8")}, {}),
        "memmap": ({"a": np.memmap(tmp_path / "mm", dtype=np.float64, mode="w+", shape=(3,))},
                   {}),
        "matrix": ({"a": np.asmatrix(data)}, {}),
    }[case]
    path = dumped(tmp_path, obj, **options)
    got = load_joblib(path)
    assert joblib_reads == [path]
    expected = joblib.load(path)
    assert type(got["a"]) is type(expected["a"])
    same(np.asarray(expected["a"]), np.asarray(got["a"]))


def test_an_array_read_this_way_pickles_as_a_plain_array(tmp_path: Path) -> None:
    got = load_joblib(dumped(tmp_path, {"a": np.arange(5.0)}))["a"]
    again = pickle.loads(pickle.dumps(got))
    assert type(again) is np.ndarray
    np.testing.assert_array_equal(again, np.arange(5.0))


def test_a_truncated_file_fails_as_unpickling_fails(tmp_path: Path) -> None:
    path = dumped(tmp_path, {"a": np.arange(1000.0)})
    path.write_bytes(path.read_bytes()[:4000])
    with pytest.raises((pickle.UnpicklingError, EOFError, ValueError)):
        load_joblib(path)
