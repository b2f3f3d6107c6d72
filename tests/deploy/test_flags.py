"""Cross-check: every `advguard serve` command line in the Dockerfile, compose file, Kubernetes
and KServe manifests parses with the server's own parser (advguard.cli.serve.add_serve_args),
and the ports it names are the ports declared, exposed, probed and scraped."""
from __future__ import annotations

import pytest

from tests.deploy.conftest import DEPLOY, load, serve_parser
from tests.deploy.dockerfile import healthcheck_command, parse, words


def dockerfile_command() -> list[str]:
    final = parse(DEPLOY / "docker" / "serve.Dockerfile")[-1]
    entrypoint = words(final.last("ENTRYPOINT"))
    assert entrypoint == ["advguard", "serve"]
    return words(final.last("CMD"))


def command_lines() -> dict[str, list[str]]:
    deployment = load(DEPLOY / "k8s" / "deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
    runtime = load(DEPLOY / "kserve" / "servingruntime.yaml")["spec"]["containers"][0]
    custom = load(DEPLOY / "kserve" / "inferenceservice-custom.yaml")["spec"]["predictor"]["containers"][0]
    return {"serve.Dockerfile CMD": dockerfile_command(),
            "compose.yaml advguard": load(DEPLOY / "compose.yaml")["services"]["advguard"]["command"],
            "k8s/deployment.yaml": deployment["args"],
            "kserve/servingruntime.yaml": runtime["args"],
            "kserve/inferenceservice-custom.yaml": custom["args"]}


@pytest.mark.parametrize("where", list(command_lines()))
def test_every_flag_is_a_serve_flag(where):
    args = serve_parser().parse_args(command_lines()[where])  # ValueError names an unknown flag or bad value
    assert args.host == "0.0.0.0", f"{where}: a container must listen beyond loopback"
    assert args.port > 0 and args.metrics_port > 0 and not args.no_metrics
    # once `--metrics-host` exists (its default: loopback), Prometheus needs it opened too
    assert getattr(args, "metrics_host", "0.0.0.0") == "0.0.0.0", f"{where}: add --metrics-host=0.0.0.0"


def test_ports_match_the_dockerfile():
    args = serve_parser().parse_args(dockerfile_command())
    final = parse(DEPLOY / "docker" / "serve.Dockerfile")[-1]
    assert set(final.last("EXPOSE").split()) == {str(args.port), str(args.metrics_port)}
    assert healthcheck_command(final.last("HEALTHCHECK"))[-1] == f"127.0.0.1:{args.port}"
    assert words(final.last("VOLUME")) == [args.store]


def test_compose_publishes_the_grpc_port():
    service = load(DEPLOY / "compose.yaml")["services"]["advguard"]
    args = serve_parser().parse_args(service["command"])
    assert args.store == serve_parser().parse_args(dockerfile_command()).store
    assert [p.rsplit(":", 1)[1] for p in service["ports"]] == [str(args.port)]
    assert any(v.split(":")[1] == args.store for v in service["volumes"])


def test_deployment_ports_and_probes_match_its_args():
    container = load(DEPLOY / "k8s" / "deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
    args = serve_parser().parse_args(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": args.port, "metrics": args.metrics_port}
    assert args.port == serve_parser().parse_args(dockerfile_command()).port  # the image's documented port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == args.port
    assert any(m["mountPath"] == args.store for m in container["volumeMounts"])
    policy_ports = {p["port"] for rule in load(DEPLOY / "k8s" / "networkpolicy.yaml")["spec"]["ingress"]
                    for p in rule["ports"]}
    assert policy_ports == {args.port, args.metrics_port}
    service = load(DEPLOY / "k8s" / "service.yaml")["spec"]["ports"]
    assert [(p["port"], p["targetPort"]) for p in service] == [(args.port, "grpc")]


def test_kserve_metrics_annotations_name_the_metrics_port():
    runtime = load(DEPLOY / "kserve" / "servingruntime.yaml")
    args = serve_parser().parse_args(runtime["spec"]["containers"][0]["args"])
    assert runtime["metadata"]["annotations"]["prometheus.kserve.io/port"] == str(args.metrics_port)
    custom = load(DEPLOY / "kserve" / "inferenceservice-custom.yaml")
    args = serve_parser().parse_args(custom["spec"]["predictor"]["containers"][0]["args"])
    assert custom["metadata"]["annotations"]["prometheus.kserve.io/port"] == str(args.metrics_port)


def test_parser_refuses_a_flag_the_server_lacks():
    with pytest.raises(ValueError, match="unrecognized arguments"):
        serve_parser().parse_args(["--metrics-hots", "0.0.0.0"])
