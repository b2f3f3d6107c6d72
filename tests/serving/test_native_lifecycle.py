"""`advguard serve --front native` over its lifetime: hot reload of a version added to the store,
and, over TLS with a bearer token, refusal without the token and draining on SIGTERM under load
(as test_lifecycle.py shows for `advguard serve`)."""
from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.loadgen import run_load
from protos.advguard.v1 import guard_pb2, guard_pb2_grpc
from serving.client import Connection
from serving.grpc.codes import DRAINING, UNAUTHENTICATED
from tests.serving.conftest import native_server, tensor_image


def test_hot_reload_serves_a_version_added_to_the_store(guarded_bundle, tools, tmp_path):
    store = tmp_path / "store"
    tools.clone_bundle(guarded_bundle, store, "fmnist-guarded", "1")
    server = native_server(store, tmp_path / "native.log", "--poll-seconds", "0.2")
    try:
        with Connection(server.target).channel() as channel:
            stub = guard_pb2_grpc.GuardedClassifierStub(channel)
            assert stub.GetModel(guard_pb2.GetModelRequest(), timeout=30).versions == ["1"]
            tools.clone_bundle(guarded_bundle, store, "fmnist-guarded", "2")
            deadline = time.monotonic() + 60
            while stub.GetModel(guard_pb2.GetModelRequest(), timeout=30).version != "2":
                assert time.monotonic() < deadline, server.log_text()
                time.sleep(0.1)
            assert stub.GetModel(guard_pb2.GetModelRequest(), timeout=30).versions == ["1", "2"]
    finally:
        code, counts = server.stop()
    assert code == 0 and counts["OK"] >= 3 and "hot reload: now serving fmnist-guarded version 2" in server.log_text()


@pytest.fixture
def token_native(serving_store, tmp_path):
    """A native front end with TLS (a self-signed certificate for 127.0.0.1), a bearer token
    (`s3cret-token`) and a longer drain: (server, certificate path)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl missing")
    cert, key, token = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "token"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    token.write_text("s3cret-token\n")
    server = native_server(serving_store, tmp_path / "native.log", "--poll-seconds", "0", "--auth-token-file",
                           str(token), "--drain-seconds", "2", "--tls-cert", str(cert), "--tls-key", str(key))
    yield server, cert
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


def test_the_token_is_required_and_sigterm_drains_under_load(token_native, clean_images):
    """As test_lifecycle's test of `advguard serve`, over TLS: refused without the token (health
    open), then SIGTERM with 32 calls in flight: every call OK or UNAVAILABLE, every accepted one
    answered; while draining new calls are refused and health says NOT_SERVING."""
    token_native, cert = token_native
    request = guard_pb2.ClassifyRequest(image=tensor_image(clean_images[0][0]))
    auth = Connection(token_native.target, tls_ca=cert, token="s3cret-token").metadata
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())

    async def main():
        stop, warmed = asyncio.Event(), asyncio.Event()
        async with grpc.aio.secure_channel(token_native.target, credentials) as channel:
            stub = guard_pb2_grpc.GuardedClassifierStub(channel)
            for metadata in ((), (("authorization", "Bearer wrong"),)):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Classify(request, metadata=metadata)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert caught.value.details() == UNAUTHENTICATED[1]
            health = health_pb2_grpc.HealthStub(channel)
            assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING

            async def call(i):
                if i == 300:  # 300 calls sent, most of them answered: time for the SIGTERM
                    warmed.set()
                try:
                    await stub.Classify(request, metadata=auth, timeout=60)
                except grpc.aio.AioRpcError:
                    stop.set()  # refused (draining, or the port closed): the load winds down
                    raise

            async def operator():
                await warmed.wait()
                token_native.proc.send_signal(signal.SIGTERM)  # with 32 calls in flight
                await stop.wait()
                with pytest.raises(grpc.aio.AioRpcError) as caught:  # draining: refused, health says so
                    await stub.Classify(request, metadata=auth, timeout=30)
                assert caught.value.details() == DRAINING[1]
                return (await health.Check(health_pb2.HealthCheckRequest())).status

            load, status = await asyncio.gather(run_load(call, 1_000_000, 32, stop), operator())
            return load, status

    load, status = asyncio.run(main())
    code, counts = token_native.stop()
    assert (code, status) == (0, health_pb2.HealthCheckResponse.NOT_SERVING), token_native.log_text()
    refused = load.codes["UNAVAILABLE"]
    assert load.ok + refused == sum(load.codes.values()), (load.codes, load.details)
    # the server answered every call it accepted (+ the two health checks), refused the token twice,
    # and refused the rest, the operator's one call included, UNAVAILABLE (or its port was closed)
    assert counts == {"OK": load.ok + 2, "UNAUTHENTICATED": 2, **({"UNAVAILABLE": counts["UNAVAILABLE"]}
                                                                  if "UNAVAILABLE" in counts else {})}
    assert counts.get("UNAVAILABLE", 0) <= refused + 1
    assert load.ok >= 250 and "finishing" in token_native.log_text()
