"""core/trust.py: manifests, model-signing signatures, the skops allowlist and pickle refusal.

Everything runs on real folders staged by the real ModelStore, real EC keys made here, real
fitted scikit-learn models, and real hostile pickles whose load would create a sentinel file.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import skops.io as sio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from modeld.core.errors import ArtifactInvalid, ArtifactUntrusted, ConfigError
from modeld.core.loader import (
    DEFAULT_TRUSTED_TYPES,
    LoadPolicy,
    PickleRefused,
    SkopsLoader,
    estimator_files,
    skops_types,
)
from modeld.core.source import read_manifest
from modeld.core.store import ModelStore, StagedArtifact
from modeld.core.trust import (
    SIGNATURE_FILE,
    check_manifest,
    key_fingerprint,
    load_public_key,
    sign_folder,
    verify_signature,
)
from tests.bad_corpus import Sentinel
from tests.helpers import artifact_files, train_forest, with_manifest, write_in_place

# --------------------------------------------------------------------------- fixtures


def write_key_pair(folder: Path, name: str, curve: ec.EllipticCurve | None = None
                   ) -> tuple[Path, Path]:
    key = ec.generate_private_key(curve or ec.SECP256R1())
    private = folder / f"{name}.pem"
    public = folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """The training service's key pair and somebody else's."""
    folder = tmp_path / "keys"
    folder.mkdir()
    private, public = write_key_pair(folder, "trainer")
    other_private, other_public = write_key_pair(folder, "other")
    return {"private": private, "public": public,
            "other_private": other_private, "other_public": other_public}


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "state")


@pytest.fixture
def make_folder(tmp_path: Path) -> Callable[..., Path]:
    """Writes an artifact folder like the training service (optionally with a manifest)."""
    counter = iter(range(1000))

    def make(files: dict[str, bytes] | None = None, manifest: bool = False) -> Path:
        folder = tmp_path / "models" / f"artifact-{next(counter)}"
        files = files if files is not None else artifact_files("v1", model=SMALL_FOREST)
        write_in_place(folder, with_manifest(files) if manifest else files)
        return folder

    return make


SMALL_FOREST = train_forest(n_estimators=5)


def digests(staged: StagedArtifact) -> dict[str, str]:
    return {name: d.sha256 for name, d in staged.files.items()}


def trusted_import(store: ModelStore, folder: Path, public_key: Path, policy: LoadPolicy,
                   require_manifest: bool = False) -> Any:
    """The order the manager follows: stage, manifest, signature, and only then load."""
    staged = store.stage(folder)
    try:
        check_manifest(staged.files, read_manifest(staged.path), require_manifest, folder)
        verify_signature(staged.path, public_key, digests(staged))
        model_path, _ = estimator_files(staged.path)
        return policy.loader()(model_path)
    finally:
        store.discard(staged)


# --------------------------------------------------------------------------- manifest


def test_manifest_that_matches_exactly_passes(store: ModelStore, make_folder: Callable[..., Path]
                                              ) -> None:
    folder = make_folder(manifest=True)
    (folder / "_SUCCESS").touch()
    staged = store.stage(folder)
    check_manifest(staged.files, read_manifest(staged.path), True, folder)


def test_missing_manifest_passes_unless_required() -> None:
    files = {"model.joblib": (3, "a" * 64), "metadata.json": (2, "b" * 64)}
    check_manifest(files, None, False, "/x")
    with pytest.raises(ArtifactUntrusted, match=r"no files manifest and security\.require_manifest"):
        check_manifest(files, None, True, "/x")


def test_manifest_names_missing_extra_and_altered_files(
    store: ModelStore, make_folder: Callable[..., Path]
) -> None:
    files = with_manifest(artifact_files("v1", model=SMALL_FOREST, scaler=StandardScaler().fit(
        np.ones((3, 4)))))
    files["model.joblib"] += b"\0"  # altered after the manifest was written
    del files["scaler.joblib"]  # listed but missing
    files["notes.txt"] = b"hello"  # not listed
    folder = make_folder(files)
    staged = store.stage(folder)
    with pytest.raises(ArtifactUntrusted) as caught:
        check_manifest(staged.files, read_manifest(staged.path), False, folder)
    reason = caught.value.reason
    assert "missing scaler.joblib" in reason
    assert "extra notes.txt" in reason
    assert "altered model.joblib" in reason


def test_manifest_with_a_wrong_digest_of_the_right_size_is_refused() -> None:
    staged = {"model.joblib": (3, "a" * 64), "metadata.json": (2, "b" * 64)}
    manifest = {"model.joblib": {"sha256": "c" * 64, "size": 3}}
    with pytest.raises(ArtifactUntrusted, match=r"altered model.joblib \(sha256 differs\)"):
        check_manifest(staged, manifest, False, "/x")


def test_manifest_entries_without_a_digest_are_refused() -> None:
    staged = {"model.joblib": (3, "a" * 64)}
    with pytest.raises(ArtifactUntrusted, match=r"malformed model\.joblib"):
        check_manifest(staged, {"model.joblib": {"size": 3}}, False, "/x")


@settings(max_examples=40, deadline=None)
@given(
    names=st.sets(st.from_regex(r"[a-z]{1,8}\.(joblib|skops|npz)", fullmatch=True),
                  min_size=1, max_size=6),
    data=st.data(),
)
def test_a_manifest_matches_exactly_its_own_files(names: set[str], data: st.DataObject) -> None:
    staged = {n: (len(n), f"{abs(hash(n)) % 16**8:064x}") for n in sorted(names)}
    manifest = {n: {"size": s, "sha256": d} for n, (s, d) in staged.items()}
    check_manifest({**staged, "metadata.json": (1, "0" * 64)}, manifest, True, "/x")
    dropped = data.draw(st.sampled_from(sorted(names)))
    with pytest.raises(ArtifactUntrusted, match=f"extra {dropped}"):
        check_manifest(staged, {n: e for n, e in manifest.items() if n != dropped}, True, "/x")


# --------------------------------------------------------------------------- signatures


def test_a_signed_artifact_verifies(store: ModelStore, make_folder: Callable[..., Path],
                                    keys: dict[str, Path]) -> None:
    folder = make_folder()
    sign_folder(folder, keys["private"])
    (folder / "_SUCCESS").touch()  # written after signing: needs no signature
    staged = store.stage(folder)
    verified = verify_signature(staged.path, keys["public"], digests(staged))
    assert set(verified.files) == {"model.joblib", "metadata.json"}
    assert verified.key_fingerprint == key_fingerprint(load_public_key(keys["public"]))
    assert verified.model_name == folder.name


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()])
def test_larger_curves_verify(tmp_path: Path, make_folder: Callable[..., Path],
                              curve: ec.EllipticCurve) -> None:
    private, public = write_key_pair(tmp_path, "big", curve)
    folder = make_folder()
    sign_folder(folder, private)
    verify_signature(folder, public, {p.name: _sha256(p) for p in folder.iterdir()})


def test_an_unsigned_artifact_is_refused(store: ModelStore, make_folder: Callable[..., Path],
                                         keys: dict[str, Path]) -> None:
    staged = store.stage(make_folder())
    with pytest.raises(ArtifactUntrusted, match=r"unsigned: model\.sig missing"):
        verify_signature(staged.path, keys["public"], digests(staged))


def test_an_artifact_signed_with_another_key_is_refused(
    store: ModelStore, make_folder: Callable[..., Path], keys: dict[str, Path]
) -> None:
    folder = make_folder()
    sign_folder(folder, keys["other_private"])
    staged = store.stage(folder)
    with pytest.raises(ArtifactUntrusted, match="signature does not verify: signed with another"):
        verify_signature(staged.path, keys["public"], digests(staged))


def test_another_keys_signature_without_key_hint_fails_the_ecdsa_check(
    make_folder: Callable[..., Path], keys: dict[str, Path]
) -> None:
    folder = make_folder()
    sig = sign_folder(folder, keys["other_private"])
    bundle = json.loads(sig.read_text())
    del bundle["verificationMaterial"]["publicKey"]["hint"]
    sig.write_text(json.dumps(bundle))
    with pytest.raises(ArtifactUntrusted, match=r"ECDSA signature .* does not match"):
        verify_signature(folder, keys["public"], {p.name: _sha256(p) for p in folder.iterdir()})


def test_a_statement_edited_after_signing_is_refused(
    make_folder: Callable[..., Path], keys: dict[str, Path]
) -> None:
    """Swapping the signed digest for the digest of other content breaks the signature."""
    folder = make_folder()
    sig = sign_folder(folder, keys["private"])
    (folder / "model.joblib").write_bytes(b"evil")
    bundle = json.loads(sig.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    for resource in statement["predicate"]["resources"]:
        if resource["name"] == "model.joblib":
            resource["digest"] = _sha256(folder / "model.joblib")
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    sig.write_text(json.dumps(bundle))
    with pytest.raises(ArtifactUntrusted, match="signature does not verify"):
        verify_signature(folder, keys["public"], {p.name: _sha256(p) for p in folder.iterdir()})


def test_a_file_modified_after_signing_is_refused(
    store: ModelStore, make_folder: Callable[..., Path], keys: dict[str, Path]
) -> None:
    folder = make_folder()
    sign_folder(folder, keys["private"])
    joblib.dump(train_forest(seed=1, n_estimators=5), folder / "model.joblib")
    staged = store.stage(folder)
    with pytest.raises(ArtifactUntrusted, match=r"^.*: file model\.joblib was modified after signing$"):
        verify_signature(staged.path, keys["public"], digests(staged))


def test_a_file_added_after_signing_is_refused(
    store: ModelStore, make_folder: Callable[..., Path], keys: dict[str, Path]
) -> None:
    folder = make_folder()
    sign_folder(folder, keys["private"])
    joblib.dump(StandardScaler().fit(np.ones((3, 4))), folder / "scaler.joblib")
    staged = store.stage(folder)
    with pytest.raises(ArtifactUntrusted, match=r"file scaler\.joblib is not covered by the signature"):
        verify_signature(staged.path, keys["public"], digests(staged))


def test_a_signed_file_removed_after_signing_is_refused(
    store: ModelStore, make_folder: Callable[..., Path], keys: dict[str, Path]
) -> None:
    files = artifact_files("v1", model=SMALL_FOREST, scaler=StandardScaler().fit(np.ones((3, 4))))
    folder = make_folder(files)
    sign_folder(folder, keys["private"])
    (folder / "scaler.joblib").unlink()
    staged = store.stage(folder)
    with pytest.raises(ArtifactUntrusted, match=r"file scaler\.joblib is signed but missing"):
        verify_signature(staged.path, keys["public"], digests(staged))


def test_digests_are_those_of_staging_not_of_the_source(
    store: ModelStore, make_folder: Callable[..., Path], keys: dict[str, Path]
) -> None:
    """The verdict is about what was copied: digests passed in are the ones compared."""
    folder = make_folder()
    sign_folder(folder, keys["private"])
    staged = store.stage(folder)
    lied = {**digests(staged), "model.joblib": "0" * 64}
    with pytest.raises(ArtifactUntrusted, match=r"model\.joblib was modified after signing"):
        verify_signature(staged.path, keys["public"], lied)


def test_a_garbage_signature_is_refused(make_folder: Callable[..., Path],
                                        keys: dict[str, Path]) -> None:
    folder = make_folder()
    (folder / SIGNATURE_FILE).write_text("not json")
    with pytest.raises(ArtifactUntrusted, match=r"signature does not verify: model\.sig is not"):
        verify_signature(folder, keys["public"], {})


@pytest.mark.parametrize("content", [b"garbage", None])
def test_an_unusable_verify_key_is_a_configuration_error(
    tmp_path: Path, make_folder: Callable[..., Path], keys: dict[str, Path],
    content: bytes | None,
) -> None:
    key_path = tmp_path / "bad.pub"
    if content is None:  # an RSA key: not what model-signing's key signatures use
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        content = rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    key_path.write_bytes(content)
    folder = make_folder()
    sign_folder(folder, keys["private"])
    with pytest.raises(ConfigError, match=r"security\.verify_key"):
        verify_signature(folder, key_path, {})


def test_a_hostile_pickle_never_runs_when_the_signature_fails(
    tmp_path: Path, store: ModelStore, make_folder: Callable[..., Path], keys: dict[str, Path]
) -> None:
    sentinel = tmp_path / "pwned"
    files = artifact_files("v1", model=Sentinel(sentinel))
    for signer in ("other_private", None):  # signed by somebody else; not signed at all
        folder = make_folder(files)
        if signer is not None:
            sign_folder(folder, keys[signer])
        with pytest.raises(ArtifactUntrusted):
            trusted_import(store, folder, keys["public"], LoadPolicy())
        assert not sentinel.exists()
    # Verifying a good signature reads no pickle either: only loading does.
    folder = make_folder(files)
    sign_folder(folder, keys["private"])
    staged = store.stage(folder)
    verify_signature(staged.path, keys["public"], digests(staged))
    assert not sentinel.exists()
    trusted_import(store, folder, keys["public"], LoadPolicy())
    assert sentinel.exists()  # the sentinel works: a trusted pickle does run


def test_a_hostile_pickle_never_runs_when_pickle_is_disallowed(
    tmp_path: Path, store: ModelStore, make_folder: Callable[..., Path], keys: dict[str, Path]
) -> None:
    sentinel = tmp_path / "pwned"
    folder = make_folder(artifact_files("v1", model=Sentinel(sentinel)))
    sign_folder(folder, keys["private"])  # even correctly signed
    with pytest.raises(ArtifactUntrusted, match=r"^.*: security\.allow_pickle is false: model\.joblib refused$"):
        trusted_import(store, folder, keys["public"], LoadPolicy(allow_pickle=False))
    assert not sentinel.exists()
    assert LoadPolicy(allow_pickle=False).refuses(folder / "scaler.joblib") is not None
    assert LoadPolicy().refuses(folder / "model.joblib") is None


def test_pickle_refused_wraps_any_loader(tmp_path: Path) -> None:
    calls: list[Path] = []
    loader = PickleRefused(calls.append)
    for name in ("model.joblib", "model.pkl", "model"):
        with pytest.raises(ArtifactUntrusted, match=re.escape(f"{name} refused")):
            loader(tmp_path / name)
    loader(tmp_path / "model.skops")
    assert calls == [tmp_path / "model.skops"]


# --------------------------------------------------------------------------- model-signing


def test_model_signing_signatures_verify_and_ours_verify_with_model_signing(
    store: ModelStore, make_folder: Callable[..., Path], keys: dict[str, Path]
) -> None:
    """Interoperability with the reference implementation (the optional extra)."""
    model_signing = pytest.importorskip("model_signing")
    folder = make_folder()
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE])
    (model_signing.signing.Config().use_elliptic_key_signer(private_key=keys["private"])
     .set_hashing_config(hashing).sign(folder, folder / SIGNATURE_FILE))
    staged = store.stage(folder)
    verify_signature(staged.path, keys["public"], digests(staged))
    joblib.dump(train_forest(seed=2, n_estimators=5), folder / "model.joblib")
    staged = store.stage(folder)
    with pytest.raises(ArtifactUntrusted, match=r"model\.joblib was modified after signing"):
        verify_signature(staged.path, keys["public"], digests(staged))

    ours = make_folder()
    sign_folder(ours, keys["private"])
    (model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keys["public"])
     .verify(ours, ours / SIGNATURE_FILE))
    with pytest.raises(ValueError, match=r"(?i)key|signature"):
        (model_signing.verifying.Config()
         .use_elliptic_key_verifier(public_key=keys["other_public"])
         .verify(ours, ours / SIGNATURE_FILE))


def test_sharded_model_signing_signatures_are_refused_with_the_reason(
    make_folder: Callable[..., Path], keys: dict[str, Path]
) -> None:
    model_signing = pytest.importorskip("model_signing")
    folder = make_folder()
    hashing = (model_signing.hashing.Config().use_shard_serialization()
               .set_ignored_paths(paths=[SIGNATURE_FILE]))
    (model_signing.signing.Config().use_elliptic_key_signer(private_key=keys["private"])
     .set_hashing_config(hashing).sign(folder, folder / SIGNATURE_FILE))
    with pytest.raises(ArtifactUntrusted, match=r"does not verify: signed with serialization "
                       r"'shards'/'sha256'; modeld verifies per-file sha256"):
        verify_signature(folder, keys["public"], {p.name: _sha256(p) for p in folder.iterdir()})


# --------------------------------------------------------------------------- skops


def _fitted_variants() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4))
    variants: dict[str, Any] = {
        "forest": IsolationForest(n_estimators=5, random_state=0).fit(x),
        "forest_subsampled": IsolationForest(n_estimators=5, max_features=0.5, max_samples=0.5,
                                             bootstrap=True, contamination=0.1).fit(x),
        "forest_random_state": IsolationForest(
            n_estimators=5, random_state=np.random.RandomState(0)).fit(x),
        "scaler": StandardScaler().fit(x),
        "lof_wide": LocalOutlierFactor(novelty=True).fit(rng.normal(size=(120, 30))),
    }
    for algorithm in ("kd_tree", "ball_tree", "brute"):
        for metric in ("minkowski", "manhattan", "chebyshev"):
            variants[f"lof_{algorithm}_{metric}"] = LocalOutlierFactor(
                novelty=True, n_neighbors=10, algorithm=algorithm, metric=metric).fit(x)
    variants["lof_p3"] = LocalOutlierFactor(novelty=True, p=3).fit(x)
    return variants


def test_the_default_allowlist_is_what_the_supported_models_need(tmp_path: Path) -> None:
    needed: set[str] = set()
    loader = SkopsLoader(DEFAULT_TRUSTED_TYPES)
    x = np.random.default_rng(1).normal(size=(5, 4))
    for name, estimator in _fitted_variants().items():
        path = tmp_path / f"{name}.skops"
        sio.dump(estimator, path)
        needed |= skops_types(path)
        loaded = loader(path)
        assert type(loaded) is type(estimator)
        if name == "scaler":
            np.testing.assert_array_equal(loaded.transform(x), estimator.transform(x))
        elif name != "lof_wide":
            np.testing.assert_array_equal(loaded.score_samples(x), estimator.score_samples(x))
    # Exactly what they need, plus numpy scalar/dtype types an attribute may hold.
    assert needed <= set(DEFAULT_TRUSTED_TYPES)
    assert set(DEFAULT_TRUSTED_TYPES) - needed <= {"numpy.dtype", "numpy.float32", "numpy.int64"}


def test_skops_types_sklearn_trusts_by_default_are_still_refused(tmp_path: Path) -> None:
    """skops trusts any scikit-learn estimator; modeld trusts only its allowlist."""
    x = np.random.default_rng(0).normal(size=(40, 4))
    for estimator, refused in (
        (OneClassSVM().fit(x), "sklearn.svm._classes.OneClassSVM"),
        (make_pipeline(StandardScaler(), IsolationForest(n_estimators=3)).fit(x),
         "sklearn.pipeline.Pipeline"),
    ):
        path = tmp_path / "model.skops"
        sio.dump(estimator, path)
        with pytest.raises(ArtifactUntrusted, match=f"outside security.trusted_types: .*{refused}"):
            SkopsLoader(DEFAULT_TRUSTED_TYPES)(path)


class SetStateTouches:
    """A type skops itself does not trust, whose construction would leave a file behind."""

    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __setstate__(self, state: dict[str, Any]) -> None:
        Path(state["sentinel"]).touch()
        self.__dict__.update(state)


def test_an_untrusted_type_is_refused_before_anything_is_constructed(tmp_path: Path) -> None:
    sentinel = tmp_path / "constructed"
    forest = IsolationForest(n_estimators=3).fit(np.ones((10, 2)))
    forest.extra_ = SetStateTouches(str(sentinel))
    path = tmp_path / "model.skops"
    sio.dump(forest, path)
    with pytest.raises(ArtifactUntrusted, match=r"tests\.test_trust\.SetStateTouches"):
        SkopsLoader(DEFAULT_TRUSTED_TYPES)(path)
    assert not sentinel.exists()
    # An allowlist missing a needed type refuses real models too.
    without_tree = [t for t in DEFAULT_TRUSTED_TYPES if t != "sklearn.tree._tree.Tree"]
    sio.dump(forest.set_params(), path)
    with pytest.raises(ArtifactUntrusted, match=r"sklearn\.tree\._tree\.Tree"):
        SkopsLoader(without_tree)(path)


def test_a_file_that_is_not_skops_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    path.write_bytes(b"PK not a zip")
    with pytest.raises(ArtifactInvalid, match=r"model\.skops is not a skops file"):
        SkopsLoader()(path)


def test_the_policy_loads_skops_even_when_pickle_is_refused(tmp_path: Path) -> None:
    sio.dump(SMALL_FOREST, tmp_path / "model.skops")
    joblib.dump(SMALL_FOREST, tmp_path / "model.joblib")
    model, scaler = estimator_files(tmp_path)
    assert (model.name, scaler) == ("model.skops", None)
    loaded = LoadPolicy(allow_pickle=False).loader()(model)
    assert isinstance(loaded, IsolationForest)
    policy = LoadPolicy(allow_pickle=False, trusted_types=("builtins.dict",))
    assert LoadPolicy.from_dict(policy.to_dict()) == policy
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    with pytest.raises(ArtifactInvalid, match=r"neither model\.skops nor model\.joblib"):
        estimator_files(tmp_path)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
