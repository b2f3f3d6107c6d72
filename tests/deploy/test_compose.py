"""deploy/compose.yaml passes the compose-spec schema; its Prometheus config passes promtool; the
files it mounts exist."""
from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, load, tool

COMPOSE = DEPLOY / "compose.yaml"


def check(path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_compose_passes_the_compose_spec_schema():
    done = check(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_spec_schema_rejects_a_misspelt_key(tmp_path):
    compose = load(COMPOSE)
    compose["services"]["advguard"]["volume"] = compose["services"]["advguard"].pop("volumes")
    bad = tmp_path / "compose.yaml"
    bad.write_text(yaml.safe_dump(compose))
    assert check(bad).returncode == 1


def test_compose_runs_the_four_services_and_mounts_files_that_exist():
    services = load(COMPOSE)["services"]
    assert set(services) == {"advguard", "torchserve", "prometheus", "grafana"}
    for name, service in services.items():
        if "build" in service:
            assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).exists(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith(("./", "../")) and "model_store" not in source:
                assert (DEPLOY / source).exists(), f"{name}: {source}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing: make prometheus")
def test_compose_prometheus_config_passes_promtool_and_scrapes_the_services():
    done = subprocess.run(["promtool", "check", "config", "compose.yml"], cwd=DEPLOY / "prometheus",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    config = load(DEPLOY / "prometheus" / "compose.yml")
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    command = load(COMPOSE)["services"]["advguard"]["command"]
    assert targets["advguard"] == [f"advguard:{command[command.index('--metrics-port') + 1]}"]
