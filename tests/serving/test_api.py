"""advguard.v1.GuardedClassifier, health and reflection against a real server process."""
from __future__ import annotations


import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.advguard.v1 import guard_pb2, guard_pb2_grpc
from tests.serving.conftest import tensor_image
from tests.support import encode_image


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield guard_pb2_grpc.GuardedClassifierStub(channel)



def test_classify_answers_with_class_verdict_detectors_and_version(stub, clean_images):
    x, y = clean_images
    reply = stub.Classify(guard_pb2.ClassifyRequest(image=guard_pb2.Image(encoded=encode_image(x[0, 0])), request_id="r1"))
    assert reply.model == "fmnist-guarded" and reply.model_version == "1" and reply.answered_by == "model.onnx"
    assert reply.request_id == "r1"
    assert len(reply.probabilities) == 10 and abs(sum(reply.probabilities) - 1) < 1e-4
    assert reply.class_index == int(np.argmax(reply.probabilities))
    assert reply.class_name == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                "Sneaker", "Bag", "Ankle boot"][reply.class_index]
    assert reply.verdict in (guard_pb2.CLEAN, guard_pb2.ADVERSARIAL)
    assert [d.name for d in reply.detectors] == ["feature-squeezing", "low-confidence"]
    for d in reply.detectors:
        assert d.threshold > 0 and 0 < d.calibrated_fpr <= 0.05  # its share of the verdict's 5%
        assert d.flagged == (d.score > d.threshold)
    assert reply.attack_score == pytest.approx(max(d.score / d.threshold for d in reply.detectors), rel=1e-5)
    assert (reply.verdict == guard_pb2.ADVERSARIAL) == any(d.flagged for d in reply.detectors)
    assert reply.action == "flag"


def test_png_jpeg_and_tensors_agree(stub, clean_images):
    x = clean_images[0][3]
    as_png = stub.Classify(guard_pb2.ClassifyRequest(image=guard_pb2.Image(encoded=encode_image(x[0]))))
    as_uint8 = stub.Classify(guard_pb2.ClassifyRequest(image=tensor_image(x)))
    as_float = stub.Classify(guard_pb2.ClassifyRequest(image=guard_pb2.Image(tensor=guard_pb2.Tensor(
        shape=[1, 1, 28, 28], dtype=guard_pb2.DTYPE_FLOAT32, data=(x.astype("<f4") / 255).tobytes()))))
    np.testing.assert_allclose(as_png.probabilities, as_uint8.probabilities, atol=1e-6)
    np.testing.assert_allclose(as_float.probabilities, as_uint8.probabilities, atol=1e-5)
    as_jpeg = stub.Classify(guard_pb2.ClassifyRequest(image=guard_pb2.Image(encoded=encode_image(x[0], "JPEG"))))
    assert len(as_jpeg.probabilities) == 10


def test_batch_stream_and_unary_agree_and_classify_well(stub, clean_images):
    x, y = clean_images[0][:200], clean_images[1][:200]
    batch = stub.ClassifyBatch(guard_pb2.ClassifyBatchRequest(batch=guard_pb2.Tensor(
        shape=list(x.shape), dtype=guard_pb2.DTYPE_UINT8, data=x.tobytes())))
    assert len(batch.results) == 200
    accuracy = np.mean([r.class_index for r in batch.results] == y)
    assert accuracy > 0.7
    images = stub.ClassifyBatch(guard_pb2.ClassifyBatchRequest(images=[tensor_image(i) for i in x[:5]]))
    stream = list(stub.ClassifyStream(guard_pb2.ClassifyRequest(image=tensor_image(i), request_id=str(k))
                                      for k, i in enumerate(x[:20])))
    assert [r.request_id for r in stream] == [str(k) for k in range(20)]
    for k in range(5):
        np.testing.assert_allclose(images.results[k].probabilities, batch.results[k].probabilities, atol=1e-6)
    for k in range(20):
        assert stream[k].class_index == batch.results[k].class_index
        assert stream[k].verdict == batch.results[k].verdict


def test_a_bad_stream_item_gets_an_error_and_the_stream_goes_on(stub, clean_images):
    x = clean_images[0]
    requests = [guard_pb2.ClassifyRequest(image=tensor_image(x[0]), request_id="a"),
                guard_pb2.ClassifyRequest(model="nope", image=tensor_image(x[1]), request_id="b"),
                guard_pb2.ClassifyRequest(image=guard_pb2.Image(encoded=b"junk"), request_id="c"),
                guard_pb2.ClassifyRequest(image=tensor_image(x[2]), request_id="d")]
    replies = list(stub.ClassifyStream(iter(requests)))
    assert [r.request_id for r in replies] == ["a", "b", "c", "d"]
    assert replies[0].error.code == 0 and replies[3].error.code == 0 and len(replies[3].probabilities) == 10
    assert replies[1].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "unknown model 'nope'" in replies[1].error.message
    assert replies[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "not a PNG or JPEG" in replies[2].error.message


def batch_tensor(x: np.ndarray) -> guard_pb2.Tensor:
    return guard_pb2.Tensor(shape=list(x.shape), dtype=guard_pb2.DTYPE_UINT8, data=x.tobytes())


def test_stream_items_may_carry_batches(stub, clean_images):
    x = clean_images[0][:40]
    whole = stub.ClassifyBatch(guard_pb2.ClassifyBatchRequest(batch=batch_tensor(x))).results
    items = [guard_pb2.ClassifyRequest(batch=batch_tensor(x[:30]), request_id="b30"),
             guard_pb2.ClassifyRequest(image=tensor_image(x[30]), request_id="one"),
             guard_pb2.ClassifyRequest(image=tensor_image(x[31]), batch=batch_tensor(x[31:33]), request_id="both"),
             guard_pb2.ClassifyRequest(batch=batch_tensor(x[31:40]), request_id="b9")]
    replies = list(stub.ClassifyStream(iter(items)))
    assert [r.request_id for r in replies] == ["b30", "one", "both", "b9"]
    assert len(replies[0].results) == 30 and len(replies[3].results) == 9 and not replies[1].results
    assert replies[0].model == "fmnist-guarded" and replies[0].model_version == "1"
    streamed = [*replies[0].results, replies[1], *replies[3].results]
    assert [r.class_index for r in streamed] == [r.class_index for r in whole]
    assert [r.verdict for r in streamed] == [r.verdict for r in whole]
    np.testing.assert_allclose(streamed[35].probabilities, whole[35].probabilities, atol=1e-6)
    assert replies[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "either image or batch" in replies[2].error.message


def test_unary_classify_refuses_a_batch(stub, clean_images):
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(guard_pb2.ClassifyRequest(batch=batch_tensor(clean_images[0][:2])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ClassifyBatch" in err.value.details()


def test_skip_guard_and_the_unguarded_bundle(stub, clean_images):
    image = tensor_image(clean_images[0][0])
    skipped = stub.Classify(guard_pb2.ClassifyRequest(image=image, skip_guard=True))
    assert skipped.verdict == guard_pb2.VERDICT_UNSPECIFIED and not skipped.detectors
    plain = stub.Classify(guard_pb2.ClassifyRequest(model="fmnist-plain", image=image))
    assert plain.model == "fmnist-plain" and plain.verdict == guard_pb2.CLEAN and not plain.detectors
    np.testing.assert_allclose(plain.probabilities, skipped.probabilities, atol=1e-6)


def test_list_and_get_models(stub):
    models = stub.ListModels(guard_pb2.ListModelsRequest()).models
    assert [m.name for m in models] == ["fmnist-guarded", "fmnist-plain", "fmnist-reject"]
    info = stub.GetModel(guard_pb2.GetModelRequest(name="fmnist-guarded", version="1"))
    assert info.ready and list(info.versions) == ["1"] and list(info.input_shape) == [1, 28, 28]
    assert info.dataset == "fashion-mnist" and len(info.labels) == 10
    assert info.files[0].role == "primary" and len(info.files[0].sha256) == 64
    assert [d.name for d in info.detectors] == ["feature-squeezing", "low-confidence"]
    assert (info.guard_policy, info.guard_action) == ("any", "flag")


def test_health_is_serving_for_every_service(server):
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "advguard.v1.GuardedClassifier", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"advguard.v1.GuardedClassifier", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_a_reject_policy_withholds_the_class(stub, clean_images):
    reply = stub.Classify(guard_pb2.ClassifyRequest(model="fmnist-reject", image=tensor_image(clean_images[0][0])))
    assert reply.verdict == guard_pb2.ADVERSARIAL and reply.action == "reject"
    assert reply.class_index == -1 and reply.class_name == "" and not reply.probabilities
    assert reply.detectors[0].flagged and reply.model == "fmnist-reject"
