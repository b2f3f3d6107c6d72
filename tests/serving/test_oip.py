"""Open Inference Protocol v2 with an unmodified tritonclient[grpc] client."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

tc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from protos.advguard.v1 import guard_pb2, guard_pb2_grpc  # noqa: E402
from tests.support import uint8_and_png_inputs  # noqa: E402


@pytest.fixture(scope="module")
def client(server):
    client = tc.InferenceServerClient(server.target)
    yield client
    client.close()


def fp32_input(x: np.ndarray):
    tensor = tc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fmnist-guarded") and client.is_model_ready("fmnist-guarded", "1")
    assert not client.is_model_ready("nope")
    assert client.get_server_metadata().name == "advguard"
    meta = client.get_model_metadata("fmnist-guarded")
    assert list(meta.versions) == ["1"]
    assert (meta.inputs[0].name, meta.inputs[0].datatype, list(meta.inputs[0].shape)) == ("input", "FP32", [-1, 1, 28, 28])
    assert [o.name for o in meta.outputs] == ["probabilities", "class_index", "class_name", "verdict", "attack_score",
                                              "detector_scores", "detector_flags", "answered_by"]


def test_model_infer_gives_class_and_verdict_like_classify(client, server, clean_images):
    x = clean_images[0][:8]
    result = client.infer("fmnist-guarded", [fp32_input(x.astype(np.float32) / 255)])
    classes, verdicts = result.as_numpy("class_index"), result.as_numpy("verdict")
    assert classes.shape == (8,) and result.as_numpy("probabilities").shape == (8, 10)
    assert set(verdicts.tolist()) <= {b"CLEAN", b"ADVERSARIAL"}
    flags, scores = result.as_numpy("detector_flags"), result.as_numpy("detector_scores")
    assert flags.shape == scores.shape == (8, 2)
    assert ((verdicts == b"ADVERSARIAL") == flags.any(axis=1)).all()
    params = result.get_response().parameters
    assert params["detectors"].string_param == "feature-squeezing,low-confidence"
    with grpc.insecure_channel(server.target) as channel:
        stub = guard_pb2_grpc.GuardedClassifierStub(channel)
        batch = stub.ClassifyBatch(guard_pb2.ClassifyBatchRequest(batch=guard_pb2.Tensor(
            shape=list(x.shape), dtype=guard_pb2.DTYPE_UINT8, data=x.tobytes())))
    assert classes.tolist() == [r.class_index for r in batch.results]
    names = [r.class_name.encode() for r in batch.results]
    assert result.as_numpy("class_name").tolist() == names
    assert verdicts.tolist() == [guard_pb2.Verdict.Name(r.verdict).encode() for r in batch.results]


def test_uint8_bytes_and_requested_outputs(client, clean_images):
    x = clean_images[0][:3]
    as_uint8, as_png = uint8_and_png_inputs(x)
    wanted = [tc.InferRequestedOutput("class_index"), tc.InferRequestedOutput("verdict")]
    a = client.infer("fmnist-guarded", [as_uint8], outputs=wanted)
    b = client.infer("fmnist-guarded", [as_png], outputs=wanted)
    assert a.as_numpy("class_index").tolist() == b.as_numpy("class_index").tolist()
    assert a.as_numpy("probabilities") is None  # not requested


@pytest.mark.parametrize("make, message", [
    (lambda: [fp32_input(np.zeros((1, 3, 28, 28), np.float32))], "has 3 channels; the model takes 1"),
    (lambda: [fp32_input(np.full((1, 1, 28, 28), np.nan, np.float32))], "tensor holds NaN or Inf values"),
    (lambda: [tc.InferInput("input", [1, 1, 28, 28], "FP64")], "input datatype 'FP64' is not supported"),
    (lambda: [tc.InferInput("pixels", [1], "FP32")], "this model takes one input named 'input'; got 'pixels'"),
])
def test_bad_infer_requests_are_invalid_argument(client, make, message):
    inputs = make()
    for tensor in inputs:
        if tensor.datatype() == "FP64":
            tensor.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float64))
        elif tensor.name() == "pixels":
            tensor.set_data_from_numpy(np.zeros(1, np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("fmnist-guarded", inputs)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in caught.value.message()


@pytest.mark.parametrize("method, kind", [
    ("/inference.GRPCInferenceService/ModelInfer", "inference.ModelInferRequest"),
    ("/advguard.v1.GuardedClassifier/Classify", "advguard.v1.ClassifyRequest"),
    ("/advguard.v1.GuardedClassifier/ClassifyBatch", "advguard.v1.ClassifyBatchRequest"),
])
def test_bytes_that_are_no_request_are_invalid_argument(server, method, kind):
    """As the native front end answers them (test_native_front.py), not grpc.aio's INTERNAL."""
    with grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(method)(b"\xff\xff\xff", timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == f"the request is not a serialized {kind}"
        assert health_serving(channel)  # the server goes on


def health_serving(channel) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def test_unknown_model_and_output(client, clean_images):
    x = clean_images[0][:1].astype(np.float32) / 255
    with pytest.raises(InferenceServerException) as caught:
        client.infer("nope", [fp32_input(x)])
    assert caught.value.status() == "StatusCode.NOT_FOUND" and "unknown model 'nope'" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.infer("fmnist-guarded", [fp32_input(x)], outputs=[tc.InferRequestedOutput("logits")])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and "unknown output 'logits'" in caught.value.message()


def test_a_reject_policy_withholds_the_class(client, clean_images):
    result = client.infer("fmnist-reject", [fp32_input(clean_images[0][:2].astype(np.float32) / 255)])
    assert result.as_numpy("class_index").tolist() == [-1, -1]
    assert result.as_numpy("verdict").tolist() == [b"ADVERSARIAL", b"ADVERSARIAL"]
    assert result.as_numpy("class_name").tolist() == [b"", b""]
    assert not result.as_numpy("probabilities").any()
    assert result.get_response().parameters["action"].string_param == "reject"
