"""Servable bundles: a version as plain arrays and JSON, so that serving never unpickles.

Unpickling an artifact runs its code; a skops file drives scikit-learn internals with its
numbers. Both happen once per artifact, in the isolated child (``daemon/jobs/sandbox.py``),
which then writes what serving needs as a *bundle*: a folder of ``.npy`` arrays (read back
memory-mapped with ``allow_pickle=False``) and ``bundle.json``::

    bundle.json            format, estimator facts (what validation judges), feature names,
                           each part's kind and scalar parameters, the list of arrays
    model.<name>.npy       the model's arrays (the compiled forest's ``to_arrays()``, LOF's
                           fitted points, k-distances and lrd, ...)
    scaler.<name>.npy      the StandardScaler's mean and scale
    warmup_rows.npy        feature rows scored when the bundle is loaded, and
    warmup_scores.npy      scikit-learn's own scores of them (higher = more anomalous)
    reference_scores.npy   scikit-learn's sorted scores of the reference rows (confidence)

A bundle is named by its digest (sha256 over its files' digests in name order) and recorded
in the registry's ``bundles`` table. The daemon builds a :class:`~core.loader.ServableModel`
from it alone (:func:`servable_from_bundle`), re-scores the warmup rows and refuses a bundle
whose scores differ from scikit-learn's by more than :data:`WARMUP_TOLERANCE`.

Bundle forms exist for IsolationForest, LocalOutlierFactor (novelty), EllipticEnvelope and
OneClassSVM, and for StandardScaler. Any other estimator gets a bundle holding only its facts
(``model.kind`` null): serving it means unpickling in the daemon, which only the setting
``security.allow_unbundled_estimators`` permits.

Plain functions, no threads, no logging. Writing happens where unpickling is allowed (the
child, or in-process when isolation is off); reading anywhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from modeld.core.errors import (
    BundleInvalid,
    EstimatorUnbundled,
    ModelLoadFailed,
    RecordInvalid,
    WarmupNonFinite,
)
from modeld.core.explain import Explainer, ForestExplainer, LazyExplainer, NeighbourExplainer
from modeld.core.features import FeatureExtractor
from modeld.core.forest import CompiledIsolationForest, compile_isolation_forest
from modeld.core.loader import (
    Flagger,
    LoadedArtifact,
    Scorer,
    ServableModel,
    ServableSpec,
    Transform,
    forest_rule,
    reference_rows,
    standard_parameters,
    standard_transform,
    warmup_rows,
)

__all__ = [
    "BUNDLE_FORMAT",
    "WARMUP_TOLERANCE",
    "Bundle",
    "EstimatorFacts",
    "read_bundle",
    "servable_from_bundle",
    "write_bundle",
]

BUNDLE_FORMAT: Final = 1
MANIFEST: Final = "bundle.json"
MAX_MANIFEST_BYTES: Final = 16 * 1024 * 1024
WARMUP_TOLERANCE: Final = 1e-9
"""How far a bundle's score of a warmup row may be from scikit-learn's (absolute)."""

_WARMUP_ROWS, _WARMUP_SCORES, _REFERENCE = "warmup_rows", "warmup_scores", "reference_scores"
# what a rebuilt scorer needs besides its arrays: a JSON-safe scalar, list or mapping
_Params = dict[str, Any]
_Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class EstimatorFacts:
    """What validation judges about the loaded estimators, read by the child that loaded them
    (so that the daemon can judge an artifact it never unpickles)."""

    model_type: str
    n_features_in: int | None
    n_estimators: int | None
    novelty: bool | None
    methods: tuple[str, ...]
    scaler_type: str | None = None
    scaler_has_transform: bool = False
    scaler_n_features_in: int | None = None
    version_warnings: tuple[str, ...] = ()

    @classmethod
    def of(cls, loaded: LoadedArtifact) -> EstimatorFacts:
        model, scaler = loaded.model, loaded.scaler
        return cls(
            model_type=loaded.model_type,
            n_features_in=_int_or_none(getattr(model, "n_features_in_", None)),
            n_estimators=_int_or_none(getattr(model, "n_estimators", None)),
            novelty=None if not hasattr(model, "novelty") else bool(model.novelty),
            methods=tuple(m for m in ("predict", "score_samples")
                          if callable(getattr(model, m, None))),
            scaler_type=None if scaler is None else type(scaler).__name__,
            scaler_has_transform=callable(getattr(scaler, "transform", None)),
            scaler_n_features_in=_int_or_none(getattr(scaler, "n_features_in_", None)),
            version_warnings=loaded.version_warnings,
        )

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EstimatorFacts:
        def number(name: str) -> int | None:
            value = data.get(name)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        novelty = data.get("novelty")
        scaler_type = data.get("scaler_type")
        return cls(
            model_type=str(data["model_type"]),
            n_features_in=number("n_features_in"),
            n_estimators=number("n_estimators"),
            novelty=novelty if isinstance(novelty, bool) else None,
            methods=tuple(str(m) for m in data.get("methods", ())),
            scaler_type=scaler_type if isinstance(scaler_type, str) else None,
            scaler_has_transform=bool(data.get("scaler_has_transform")),
            scaler_n_features_in=number("scaler_n_features_in"),
            version_warnings=tuple(str(w) for w in data.get("version_warnings", ())),
        )


def _int_or_none(value: object) -> int | None:
    return int(value) if isinstance(value, int | np.integer) and not isinstance(value, bool) \
        else None


@dataclass(frozen=True, slots=True)
class Bundle:
    """One bundle as read back: its manifest, its (memory-mapped) arrays and its identity."""

    path: Path
    digest: str
    size: int
    manifest: Mapping[str, Any]
    arrays: _Arrays
    files: tuple[str, ...]  # every file of ``path``, in name order: what the digest covers

    @property
    def facts(self) -> EstimatorFacts:
        return EstimatorFacts.from_dict(self.manifest["facts"])

    @property
    def kind(self) -> str | None:
        """The model's bundle form (``isolation_forest``, ...), None when it has none."""
        kind = self.manifest["model"]["kind"]
        return kind if isinstance(kind, str) else None


# --------------------------------------------------------------------------- the forms


def _forest_arrays(model: Any) -> tuple[_Params, dict[str, np.ndarray]]:
    return {}, compile_isolation_forest(model).to_arrays()


def _forest_scorer(_params: _Params, arrays: _Arrays
                   ) -> tuple[Scorer, Flagger, Callable[[], Explainer | None]]:
    forest = CompiledIsolationForest.from_arrays(arrays)
    _release_pages(arrays)  # the compiled walk packed its own copy of the nodes
    scorer, flagger = forest_rule(forest)
    return scorer, flagger, lambda: ForestExplainer(forest)


def _release_pages(arrays: _Arrays) -> None:
    """Take memory-mapped arrays' pages out of this process's resident set: they stay in the
    page cache and come back on the next read (an explainer built later, ``to_arrays``).
    Without it a loaded forest holds its nodes twice, the bundle's pages read while the walk
    packed them and the packed copy."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    for array in arrays.values():
        if advice is not None and isinstance(array.base, mmap.mmap):
            array.base.madvise(advice)


def _jsonable(value: Any) -> Any:
    """``value`` as JSON (arrays as lists); raises TypeError for anything else (a callable)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"{type(value).__name__} cannot be written to a bundle")


def _lof_arrays(model: Any) -> tuple[_Params, dict[str, np.ndarray]]:
    if not getattr(model, "novelty", False):
        raise TypeError("a LocalOutlierFactor without novelty=True cannot score new records")
    k = int(model.n_neighbors_)
    params = {
        "n_neighbors_": k, "n_neighbors": int(model.n_neighbors),
        "offset_": float(model.offset_), "algorithm": str(model._fit_method),
        "leaf_size": int(model.leaf_size), "metric": _jsonable(model.metric),
        "p": _jsonable(model.p), "metric_params": _jsonable(model.metric_params),
    }
    if not isinstance(params["metric"], str):
        raise TypeError("a callable metric cannot be written to a bundle")
    return params, {
        "fit_X": np.asarray(model._fit_X),
        "k_distance": np.ascontiguousarray(model._distances_fit_X_[:, k - 1]),
        "lrd": np.asarray(model._lrd),
    }


def _lof_scorer(params: _Params, arrays: _Arrays
                ) -> tuple[Scorer, Flagger, Callable[[], Explainer | None]]:
    """scikit-learn's LocalOutlierFactor.score_samples on the fitted arrays: the neighbour
    search is rebuilt with the same algorithm and leaf size on the same points, so ties break
    the same way."""
    from sklearn.neighbors import NearestNeighbors

    k = int(params["n_neighbors_"])
    metric_params = params["metric_params"]
    fit_x, k_distance, lrd = arrays["fit_X"], arrays["k_distance"], arrays["lrd"]
    search = NearestNeighbors(
        n_neighbors=k, algorithm=params["algorithm"], leaf_size=int(params["leaf_size"]),
        metric=params["metric"], p=params["p"],
        metric_params=None if metric_params is None
        else {key: np.asarray(v) if isinstance(v, list) else v
              for key, v in metric_params.items()},
    ).fit(np.asarray(fit_x))
    threshold = -float(params["offset_"])

    def score(x: np.ndarray) -> np.ndarray:
        distances, neighbours = search.kneighbors(x, n_neighbors=k)
        reach = np.maximum(distances, k_distance[neighbours])
        x_lrd = 1.0 / (np.mean(reach, axis=1) + 1e-10)
        ratios = lrd[neighbours] / x_lrd[:, np.newaxis]
        return np.asarray(np.mean(ratios, axis=1), dtype=np.float64)

    neighbours = int(params["n_neighbors"])
    return score, (lambda _x, s: s > threshold), lambda: NeighbourExplainer(
        np.asarray(fit_x), neighbours)


def _envelope_arrays(model: Any) -> tuple[_Params, dict[str, np.ndarray]]:
    return {"offset_": float(model.offset_)}, {
        "location": np.asarray(model.location_, dtype=np.float64),
        "precision": np.asarray(model.get_precision(), dtype=np.float64),
    }


def _envelope_scorer(params: _Params, arrays: _Arrays
                     ) -> tuple[Scorer, Flagger, Callable[[], Explainer | None]]:
    """EllipticEnvelope.score_samples: minus the Mahalanobis distance, as scikit-learn sums it."""
    location, precision = arrays["location"], arrays["precision"]
    threshold = -float(params["offset_"])

    def score(x: np.ndarray) -> np.ndarray:
        centred = x - location
        return np.asarray(np.sum(np.dot(centred, precision) * centred, 1), dtype=np.float64)

    return score, (lambda _x, s: s > threshold), lambda: None


_KERNELS: Final = ("rbf", "linear", "poly", "sigmoid")


def _svm_arrays(model: Any) -> tuple[_Params, dict[str, np.ndarray]]:
    if model.kernel not in _KERNELS:
        raise TypeError(f"kernel {model.kernel!r} cannot be written to a bundle")
    return {
        "kernel": str(model.kernel), "gamma": float(model._gamma),
        "degree": int(model.degree), "coef0": float(model.coef0),
        "intercept": float(np.asarray(model.intercept_).reshape(-1)[0]),
        "offset_": float(np.asarray(model.offset_).reshape(-1)[0]),
    }, {
        "support_vectors": np.asarray(model.support_vectors_, dtype=np.float64),
        "dual_coef": np.asarray(model.dual_coef_, dtype=np.float64).reshape(-1),
    }


def _svm_scorer(params: _Params, arrays: _Arrays
                ) -> tuple[Scorer, Flagger, Callable[[], Explainer | None]]:
    """OneClassSVM.score_samples: the kernel expansion over the support vectors, plus the
    intercept and offset (libsvm's sum, in float64)."""
    vectors, coef = arrays["support_vectors"], arrays["dual_coef"]
    kernel, gamma = params["kernel"], float(params["gamma"])
    degree, coef0 = int(params["degree"]), float(params["coef0"])
    shift = float(params["intercept"]) + float(params["offset_"])
    squared = np.einsum("ij,ij->i", vectors, vectors)

    def kernel_of(x: np.ndarray) -> np.ndarray:
        dot = x @ vectors.T
        if kernel == "linear":
            return dot
        if kernel == "poly":
            return np.asarray((gamma * dot + coef0) ** degree)
        if kernel == "sigmoid":
            return np.tanh(gamma * dot + coef0)
        distance = np.einsum("ij,ij->i", x, x)[:, None] + squared[None, :] - 2.0 * dot
        return np.asarray(np.exp(-gamma * np.maximum(distance, 0.0)))

    threshold = -float(params["offset_"])
    return ((lambda x: -(kernel_of(x) @ coef + shift)), (lambda _x, s: s > threshold),
            lambda: None)


_Writer = Callable[[Any], tuple[_Params, dict[str, np.ndarray]]]
_Reader = Callable[[_Params, _Arrays], tuple[Scorer, Flagger, Callable[[], Explainer | None]]]
# model type -> (bundle kind, writer, reader); the LOF reader returns the positive ratio mean
# (= -score_samples), the others what they say
_FORMS: Final[dict[str, tuple[str, _Writer, _Reader]]] = {
    "IsolationForest": ("isolation_forest", _forest_arrays, _forest_scorer),
    "LocalOutlierFactor": ("local_outlier_factor", _lof_arrays, _lof_scorer),
    "EllipticEnvelope": ("elliptic_envelope", _envelope_arrays, _envelope_scorer),
    "OneClassSVM": ("one_class_svm", _svm_arrays, _svm_scorer),
}
_READERS: Final = {kind: reader for kind, _, reader in _FORMS.values()}


# --------------------------------------------------------------------------- writing


def write_bundle(
    loaded: LoadedArtifact,
    folder: Path,
    out: Path,
    spec: ServableSpec | None,
    warmup_row_count: int,
) -> np.ndarray | None:
    """Write the bundle of the artifact in ``folder`` (already loaded as ``loaded``) to ``out``.

    Called where unpickling is allowed: the canary child after its warmup passed, or the
    daemon's own import thread when ``security.isolate_first_load`` is off. ``spec`` is the
    artifact's metadata.json (None when it is unreadable; when it is, or when it disagrees
    with the model, the bundle holds the facts only, and validation says what is wrong). Warmup and reference rows are scored with scikit-learn itself, so the
    daemon can check its rebuilt scorer against them. Returns those warmup scores (None when
    the bundle holds the facts only). Nothing is fsynced here: the store makes the files
    durable when it commits the bundle, with the version's (:meth:`ModelStore.commit`). Raises
    WarmupNonFinite or ModelLoadFailed when scikit-learn cannot score the warmup rows.
    """
    facts = EstimatorFacts.of(loaded)
    out.mkdir(parents=True)
    arrays: dict[str, np.ndarray] = {}
    model_part: dict[str, Any] = {"kind": None, "params": {}}
    scaler_part: dict[str, Any] | None = None
    form = _FORMS.get(facts.model_type)
    width = facts.n_features_in
    feature_names = None if spec is None else tuple(spec.feature_names)
    warmup_records = () if spec is None else spec.warmup
    usable = (form is not None and feature_names is not None and width == len(feature_names)
              and "score_samples" in facts.methods
              and (loaded.scaler is None or _standard_scaler(loaded.scaler, width)))
    if usable and form is not None and feature_names is not None and width is not None:
        kind: str | None = form[0]
        writer = form[1]
        try:
            params, model_arrays = writer(loaded.model)
        except (TypeError, ValueError, AttributeError):
            params, model_arrays, kind = {}, {}, None  # no bundle form for this variant
        if kind is not None:
            model_part = {"kind": kind, "params": params}
            arrays.update({f"model.{k}": v for k, v in model_arrays.items()})
            if loaded.scaler is not None:
                mean, scale = standard_parameters(loaded.scaler, width)
                scaler_part = {"kind": "standard"}
                arrays.update({"scaler.mean": mean, "scaler.scale": scale})
            extractor = FeatureExtractor(feature_names)
            try:
                rows = warmup_rows(extractor, warmup_records, loaded.scaler, width,
                                   warmup_row_count)
            except RecordInvalid as exc:  # as the Loader stage's warm() says it
                raise ModelLoadFailed(folder.name, f"warmup record {exc.index}: "
                                      f"{exc.problem}") from exc
            scores = _sklearn_scores(loaded, rows, folder.name)
            bad = int(np.count_nonzero(~np.isfinite(scores)))
            if bad:
                raise WarmupNonFinite(folder.name, bad, len(rows))
            reference = reference_rows(folder, width)
            ranked = scores if reference is None else _sklearn_scores(loaded, reference,
                                                                      folder.name)
            ranked = ranked[np.isfinite(ranked)]
            arrays[_WARMUP_ROWS] = np.asarray(rows, dtype=np.float64)
            arrays[_WARMUP_SCORES] = scores
            arrays[_REFERENCE] = np.sort(ranked if len(ranked) else scores)
    for name, array in arrays.items():
        np.save(out / f"{name}.npy", array, allow_pickle=False)
    manifest = {
        "format": BUNDLE_FORMAT,
        "facts": facts.to_dict(),
        "feature_names": None if feature_names is None else list(feature_names),
        "model": model_part,
        "scaler": scaler_part,
        "arrays": sorted(arrays),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, sort_keys=True), encoding="utf-8")
    return arrays.get(_WARMUP_SCORES)


def _standard_scaler(scaler: Any, width: int) -> bool:
    return type(scaler).__name__ == "StandardScaler" and \
        getattr(scaler, "n_features_in_", width) == width


def _sklearn_scores(loaded: LoadedArtifact, rows: np.ndarray, version: str) -> np.ndarray:
    """scikit-learn's own scores of ``rows`` (negated: higher = more anomalous)."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*feature names.*", category=UserWarning)
            x = rows if loaded.scaler is None else loaded.scaler.transform(rows)
            return -np.asarray(loaded.model.score_samples(x), dtype=np.float64)
    except Exception as exc:  # third-party estimator code: any failure means "cannot serve"
        raise ModelLoadFailed(version, f"{type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- reading


def _mapped(path: Path) -> dict[str, mmap.mmap | bytes]:
    """Every file of the bundle folder ``path`` in name order, memory-mapped read-only (an
    empty one as ``b""``). One open each, read by the digest and the arrays alike: under load
    every system call an import thread makes waits for the interpreter lock again: beside one
    busy thread, reading a bundle file by file for its digest and then with ``np.load`` took
    14-49 ms (3 ms alone), this 0.7-1.6 ms. The mapping stats the file itself: an empty one
    is the ValueError it raises (there is nothing to map), not an fstat more per file. Raises
    OSError."""
    views: dict[str, mmap.mmap | bytes] = {}
    for file in sorted(path.iterdir(), key=lambda p: p.name):
        fd = os.open(file, os.O_RDONLY)
        try:
            views[file.name] = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except ValueError:  # "cannot mmap an empty file"
            views[file.name] = b""
        finally:
            os.close(fd)
    return views


def _array(view: mmap.mmap | bytes, version: str, where: str, file: str,
           mapped: bool) -> np.ndarray:
    """The array of an ``.npy`` file's bytes, over them (``mapped``) or copied. Raises
    BundleInvalid naming the file."""
    try:
        array = _npy(view)
    except (ValueError, TypeError) as exc:
        raise BundleInvalid(version, where, f"{file} cannot be read: {exc}") from exc
    return array if mapped else array.copy()


def _npy(view: mmap.mmap | bytes) -> np.ndarray:
    """What ``np.load(allow_pickle=False)`` reads from ``view``, as :func:`write_bundle` writes
    it (npy format 1.0 or 2.0). Raises ValueError or TypeError (too short for its shape)."""
    header = io.BytesIO(view[:_NPY_HEADER_BYTES])
    form = np.lib.format.read_magic(header)
    read_header = _NPY_HEADERS.get(form)
    if read_header is None:
        raise ValueError(f"npy format {form} is not one np.save writes here")
    shape, fortran, dtype = read_header(header)
    if dtype.hasobject:
        raise ValueError("it holds Python objects, which are never unpickled")
    return np.ndarray(shape, dtype, buffer=view, offset=header.tell(),
                      order="F" if fortran else "C")


_NPY_HEADERS: Final = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}
_NPY_HEADER_BYTES: Final = 12 + 65535  # magic, version and length, and the longest 1.0 header


def read_bundle(path: Path, version: str, expected_digest: str | None = None,
                mmap: bool = True) -> Bundle:
    """Read the bundle in ``path`` (arrays memory-mapped unless ``mmap`` is false).

    Its digest: sha256 over ``name\0sha256(file)\n`` of every file in name order. With
    ``expected_digest`` (the registry's), the files must hash to it. Raises BundleInvalid
    naming what is wrong: a missing or unreadable file, a digest that differs, an unknown
    format, a manifest that is not what :func:`write_bundle` writes. Never unpickles.
    """
    where = str(path)
    try:
        views = _mapped(path)
    except OSError as exc:
        raise BundleInvalid(version, where, f"cannot be read: {exc}") from exc
    if MANIFEST not in views:
        raise BundleInvalid(version, where, f"cannot be read: {MANIFEST} is missing")
    digest = hashlib.sha256()
    for name, view in views.items():
        digest.update(f"{name}\0{hashlib.sha256(view).hexdigest()}\n".encode())
    identity, size = digest.hexdigest(), sum(len(view) for view in views.values())
    if expected_digest is not None and identity != expected_digest:
        raise BundleInvalid(version, where, f"its files hash to {identity}, the registry "
                            f"recorded {expected_digest}")
    raw = views[MANIFEST]
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleInvalid(version, where, f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES}")
    try:
        manifest = json.loads(bytes(raw))
        EstimatorFacts.from_dict(manifest["facts"])
        names = [str(n) for n in manifest["arrays"]]
        has_kind = "kind" in manifest["model"]
        form = manifest.get("format")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BundleInvalid(version, where, f"{MANIFEST} is not a bundle manifest: {exc}") \
            from exc
    if form != BUNDLE_FORMAT or not has_kind:
        raise BundleInvalid(version, where, f"{MANIFEST} is format {form!r}, not "
                            f"{BUNDLE_FORMAT}")
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        file = f"{name}.npy"
        if "/" in name or file not in views:
            raise BundleInvalid(version, where, f"array {name!r} is missing")
        arrays[name] = _array(views[file], version, where, file, mmap)
    return Bundle(path, identity, size, manifest, arrays, tuple(views))


def servable_from_bundle(bundle: Bundle, spec: ServableSpec) -> ServableModel:
    """Build the servable of ``spec.version`` from its bundle alone, and warm it.

    The warmup rows are scored by the rebuilt scorer and must match scikit-learn's scores in
    the bundle within :data:`WARMUP_TOLERANCE`. Called by validation (import) and by the
    manager (deploy, startup). Raises EstimatorUnbundled when the model has no bundle form
    (the caller decides whether it may be unpickled instead) and BundleInvalid when the bundle
    does not fit ``spec`` or scores differently.
    """
    version, where = spec.version, str(bundle.path)
    kind = bundle.kind
    if kind is None:
        raise EstimatorUnbundled(version, bundle.facts.model_type)
    names = tuple(spec.feature_names)
    if bundle.manifest.get("feature_names") != list(names):
        raise BundleInvalid(version, where, "its feature names are not the version's")
    reader = _READERS.get(kind)
    if reader is None:
        raise BundleInvalid(version, where, f"unknown model kind {kind!r}")
    arrays = bundle.arrays
    model_arrays = {name[len("model."):]: a for name, a in arrays.items()
                    if name.startswith("model.")}
    try:
        scorer, flagger, explainer = reader(bundle.manifest["model"]["params"], model_arrays)
        transform: Transform | None = None
        if bundle.manifest.get("scaler") is not None:
            transform = standard_transform(arrays["scaler.mean"], arrays["scaler.scale"])
        rows, expected = arrays[_WARMUP_ROWS], arrays[_WARMUP_SCORES]
        x = rows if transform is None else transform(rows)
        scores = np.asarray(scorer(x), dtype=np.float64)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise BundleInvalid(version, where, f"cannot be rebuilt: {type(exc).__name__}: "
                            f"{exc}") from exc
    if scores.shape != expected.shape:
        raise BundleInvalid(version, where, f"scored warmup rows as shape {scores.shape}, "
                            f"scikit-learn {expected.shape}")
    gap = np.abs(scores - expected)
    if not np.all(gap <= WARMUP_TOLERANCE):
        worst = int(np.nanargmax(np.where(np.isfinite(gap), gap, np.inf)))
        raise BundleInvalid(version, where, f"warmup row {worst} scores "
                            f"{float(scores[worst])!r} here and {float(expected[worst])!r} in "
                            "scikit-learn (more than "
                            f"{WARMUP_TOLERANCE:g} apart)")
    extractor = FeatureExtractor(names)
    return ServableModel(
        version, bundle.facts.model_type, names, extractor, transform, scorer, flagger,
        scores, np.asarray(rows), np.asarray(arrays[_REFERENCE]), LazyExplainer(explainer),
    )
