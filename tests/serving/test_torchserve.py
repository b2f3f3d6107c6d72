"""TorchServe (real Java server on loopback) serving an advguard .mar with our handler."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from bench.torchserve_rest import read_keys, wait_ready
from serving.guard import verdict_name
from serving.pipeline import Pipeline
from serving.preprocess import decode_image
from tests.support import encode_image, free_port

BIN = Path(sys.executable).parent



def post(url: str, body: bytes, key: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/octet-stream", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def get(url: str, key: str) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return reply.read()


@contextlib.contextmanager
def run_torchserve(work: Path, mars: dict[str, Path], disclosure: str = "full"):
    """TorchServe on free loopback ports serving each archive of `mars` (name -> .mar, all in one
    folder) under its name, token authorization on (as deploy/torchserve/config.properties):
    {"url": name -> predictions URL, "management", "keys"}. One at a time: TorchServe keeps one
    pid file per machine."""
    folder = next(iter(mars.values())).parent
    if shutil.which("java") is None:
        pytest.fail("TorchServe needs Java 17 (apt-get install openjdk-17-jre-headless)")
    ports = {kind: free_port() for kind in ("inference", "management", "metrics")}
    config = work / "config.properties"
    config.write_text("\n".join([f"{kind}_address=http://127.0.0.1:{port}" for kind, port in ports.items()]
                                + ["default_workers_per_model=1", "disable_system_metrics=true",
                                   "enable_model_api=false", "allowed_urls=(?!)"]) + "\n")
    proc = subprocess.Popen([str(BIN / "torchserve"), "--start", "--foreground", "--ncs",
                             "--ts-config", str(config), "--model-store", str(folder),
                             "--models", *(f"{name}={mar.name}" for name, mar in mars.items())],
                            cwd=work, stdout=open(work / "ts.log", "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PATH": f"{BIN}:/usr/bin:/bin", "ADVGUARD_DISCLOSURE": disclosure,
                                 **({"JAVA_HOME": "/usr/lib/jvm/default-java"}
                                    if Path("/usr/lib/jvm/default-java").exists() else {})})
    management = f"http://127.0.0.1:{ports['management']}"
    try:
        keys = read_keys(work, time.monotonic() + 120)
        for name in mars:
            wait_ready(f"{management}/models/{name}", keys["management"], time.monotonic() + 120)
        yield {"url": {name: f"http://127.0.0.1:{ports['inference']}/predictions/{name}" for name in mars},
               "management": management, "keys": keys}
    finally:
        subprocess.run([str(BIN / "torchserve"), "--stop"], cwd=work, capture_output=True, timeout=60)
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def torchserve(trained_run, serving_store, carded_bundle, tmp_path_factory):
    """TorchServe serving `tsmodel` (a guarded export), `fmnist-reject` (serving_store's bundle
    whose guard rejects every image) and `fmnist-guarded` (a composed bundle with its card):
    {"url", "management", "keys", "bundle", "reject_url"}."""
    from training.export import export_bundle
    from training.export.calibrate import GuardSpec
    from training.export.torchserve import build_mar

    work = tmp_path_factory.mktemp("torchserve")
    bundle = export_bundle(trained_run, name="tsmodel", store=work / "store",
                           guard=GuardSpec(detectors=("feature-squeezing", "low-confidence"), max_images=500),
                           torchserve=True)
    mars = work / "mars"
    mars.mkdir()
    shutil.copy(bundle / "tsmodel.mar", mars / "tsmodel.mar")
    reject = build_mar(serving_store / "fmnist-reject" / "1", mars)
    shutil.copy(carded_bundle / "fmnist-guarded.mar", mars / "fmnist-guarded.mar")
    with run_torchserve(work, {"tsmodel": mars / "tsmodel.mar", "fmnist-reject": reject,
                               "fmnist-guarded": mars / "fmnist-guarded.mar"}) as ts:
        yield {**ts, "url": ts["url"]["tsmodel"], "reject_url": ts["url"]["fmnist-reject"], "bundle": bundle}


def test_torchserve_answers_like_the_grpc_core(torchserve, fmnist_small):
    pipeline = Pipeline.load(torchserve["bundle"])
    for i in range(8):
        body = encode_image(fmnist_small.test.x[i, 0].numpy())
        status, answer = post(torchserve["url"], body, torchserve["keys"]["inference"])
        assert status == 200, answer
        expected = pipeline.run(decode_image(body, pipeline.bundle.input)[None])
        assert answer["class_index"] == int(expected.classes[0])
        assert np.allclose(answer["probabilities"], expected.probs[0], atol=1e-5)
        assert answer["verdict"] == verdict_name(expected.guard.verdicts[0]).upper()
        assert [d["name"] for d in answer["detectors"]] == [o.name for o in expected.guard.outcomes]


def test_token_authorization_stays_on(torchserve, fmnist_small):
    """TorchServe's own token authorization (never --disable-token-auth): no key, no answer
    (TorchServe 0.12 answers 400 with a token message)."""
    for key in (None, "wrong-key"):
        status, answer = post(torchserve["url"], encode_image(fmnist_small.test.x[0, 0].numpy()), key)
        assert status == 400 and "token" in json.dumps(answer).lower(), (status, answer)


def test_torchserve_bad_bytes_get_400_with_reason(torchserve):
    status, answer = post(torchserve["url"], b"definitely not an image", torchserve["keys"]["inference"])
    assert status == 400
    assert "not a PNG or JPEG" in answer["error"]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk missing: apt-get install wrk")
def test_wrk_load_counts_answers_and_http_errors(torchserve, fmnist_small):
    """bench/wrk.py (bench.serve's TorchServe client) against the real server."""
    from bench import wrk

    key = torchserve["keys"]["inference"]
    good = wrk.post_load(torchserve["url"], encode_image(fmnist_small.test.x[0, 0].numpy()),
                         "application/octet-stream", 1.0, 2, key)
    assert good.ok > 0 and good.errors == 0 and good.rate > 0
    assert 0 < good.percentile(50) <= good.percentile(99)
    bad = wrk.post_load(torchserve["url"], b"definitely not an image", "application/octet-stream", 1.0, 2, key)
    assert bad.ok == 0 and bad.codes["HTTP non-2xx"] > 0


def test_describe_shows_the_bundle_and_its_card(torchserve):
    """The management API's customized description comes from the handler: roles and card."""
    described = json.loads(get(f"{torchserve['management']}/models/tsmodel?customized=true",
                               torchserve["keys"]["management"]))
    custom = described[0]["customizedMetadata"]
    custom = json.loads(custom) if isinstance(custom, str) else custom
    assert custom["model"] == "tsmodel"
    assert {f["role"] for f in custom["files"]} == {"primary"}
    assert custom["guard"]["detectors"] == ["feature-squeezing", "low-confidence"]
    assert custom["robustness"] == {}  # an export without a card says so


def test_describe_shows_a_composed_bundles_card(torchserve, carded_bundle):
    described = json.loads(get(f"{torchserve['management']}/models/fmnist-guarded?customized=true",
                               torchserve["keys"]["management"]))
    custom = described[0]["customizedMetadata"]
    custom = json.loads(custom) if isinstance(custom, str) else custom
    card = json.loads((carded_bundle / "manifest.json").read_text())["robustness"]
    assert card["attacks"] and custom["robustness"] == card


def test_a_rejected_image_is_withheld_alike_by_every_front_end(torchserve, server, fmnist_small):
    """One image under the `reject` action through the advguard API, the Open Inference Protocol
    and TorchServe: all three withhold the class, its name and the probabilities, and show the
    same verdict, action and answering model (one answer builder, serving.answer)."""
    import grpc
    import tritonclient.grpc as tc

    from protos.advguard.v1 import guard_pb2, guard_pb2_grpc

    body = encode_image(fmnist_small.test.x[0, 0].numpy())
    with grpc.insecure_channel(server.target) as channel:
        ours = guard_pb2_grpc.GuardedClassifierStub(channel).Classify(
            guard_pb2.ClassifyRequest(model="fmnist-reject", image=guard_pb2.Image(encoded=body)), timeout=30)
    assert ours.class_index == -1 and ours.class_name == "" and len(ours.probabilities) == 0
    assert guard_pb2.Verdict.Name(ours.verdict) == "ADVERSARIAL" and ours.action == "reject"

    client = tc.InferenceServerClient(server.target)
    tensor = tc.InferInput("input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([body], dtype=object))
    oip = client.infer("fmnist-reject", [tensor])
    client.close()
    assert oip.as_numpy("class_index").tolist() == [-1] and oip.as_numpy("class_name").tolist() == [b""]
    assert not oip.as_numpy("probabilities").any()  # a tensor row cannot be omitted: zeros
    assert oip.as_numpy("verdict").tolist() == [b"ADVERSARIAL"]

    status, answer = post(torchserve["reject_url"], body, torchserve["keys"]["inference"])
    assert status == 200, answer
    assert answer["class_index"] == -1 and answer["rejected"] is True
    assert "class_name" not in answer and "probabilities" not in answer
    assert answer["verdict"] == "ADVERSARIAL" and answer["action"] == "reject"
    # the fields every front end shows agree
    assert ours.answered_by == oip.as_numpy("answered_by")[0].decode() == answer["answered_by"] == "model.onnx"
    assert answer["detectors"][0]["calibrated_fpr"] == ours.detectors[0].calibrated_fpr
    assert abs(answer["attack_score"] - ours.attack_score) < 1e-5
    assert abs(float(oip.as_numpy("attack_score")[0]) - ours.attack_score) < 1e-5
