"""Signatures over `manifest.json`: Ed25519 (default) or HMAC-SHA256.

Why the manifest and not every file: the manifest carries the sha256 of every other
file in the bundle, so one signature over its exact bytes covers the whole bundle.

`manifest.sig` is a small JSON document::

    {"alg": "ed25519" | "hmac-sha256", "key_id": "<16 hex>", "signature": "<base64>"}

Key files (the type is detected from the content, so one `--key FILE` flag serves both):

- Ed25519 private key: PEM, PKCS8 (`-----BEGIN PRIVATE KEY-----`). Signs; also verifies.
- Ed25519 public key: PEM, SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`). Verifies only:
  this is what a box should hold.
- HMAC secret: a text file with a hex or base64 secret of at least 16 bytes. Signs and
  verifies (a shared secret: every box that can verify can also sign).

`key_id` is the first 16 hex characters of the sha256 of the raw public key (Ed25519) or
of a domain-separated hash of the secret (HMAC), so a box can tell "signed with another
key" from "tampered".

This module is imported on the box: numpy-free, torch-free; only `cryptography`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ALG_ED25519 = "ed25519"
ALG_HMAC = "hmac-sha256"
PRIVATE_KEY_NAME = "linewatch.key"
PUBLIC_KEY_NAME = "linewatch.pub"
SIG_FIELDS = ("alg", "key_id", "signature")
_HMAC_ID_DOMAIN = b"linewatch-hmac-key-id\x00"
_MIN_HMAC_BYTES = 16


class SignatureError(Exception):
    """A signature is missing, malformed, made with another key, or does not verify."""


@dataclass(frozen=True)
class KeyMaterial:
    """A loaded key: what it can do and which id it signs under."""

    alg: str
    key_id: str
    can_sign: bool
    _private: Any = None  # Ed25519PrivateKey
    _public: Any = None  # Ed25519PublicKey
    _secret: bytes | None = None

    def sign(self, data: bytes) -> bytes:
        """Raw signature bytes over `data`."""
        if not self.can_sign:
            raise SignatureError(f"key {self.key_id} is a public key: it can verify but not sign")
        if self.alg == ALG_ED25519:
            return self._private.sign(data)
        assert self._secret is not None
        return hmac.new(self._secret, data, hashlib.sha256).digest()

    def verify(self, data: bytes, signature: bytes) -> bool:
        """True when `signature` is valid for `data` under this key."""
        if self.alg == ALG_ED25519:
            from cryptography.exceptions import InvalidSignature

            try:
                self._public.verify(signature, data)
            except InvalidSignature:
                return False
            return True
        assert self._secret is not None
        expected = hmac.new(self._secret, data, hashlib.sha256).digest()
        return hmac.compare_digest(expected, signature)


def _ed25519_key_id(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _hmac_key_id(secret: bytes) -> str:
    return hashlib.sha256(_HMAC_ID_DOMAIN + secret).hexdigest()[:16]


def _parse_secret(text: str) -> bytes:
    """Hex first (unambiguous), then base64; both must give >= 16 bytes."""
    s = "".join(text.split())
    if s.lower().startswith("hex:"):
        s = s[4:]
    elif s.lower().startswith("base64:"):
        s = s[7:]
    candidates: list[bytes] = []
    with contextlib.suppress(ValueError):
        candidates.append(bytes.fromhex(s))
    with contextlib.suppress(binascii.Error, ValueError):
        candidates.append(base64.b64decode(s, validate=True))
    for secret in candidates:
        if len(secret) >= _MIN_HMAC_BYTES:
            return secret
    raise SignatureError(
        f"key file is neither a PEM Ed25519 key nor a hex/base64 HMAC secret of >= {_MIN_HMAC_BYTES} bytes"
    )


def load_key(path: str | os.PathLike[str]) -> KeyMaterial:
    """Load a key file, detecting Ed25519 private/public PEM or an HMAC secret."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise SignatureError(f"cannot read key file {p}: {e}") from e
    if b"-----BEGIN" in data:
        if b"PRIVATE KEY" in data:
            try:
                key = serialization.load_pem_private_key(data, password=None)
            except (ValueError, TypeError) as e:
                raise SignatureError(f"{p}: not a readable unencrypted PKCS8 private key: {e}") from e
            if not isinstance(key, Ed25519PrivateKey):
                raise SignatureError(f"{p}: private key is {type(key).__name__}, expected Ed25519")
            pub = key.public_key()
            return KeyMaterial(ALG_ED25519, _ed25519_key_id(pub), True, _private=key, _public=pub)
        if b"PUBLIC KEY" in data:
            try:
                pub = serialization.load_pem_public_key(data)
            except (ValueError, TypeError) as e:
                raise SignatureError(f"{p}: not a readable public key: {e}") from e
            if not isinstance(pub, Ed25519PublicKey):
                raise SignatureError(f"{p}: public key is {type(pub).__name__}, expected Ed25519")
            return KeyMaterial(ALG_ED25519, _ed25519_key_id(pub), False, _public=pub)
        raise SignatureError(f"{p}: PEM file holds neither a PRIVATE KEY nor a PUBLIC KEY")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as e:
        raise SignatureError(f"{p}: HMAC key file must be ASCII hex or base64") from e
    secret = _parse_secret(text)
    return KeyMaterial(ALG_HMAC, _hmac_key_id(secret), True, _secret=secret)


def _write_private(path: Path, data: bytes) -> None:
    """Create a file readable by the owner only; refuse to overwrite a key."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)  # the umask cannot widen it, but be explicit


def generate_keypair(key_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write `KEY_DIR/linewatch.key` (PKCS8 PEM, 0600) and `KEY_DIR/linewatch.pub` (PEM).

    Refuses to overwrite an existing key: losing a private key strands every box that
    trusts it, so replacing one must be a deliberate `rm`.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    d = Path(key_dir)
    d.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = d / PRIVATE_KEY_NAME, d / PUBLIC_KEY_NAME
    for p in (priv_path, pub_path):
        if p.exists():
            raise SignatureError(f"{p} exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    priv_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_private(priv_path, priv_pem)
    pub_path.write_bytes(pub_pem)
    return priv_path, pub_path


def generate_hmac_key(path: str | os.PathLike[str], nbytes: int = 32) -> Path:
    """Write a random hex HMAC secret with 0600 permissions (refuses to overwrite)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    _write_private(p, (os.urandom(nbytes).hex() + "\n").encode("ascii"))
    return p


def sign_bytes(data: bytes, key: KeyMaterial | str | os.PathLike[str]) -> dict[str, str]:
    """The `manifest.sig` document for `data`."""
    k = key if isinstance(key, KeyMaterial) else load_key(key)
    sig = k.sign(data)
    return {"alg": k.alg, "key_id": k.key_id, "signature": base64.b64encode(sig).decode("ascii")}


def signer(key: KeyMaterial | str | os.PathLike[str]) -> Callable[[bytes], bytes]:
    """`manifest.json` bytes -> `manifest.sig` bytes under `key` (contract.manifest.write_manifest's `sign`)."""
    k = key if isinstance(key, KeyMaterial) else load_key(key)
    return lambda data: encode_signature(sign_bytes(data, k))


def encode_signature(doc: dict[str, str]) -> bytes:
    """Serialise a signature document the way `manifest.sig` stores it."""
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def parse_signature(raw: bytes) -> dict[str, str]:
    """Parse and shape-check a `manifest.sig` document."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SignatureError(f"manifest.sig is not valid JSON: {e}") from e
    if not isinstance(doc, dict) or any(not isinstance(doc.get(f), str) for f in SIG_FIELDS):
        raise SignatureError(f"manifest.sig must be a JSON object with string fields {list(SIG_FIELDS)}")
    return doc


def verify_bytes(data: bytes, sig_doc: dict[str, str], key: KeyMaterial | str | os.PathLike[str]) -> None:
    """Raise SignatureError unless `sig_doc` is a valid signature of `data` under `key`."""
    k = key if isinstance(key, KeyMaterial) else load_key(key)
    if sig_doc.get("alg") != k.alg:
        raise SignatureError(f"signature algorithm {sig_doc.get('alg')!r} does not match the key ({k.alg})")
    if sig_doc.get("key_id") != k.key_id:
        raise SignatureError(
            f"signed with key id {sig_doc.get('key_id')!r}, but the given key has id {k.key_id!r}"
        )
    try:
        raw = base64.b64decode(sig_doc["signature"], validate=True)
    except (binascii.Error, ValueError, KeyError) as e:
        raise SignatureError("signature field is not valid base64") from e
    if not k.verify(data, raw):
        raise SignatureError("signature does not verify: manifest.json was changed after signing")


def verify_with_policy(
    data: bytes, sig_doc: dict[str, str], release: str | os.PathLike[str], box_keys: Sequence[Any] = ()
) -> str:
    """Verify under the release key or one of the allowed box keys; the signer's role.

    "release" for the release key, "box" for a box key (which the caller restricts to bank-only
    bundles on a release-signed base; see `edge.model.bundle.open_bundle`).
    """
    release_key = load_key(release)
    if sig_doc.get("key_id") != release_key.key_id and box_keys:
        boxes = {k.key_id: k for k in (load_key(b) for b in box_keys)}
        if sig_doc.get("key_id") not in boxes:
            raise SignatureError(
                f"signed with key id {sig_doc.get('key_id')!r}: neither the release key nor an allowed box key"
            )
        verify_bytes(data, sig_doc, boxes[sig_doc["key_id"]])
        return "box"
    verify_bytes(data, sig_doc, release_key)
    return "release"
