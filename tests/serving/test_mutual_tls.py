"""Mutual TLS (`--tls-client-ca`) on both gRPC front ends and on the REST port: a client with a
certificate from the client CA is answered; one with no certificate, or with a certificate the CA
did not sign, never gets a call through (the handshake fails: UNAVAILABLE over gRPC, an SSL
error over HTTPS)."""
from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest

from protos.advguard.v1 import guard_pb2, guard_pb2_grpc
from serving.client import Connection
from tests.serving.conftest import native_server, tensor_image


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def signed(pki: Path, name: str, ca: str, *extra: str) -> tuple[Path, Path]:
    """A key and a certificate for `name`, signed by the CA `ca` (files `<ca>.pem`, `<ca>.key`)."""
    key, csr, cert = pki / f"{name}.key", pki / f"{name}.csr", pki / f"{name}.pem"
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
            "-out", str(csr), "-subj", f"/CN={name}")
    ext = pki / f"{name}.ext"
    ext.write_text("\n".join(extra) + "\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(pki / f"{ca}.pem"), "-CAkey", str(pki / f"{ca}.key"),
            "-CAcreateserial", "-days", "1", "-out", str(cert), "-extfile", str(ext))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """Two CAs (`ca`, trusted by the server for clients; `rogue`, not), a server certificate for
    127.0.0.1 and a client certificate from each CA."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl missing")
    pki = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue"):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                "-keyout", str(pki / f"{ca}.key"), "-out", str(pki / f"{ca}.pem"), "-subj", f"/CN={ca} test CA",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    signed(pki, "server", "ca", "subjectAltName=IP:127.0.0.1", "extendedKeyUsage=serverAuth")
    signed(pki, "client", "ca", "extendedKeyUsage=clientAuth")
    signed(pki, "stranger", "rogue", "extendedKeyUsage=clientAuth")
    return pki


@pytest.fixture(scope="module", params=["grpc", "native"])
def mtls_server(request, pki, serving_store, tmp_path_factory):
    """A server of each front end with TLS and --tls-client-ca (the grpc front also with REST)."""
    log = tmp_path_factory.mktemp("mtls") / f"{request.param}.log"
    args = ["--poll-seconds", "0", "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
            "--tls-client-ca", str(pki / "ca.pem")]
    if request.param == "native":
        server = native_server(serving_store, log, *args)
    else:
        from tests.serving.conftest import start_server
        server = start_server(serving_store, log, *args, "--http-port", "0")
    yield server
    code, _ = server.stop()
    assert code == 0, server.log_text()


def classify(target: str, pki: Path, client: str | None, image) -> guard_pb2.ClassifyResponse:
    connection = Connection(target, tls_ca=pki / "ca.pem", tls_cert=pki / f"{client}.pem" if client else None,
                            tls_key=pki / f"{client}.key" if client else None)
    with connection.channel() as channel:
        stub = guard_pb2_grpc.GuardedClassifierStub(channel)
        return stub.Classify(guard_pb2.ClassifyRequest(image=tensor_image(image)), timeout=10)


def test_a_client_certificate_from_the_ca_is_required(mtls_server, pki, clean_images):
    image = clean_images[0][0]
    answer = classify(mtls_server.target, pki, "client", image)
    assert answer.class_name and answer.model
    for client in (None, "stranger"):  # no certificate; one the client CA did not sign
        with pytest.raises(grpc.RpcError) as caught:
            classify(mtls_server.target, pki, client, image)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, (client, caught.value.details())
    assert classify(mtls_server.target, pki, "client", image).class_index == answer.class_index


@pytest.mark.parametrize("mtls_server", ["grpc"], indirect=True)  # the native front end has no REST port
def test_the_rest_port_requires_the_client_certificate_too(mtls_server, pki):
    port = mtls_server.ready["http_port"]
    url = f"https://127.0.0.1:{port}/v2/health/live"

    def get(client: str | None) -> dict:
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        if client:
            context.load_cert_chain(pki / f"{client}.pem", pki / f"{client}.key")
        with urllib.request.urlopen(url, context=context, timeout=10) as answer:
            return json.loads(answer.read())

    assert get("client") == {"live": True}
    for client in (None, "stranger"):
        with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
            get(client)
