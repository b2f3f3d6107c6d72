"""The Open Inference Protocol v2 over HTTP/JSON (`advguard serve --http-port`, serving.rest) on a
real server process: tritonclient's HTTP client and curl, answers equal to the gRPC OIP ones,
the bearer token, and the HTTP error table (serving.rest.status)."""
from __future__ import annotations

import base64
import http.client
import io
import json
import shutil
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from PIL import Image

from advguard.cli.serve import parse_ready

th = pytest.importorskip("tritonclient.http")
tc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

TOKEN = "rest-s3cret"


def auth() -> dict:
    """The token header, a fresh dict per call (tritonclient adds its own headers to the dict it gets)."""
    return {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def rest(serving_store, tmp_path_factory):
    """A server with REST on a free port, a bearer token, full disclosure and skip_guard allowed:
    (gRPC target, REST host:port, metrics port)."""
    folder = tmp_path_factory.mktemp("rest")
    (folder / "token").write_text(TOKEN)
    cmd = [sys.executable, "-m", "advguard.cli.main", "serve", "--store", str(serving_store), "--port", "0",
           "--metrics-port", "0", "--http-port", "0", "--threads", "1", "--poll-seconds", "0",
           "--default-model", "fmnist-guarded", "--disclosure", "full", "--allow-skip-guard",
           "--auth-token-file", str(folder / "token"), "--max-message-bytes", str(1024 * 1024)]
    with open(folder / "server.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        info = parse_ready(proc.stdout.readline())
    except ValueError:
        proc.kill()
        raise RuntimeError((folder / "server.log").read_text()) from None
    yield f"127.0.0.1:{info['port']}", f"127.0.0.1:{info['http_port']}", info["metrics_port"]
    proc.terminate()
    proc.communicate(timeout=60)
    assert proc.returncode == 0, (folder / "server.log").read_text()


@pytest.fixture(scope="module")
def client(rest):
    client = th.InferenceServerClient(rest[1])
    yield client
    client.close()


def fetch_json(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a GET (or a POST of `body`)."""
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def pngs(images: np.ndarray) -> list[bytes]:
    files = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image[0]).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


def test_health_is_open_and_metadata_matches_grpc(client, rest):
    assert client.is_server_live() and client.is_server_ready()  # no token: health stays open
    assert client.is_model_ready("fmnist-guarded", headers=auth())
    assert client.is_model_ready("fmnist-guarded", "1", headers=auth())
    assert not client.is_model_ready("nope", headers=auth())
    assert client.get_server_metadata(headers=auth())["name"] == "advguard"
    meta = client.get_model_metadata("fmnist-guarded", headers=auth())
    grpc_meta = tc.InferenceServerClient(rest[0]).get_model_metadata("fmnist-guarded", headers=auth(), as_json=True)
    assert meta["versions"] == grpc_meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == \
        [(o["name"], o["datatype"], [int(d) for d in o["shape"]]) for o in grpc_meta["outputs"]]
    assert sorted(meta["parameters"]) == ["action", "detectors", "policy", "robustness_card", "verdict_calibration"]
    assert meta["parameters"]["detectors"] == "feature-squeezing,low-confidence"


def test_token_is_required_but_for_health(rest):
    assert fetch_json(f"http://{rest[1]}/v2/health/ready") == (200, {"ready": True})
    status, body = fetch_json(f"http://{rest[1]}/v2/models/fmnist-guarded")
    assert status == 401 and "Bearer" in body["error"]
    status, _ = fetch_json(f"http://{rest[1]}/v2/models/fmnist-guarded", headers={"authorization": "Bearer wrong"})
    assert status == 401


def test_infer_fp32_and_json_equal_the_grpc_answers(client, rest, clean_images):
    x = clean_images[0][:8].astype(np.float32) / 255
    binary = th.InferInput("input", list(x.shape), "FP32")
    binary.set_data_from_numpy(x)  # the binary tensor data extension (tritonclient's default)
    as_json = th.InferInput("input", list(x.shape), "FP32")
    as_json.set_data_from_numpy(x, binary_data=False)
    outputs = ["probabilities", "class_index", "class_name", "verdict", "attack_score", "detector_scores",
               "detector_flags", "answered_by"]
    json_out = [th.InferRequestedOutput(name, binary_data=False) for name in outputs]
    a = client.infer("fmnist-guarded", [binary], headers=auth())
    b = client.infer("fmnist-guarded", [as_json], outputs=json_out, headers=auth())
    g_input = tc.InferInput("input", list(x.shape), "FP32")
    g_input.set_data_from_numpy(x)
    g = tc.InferenceServerClient(rest[0]).infer("fmnist-guarded", [g_input], headers=auth())
    for name in outputs:
        want = g.as_numpy(name)
        for got in (a.as_numpy(name), b.as_numpy(name)):
            assert got.shape == want.shape, name
            if want.dtype == np.float32:
                np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)
            else:  # BYTES come back as str from JSON, bytes from binary
                values = [v.encode() if isinstance(v, str) else v for v in got.ravel().tolist()]
                assert values == want.ravel().tolist(), name
    params = a.get_response()["parameters"]
    assert params == {k: v.string_param for k, v in g.get_response().parameters.items()}
    assert params["detectors"] == "feature-squeezing,low-confidence"


def test_infer_bytes_uint8_and_skip_guard(client, clean_images):
    x = clean_images[0][:3]
    files = th.InferInput("input", [3], "BYTES")
    files.set_data_from_numpy(np.array(pngs(x), dtype=np.object_))
    as_uint8 = th.InferInput("input", list(x.shape), "UINT8")
    as_uint8.set_data_from_numpy(x, binary_data=False)
    wanted = [th.InferRequestedOutput("class_index"), th.InferRequestedOutput("verdict")]
    a = client.infer("fmnist-guarded", [files], outputs=wanted, headers=auth())
    b = client.infer("fmnist-guarded", [as_uint8], outputs=wanted, headers=auth())
    assert a.as_numpy("class_index").tolist() == b.as_numpy("class_index").tolist()
    assert a.as_numpy("probabilities") is None  # not requested
    skipped = client.infer("fmnist-guarded", [as_uint8], outputs=wanted, parameters={"skip_guard": True}, headers=auth())
    assert skipped.as_numpy("verdict").tolist() == [b"UNSPECIFIED"] * 3
    assert skipped.as_numpy("class_index").tolist() == b.as_numpy("class_index").tolist()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl missing")
def test_curl_json_infer_with_base64_png_and_an_error(rest, clean_images):
    image = pngs(clean_images[0][:1])[0]
    body = json.dumps({"id": "r1", "inputs": [{"name": "input", "shape": [1], "datatype": "BYTES",
                                               "data": [base64.b64encode(image).decode()]}],
                       "outputs": [{"name": "class_name"}, {"name": "verdict"}]})
    url = f"http://{rest[1]}/v2/models/fmnist-guarded/infer"

    def curl(data: str) -> tuple[int, dict]:
        out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {TOKEN}",
                              "-H", "Content-Type: application/json", "-d", data, url],
                             check=True, capture_output=True, text=True, timeout=60).stdout
        text, code = out.rsplit("\n", 1)
        return int(code), json.loads(text)

    status, answer = curl(body)
    assert status == 200 and answer["id"] == "r1" and answer["model_name"] == "fmnist-guarded"
    assert [o["name"] for o in answer["outputs"]] == ["class_name", "verdict"]
    assert answer["outputs"][1]["data"][0] in ("CLEAN", "ADVERSARIAL") and answer["outputs"][0]["shape"] == [1]
    status, answer = curl(json.dumps({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES",
                                                  "data": ["not base64!"]}]}))
    assert status == 400 and answer == {"error": "BYTES element 0 is not valid base64"}


@pytest.mark.parametrize("tensor, message", [
    ({"name": "input", "shape": [1, 3, 28, 28], "datatype": "FP32", "data": [0.0] * 3 * 784},
     "has 3 channels; the model takes 1"),
    ({"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP64", "data": [0.0] * 784},
     "input datatype 'FP64' is not supported"),
    ({"name": "pixels", "shape": [1], "datatype": "FP32", "data": [0.0]}, "this model takes one input named 'input'"),
    ({"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [2.0] * 784},
     "float32 pixels must lie in [0, 1]"),
])
def test_bad_input_is_400(rest, tensor, message):
    status, body = fetch_json(f"http://{rest[1]}/v2/models/fmnist-guarded/infer",
                        json.dumps({"inputs": [tensor]}).encode(), auth())
    assert status == 400 and message in body["error"]


def test_unknown_model_is_404_and_oversized_body_413(client, rest, clean_images):
    x = th.InferInput("input", [1, 1, 28, 28], "FP32")
    x.set_data_from_numpy(clean_images[0][:1].astype(np.float32) / 255)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("nope", [x], headers=auth())
    assert caught.value.status() == "404" and "unknown model 'nope'" in caught.value.message()
    connection = http.client.HTTPConnection(rest[1], timeout=60)  # headers only: refused before the body
    connection.putrequest("POST", "/v2/models/fmnist-guarded/infer")
    for key, value in {**auth(), "content-length": str(1024 * 1024 + 1)}.items():
        connection.putheader(key, value)
    connection.endheaders()
    reply = connection.getresponse()
    assert reply.status == 413 and "--max-message-bytes" in json.loads(reply.read())["error"]
    connection.close()


def test_a_reject_policy_withholds_the_class(client, clean_images):
    x = th.InferInput("input", [2, 1, 28, 28], "FP32")
    x.set_data_from_numpy(clean_images[0][:2].astype(np.float32) / 255)
    result = client.infer("fmnist-reject", [x], headers=auth())
    assert result.as_numpy("class_index").tolist() == [-1, -1]
    assert result.as_numpy("verdict").tolist() == [b"ADVERSARIAL", b"ADVERSARIAL"]
    assert not result.as_numpy("probabilities").any()
    assert result.get_response()["parameters"]["action"] == "reject"


def test_metrics_count_rest_calls_by_http_code(client, rest, clean_images):
    x = th.InferInput("input", [1, 1, 28, 28], "FP32")
    x.set_data_from_numpy(clean_images[0][:1].astype(np.float32) / 255)
    client.infer("fmnist-guarded", [x], headers=auth())
    assert fetch_json(f"http://{rest[1]}/v2/models/fmnist-guarded/ready")[0] == 401
    text = urllib.request.urlopen(f"http://127.0.0.1:{rest[2]}/metrics", timeout=30).read().decode()
    assert 'advguard_requests_total{code="200",method="rest_infer"}' in text
    assert 'advguard_requests_total{code="401",method="rest_model_ready"}' in text
    assert 'method="rest_infer",model="fmnist-guarded",verdict="clean"' in text or \
        'method="rest_infer",model="fmnist-guarded",verdict="adversarial"' in text
