"""deploy/kserve: the ServingRuntime and InferenceServices pass the JSON schemas generated from
KServe's SDK (deploy/kserve/schema), and speak OIP over gRPC on a port named h2c."""
from __future__ import annotations

import subprocess

import yaml

from tests.deploy.conftest import DEPLOY, load, tool

KSERVE = DEPLOY / "kserve"
SCHEMAS = {"ServingRuntime": KSERVE / "schema" / "servingruntime-v1alpha1.json",
           "InferenceService": KSERVE / "schema" / "inferenceservice-v1beta1.json"}
MANIFESTS = sorted(KSERVE.glob("*.yaml"))


def check(schema, *paths) -> subprocess.CompletedProcess:
    return subprocess.run([tool("check-jsonschema"), "--schemafile", str(schema), *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


def test_manifests_pass_the_kserve_schemas():
    kinds = {load(p)["kind"] for p in MANIFESTS}
    assert kinds == set(SCHEMAS)
    for kind, schema in SCHEMAS.items():
        paths = [p for p in MANIFESTS if load(p)["kind"] == kind]
        done = check(schema, *paths)
        assert done.returncode == 0, done.stdout + done.stderr


def test_schema_rejects_a_misplaced_field(tmp_path):
    isvc = load(KSERVE / "inferenceservice.yaml")
    isvc["spec"]["predictor"]["model"]["storageURI"] = isvc["spec"]["predictor"]["model"].pop("storageUri")
    bad = tmp_path / "isvc.yaml"
    bad.write_text(yaml.safe_dump(isvc))
    done = check(SCHEMAS["InferenceService"], bad)
    assert done.returncode == 1 and "storageURI" in done.stdout


def containers():
    runtime = load(KSERVE / "servingruntime.yaml")
    custom = load(KSERVE / "inferenceservice-custom.yaml")
    return [runtime["spec"]["containers"][0], custom["spec"]["predictor"]["containers"][0]]


def test_grpc_on_the_h2c_port_with_a_grpc_readiness_probe():
    for c in containers():
        (port,) = c["ports"]
        assert port["name"] == "h2c"
        assert f"--port={port['containerPort']}" in c["args"]
        assert c["readinessProbe"]["grpc"]["port"] == port["containerPort"]


def test_inferenceservice_uses_the_runtime_with_a_storage_uri():
    runtime = load(KSERVE / "servingruntime.yaml")
    model = load(KSERVE / "inferenceservice.yaml")["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"] == ["grpc-v2"]
    assert model["storageUri"]
    assert "--store=/mnt/models" in runtime["spec"]["containers"][0]["args"]  # where KServe puts storageUri
