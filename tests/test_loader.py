"""core/loader.py: the one Loader stage that validation, the manager and the canary child share.

Real artifacts in tmp_path, real unpickling, a real canary child. The one fake is a loader that
fails on demand, for a failure a real file cannot be made to have at will (a disk error).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from modeld.core.errors import EstimatorUnloadable, ModelLoadFailed, WarmupNonFinite
from modeld.core.loader import (
    DEFAULT_LOADER,
    LoadPolicy,
    build_servable,
    load_artifact,
    load_servable,
    warm,
)
from modeld.core.source import read_metadata
from modeld.core.validate import ArtifactMetadata, ValidationPolicy, parse_metadata, validate_folder
from modeld.daemon.jobs.sandbox import canary_load
from tests.bad_corpus import ScoresNaN
from tests.helpers import artifact_files, metadata, records, scaled_artifact, write_in_place

NOW = datetime.now(UTC)


def written(folder: Path, files: dict[str, bytes]) -> Path:
    write_in_place(folder, files)
    return folder


def metadata_of(folder: Path) -> ArtifactMetadata:
    return parse_metadata(read_metadata(folder), folder)


def test_the_canary_child_scores_the_warmup_rows_as_the_daemon_serves_them(tmp_path: Path) -> None:
    warmup = records(6, seed=3)
    folder = written(tmp_path / "a", scaled_artifact("v1", warmup=warmup))
    canary = canary_load(folder, loader_spec=LoadPolicy(), time_limit=30,
                         memory_limit_bytes=1024**3)
    servable = validate_folder(folder, ValidationPolicy(), NOW).servable
    assert servable is not None
    assert canary.rows == len(servable.warmup_rows) == 6
    # the same stage on both sides: the child's scores are the servable's, in sklearn's sign
    np.testing.assert_allclose(canary.scores, -servable.warmup_scores, rtol=0, atol=1e-12)


def test_a_stored_version_loads_to_the_servable_validation_built(tmp_path: Path) -> None:
    folder = written(tmp_path / "a", scaled_artifact("v1"))
    validated = validate_folder(folder, ValidationPolicy(), NOW).servable
    meta = metadata_of(folder)
    stored = load_servable(folder, meta, ValidationPolicy().warmup_row_count)
    assert validated is not None
    assert (stored.version, stored.model_type, stored.feature_names) == (
        "v1", "IsolationForest", ("x0", "x1", "x2", "x3"))
    np.testing.assert_array_equal(stored.warmup_scores, validated.warmup_scores)
    assert stored.health_check() is None


def test_a_file_that_cannot_be_loaded_is_named_with_its_cause(tmp_path: Path) -> None:
    files = scaled_artifact("v1")
    folder = written(tmp_path / "a", {**files, "scaler.joblib": b"\x80\x04garbage"})
    with pytest.raises(EstimatorUnloadable, match=r"scaler\.joblib cannot be loaded: ") as caught:
        load_artifact(folder)
    assert caught.value.file == "scaler.joblib"
    assert caught.value.problem.startswith(type(caught.value.cause).__name__ + ": ")


def test_a_loader_that_fails_on_demand_fails_every_caller_the_same_way(tmp_path: Path) -> None:
    folder = written(tmp_path / "a", artifact_files("v1"))

    def disk_gone(path: Path, /) -> object:
        if path.name == "model.joblib":
            raise OSError(5, "Input/output error")
        return DEFAULT_LOADER(path)

    report = validate_folder(folder, ValidationPolicy(), NOW, loader=disk_gone).report
    assert report.blocking == ["model.joblib cannot be loaded: OSError: [Errno 5] "
                               "Input/output error"]
    meta = metadata_of(folder)
    with pytest.raises(ModelLoadFailed, match=r"'a' could not be loaded: model\.joblib cannot"):
        load_servable(folder, meta, 16, loader=disk_gone)


def test_non_finite_warmup_scores_are_counted(tmp_path: Path) -> None:
    folder = written(tmp_path / "a", artifact_files("v1", model=ScoresNaN()))
    loaded = load_artifact(folder)
    with pytest.raises(WarmupNonFinite, match="non-finite scores") as caught:
        warm(loaded, "v1", 4, None, (), 5)
    assert (caught.value.bad, caught.value.rows) == (5, 5)
    meta = metadata_of(folder)
    with pytest.raises(WarmupNonFinite):
        build_servable(loaded, meta, 5)


def test_a_bad_warmup_record_names_the_record(tmp_path: Path) -> None:
    warmup = [*records(2), {"features": {"x0": "high"}}]
    folder = written(tmp_path / "a", artifact_files("v1", meta=metadata("v1", warmup=warmup)))
    meta = metadata_of(folder)
    with pytest.raises(ModelLoadFailed, match=r"warmup record 2: "):
        build_servable(load_artifact(folder), meta, 16)


def test_validation_does_not_import_serving() -> None:
    code = ("import sys, modeld.core.validate; "
            "print(sorted(m for m in sys.modules if m.startswith('modeld.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert "modeld.core.loader" in loaded
    assert "modeld.core.serving" not in loaded
