"""The native front end (`advguard serve --front native`: C++ gRPC, the same Python core) against
`advguard serve` on the same store and settings, with unmodified clients over loopback
(tritonclient[grpc] for OIP, ours for `advguard.v1`): the same answers, metadata and error
statuses and messages, every call of a concurrent burst answered, the bearer token, the metric
series, no grpcio in its process, draining on SIGTERM."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from protos.advguard.v1 import guard_pb2, guard_pb2_grpc
from serving.client import Connection
from tests.serving.conftest import LIMITS, native_server, tensor_image
from tests.support import encode_image, uint8_and_png_inputs

tc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OUTPUTS = ("probabilities", "class_index", "class_name", "verdict", "attack_score", "detector_scores",
           "detector_flags", "answered_by")


@pytest.fixture(scope="module")
def native(serving_store, tmp_path_factory):
    """The native front end on the shared server's store, with its settings (full disclosure,
    skip_guard allowed, fmnist-guarded the default, the same limits)."""
    limits = [f"--{key.replace('_', '-')}={value}" for key, value in LIMITS.items()]
    server = native_server(serving_store, tmp_path_factory.mktemp("native") / "native.log", "--default-model",
                           "fmnist-guarded", "--poll-seconds", "0", "--disclosure", "full", "--allow-skip-guard",
                           *limits)
    yield server
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="module")
def clients(native, server):
    """(native client, advguard serve client)."""
    ours, theirs = tc.InferenceServerClient(native.target), tc.InferenceServerClient(server.target)
    yield ours, theirs
    ours.close()
    theirs.close()


def fp32(x: np.ndarray):
    tensor = tc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


@pytest.mark.parametrize("model, skip", [("fmnist-guarded", False), ("fmnist-guarded", True),
                                         ("fmnist-reject", False)])
def test_answers_match_advguard_serve(clients, clean_images, model, skip):
    x = clean_images[0][:8].astype(np.float32) / 255
    ours, theirs = (client.infer(model, [fp32(x)], parameters={"skip_guard": True} if skip else None)
                    for client in clients)
    for name in OUTPUTS:
        a, b = ours.as_numpy(name), theirs.as_numpy(name)
        assert a.shape == b.shape, name
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            assert a.tolist() == b.tolist(), name
    mine, yours = ours.get_response(), theirs.get_response()
    assert (mine.model_name, mine.model_version) == (yours.model_name, yours.model_version)
    assert {k: v.string_param for k, v in mine.parameters.items()} == \
        {k: v.string_param for k, v in yours.parameters.items()}
    if skip:
        assert set(ours.as_numpy("verdict").tolist()) == {b"UNSPECIFIED"}


def test_uint8_and_png_inputs_match_advguard_serve(clients, clean_images):
    x = clean_images[0][:3]
    as_uint8, as_png = uint8_and_png_inputs(x)
    for tensor in (as_uint8, as_png):
        ours, theirs = (client.infer("fmnist-guarded", [tensor]) for client in clients)
        assert ours.as_numpy("class_index").tolist() == theirs.as_numpy("class_index").tolist()
        np.testing.assert_allclose(ours.as_numpy("probabilities"), theirs.as_numpy("probabilities"), rtol=1e-5, atol=1e-6)


def test_bytes_that_are_no_request_are_invalid_argument(native):
    with grpc.insecure_channel(native.target) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"\xff\xff\xff", timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a serialized inference.ModelInferRequest" in caught.value.details()


@pytest.mark.parametrize("shape, fill, message", [
    ((1, 1, 28, 27), 0.0, "has 27x28 pixels; the model takes 28x28"),
    ((1, 1, 28, 28), np.nan, "tensor holds NaN or Inf values"),
    ((1, 1, 28, 28), 2.0, "float32 pixels must lie in [0, 1]"),
])
def test_bad_input_is_invalid_argument_with_the_same_message(clients, shape, fill, message):
    statuses = []
    for client in clients:
        with pytest.raises(InferenceServerException) as caught:
            client.infer("fmnist-guarded", [fp32(np.full(shape, fill, np.float32))])
        statuses.append((caught.value.status(), caught.value.message()))
    assert statuses[0] == statuses[1]
    assert statuses[0][0] == "StatusCode.INVALID_ARGUMENT" and message in statuses[0][1]


def test_unknown_model_is_not_found(clients, clean_images):
    with pytest.raises(InferenceServerException) as caught:
        clients[0].infer("nope", [fp32(clean_images[0][:1].astype(np.float32) / 255)])
    assert caught.value.status() == "StatusCode.NOT_FOUND" and "unknown model 'nope'" in caught.value.message()


def test_a_concurrent_burst_is_answered_call_by_call(clients, clean_images):
    x = clean_images[0][:64].astype(np.float32) / 255
    expected = clients[1].infer("fmnist-guarded", [fp32(x)]).as_numpy("class_index").tolist()

    def one(i: int) -> int:
        result = clients[0].infer("fmnist-guarded", [fp32(x[i:i + 1])], outputs=[tc.InferRequestedOutput("class_index")])
        return int(result.as_numpy("class_index")[0])

    with ThreadPoolExecutor(max_workers=32) as pool:
        got = list(pool.map(one, range(len(x))))
    assert got == expected


def image_request(x: np.ndarray, **fields) -> guard_pb2.ClassifyRequest:
    return guard_pb2.ClassifyRequest(image=tensor_image(x), **fields)


@pytest.fixture(scope="module")
def stubs(native, server):
    """Our API's stubs (serving.client's channels) on (native, advguard serve)."""
    channels = [Connection(s.target).channel() for s in (native, server)]
    yield [guard_pb2_grpc.GuardedClassifierStub(c) for c in channels]
    for channel in channels:
        channel.close()


def assert_same_classification(a: guard_pb2.ClassifyResponse, b: guard_pb2.ClassifyResponse) -> None:
    np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.attack_score, b.attack_score, rtol=1e-5, atol=1e-6)
    for message in (a, b):
        message.ClearField("probabilities")
        message.ClearField("attack_score")
        for d in message.detectors:
            d.ClearField("score")
    assert a == b


@pytest.mark.parametrize("skip", [False, True])
def test_classify_and_classify_batch_match_advguard_serve(stubs, clean_images, skip):
    x = clean_images[0][:4]
    for i in range(len(x)):
        ours, theirs = (stub.Classify(image_request(x[i], request_id=f"r{i}", skip_guard=skip), timeout=30)
                        for stub in stubs)
        assert ours.request_id == f"r{i}" and ours.model == "fmnist-guarded"
        assert_same_classification(ours, theirs)
    as_batch = guard_pb2.ClassifyBatchRequest(model="fmnist-reject", skip_guard=skip, batch=guard_pb2.Tensor(
        shape=list(x.shape), dtype=guard_pb2.DTYPE_UINT8, data=x.tobytes()))
    ours, theirs = (stub.ClassifyBatch(as_batch, timeout=30) for stub in stubs)
    assert len(ours.results) == len(x)
    for a, b in zip(ours.results, theirs.results):
        assert_same_classification(a, b)


def test_png_and_tensor_images_in_one_classify_batch_match_advguard_serve(stubs, clean_images):
    x = clean_images[0][:3]
    images = [guard_pb2.Image(encoded=encode_image(image[0])) for image in x[:2]] + [image_request(x[2]).image]
    request = guard_pb2.ClassifyBatchRequest(images=images)
    ours, theirs = (stub.ClassifyBatch(request, timeout=30) for stub in stubs)
    assert [r.class_index for r in ours.results] == [r.class_index for r in theirs.results]


@pytest.mark.parametrize("request_, message", [
    (guard_pb2.ClassifyRequest(), "request has no image"),
    (image_request(np.zeros((1, 28, 27), np.uint8)), "27x28"),
    (guard_pb2.ClassifyRequest(image=guard_pb2.Image(encoded=b"not a png")), "image"),
    (guard_pb2.ClassifyRequest(model="nope", image=guard_pb2.Image(encoded=b"x")), "unknown model 'nope'"),
    (guard_pb2.ClassifyRequest(batch=guard_pb2.Tensor()), "ClassifyBatch"),
])
def test_bad_classify_calls_get_advguard_serves_status_and_message(stubs, request_, message):
    statuses = []
    for stub in stubs:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Classify(request_, timeout=30)
        statuses.append((caught.value.code(), caught.value.details()))
    assert statuses[0] == statuses[1] and message in statuses[0][1]


def test_a_batch_larger_than_the_queue_is_refused_as_by_advguard_serve(stubs):
    images = np.zeros((LIMITS["max_queue_size"] + 1, 1, 28, 28), np.uint8)
    request = guard_pb2.ClassifyBatchRequest(batch=guard_pb2.Tensor(shape=list(images.shape), dtype=guard_pb2.DTYPE_UINT8,
                                                                     data=images.tobytes()))
    statuses = []
    for stub in stubs:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ClassifyBatch(request, timeout=60)
        statuses.append((caught.value.code(), caught.value.details()))
    assert statuses[0] == statuses[1] and statuses[0][0] == grpc.StatusCode.INVALID_ARGUMENT, statuses


def test_get_model_and_list_models_match_advguard_serve(stubs):
    ours, theirs = (stub.ListModels(guard_pb2.ListModelsRequest(), timeout=30) for stub in stubs)
    assert ours == theirs and [m.name for m in ours.models] == ["fmnist-guarded", "fmnist-plain", "fmnist-reject"]
    for request in (guard_pb2.GetModelRequest(name="fmnist-reject"), guard_pb2.GetModelRequest()):
        ours, theirs = (stub.GetModel(request, timeout=30) for stub in stubs)
        assert ours == theirs
    statuses = []
    for stub in stubs:
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetModel(guard_pb2.GetModelRequest(name="fmnist-guarded", version="9"), timeout=30)
        statuses.append((caught.value.code(), caught.value.details()))
    assert statuses[0] == statuses[1] and statuses[0][0] == grpc.StatusCode.NOT_FOUND


def test_oip_metadata_and_readiness_match_advguard_serve(clients):
    ours, theirs = clients
    assert ours.get_server_metadata(as_json=True) == theirs.get_server_metadata(as_json=True)
    for model in ("fmnist-guarded", "fmnist-plain"):
        assert ours.get_model_metadata(model, as_json=True) == theirs.get_model_metadata(model, as_json=True)
    assert ours.is_model_ready("fmnist-reject") and not ours.is_model_ready("nope")
    assert ours.is_server_live() and ours.is_server_ready()
    with pytest.raises(InferenceServerException) as caught:
        ours.get_model_metadata("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND" and "unknown model 'nope'" in caught.value.message()


def test_health_is_served_and_streams_name_the_grpc_front(native):
    with Connection(native.target).channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as caught:
            list(guard_pb2_grpc.GuardedClassifierStub(channel).ClassifyStream(iter([guard_pb2.ClassifyRequest()]),
                                                                             timeout=30))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED and "--front grpc" in caught.value.details()


def scrape(server) -> tuple[set[str], dict[tuple, float]]:
    """(the metric families /metrics names, without the `_created` timestamps prometheus_client adds
    once a labelled series has been observed; every sample by name and labels)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    families = list(text_string_to_metric_families(text))
    return ({f.name for f in families if not f.name.endswith("_created")},
            {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples})


def test_metrics_count_every_call_under_advguard_serves_series_names(native, server, stubs, clean_images):
    names, before = scrape(native)
    assert names == scrape(server)[0]
    ok = ("advguard_requests_total", (("code", "OK"), ("method", "Classify")))
    bad = ("advguard_requests_total", (("code", "INVALID_ARGUMENT"), ("method", "Classify")))
    run = ("advguard_batch_size_count", (("model", "fmnist-plain"),))
    for x in clean_images[0][:5]:
        stubs[0].Classify(image_request(x, model="fmnist-plain"), timeout=30)
    with pytest.raises(grpc.RpcError):
        stubs[0].Classify(guard_pb2.ClassifyRequest(), timeout=30)
    after = scrape(native)[1]
    assert after[ok] - before.get(ok, 0) == 5 and after[bad] - before.get(bad, 0) == 1
    assert after[run] - before.get(run, 0) == 5
    latency = ("advguard_request_latency_seconds_count",
               (("method", "Classify"), ("model", "fmnist-plain"), ("verdict", "clean")))
    assert after[latency] - before.get(latency, 0) == 5


def test_a_call_whose_deadline_passed_in_the_queue_is_not_run(native, clean_images):
    """As advguard serve's: a Classify with a 0.1 s deadline queued behind 4 x 128 images of
    ClassifyBatch ends DEADLINE_EXCEEDED, counted as such (repeated when the machine was too slow
    for the call to reach the server at all)."""
    x = clean_images[0]
    busy = guard_pb2.ClassifyBatchRequest(batch=guard_pb2.Tensor(shape=[128, 1, 28, 28], dtype=guard_pb2.DTYPE_UINT8,
                                                                  data=np.concatenate([x, x])[:128].tobytes()))
    key = ("advguard_requests_total", (("code", "DEADLINE_EXCEEDED"), ("method", "Classify")))

    async def expire_one_in_the_queue() -> grpc.StatusCode:
        loop = asyncio.get_running_loop()
        async with grpc.aio.insecure_channel(native.target) as channel:
            stub = guard_pb2_grpc.GuardedClassifierStub(channel)
            backlog = [asyncio.ensure_future(stub.ClassifyBatch(busy, timeout=120)) for _ in range(4)]
            while (await loop.run_in_executor(None, scrape, native))[1].get(
                    ("advguard_requests_in_flight", ()), 0) < 4:
                assert not all(b.done() for b in backlog), "the backlog finished before it was observed"
            try:
                await stub.Classify(image_request(x[0]), timeout=0.1)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                code = err.code()
            await asyncio.gather(*backlog)
            return code

    for _attempt in range(3):
        before = scrape(native)[1].get(key, 0)
        code = asyncio.run(expire_one_in_the_queue())
        if code == grpc.StatusCode.OK:
            continue  # the backlog ran faster than the deadline: nothing shown, try again
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        if scrape(native)[1].get(key, 0) > before:  # recorded when its batch was taken, before the answer
            return
    pytest.fail("in 3 attempts the server never recorded a call whose deadline expired in its queue")


def test_no_grpcio_in_the_native_process(native):
    maps = Path(f"/proc/{native.proc.pid}/maps")
    if not maps.exists():
        pytest.skip("no /proc on this system")
    loaded = maps.read_text()
    assert "libgrpc++" in loaded and "cygrpc" not in loaded


def test_the_benchmark_measures_both_servers(native, serving_store):
    """bench/native_front.py, one short round: every call answered by both servers, one CPU-per-call
    row each and the ratio (run as its own process: it imports protos.inference)."""
    if shutil.which("h2load") is None:
        pytest.skip("h2load missing: apt-get install nghttp2-client")
    out = subprocess.run([sys.executable, "-m", "bench.native_front", "--store", str(serving_store), "--model",
                          "fmnist-guarded", "--rounds", "1", "--calls", "300", "--concurrency", "8"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith(("guarded ", "skip_guard "))]
    assert [(r[0], r[1]) for r in rows] == [("guarded", "advguard"), ("guarded", "native"), ("skip_guard", "advguard"),
                                            ("skip_guard", "native")]
    assert all(float(r[3]) > 0 for r in rows if r[1] == "advguard") and rows[1][-1].endswith("x")


def test_sigterm_stops_it_and_reports_the_calls(native, clients):
    assert clients[0].is_server_live() and clients[0].is_server_ready()
    code, counts = native.stop()
    assert code == 0, native.log_text()
    assert counts["OK"] >= 64 + 3 and counts["INVALID_ARGUMENT"] >= 3 and counts["NOT_FOUND"] >= 1
