"""`advguard classify` against a real server with TLS and a bearer token."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import encode_image


def classify(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "advguard.cli.main", "classify", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_classify_over_tls_with_a_token(secure_server, clean_images, tmp_path):
    server, cert, token_file = secure_server
    x, y = clean_images
    image = tmp_path / "shoe.png"
    image.write_bytes(encode_image(x[0, 0]))
    target = ["--target", server.target, "--model", "fmnist-guarded"]
    ok = classify(*target, "--tls-ca", str(cert), "--auth-token-file", str(token_file), str(image))
    assert ok.returncode == 0, ok.stderr
    path, index, name, prob, verdict = ok.stdout.strip().split("\t")
    assert path == str(image) and 0 <= int(index) < 10 and 0 < float(prob) <= 1
    assert verdict in ("CLEAN", "SUSPICIOUS", "ADVERSARIAL")
    no_token = classify(*target, "--tls-ca", str(cert), str(image))
    assert no_token.returncode == 1 and "UNAUTHENTICATED" in no_token.stderr
    plaintext = classify(*target, "--auth-token-file", str(token_file), "--timeout", "5", str(image))
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr


def test_classify_explains_a_half_configured_mutual_tls(tmp_path):
    result = classify("--tls-cert", str(tmp_path / "c.pem"), str(tmp_path / "x.png"))
    assert result.returncode != 0 and "--tls-cert and --tls-key go together" in result.stderr


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("127.0.0.1:50051", True), ("127.8.9.1:1", True), ("localhost", True),
    ("localhost:50051", True), ("::1", True), ("[::1]:50051", True), ("dns:///127.0.0.1:50051", True),
    ("dns:///localhost:1", True), ("0.0.0.0", False), ("0.0.0.0:50051", False), ("10.0.0.5:50051", False),
    ("[2001:db8::1]:50051", False), ("2001:db8::1", False), ("example.com:443", False), ("", False)])
def test_is_loopback_is_one_answer_for_server_and_client(address, loopback):
    """One function decides 'on this machine' for the server's exposure checks (plaintext token,
    metrics host) and the client's: bare hosts, HOST:PORT, bracketed and bare IPv6, dns:/// targets."""
    from serving.client import is_loopback

    assert is_loopback(address) is loopback
