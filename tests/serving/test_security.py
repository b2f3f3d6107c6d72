"""Security defaults of `advguard serve` (a real server started with no security flags): the
guard cannot be switched off by a caller, answers disclose the verdict and not the guard's
gradient signal, refusals cost no parsing, bombs are refused before decoding, a stream cannot
be wedged, metrics stay on loopback and tokens never travel in clear text off loopback."""
from __future__ import annotations

import io
import socket

import grpc
import numpy as np
import pytest
from PIL import Image

from protos.advguard.v1 import guard_pb2, guard_pb2_grpc
from tests.support import encode_image

tc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def default_server(serving_store, tmp_path_factory, tools):
    server = tools.start_server(serving_store, tmp_path_factory.mktemp("default") / "server.log",
                                "--default-model", "fmnist-guarded", "--poll-seconds", "0",
                                "--max-queue-size", "64", "--max-request-pixels", "20000000")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stub(default_server):
    with grpc.insecure_channel(default_server.target) as channel:
        yield guard_pb2_grpc.GuardedClassifierStub(channel)


def png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_skip_guard_is_refused_by_default(stub, default_server, clean_images):
    image = guard_pb2.Image(encoded=encode_image(clean_images[0][0, 0]))
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(guard_pb2.ClassifyRequest(image=image, skip_guard=True))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "--allow-skip-guard" in err.value.details()
    client = tc.InferenceServerClient(default_server.target)
    tensor = tc.InferInput("input", [1, 1, 28, 28], "FP32")
    tensor.set_data_from_numpy(clean_images[0][:1].astype(np.float32) / 255)
    with pytest.raises(InferenceServerException, match="skip_guard is not allowed"):
        client.infer("fmnist-guarded", [tensor], parameters={"skip_guard": True})
    client.close()


def test_answers_disclose_the_verdict_only(stub, default_server, clean_images):
    reply = stub.Classify(guard_pb2.ClassifyRequest(image=guard_pb2.Image(encoded=encode_image(clean_images[0][0, 0]))))
    assert reply.verdict in (guard_pb2.CLEAN, guard_pb2.ADVERSARIAL) and reply.class_name
    assert len(reply.detectors) == 0 and reply.attack_score == 0.0
    info = stub.GetModel(guard_pb2.GetModelRequest(name="fmnist-guarded"))
    assert [d.name for d in info.detectors] == ["feature-squeezing", "low-confidence"]
    assert all(d.threshold == 0.0 for d in info.detectors)
    client = tc.InferenceServerClient(default_server.target)
    outputs = [o.name for o in client.get_model_metadata("fmnist-guarded").outputs]
    assert outputs == ["probabilities", "class_index", "class_name", "verdict", "answered_by"]
    tensor = tc.InferInput("input", [1, 1, 28, 28], "FP32")
    tensor.set_data_from_numpy(clean_images[0][:1].astype(np.float32) / 255)
    result = client.infer("fmnist-guarded", [tensor])
    assert result.get_response().parameters.get("thresholds") is None
    with pytest.raises(InferenceServerException, match="--disclosure full"):
        client.infer("fmnist-guarded", [tensor], outputs=[tc.InferRequestedOutput("detector_scores")])
    client.close()


def test_image_count_and_pixels_are_checked_before_decoding(stub):
    too_many = [guard_pb2.Image(encoded=png(1))] * 65
    with pytest.raises(grpc.RpcError) as err:
        stub.ClassifyBatch(guard_pb2.ClassifyBatchRequest(images=too_many))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "65 images; the limit is 64" in err.value.details()
    big = [guard_pb2.Image(encoded=png(3000))] * 3  # 9 Mpx each, 27 Mpx > the 20 Mpx cap
    with pytest.raises(grpc.RpcError) as err:
        stub.ClassifyBatch(guard_pb2.ClassifyBatchRequest(images=big))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "20000000 pixels in all" in err.value.details()


def test_a_stream_survives_an_oversize_item(stub, clean_images):
    """Items larger than the queue fail alone; the stream goes on answering (their images were
    given back to the stream's window of 1,024: 17 items of 65 would exceed it if kept)."""
    x = clean_images[0]
    huge = guard_pb2.Tensor(shape=[65, 1, 28, 28], dtype=guard_pb2.DTYPE_UINT8,
                            data=np.repeat(x[:1], 65, axis=0).tobytes())
    ok = guard_pb2.Image(tensor=guard_pb2.Tensor(shape=[1, 28, 28], dtype=guard_pb2.DTYPE_UINT8, data=x[0].tobytes()))
    items = [guard_pb2.ClassifyRequest(batch=huge, request_id="huge")] * 17 + \
            [guard_pb2.ClassifyRequest(image=ok, request_id=f"ok{i}") for i in range(3)]
    replies = list(stub.ClassifyStream(iter(items), timeout=30))
    assert [r.request_id for r in replies] == ["huge"] * 17 + ["ok0", "ok1", "ok2"]
    assert all(r.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] for r in replies[:17])
    assert all(not r.HasField("error") and r.class_name for r in replies[17:])


def test_refused_calls_are_not_parsed(secure_server):
    """Without the token, even bytes that are no protobuf message get UNAUTHENTICATED: the
    refusal comes before the message is read."""
    server, cert, _ = secure_server
    credentials = grpc.ssl_channel_credentials(cert.read_bytes())
    with grpc.secure_channel(server.target, credentials) as channel:
        call = channel.unary_unary("/advguard.v1.GuardedClassifier/Classify")  # raw bytes in and out
        with pytest.raises(grpc.RpcError) as err:
            call(b"\xff\xff\xff not a protobuf message", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def non_loopback_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing interface
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_metrics_stay_on_loopback_when_grpc_is_exposed(serving_store, tmp_path, tools):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    server = tools.start_server(serving_store, tmp_path / "server.log", "--host", "0.0.0.0", "--poll-seconds", "0")
    try:
        with socket.create_connection(("127.0.0.1", server.metrics_port), timeout=5):
            pass
        with pytest.raises(OSError):
            socket.create_connection((address, server.metrics_port), timeout=5).close()
    finally:
        server.stop()


def test_plaintext_token_off_loopback_is_refused(serving_store, tmp_path, tools):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with pytest.raises(RuntimeError, match="clear text"):
        tools.start_server(serving_store, tmp_path / "server.log", "--host", "0.0.0.0",
                           "--auth-token-file", str(token))
    from serving.client import Connection

    with pytest.raises(ValueError, match="clear text to 10.1.2.3:50051"):
        Connection.from_files("10.1.2.3:50051", token_file=str(token))
    assert Connection.from_files("127.0.0.1:50051", token_file=str(token)).token == "s3cret"
