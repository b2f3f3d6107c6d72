"""deploy/k8s: the core manifests pass kubernetes-validate (strict, offline, a pinned Kubernetes
release); the PodMonitor passes the Prometheus Operator CRD validators; and the Deployment keeps
its promises (gRPC probes, non-root, read-only root, resources, model store volume)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from serving.metrics import Metrics
from tests.deploy.conftest import CRD_CHECK, DEPLOY, K8S_VERSION, load, tool

K8S = DEPLOY / "k8s"
CORE = sorted(p for p in K8S.glob("*.yaml") if load(p)["apiVersion"] != "monitoring.coreos.com/v1")


def kubernetes_validate(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


def test_core_manifests_pass_kubernetes_validate_strict():
    assert {load(p)["kind"] for p in CORE} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "NetworkPolicy"}
    done = kubernetes_validate(*CORE)
    assert done.returncode == 0 and "WARN" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert done.stdout.count("passed") == len(CORE)


def test_kubernetes_validate_rejects_an_unknown_field(tmp_path):
    deployment = load(K8S / "deployment.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 50051}}
    bad = tmp_path / "deployment.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    assert kubernetes_validate(bad).returncode != 0


def validate_crd(*resources: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    node = tool("node", "run `make deploy-tools` (installs Debian's nodejs and npm)")
    if not CRD_CHECK.exists():
        pytest.fail(f"{CRD_CHECK} missing: run `make deploy-tools`")
    files = []
    for i, resource in enumerate(resources):
        files.append(tmp_path / f"resource{i}.json")
        files[-1].write_text(json.dumps(resource))
    return subprocess.run([node, str(Path(__file__).parent / "crd" / "validate.mjs"), str(CRD_CHECK), *map(str, files)],
                          capture_output=True, text=True, timeout=60)


def test_podmonitor_passes_the_prometheus_operator_crd_schema(tmp_path):
    done = validate_crd(load(K8S / "podmonitor.yaml"), tmp_path=tmp_path)
    assert done.returncode == 0 and "PodMonitor monitoring.coreos.com/v1 valid" in done.stdout, done.stdout + done.stderr
    broken = load(K8S / "podmonitor.yaml")
    broken["spec"]["podMetricsEndpoints"][0]["interval"] = 15  # a Duration is a string
    assert validate_crd(broken, tmp_path=tmp_path).returncode == 1


def container() -> dict:
    return load(K8S / "deployment.yaml")["spec"]["template"]["spec"]["containers"][0]


def test_deployment_probes_health_over_grpc_on_the_grpc_port():
    c = container()
    grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == grpc_port, probe


def test_deployment_runs_locked_down_with_resources_and_the_store_read_only():
    pod = load(K8S / "deployment.yaml")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
    store = next(a.split("=", 1)[1] for a in c["args"] if a.startswith("--store="))
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == store)
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == load(K8S / "pvc.yaml")["metadata"]["name"]


def test_hpa_scales_on_a_metric_the_server_exports():
    hpa = load(K8S / "hpa.yaml")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    gauges = {m.name for m in Metrics().registry.collect() if m.type == "gauge"}
    assert metric["pods"]["metric"]["name"] in gauges & {"advguard_requests_in_flight", "advguard_queue_depth"}
    assert hpa["spec"]["scaleTargetRef"]["name"] == load(K8S / "deployment.yaml")["metadata"]["name"]


def test_metrics_port_is_open_to_the_monitoring_namespace_only():
    policy = load(K8S / "networkpolicy.yaml")
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    rules = policy["spec"]["ingress"]
    metrics_rules = [r for r in rules if any(p["port"] in (ports["metrics"], "metrics") for p in r["ports"])]
    assert len(metrics_rules) == 1
    (source,) = metrics_rules[0]["from"]
    assert source == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    assert all(p["port"] != ports["metrics"] for r in rules if r not in metrics_rules for p in r["ports"])


def test_podmonitor_and_service_name_the_deployment_ports():
    ports = {p["name"] for p in container()["ports"]}
    assert {e["port"] for e in load(K8S / "podmonitor.yaml")["spec"]["podMetricsEndpoints"]} == {"metrics"} <= ports
    assert {p["targetPort"] for p in load(K8S / "service.yaml")["spec"]["ports"]} == {"grpc"}
