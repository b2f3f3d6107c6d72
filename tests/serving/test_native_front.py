"""The native front end (`python -m serving.native`: C++ gRPC, the same Python core) against
`advguard serve` on the same store, with an unmodified tritonclient[grpc] client over loopback:
the same answers, the same INVALID_ARGUMENT messages, every call of a concurrent burst answered,
no grpcio in its process, a clean stop on SIGTERM."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving.native.build import PACKAGES, build, missing
from tests.serving.conftest import launch
from tests.support import uint8_and_png_inputs

tc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OUTPUTS = ("probabilities", "class_index", "class_name", "verdict", "attack_score", "detector_scores",
           "detector_flags", "answered_by")


@pytest.fixture(scope="module")
def native(serving_store, tmp_path_factory):
    """The native front end on the shared server's store, with its settings (full disclosure,
    skip_guard allowed, fmnist-guarded the default)."""
    why = missing()
    if why:
        pytest.skip(f"no C++ toolchain for the native front end ({why}): apt-get install {PACKAGES}")
    build()
    log = tmp_path_factory.mktemp("native") / "native.log"
    cmd = [sys.executable, "-m", "serving.native", "--store", str(serving_store), "--port", "0", "--threads", "1",
           "--default-model", "fmnist-guarded", "--disclosure", "full", "--allow-skip-guard"]
    proc, ready = launch(cmd, log)
    yield proc, f"127.0.0.1:{ready['port']}"
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def clients(native, server):
    """(native client, advguard serve client)."""
    ours, theirs = tc.InferenceServerClient(native[1]), tc.InferenceServerClient(server.target)
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
    with grpc.insecure_channel(native[1]) as channel:
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


def test_no_grpcio_in_the_native_process(native):
    maps = Path(f"/proc/{native[0].pid}/maps")
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
    proc = native[0]
    assert clients[0].is_server_live() and clients[0].is_server_ready()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    counts = next(json.loads(line[len("advguard stopped "):]) for line in out.splitlines()
                  if line.startswith("advguard stopped "))
    assert counts["OK"] >= 64 + 3 and counts["INVALID_ARGUMENT"] >= 3 and counts["NOT_FOUND"] >= 1
