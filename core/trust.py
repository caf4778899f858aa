"""Trust: decides whether an artifact's bytes may be believed, before any of them is unpickled.

Everything here works on the daemon's staged copy of a candidate folder (see ``core/store.py``)
and on the digests computed while copying it, so what is checked is exactly what will be loaded.
The checks, in the order the manager runs them, before the Loader stage (``core/loader.py``)
opens any estimator file:

1. :func:`check_manifest`: the ``files`` manifest of metadata.json, when present (or when
   ``security.require_manifest`` makes it mandatory), lists exactly the folder's files.
2. :func:`verify_signature`: with ``security.verify_key`` set, ``model.sig`` is an OpenSSF
   model-signing signature (a Sigstore bundle holding a DSSE envelope whose in-toto statement
   lists every file's sha256), made with the private half of that key, covering every file.

What may then be loaded, and how (skops with an allowlist of types, pickle only while
``security.allow_pickle`` is true), is the Loader stage's: ``core/loader.py``.

The signature format is the one the ``model-signing`` package (sigstore/model-transparency)
writes with ``model_signing sign key``; it is verified here with ``cryptography`` alone: no
network, no Sigstore trust root, nothing unpickled. :func:`sign_folder` writes the same format
(for tests, and for producers that do not want the ``model-signing`` package).

Pure functions: no threads, no clock, no logging. Failures are raised as
:class:`~core.errors.ArtifactUntrusted` (the bytes cannot be believed); a bad operator key file
is a :class:`~core.errors.ConfigError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat as stat_module
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from modeld.core.errors import ArtifactUntrusted, ConfigError
from modeld.core.source import METADATA_FILE, SUCCESS_MARKER, sha256_file

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "SIGNATURE_FILE",
    "VerifiedSignature",
    "check_manifest",
    "key_fingerprint",
    "load_public_key",
    "sign_folder",
    "verify_signature",
]

SIGNATURE_FILE: Final = "model.sig"
"""Where ``model_signing sign`` puts the signature by default: the folder's root."""

UNLISTED_FILES: Final = frozenset({METADATA_FILE, SIGNATURE_FILE, SUCCESS_MARKER})
"""Files a ``files`` manifest need not list: the file holding it, the signature, the marker."""

UNSIGNED_FILES: Final = frozenset({SIGNATURE_FILE, SUCCESS_MARKER})
"""Files a signature need not cover: itself, and the marker some producers write after it."""

BUNDLE_MEDIA_TYPE: Final = "application/vnd.dev.sigstore.bundle.v0.3+json"
DSSE_PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
IN_TOTO_STATEMENT: Final = "https://in-toto.io/Statement/v1"
PREDICATE_V1: Final = "https://model_signing/signature/v1.0"
MAX_SIGNATURE_BYTES: Final = 8 * 1024 * 1024
SUPPORTED_CURVES: Final[Mapping[str, Callable[[], hashes.HashAlgorithm]]] = {
    # The hash model-signing pairs with each curve (as Sigstore's protobuf specs do).
    "secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512,
}
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------- manifest


class SizedDigest(Protocol):
    """What :class:`core.store.FileDigest` offers: a file's size and sha256 as computed."""

    @property
    def size(self) -> int: ...

    @property
    def sha256(self) -> str: ...


StagedFile = SizedDigest | tuple[int, str]


def _size_and_digest(value: StagedFile) -> tuple[int, str]:
    if isinstance(value, tuple):
        return value[0], value[1]
    return value.size, value.sha256


def check_manifest(
    staged_files: Mapping[str, StagedFile],
    manifest: Mapping[str, Any] | None,
    require: bool,
    path: str | Path,
) -> None:
    """Check the ``files`` manifest of metadata.json against the staged files.

    ``staged_files`` maps each staged file's name to its ``(size, sha256)`` (a
    :class:`core.store.FileDigest` will do), as computed while staging; ``manifest`` is the
    ``files`` object of metadata.json, or None when there is none. Called by the manager on its
    import thread, after staging and before anything is loaded.

    Returns None when the manifest matches exactly: every listed file is there with that size
    and digest, and every staged file is listed except metadata.json, ``model.sig`` and
    ``_SUCCESS``. Raises ArtifactUntrusted naming every missing, extra and altered file; or,
    when ``require`` is true (``security.require_manifest``), when there is no manifest.
    """
    where = str(path)
    if manifest is None:
        if require:
            raise ArtifactUntrusted(
                where, "metadata.json has no files manifest and security.require_manifest is true"
            )
        return
    if not isinstance(manifest, Mapping):
        raise ArtifactUntrusted(where, "files manifest: must be an object")
    missing, altered, malformed = [], [], []
    for name, entry in sorted(manifest.items()):
        if not isinstance(entry, Mapping):
            malformed.append(f"{name} (entry is not an object)")
            continue
        expected = entry.get("sha256")
        if not isinstance(expected, str) or not _SHA256_HEX.match(expected.lower()):
            malformed.append(f"{name} (no sha256 of 64 hex digits)")
            continue
        size = entry.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
            malformed.append(f"{name} (size is not an integer)")
            continue
        if name not in staged_files:
            missing.append(name)
            continue
        actual_size, actual_digest = _size_and_digest(staged_files[name])
        if size is not None and size != actual_size:
            altered.append(f"{name} ({actual_size} bytes, the manifest says {size})")
        elif actual_digest != expected.lower():
            altered.append(f"{name} (sha256 differs)")
    extra = sorted(n for n in staged_files if n not in manifest and n not in UNLISTED_FILES)
    problems = [
        f"{label} {', '.join(items)}"
        for label, items in (("malformed", malformed), ("missing", missing), ("extra", extra),
                             ("altered", altered))
        if items
    ]
    if problems:
        raise ArtifactUntrusted(where, "files manifest does not match: " + "; ".join(problems))


# --------------------------------------------------------------------------- signatures


@dataclass(frozen=True, slots=True)
class VerifiedSignature:
    """What a verified ``model.sig`` vouches for (recorded with the version)."""

    key_fingerprint: str
    model_name: str
    files: Mapping[str, str]
    predicate_type: str


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Read the operator's ``security.verify_key`` (PEM, elliptic curve P-256/384/521).

    Called at startup (so that a bad key stops the daemon there) and by
    :func:`verify_signature`. Raises ConfigError naming the problem.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError("security.verify_key", f"cannot read {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError("security.verify_key", f"{path} is not a PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError("security.verify_key",
                          f"{path} is not an elliptic-curve key (model-signing key-based "
                          "signatures use ECDSA P-256, P-384 or P-521)")
    if key.curve.name not in SUPPORTED_CURVES:
        raise ConfigError("security.verify_key", f"{path}: curve {key.curve.name} is not "
                          "supported (use P-256, P-384 or P-521)")
    return key


def key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """The key hint model-signing records: sha256 of the key's SubjectPublicKeyInfo PEM."""
    pem = key.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature is computed over."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _b64decode(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise _Refused(f"{what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        try:
            return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError) as exc:
            raise _Refused(f"{what} is not valid base64") from exc


class _Refused(Exception):
    """Internal: why a signature does not verify (turned into ArtifactUntrusted)."""


def _read_bundle(sig_path: Path) -> Mapping[str, Any]:
    try:
        with sig_path.open("rb") as fh:
            raw = fh.read(MAX_SIGNATURE_BYTES + 1)
    except OSError as exc:
        raise _Refused(f"{SIGNATURE_FILE} cannot be read: {exc.strerror}") from exc
    if len(raw) > MAX_SIGNATURE_BYTES:
        raise _Refused(f"{SIGNATURE_FILE} is larger than {MAX_SIGNATURE_BYTES} bytes")
    try:
        bundle = json.loads(raw)
    except ValueError as exc:
        raise _Refused(f"{SIGNATURE_FILE} is not JSON") from exc
    if not isinstance(bundle, dict):
        raise _Refused(f"{SIGNATURE_FILE} is not a Sigstore bundle")
    return bundle


def _signed_payload(bundle: Mapping[str, Any], key: ec.EllipticCurvePublicKey) -> bytes:
    """Check the bundle's key hint and DSSE signature; return the signed payload."""
    media_type = bundle.get("mediaType")
    if media_type != BUNDLE_MEDIA_TYPE:
        raise _Refused(f"unsupported bundle media type {media_type!r} (expected "
                       f"{BUNDLE_MEDIA_TYPE})")
    material = bundle.get("verificationMaterial")
    if not isinstance(material, dict) or "publicKey" not in material:
        raise _Refused("the bundle is not key-based (signed with a certificate or a Sigstore "
                       "identity); modeld verifies signatures made with security.verify_key")
    public_key = material["publicKey"]
    hint = public_key.get("hint") if isinstance(public_key, dict) else None
    expected_hint = key_fingerprint(key)
    if hint and hint != expected_hint:
        raise _Refused(f"signed with another key (key hint {str(hint)[:16]}..., "
                       f"security.verify_key is {expected_hint[:16]}...)")
    envelope = bundle.get("dsseEnvelope")
    if not isinstance(envelope, dict):
        raise _Refused("the bundle has no DSSE envelope")
    payload_type = envelope.get("payloadType")
    if payload_type != DSSE_PAYLOAD_TYPE:
        raise _Refused(f"unexpected DSSE payload type {payload_type!r}")
    payload = _b64decode(envelope.get("payload"), "the DSSE payload")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise _Refused("the DSSE envelope holds no signature")
    message = pae(DSSE_PAYLOAD_TYPE, payload)
    algorithm = ec.ECDSA(SUPPORTED_CURVES[key.curve.name]())
    for entry in signatures:
        if not isinstance(entry, dict):
            continue
        signature = _b64decode(entry.get("sig"), "a DSSE signature")
        try:
            key.verify(signature, message, algorithm)
        except InvalidSignature:
            continue
        return payload
    raise _Refused("the ECDSA signature over the DSSE envelope does not match security.verify_key")


def _signed_files(payload: bytes) -> tuple[str, str, dict[str, str]]:
    """Model name, predicate type and ``{file name: sha256}`` of a signed in-toto statement."""
    try:
        statement = json.loads(payload)
    except ValueError as exc:
        raise _Refused("the signed payload is not JSON") from exc
    if not isinstance(statement, dict) or statement.get("_type") != IN_TOTO_STATEMENT:
        raise _Refused("the signed payload is not an in-toto v1 statement")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects or not all(
        isinstance(s, dict) and isinstance(s.get("digest"), dict) for s in subjects
    ):
        raise _Refused("the in-toto statement has no subject")
    predicate_type = statement.get("predicateType")
    if predicate_type != PREDICATE_V1:
        # Signatures of model-signing before 1.0 (predicate .../Digests/v0.1) were made over a
        # malformed DSSE encoding; they are refused rather than verified by a second scheme.
        raise _Refused(f"unsupported predicate type {predicate_type!r} (sign with "
                       "model-signing 1.0 or later)")
    predicate = statement.get("predicate")
    if not isinstance(predicate, dict):
        raise _Refused("the in-toto statement has no predicate")
    serialization_args = predicate.get("serialization")
    if not isinstance(serialization_args, dict):
        raise _Refused("the predicate has no serialization")
    method, hash_type = serialization_args.get("method"), serialization_args.get("hash_type")
    if method != "files" or hash_type != "sha256":
        raise _Refused(f"signed with serialization {method!r}/{hash_type!r}; modeld verifies "
                       "per-file sha256 signatures (model_signing's default)")
    resources = predicate.get("resources")
    if not isinstance(resources, list):
        raise _Refused("the predicate has no resources")
    files: dict[str, str] = {}
    root = hashlib.sha256()
    for resource in resources:
        if not isinstance(resource, dict) or resource.get("algorithm") != "sha256":
            raise _Refused("a signed resource is not a sha256 digest")
        name, digest = resource.get("name"), resource.get("digest")
        if not isinstance(name, str) or not isinstance(digest, str) or not _SHA256_HEX.match(
            digest.lower()
        ):
            raise _Refused("a signed resource has no name or no valid digest")
        if name in files:
            raise _Refused(f"{name} is signed twice")
        files[name] = digest.lower()
        root.update(bytes.fromhex(digest))
    if len(subjects) != 1 or subjects[0]["digest"].get("sha256") != root.hexdigest():
        raise _Refused("the statement's subject digest does not match its resources")
    return str(subjects[0].get("name", "")), PREDICATE_V1, files


def verify_signature(
    folder: Path,
    public_key_path: Path,
    staged_digests: Mapping[str, str],
) -> VerifiedSignature:
    """Verify ``folder/model.sig`` against ``security.verify_key`` and the staged files.

    ``folder`` is the staged copy; ``staged_digests`` maps each staged file's name to the
    sha256 modeld computed while copying it (nothing is re-read or hashed again here, and no
    file but ``model.sig`` and the key is opened). Called by the manager on its import thread,
    after :func:`check_manifest` and before anything is loaded.

    Returns what the signature vouches for. Raises ArtifactUntrusted with the reason:
    ``unsigned: model.sig missing``, ``signature does not verify: ...`` (wrong key, broken
    bundle, unsupported variant), ``file X is not covered by the signature`` (every staged file
    but ``model.sig`` and ``_SUCCESS`` must be), ``file X was modified after signing`` or
    ``file X is signed but missing``. Raises ConfigError when the key file itself is unusable.
    """
    where = str(folder)
    sig_path = folder / SIGNATURE_FILE
    try:
        st = os.lstat(sig_path)
    except FileNotFoundError:
        raise ArtifactUntrusted(where, f"unsigned: {SIGNATURE_FILE} missing") from None
    if not stat_module.S_ISREG(st.st_mode):
        raise ArtifactUntrusted(where, f"unsigned: {SIGNATURE_FILE} is not a regular file")
    key = load_public_key(public_key_path)
    try:
        payload = _signed_payload(_read_bundle(sig_path), key)
        model_name, predicate_type, signed = _signed_files(payload)
    except _Refused as exc:
        raise ArtifactUntrusted(where, f"signature does not verify: {exc}") from None
    problems = []
    for name in sorted(set(staged_digests) | set(signed)):
        if name in UNSIGNED_FILES and (name not in signed or name not in staged_digests):
            continue
        if name not in signed:
            problems.append(f"file {name} is not covered by the signature")
        elif name not in staged_digests:
            problems.append(f"file {name} is signed but missing")
        elif staged_digests[name].lower() != signed[name]:
            problems.append(f"file {name} was modified after signing")
    if problems:
        raise ArtifactUntrusted(where, "; ".join(problems))
    return VerifiedSignature(key_fingerprint(key), model_name, signed, predicate_type)


def sign_folder(folder: Path, private_key_path: Path, password: bytes | None = None) -> Path:
    """Sign every regular file of ``folder`` into ``folder/model.sig`` (model-signing format).

    Writes what ``model_signing sign key --private_key KEY FOLDER`` writes: a Sigstore v0.3
    bundle whose DSSE envelope holds an in-toto statement with one sha256 per file (predicate
    ``https://model_signing/signature/v1.0``, file serialization, ``model.sig`` ignored),
    signed with ECDSA. ``model_signing verify key`` accepts it, and so does
    :func:`verify_signature`. For tests and for producers without the model-signing package;
    call it after every other file is written (``_SUCCESS``, if any, after it). Raises
    ValueError for a key that is not an EC private key on a supported curve, OSError for I/O.
    """
    private_key = serialization.load_pem_private_key(private_key_path.read_bytes(), password)
    if not isinstance(private_key, ec.EllipticCurvePrivateKey) or (
        private_key.curve.name not in SUPPORTED_CURVES
    ):
        raise ValueError(f"{private_key_path} is not an EC private key on P-256/384/521")
    resources = []
    root = hashlib.sha256()
    for name in sorted(_signable_files(folder)):
        digest = sha256_file(folder / name)
        resources.append({"algorithm": "sha256", "name": name, "digest": digest})
        root.update(bytes.fromhex(digest))
    statement = {
        "_type": IN_TOTO_STATEMENT,
        "subject": [{"name": folder.name, "digest": {"sha256": root.hexdigest()}}],
        "predicateType": PREDICATE_V1,
        "predicate": {
            "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": False,
                              "ignore_paths": [SIGNATURE_FILE]},
            "resources": resources,
        },
    }
    payload = json.dumps(statement, indent=2).encode()
    signature = private_key.sign(
        pae(DSSE_PAYLOAD_TYPE, payload),
        ec.ECDSA(SUPPORTED_CURVES[private_key.curve.name]()),
    )
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": key_fingerprint(private_key.public_key())},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": DSSE_PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
        },
    }
    target = folder / SIGNATURE_FILE
    target.write_text(json.dumps(bundle, indent=2), encoding="utf-8")
    return target


def _signable_files(folder: Path) -> Iterable[str]:
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name != SIGNATURE_FILE and entry.is_file(follow_symlinks=False):
                yield entry.name

