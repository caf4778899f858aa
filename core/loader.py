"""Loader: turns an artifact folder whose bytes are trusted into a servable, in two steps.

TF Serving's Loader stage, for modeld. :mod:`core.trust` has decided that the staged bytes may
be believed (manifest, signature); this module decides how they may be turned into objects and
does it:

1. :func:`load_artifact`: the model file (``model.skops`` before ``model.joblib``) and the
   scaler, if any, each loaded by a :class:`ModelLoader` that obeys the operator's
   :class:`LoadPolicy` (skops with an allowlist of types, pickle only while
   ``security.allow_pickle`` is true). The result, a :class:`LoadedArtifact`, holds the
   estimator objects and scikit-learn's version warnings. This is the only step that runs an
   artifact's code.
2. :func:`warm` and :func:`build_servable`: the scaler's fast path, the compiled forest, the
   model's decision rule, and a warmup: sample rows scored once, which must give finite scores
   of the right shape. The result, a :class:`ServableModel`, is what the serving slot holds.

Three callers, one stage: validation (``core/validate.py``) runs both steps on the staged copy
and judges the loaded estimators in between; the manager (``core/manager.py``) runs both on a
stored version it deploys (:func:`load_servable`); the canary child
(``daemon/jobs/sandbox.py``) runs step 1 and :func:`warm` in a limited process before the daemon
loads anything, with the same policy, so it refuses, trusts and scores exactly what the daemon
would.

Plain functions, no threads, no clock, no logging. Failures are raised: ArtifactUntrusted (the
policy refuses a file, nothing of it is read), ArtifactInvalid (no model file; a file that
cannot be loaded: :class:`~core.errors.EstimatorUnloadable`), ModelLoadFailed (the loaded model
cannot serve: :class:`~core.errors.WarmupNonFinite` when its scores are NaN or infinite).
"""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np

from modeld.core.errors import (
    ArtifactInvalid,
    ArtifactUntrusted,
    EstimatorUnloadable,
    ModelLoadFailed,
    RecordInvalid,
    WarmupNonFinite,
)
from modeld.core.explain import Explanation, LazyExplainer, ReferenceWords, explainer_for
from modeld.core.features import Batch, FeatureExtractor
from modeld.core.forest import CompiledIsolationForest, compile_isolation_forest
from modeld.core.joblib_stream import load_joblib

__all__ = [
    "DEFAULT_LOADER",
    "DEFAULT_TRUSTED_TYPES",
    "FormatLoader",
    "LoadPolicy",
    "LoadedArtifact",
    "ModelLoader",
    "PickleRefused",
    "Scores",
    "ServableModel",
    "ServableSpec",
    "SkopsLoader",
    "Warmed",
    "build_servable",
    "estimator_files",
    "forest_rule",
    "load_artifact",
    "load_servable",
    "skops_types",
    "standard_parameters",
    "standard_transform",
    "warm",
    "warmup_rows",
]

MAX_SKOPS_SCHEMA_BYTES: Final = 64 * 1024 * 1024
PICKLE_FREE_SUFFIXES: Final = frozenset({".skops"})

DEFAULT_TRUSTED_TYPES: Final[tuple[str, ...]] = (
    # Containers and scalars skops writes for any estimator's attributes.
    "builtins.dict",
    "builtins.list",
    "builtins.str",
    "builtins.tuple",
    "numpy.dtype",
    "numpy.float32",
    "numpy.float64",
    "numpy.int64",
    "numpy.ndarray",
    "numpy.random.mtrand.RandomState",
    # IsolationForest: its base estimator and trees.
    "sklearn.ensemble._iforest.IsolationForest",
    "sklearn.tree._classes.ExtraTreeRegressor",
    "sklearn.tree._tree.Tree",
    # LocalOutlierFactor (novelty=True) and its neighbour index: KDTree or BallTree with the
    # distance metric of metric="minkowski" (p=1, 2 or other), "euclidean", "manhattan" or
    # "chebyshev"; algorithm="brute" (and metric="cosine") stores no index at all.
    "sklearn.neighbors._lof.LocalOutlierFactor",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.metrics._dist_metrics.ManhattanDistance64",
    "sklearn.metrics._dist_metrics.ChebyshevDistance64",
    "sklearn.metrics._dist_metrics.MinkowskiDistance64",
    # The scaler.
    "sklearn.preprocessing._data.StandardScaler",
)
"""Every type a skops dump of a fitted IsolationForest, LocalOutlierFactor(novelty=True) or
StandardScaler holds with scikit-learn 1.9 (found by dumping each variant and listing the types
of its schema; ``tests/test_trust.py`` re-checks it). Names are fully qualified, private modules
included, so a scikit-learn upgrade that moves a class shows up as a refused type, never as a
silently trusted one."""


# --------------------------------------------------------------------------- file loaders


class ModelLoader(Protocol):
    """Turns one estimator file (model or scaler) into the object it holds.

    The seam of the Loader stage: :meth:`LoadPolicy.loader` builds the daemon's, and a test may
    pass one that fails on demand. Called by :func:`load_artifact` on whatever thread runs the
    stage: the manager's import thread (validation), the thread that deploys a stored version,
    or the canary child's only thread. Called only after ``core/trust.py``'s checks passed.

    Returns the object. Raises ArtifactUntrusted when the policy refuses the file (before any
    of its code runs, when the refusal is by format); anything else it raises (whatever
    unpickling or skops raises for a corrupt file) means the file cannot be loaded, and
    :func:`load_artifact` reports it as EstimatorUnloadable. It must not keep state between
    calls: one loader serves every version.
    """

    def __call__(self, path: Path, /) -> Any: ...


def estimator_files(folder: Path) -> tuple[Path, Path | None]:
    """The model file to load (``model.skops`` before ``model.joblib``) and the scaler, if any.

    Raises ArtifactInvalid when there is no model file.
    """
    for name in ("model.skops", "model.joblib"):
        if (folder / name).is_file():
            model = folder / name
            break
    else:
        raise ArtifactInvalid(str(folder), "neither model.skops nor model.joblib is there")
    scaler = next((folder / n for n in ("scaler.skops", "scaler.joblib")
                   if (folder / n).is_file()), None)
    return model, scaler


def skops_types(path: Path) -> frozenset[str]:
    """Every type a skops file names in its schema, read without constructing anything.

    Walks ``schema.json`` inside the zip: each node names its type by ``__module__`` and
    ``__class__`` (methods add ``.<name>``). Raises ArtifactInvalid when the file is not a skops
    zip or its schema is oversized or not JSON.
    """
    where = str(path.parent)
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("schema.json")
            if info.file_size > MAX_SKOPS_SCHEMA_BYTES:
                raise ArtifactInvalid(where, f"{path.name}: schema.json is larger than "
                                      f"{MAX_SKOPS_SCHEMA_BYTES} bytes")
            schema = json.loads(archive.read(info))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise ArtifactInvalid(where, f"{path.name} is not a skops file: {exc}") from exc
    found: set[str] = set()
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            module, name = node.get("__module__"), node.get("__class__")
            if isinstance(module, str) and isinstance(name, str):
                found.add(f"{module}.{name}")
                content = node.get("content")
                if node.get("__loader__") == "MethodNode" and isinstance(content, dict):
                    found.add(f"{module}.{name}.{content.get('func')}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return frozenset(found)


class SkopsLoader:
    """Loads a ``.skops`` file when every type in it is in the allowlist.

    ``trusted_types`` is ``security.trusted_types`` (fully qualified names, default
    :data:`DEFAULT_TRUSTED_TYPES`); nothing outside it is ever constructed, and skops' own
    default trust is not relied on: the types named anywhere in the file's schema and those
    ``skops.io.get_untrusted_types`` reports must all be listed. Called on whatever thread loads
    (the manager's, or the canary child's). Raises ArtifactUntrusted naming the refused types,
    ArtifactInvalid when skops is not installed or the file is not a skops file, and whatever
    skops raises for a corrupt file.
    """

    __slots__ = ("trusted_types",)

    def __init__(self, trusted_types: Sequence[str] = DEFAULT_TRUSTED_TYPES) -> None:
        if isinstance(trusted_types, str):
            raise TypeError("trusted_types must be a sequence of type names, not one string")
        self.trusted_types: frozenset[str] = frozenset(trusted_types)

    def __call__(self, path: Path, /) -> Any:
        where = str(path.parent)
        try:
            import skops.io as sio
        except ImportError as exc:
            raise ArtifactInvalid(where, f"{path.name} needs skops (pip install "
                                  "'modeld[skops]')") from exc
        named = skops_types(path)
        untrusted = frozenset(sio.get_untrusted_types(file=path))
        refused = sorted((named | untrusted) - self.trusted_types)
        if refused:
            raise ArtifactUntrusted(where, f"{path.name} holds types outside "
                                    f"security.trusted_types: {', '.join(refused)}")
        return sio.load(path, trusted=sorted(untrusted))


def joblib_file_loader(path: Path, /) -> Any:
    """Unpickle a joblib file (:func:`~modeld.core.joblib_stream.load_joblib`): runs whatever
    code the file names. Only behind the checks."""
    return load_joblib(path)


class FormatLoader:
    """Loads ``*.skops`` with a :class:`SkopsLoader` and anything else with joblib."""

    __slots__ = ("pickle", "skops")

    def __init__(self, skops: ModelLoader, pickle: ModelLoader = joblib_file_loader) -> None:
        self.skops = skops
        self.pickle = pickle

    def __call__(self, path: Path, /) -> Any:
        return self.skops(path) if path.suffix == ".skops" else self.pickle(path)


class PickleRefused:
    """Wraps a loader so that it refuses every file that is not in a pickle-free format.

    Used when ``security.allow_pickle`` is false: ``model.joblib`` (or any other file than
    ``*.skops``) raises ArtifactUntrusted before a byte of it is read; ``*.skops`` files go to
    the wrapped loader.
    """

    __slots__ = ("inner",)

    def __init__(self, inner: ModelLoader) -> None:
        self.inner = inner

    def __call__(self, path: Path, /) -> Any:
        if path.suffix not in PICKLE_FREE_SUFFIXES:
            raise ArtifactUntrusted(
                str(path.parent), f"security.allow_pickle is false: {path.name} refused"
            )
        return self.inner(path)


@dataclass(frozen=True, slots=True)
class LoadPolicy:
    """How estimator files may be loaded (from the ``security`` configuration section).

    The same policy is given to the daemon's loader and, as :meth:`to_dict`, to the canary
    child (``daemon/jobs/sandbox.py``), so both refuse and trust the same things.
    """

    allow_pickle: bool = True
    trusted_types: tuple[str, ...] = DEFAULT_TRUSTED_TYPES

    def loader(self) -> ModelLoader:
        """A :class:`ModelLoader` obeying this policy."""
        formats = FormatLoader(SkopsLoader(self.trusted_types))
        return formats if self.allow_pickle else PickleRefused(formats)

    def refuses(self, path: Path) -> str | None:
        """Why this policy refuses to load ``path`` without reading it, or None."""
        if not self.allow_pickle and path.suffix not in PICKLE_FREE_SUFFIXES:
            return f"security.allow_pickle is false: {path.name} refused"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"allow_pickle": self.allow_pickle, "trusted_types": list(self.trusted_types)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadPolicy:
        return cls(bool(data["allow_pickle"]), tuple(str(t) for t in data["trusted_types"]))


DEFAULT_LOADER: Final[ModelLoader] = LoadPolicy().loader()
"""The loader of the default ``security`` section (pickle allowed, the default allowlist)."""


# --------------------------------------------------------------------------- step 1: load


@dataclass(frozen=True, slots=True)
class LoadedArtifact:
    """The estimator objects of one artifact folder, as step 1 of the stage loaded them.

    ``version_warnings`` are scikit-learn's InconsistentVersionWarning messages, one line each,
    prefixed with the file's name (validation reports them). Nothing here is checked beyond
    having loaded: whether the model can serve is :func:`warm`'s to find out.
    """

    model: Any
    scaler: Any | None
    version_warnings: tuple[str, ...]

    @property
    def model_type(self) -> str:
        """The class name of the loaded model (``IsolationForest``, ...)."""
        return type(self.model).__name__


def load_artifact(folder: Path, loader: ModelLoader = DEFAULT_LOADER) -> LoadedArtifact:
    """Load the model and the scaler of ``folder`` (a staged copy or a stored version).

    Called by validation on the manager's import thread, by :func:`load_servable` on the thread
    that deploys, and by the canary child. Returns a :class:`LoadedArtifact`. Raises
    ArtifactInvalid when there is no model file, ArtifactUntrusted when ``loader`` refuses a
    file, and EstimatorUnloadable (an ArtifactInvalid naming the file, with the exception it
    raised as ``cause``) for any other failure: unpickling runs arbitrary code, so any failure
    of it is the artifact's.
    """
    model_path, scaler_path = estimator_files(folder)
    model, model_warnings = _load_file(loader, model_path)
    if scaler_path is None:
        return LoadedArtifact(model, None, model_warnings)
    scaler, scaler_warnings = _load_file(loader, scaler_path)
    return LoadedArtifact(model, scaler, (*model_warnings, *scaler_warnings))


def _load_file(loader: ModelLoader, path: Path) -> tuple[Any, tuple[str, ...]]:
    """Load one estimator file, keeping sklearn's version warnings as one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            obj = loader(path)
        except ArtifactUntrusted:
            raise
        except Exception as exc:  # unpickling runs arbitrary code: any failure is the file's
            raise EstimatorUnloadable(str(path.parent), path.name, exc) from exc
    return obj, tuple(
        f"{path.name}: {str(w.message).splitlines()[0]}"
        for w in caught
        if type(w.message).__name__ == "InconsistentVersionWarning"
    )


# --------------------------------------------------------------------------- step 2: serve

Transform = Callable[[np.ndarray], np.ndarray]
Scorer = Callable[[np.ndarray], np.ndarray]
REFERENCE_FILE = "reference.npz"
# enough held-out rows for a confidence to two decimals, few enough to score at load time
MAX_REFERENCE_ROWS = 5000
Flagger = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class Scores:
    """The result of scoring one batch: all from one version."""

    version: str
    feature_names: tuple[str, ...]
    scores: np.ndarray
    flags: np.ndarray
    features: np.ndarray
    confidence: np.ndarray
    fallback_reason: str | None = None


def _score_matrix(
    transform: Transform | None, scorer: Scorer, flagger: Flagger, features: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    x = transform(features) if transform is not None else features
    scores = scorer(x)
    return scores, flagger(x, scores)


@dataclass(frozen=True, slots=True)
class Warmed:
    """A loaded model prepared to score matrices, and what it scored on its warmup rows.

    ``scores`` are higher-is-more-anomalous (the negated ``score_samples``, for every model
    type). What a servable is built from; the canary child stops here.
    """

    transform: Transform | None
    scorer: Scorer
    flagger: Flagger
    rows: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True, slots=True)
class ServableModel:
    """One loaded version, ready to score. Built once per load; immutable afterwards.

    Built by :func:`build_servable`; held by the serving slot and read by every scoring thread.
    ``score_matrix`` raises whatever the estimator raises; the slot turns that into a fallback.
    """

    version: str
    model_type: str
    feature_names: tuple[str, ...]
    extractor: FeatureExtractor
    transform: Transform | None
    scorer: Scorer
    flagger: Flagger
    warmup_scores: np.ndarray
    warmup_rows: np.ndarray
    # sorted scores of the artifact's reference rows (reference.npz), else of the warmup rows
    reference_scores: np.ndarray
    explainer: LazyExplainer | None = None

    def confidence(self, scores: np.ndarray) -> np.ndarray:
        """Each score's position among the reference scores: the share at or below it, [0, 1]."""
        reference = self.reference_scores
        return np.searchsorted(reference, scores, side="right") / len(reference)

    def explain(self, features: np.ndarray, scores: np.ndarray, words: ReferenceWords,
                top: int | None = None) -> list[Explanation] | None:
        """Why each row scored as it did, its ``top`` contributions (None: all); None when
        this model type cannot say."""
        explainer = None if self.explainer is None else self.explainer.get()
        if explainer is None:
            return None
        x = self.transform(features) if self.transform is not None else features
        explanations: list[Explanation] = explainer.explain_many(x, scores, features, words,
                                                                 top)
        return explanations

    def score_matrix(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _score_matrix(self.transform, self.scorer, self.flagger, features)

    def score_records(self, records: Batch) -> Scores:
        """Score a batch all-or-nothing; raises RecordInvalid naming the first bad record."""
        features = self.extractor.transform(records)
        if not len(features):  # estimators refuse zero rows; none is an answer, not a failure
            return Scores(self.version, self.feature_names, np.empty(0), np.empty(0, bool),
                          features, np.empty(0))
        scores, flags = self.score_matrix(features)
        return Scores(self.version, self.feature_names, scores, flags, features,
                      self.confidence(scores))

    def health_check(self) -> str | None:
        """Re-score the warmup rows: None when finite and equal to load time, else the problem."""
        try:
            scores, _ = self.score_matrix(self.warmup_rows)
        except Exception as exc:  # the estimator is third-party code
            return f"scoring the warmup rows raised {type(exc).__name__}: {exc}"
        if not np.all(np.isfinite(scores)):
            return "scoring the warmup rows gave non-finite scores"
        if not np.allclose(scores, self.warmup_scores, rtol=0, atol=1e-9):
            return "scores on the warmup rows differ from those at load time"
        return None


class ServableSpec(Protocol):
    """What a servable takes from metadata.json (``core.validate.ArtifactMetadata`` is one)."""

    @property
    def version(self) -> str: ...

    @property
    def feature_names(self) -> tuple[str, ...]: ...

    @property
    def warmup(self) -> tuple[Any, ...]: ...


def standard_transform(mean: np.ndarray, scale: np.ndarray) -> Transform:
    """StandardScaler.transform as plain numpy: ``(x - mean) / scale``, as scikit-learn does."""
    return lambda x: (x - mean) / scale


def standard_parameters(scaler: Any, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A StandardScaler's mean and scale as float64 arrays (zeros and ones where it does not
    centre or scale)."""
    mean = getattr(scaler, "mean_", None) if getattr(scaler, "with_mean", False) else None
    scale = getattr(scaler, "scale_", None) if getattr(scaler, "with_std", False) else None
    return (np.zeros(width) if mean is None else np.asarray(mean, dtype=np.float64),
            np.ones(width) if scale is None else np.asarray(scale, dtype=np.float64))


def _scaler_transform(scaler: Any, width: int) -> Transform:
    """A fast path for StandardScaler (plain numpy), the scaler's own transform otherwise."""
    n_in = getattr(scaler, "n_features_in_", width)
    if n_in != width:
        raise ValueError(f"the scaler expects {n_in} features, the model {width}")
    if type(scaler).__name__ == "StandardScaler":
        return standard_transform(*standard_parameters(scaler, width))
    transform = scaler.transform

    def generic(x: np.ndarray) -> np.ndarray:
        return np.asarray(transform(x), dtype=np.float64)

    return generic


def forest_rule(forest: CompiledIsolationForest) -> tuple[Scorer, Flagger]:
    """A compiled forest's scorer (higher-is-more-anomalous) and its decision rule, whether it
    was compiled here or rebuilt from a bundle (``core/bundle.py``)."""
    threshold = -float(forest.offset_)
    return (lambda x: -forest.score_samples(x)), (lambda _x, s: s > threshold)


def _scorer_for(estimator: Any) -> tuple[Scorer, Flagger]:
    """Score higher-is-more-anomalous; flag by the model's own decision rule."""
    if type(estimator).__name__ == "IsolationForest":
        return forest_rule(compile_isolation_forest(estimator))
    score_samples = estimator.score_samples
    if hasattr(estimator, "offset_"):
        # OneClassSVM's offset_ is a one-element array, the others' a float
        threshold = -float(np.asarray(estimator.offset_, dtype=np.float64).reshape(-1)[0])
        return (lambda x: -np.asarray(score_samples(x), dtype=np.float64)), (
            lambda _x, s: s > threshold
        )
    predict = estimator.predict
    return (lambda x: -np.asarray(score_samples(x), dtype=np.float64)), (
        lambda x, _s: np.asarray(predict(x)) == -1
    )


def warmup_rows(
    extractor: FeatureExtractor | None,
    records: Sequence[object],
    scaler: Any | None,
    width: int,
    count: int,
) -> np.ndarray:
    """The rows a warmup scores: the metadata's ``warmup`` records, as features, when there are
    any (and an extractor for them), else ``count`` random rows of ``width`` around the
    training centre when a scaler tells where it is (around zero otherwise).

    Raises RecordInvalid for a warmup record that is not a valid scoring record.
    """
    if records and extractor is not None:
        return extractor.transform(records)
    centre = np.zeros(width)
    mean = getattr(scaler, "mean_", None)
    if mean is not None and np.shape(mean) == (width,):
        centre = np.asarray(mean, dtype=np.float64)
    rng = np.random.default_rng(0)
    return np.asarray(centre + rng.standard_normal((count, width)), dtype=np.float64)


@contextmanager
def _cannot_serve(version: str) -> Iterator[None]:
    """Any failure of the estimator's code, raised as ModelLoadFailed(version, the reason)."""
    try:
        yield
    except RecordInvalid as exc:
        raise ModelLoadFailed(version, f"warmup record {exc.index}: {exc.problem}") from exc
    except Exception as exc:  # third-party estimator code: any failure means "cannot serve"
        raise ModelLoadFailed(version, f"{type(exc).__name__}: {exc}") from exc


def warm(
    loaded: LoadedArtifact,
    version: str,
    width: int,
    extractor: FeatureExtractor | None,
    warmup_records: Sequence[object],
    warmup_row_count: int,
) -> Warmed:
    """Prepare the loaded model to score rows of ``width`` features and score the warmup rows.

    The rows are :func:`warmup_rows`'s. Called by :func:`build_servable` and by the canary
    child (which may know no feature names: then ``extractor`` is None and the rows are
    random). Raises ModelLoadFailed(version, reason) when anything about the model cannot
    score: the reason is the exception the estimator raised (its ``__cause__``), a bad warmup
    record, or the wrong shape; WarmupNonFinite when a score is NaN or infinite.
    """
    with _cannot_serve(version):
        transform = None if loaded.scaler is None else _scaler_transform(loaded.scaler, width)
        scorer, flagger = _scorer_for(loaded.model)
        rows = warmup_rows(extractor, warmup_records, loaded.scaler, width, warmup_row_count)
        with warnings.catch_warnings():
            # Fitted on a DataFrame, served with arrays: sklearn warns on every call; harmless.
            warnings.filterwarnings("ignore", message=".*feature names.*", category=UserWarning)
            scores, flags = _score_matrix(transform, scorer, flagger, rows)
    if scores.shape != (len(rows),) or flags.shape != (len(rows),):
        raise ModelLoadFailed(version, f"scoring {len(rows)} rows gave shape {scores.shape}")
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        raise WarmupNonFinite(version, bad, len(rows))
    return Warmed(transform, scorer, flagger, rows, scores)


def build_servable(
    loaded: LoadedArtifact, spec: ServableSpec, warmup_row_count: int,
    reference: np.ndarray | None = None,
) -> ServableModel:
    """Prepare one loaded version for serving and warm it by scoring sample rows.

    ``reference`` (feature rows, from :func:`reference_rows`) is scored too: its sorted scores
    are what a result's ``confidence`` is measured against (the warmup rows' without it).
    Called by validation on the manager's import thread and by :func:`load_servable`. Raises
    ModelLoadFailed with the reason when anything about the model cannot serve (see
    :func:`warm`): it is never half-built.
    """
    names = tuple(spec.feature_names)
    extractor = FeatureExtractor(names)
    warmed = warm(loaded, spec.version, len(names), extractor, spec.warmup, warmup_row_count)
    reference_scores = warmed.scores
    if reference is not None:
        with _cannot_serve(spec.version), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*feature names.*", category=UserWarning)
            scored = _score_matrix(warmed.transform, warmed.scorer, warmed.flagger, reference)[0]
        scored = scored[np.isfinite(scored)]
        reference_scores = scored if len(scored) else warmed.scores
    model = loaded.model
    return ServableModel(
        spec.version, loaded.model_type, names, extractor, warmed.transform, warmed.scorer,
        warmed.flagger, warmed.scores, warmed.rows, np.sort(reference_scores),
        LazyExplainer(lambda: explainer_for(model)),
    )


def reference_rows(folder: Path, width: int) -> np.ndarray | None:
    """The held-out feature rows of ``folder``'s reference.npz (at most MAX_REFERENCE_ROWS,
    evenly spaced), or None when it has none of this width. Never raises for a bad file."""
    path = folder / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            rows = np.asarray(data["features"], dtype=np.float64)
    except (OSError, KeyError, ValueError):
        return None  # the drift monitor reports an unusable reference (reference_unusable)
    if rows.ndim != 2 or rows.shape[1] != width or not len(rows):
        return None
    step = max(1, len(rows) // MAX_REFERENCE_ROWS)
    return rows[::step][:MAX_REFERENCE_ROWS]


def load_servable(
    folder: Path, spec: ServableSpec, warmup_row_count: int,
    loader: ModelLoader = DEFAULT_LOADER,
) -> ServableModel:
    """Both steps for an already validated version in the store (``spec`` is its metadata).

    Called by the manager, under its operation lock, when it deploys a version that is not in
    memory, and at startup. Raises ModelLoadFailed with the reason; nothing is half-built.
    """
    try:
        loaded = load_artifact(folder, loader)
    except (ArtifactInvalid, ArtifactUntrusted) as exc:
        raise ModelLoadFailed(folder.name, exc.reason) from exc
    return build_servable(loaded, spec, warmup_row_count,
                          reference_rows(folder, len(spec.feature_names)))
