"""Ed25519 signatures over a bundle's manifest (`manifest.sig` beside `manifest.json`).

The manifest holds every file's SHA-256, so a signature over its exact bytes covers the whole
bundle. A server started with `--trust-key PUB.pem` refuses a bundle whose signature is missing
or does not verify; without a key, signatures are not required (nor checked).

    openssl genpkey -algorithm ed25519 -out signer.pem
    openssl pkey -in signer.pem -pubout -out trust.pem

Example: `sign_manifest("model_store/fmnist-cnn/1", Path("signer.pem").read_bytes())`, then
`advguard serve --trust-key trust.pem`.
"""
from __future__ import annotations

import base64
import binascii
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE = "manifest.sig"


class SignatureError(ValueError):
    """A signature is missing or does not verify, or a key is not an Ed25519 key."""


def load_public_key(pem: bytes, where: str = "trust key") -> Ed25519PublicKey:
    """The Ed25519 public key in PEM bytes; ValueError naming `where` otherwise."""
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as err:
        raise SignatureError(f"{where} is not a PEM public key ({err}); make one with "
                             "`openssl pkey -in signer.pem -pubout -out trust.pem`") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{where} is a {type(key).__name__}, not an Ed25519 key; make one with "
                             "`openssl genpkey -algorithm ed25519`")
    return key


def sign_manifest(folder: Path | str, private_key_pem: bytes, password: bytes | None = None) -> Path:
    """Sign `folder/manifest.json` with an Ed25519 private key (PEM); writes and returns
    `folder/manifest.sig` (base64, one line). Sign after the manifest's last change."""
    key = serialization.load_pem_private_key(private_key_pem, password=password)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"the signing key is a {type(key).__name__}, not an Ed25519 key")
    folder = Path(folder)
    signature = key.sign((folder / "manifest.json").read_bytes())
    out = folder / SIGNATURE
    tmp = folder / f".{SIGNATURE}.tmp"
    tmp.write_text(base64.b64encode(signature).decode() + "\n")
    tmp.replace(out)
    return out


def verify_manifest(manifest: bytes, signature_file: bytes, key: Ed25519PublicKey, where: str) -> None:
    """Check `signature_file` (the contents of manifest.sig) over the manifest's exact bytes."""
    try:
        signature = base64.b64decode(signature_file.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{where}/{SIGNATURE} is not base64; sign the bundle again") from None
    try:
        key.verify(signature, manifest)
    except InvalidSignature:
        raise SignatureError(f"{where}/{SIGNATURE} does not verify against the trusted key: the manifest "
                             "changed after it was signed, or another key signed it") from None
