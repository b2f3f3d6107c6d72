"""The robustness card travels with the bundle: `advguard bundle` writes it into manifest.json
for `make serve`'s bundle config, and every way of asking shows that card: GetModel, OIP
ModelMetadata over gRPC and REST, `advguard card` (TorchServe's description: test_torchserve)."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import grpc
import pytest

from protos.advguard.v1 import guard_pb2, guard_pb2_grpc

pytestmark = pytest.mark.slow
# OIP ModelMetadata with our proto (its `parameters` map); in a process of its own, because
# tritonclient, imported by other test modules, registers the same proto names in this one
OIP_METADATA = """
import sys, grpc
from protos.inference import grpc_service_pb2 as pb, grpc_service_pb2_grpc as pb_grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(pb.ModelMetadataRequest(name="fmnist-guarded"),
                                                                     timeout=30)
print(reply.parameters["robustness_card"].string_param)
"""


@pytest.fixture(scope="module")
def card(carded_bundle) -> dict:
    return json.loads((carded_bundle / "manifest.json").read_text())["robustness"]


@pytest.fixture(scope="module")
def server(carded_bundle, tools, tmp_path_factory):
    store = tmp_path_factory.mktemp("carded-serving")
    tools.clone_bundle(carded_bundle, store, "fmnist-guarded", "1")
    proc = tools.start_server(store, tmp_path_factory.mktemp("logs") / "server.log", "--poll-seconds", "0",
                              "--http-port", "0")
    yield proc
    code, _ = proc.stop()
    assert code == 0, proc.log_text()


def test_the_manifest_holds_a_card_of_the_bundle_it_describes(carded_bundle, card):
    manifest = json.loads((carded_bundle / "manifest.json").read_text())
    assert card["n"] == 40 and card["complete"] and card["profile"] == "quick"
    assert {r["kind"] for r in card["attacks"]} == {"non-adaptive", "black-box", "adaptive"}
    assert 0 <= card["adaptive_worst_case_accuracy"] <= card["clean"]["served_accuracy"] <= 1
    assert card["models"] == {m["file"]: m["sha256"] for m in manifest["models"]}  # the files it measured


def test_getmodel_and_oip_metadata_show_the_manifests_card(server, card):
    with grpc.insecure_channel(server.target) as channel:
        info = guard_pb2_grpc.GuardedClassifierStub(channel).GetModel(guard_pb2.GetModelRequest(name="fmnist-guarded"))
    assert json.loads(info.robustness_card_json) == card
    oip = subprocess.run([sys.executable, "-c", OIP_METADATA, server.target], capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(oip.stdout) == card
    with urllib.request.urlopen(f"http://127.0.0.1:{server.ready['http_port']}/v2/models/fmnist-guarded",
                                timeout=30) as reply:
        rest = json.loads(reply.read())
    assert json.loads(rest["parameters"]["robustness_card"]) == card


def test_advguard_card_prints_the_card(carded_bundle, card):
    out = subprocess.run([sys.executable, "-m", "advguard.cli.main", "card", str(carded_bundle)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "40 test images" in out
    assert f"{100 * card['adaptive_worst_case_accuracy']:.1f}%" in out.split("adaptive worst case")[1].splitlines()[0]
    for row in card["attacks"]:
        assert f"| {row['label']} | {row['kind']} | {100 * row['served_accuracy']:.1f}% |" in out
