"""Signing keys and signatures: Ed25519 and HMAC-SHA256, detected from the key file."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from linewatch.edge.model import signing


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return signing.generate_keypair(tmp_path / "keys")


def test_keygen_writes_private_0600_and_public(pair: tuple[Path, Path]) -> None:
    priv, pub = pair
    assert priv.name == "linewatch.key" and pub.name == "linewatch.pub"
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in priv.read_bytes() and b"BEGIN PUBLIC KEY" in pub.read_bytes()


def test_keygen_refuses_to_overwrite(pair: tuple[Path, Path]) -> None:
    with pytest.raises(signing.SignatureError, match="refusing to overwrite"):
        signing.generate_keypair(pair[0].parent)


def test_key_type_is_detected(pair: tuple[Path, Path], tmp_path: Path) -> None:
    priv, pub = (signing.load_key(p) for p in pair)
    assert priv.alg == pub.alg == "ed25519" and priv.can_sign and not pub.can_sign
    assert priv.key_id == pub.key_id and len(pub.key_id) == 16
    hex_key = signing.load_key(signing.generate_hmac_key(tmp_path / "h.key"))
    assert hex_key.alg == "hmac-sha256" and hex_key.can_sign
    secret = os.urandom(32)
    (tmp_path / "b64.key").write_text(base64.b64encode(secret).decode() + "\n")
    (tmp_path / "hex.key").write_text(secret.hex())
    assert signing.load_key(tmp_path / "b64.key").key_id == signing.load_key(tmp_path / "hex.key").key_id


@pytest.mark.parametrize("content", [b"short", b"\xff\xfe binary", b"-----BEGIN CERTIFICATE-----\nxx\n"])
def test_bad_key_files(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "k").write_bytes(content)
    with pytest.raises(signing.SignatureError):
        signing.load_key(tmp_path / "k")


def test_sign_and_verify(pair: tuple[Path, Path], tmp_path: Path) -> None:
    priv, pub = pair
    data = b'{"schema_version": 1}\n'
    doc = signing.sign_bytes(data, priv)
    assert set(doc) == {"alg", "key_id", "signature"}
    parsed = signing.parse_signature(signing.encode_signature(doc))
    signing.verify_bytes(data, parsed, pub)
    signing.verify_bytes(data, parsed, priv)  # a private key verifies too
    with pytest.raises(signing.SignatureError, match="changed after signing"):
        signing.verify_bytes(data + b" ", parsed, pub)
    _other_priv, other_pub = signing.generate_keypair(tmp_path / "other")
    with pytest.raises(signing.SignatureError, match="key id"):
        signing.verify_bytes(data, parsed, other_pub)
    with pytest.raises(signing.SignatureError, match="verify but not sign"):
        signing.sign_bytes(data, pub)


def test_hmac_sign_and_verify(tmp_path: Path) -> None:
    key = signing.generate_hmac_key(tmp_path / "h.key")
    data = b"manifest bytes"
    doc = signing.sign_bytes(data, key)
    signing.verify_bytes(data, doc, key)
    forged = dict(doc, signature=base64.b64encode(b"\x00" * 32).decode())
    with pytest.raises(signing.SignatureError):
        signing.verify_bytes(data, forged, key)
