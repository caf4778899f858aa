"""daemon/sandbox.py: the canary load in a child process, with real misbehaving models.

The hostile models are real pickles whose load hangs, segfaults or allocates too much, and a
real estimator that scores NaN. The child imports this module to unpickle ``NanScorer``, so it
must stay importable as ``tests.test_sandbox`` (the project root is on the child's path).
"""

from __future__ import annotations

import ctypes
import json
import os
import pathlib
import resource
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import skops.io as sio
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modeld.core.errors import ArtifactInvalid, ArtifactUntrusted
from modeld.core.loader import LoadPolicy
from modeld.daemon.jobs.sandbox import Zygote, canary_load
from tests.helpers import metadata, records

GIB = 1024**3
LIMITS: dict[str, Any] = {"time_limit": 30.0, "memory_limit_bytes": GIB}
WIDTH = 4


class NanScorer:
    """A fitted-looking estimator whose scores are all NaN."""

    n_features_in_ = WIDTH

    def score_samples(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), np.nan)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.ones(len(x))


class Reduces:
    """Pickles to an arbitrary call: what a hostile model.joblib does on load."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.call = (func, args)

    def __reduce__(self) -> tuple[Any, ...]:
        return self.call


def write_artifact(folder: Path, model: Any, *, scaler: Any = None, skops: bool = False,
                   **meta: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if skops:
        sio.dump(model, folder / "model.skops")
    else:
        joblib.dump(model, folder / "model.joblib")
    if scaler is not None:
        joblib.dump(scaler, folder / "scaler.joblib")
    (folder / "metadata.json").write_text(json.dumps(metadata("v1", **meta)))
    return folder


def fitted_forest() -> IsolationForest:
    x = np.random.default_rng(0).normal(size=(200, WIDTH))
    return IsolationForest(n_estimators=10, random_state=0).fit(x)


@pytest.fixture(autouse=True)
def parent_unaffected() -> Any:
    """Whatever the child does, this process keeps its limits and has no alarm armed."""
    limits = {kind: resource.getrlimit(kind) for kind in (resource.RLIMIT_AS,
                                                          resource.RLIMIT_CPU,
                                                          resource.RLIMIT_FSIZE)}
    yield
    assert {kind: resource.getrlimit(kind) for kind in limits} == limits
    assert signal.alarm(0) == 0


def test_a_good_model_passes_with_its_scaler_and_warmup_records(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(loc=5, scale=3, size=(200, WIDTH))
    scaler = StandardScaler().fit(data)
    model = IsolationForest(n_estimators=10, random_state=0).fit(scaler.transform(data))
    warmup = records(5, seed=2)
    folder = write_artifact(tmp_path / "a", model, scaler=scaler, warmup=warmup)
    result = canary_load(folder, loader_spec=LoadPolicy(), **LIMITS)
    assert result.model_type == "IsolationForest"
    assert result.rows == 5
    rows = np.array([[r["features"][f"x{i}"] for i in range(WIDTH)] for r in warmup])
    np.testing.assert_allclose(result.scores, model.score_samples(scaler.transform(rows)))
    assert 0 < result.peak_rss_bytes < LIMITS["memory_limit_bytes"]


def test_a_skops_model_passes_with_pickle_refused(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(200, WIDTH))
    lof = LocalOutlierFactor(novelty=True, n_neighbors=10).fit(x)
    folder = write_artifact(tmp_path / "a", lof, skops=True, model_type="LocalOutlierFactor")
    result = canary_load(folder, loader_spec=LoadPolicy(allow_pickle=False), sample_rows=7,
                         expected_digests=_digests(folder), **LIMITS)
    assert (result.model_type, result.rows, len(result.scores)) == ("LocalOutlierFactor", 7, 7)


def test_a_model_whose_load_hangs_is_killed_at_the_time_limit(tmp_path: Path) -> None:
    folder = write_artifact(tmp_path / "a", Reduces(time.sleep, 600))
    started = time.monotonic()
    with pytest.raises(ArtifactInvalid, match=r"^.*: timed out after 3 s$"):
        canary_load(folder, loader_spec=LoadPolicy(), time_limit=3, memory_limit_bytes=GIB)
    assert time.monotonic() - started < 15


def test_a_model_that_segfaults_is_rejected(tmp_path: Path) -> None:
    folder = write_artifact(tmp_path / "a", Reduces(ctypes.string_at, 0))
    with pytest.raises(ArtifactInvalid, match=r"^.*: killed by signal SIGSEGV$"):
        canary_load(folder, loader_spec=LoadPolicy(), **LIMITS)


def test_a_model_that_allocates_too_much_runs_out_of_memory(tmp_path: Path) -> None:
    # 3 GiB would fit in this machine's memory: only the child's limit (the same 1 GiB under
    # which the good models above pass) stops it.
    folder = write_artifact(tmp_path / "a", Reduces(bytearray, 3 * GIB))
    with pytest.raises(ArtifactInvalid, match=rf"^.*: ran out of memory \(limit {GIB} bytes\)$"):
        canary_load(folder, loader_spec=LoadPolicy(), **LIMITS)


def test_a_model_that_scores_nan_is_rejected(tmp_path: Path) -> None:
    folder = write_artifact(tmp_path / "a", NanScorer())
    with pytest.raises(ArtifactInvalid, match="scored non-finite values"):
        canary_load(folder, loader_spec=LoadPolicy(), **LIMITS)


def test_a_model_that_cannot_be_loaded_is_rejected_with_the_error(tmp_path: Path) -> None:
    folder = write_artifact(tmp_path / "a", fitted_forest())
    (folder / "model.joblib").write_bytes(b"not a pickle")
    with pytest.raises(ArtifactInvalid, match=r"load failed: model\.joblib: "):
        canary_load(folder, loader_spec=LoadPolicy(), **LIMITS)


def test_the_child_uses_the_parents_skops_allowlist(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(100, WIDTH))
    pipeline = make_pipeline(StandardScaler(), IsolationForest(n_estimators=3)).fit(x)
    folder = write_artifact(tmp_path / "a", pipeline, skops=True)
    with pytest.raises(ArtifactUntrusted, match=r"sklearn\.pipeline\.Pipeline"):
        canary_load(folder, loader_spec=LoadPolicy(allow_pickle=False), **LIMITS)


def test_pickle_refused_never_starts_a_child_nor_runs_the_pickle(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    folder = write_artifact(tmp_path / "a", Reduces(pathlib.Path.touch, sentinel))
    started = time.monotonic()
    with pytest.raises(ArtifactUntrusted, match=r"security\.allow_pickle is false: model\.joblib"):
        canary_load(folder, loader_spec=LoadPolicy(allow_pickle=False), **LIMITS)
    assert time.monotonic() - started < 0.5  # refused before any process was started
    assert not sentinel.exists()


def test_a_model_that_changes_its_folder_while_loading_is_untrusted(tmp_path: Path) -> None:
    folder = tmp_path / "a"
    write_artifact(folder, Reduces(pathlib.Path.write_bytes, folder / "metadata.json", b"{}"))
    with pytest.raises(ArtifactUntrusted, match=r"the canary changed metadata\.json"):
        canary_load(folder, loader_spec=LoadPolicy(), expected_digests=_digests(folder),
                    **LIMITS)


def _digests(folder: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_processes_the_model_starts_are_killed_with_the_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    folder = write_artifact(tmp_path / "a", Reduces(os.system, f"sleep 600 & echo $! > {pid_file}"))
    # nothing to score (the load returned an int): validation will say so; the canary passes
    result = canary_load(folder, loader_spec=LoadPolicy(), **LIMITS)
    assert (result.model_type, result.rows) == ("int", 0)
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for init to reap it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_the_zygote_forks_a_fresh_child_for_each_artifact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where the zygote makes its folder
    zygote = Zygote()
    zygote.warm()
    model = IsolationForest(n_estimators=10, random_state=0).fit(
        np.random.default_rng(0).normal(size=(50, 3)))
    good = write_artifact(tmp_path / "a", model)
    segfaults = write_artifact(tmp_path / "b", Reduces(ctypes.string_at, 0))
    quits = write_artifact(tmp_path / "c", Reduces(os._exit, 0))
    try:
        assert canary_load(good, loader_spec=LoadPolicy(), zygote=zygote, **LIMITS).rows > 0
        # The children answer in the zygote's one work folder: a child that exits cleanly
        # without writing its answer does not find the previous child's there.
        with pytest.raises(ArtifactInvalid, match="exited with status 0 without an answer"):
            canary_load(quits, loader_spec=LoadPolicy(), zygote=zygote, **LIMITS)
        with pytest.raises(ArtifactInvalid, match="SIGSEGV"):
            canary_load(segfaults, loader_spec=LoadPolicy(), zygote=zygote, **LIMITS)
        # a child's crash is not the zygote's: the same zygote serves the next artifact
        assert canary_load(good, loader_spec=LoadPolicy(), zygote=zygote, **LIMITS).rows > 0
        assert [p.name.startswith("modeld-canary-") for p in temp.iterdir()] == [True]
    finally:
        zygote.close()
    assert list(temp.iterdir()) == []  # the zygote's work folder goes with it
