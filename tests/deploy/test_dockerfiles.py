"""deploy/docker: hadolint passes; the images are multi-stage, pinned and non-root; the serve
image holds no torch, checks health over gRPC and keeps the model store in a volume; TorchServe
keeps token authorization on and its management API private."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, REPO, tool
from tests.deploy.dockerfile import healthcheck_command, parse, words

DOCKER = DEPLOY / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def test_the_three_images_exist():
    assert [p.name for p in DOCKERFILES] == ["serve.Dockerfile", "torchserve.Dockerfile", "train.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    done = subprocess.run([tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_multi_stage_pinned_non_root(dockerfile):
    stages = parse(dockerfile)
    assert len(stages) >= 2, "build in one stage, run in another"
    for stage in stages:
        image, _, tag = stage.base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), f"unpinned base image {stage.base}"
    final = stages[-1]
    user = final.last("USER")
    assert user and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"final stage runs as {user!r}: a numeric non-root uid"
    assert not any("pip install" in a for a in final.all("RUN")), \
        "the final stage installs nothing with pip: it copies the build stage's venv"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerignore_lets_every_copied_file_through(dockerfile):
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text().splitlines()
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    for stage in parse(dockerfile):
        for args in stage.all("COPY"):
            if args.startswith("--from"):
                continue
            for source in words(args)[:-1]:
                assert any(a == source or a.startswith(source.rstrip("/") + "/") for a in allowed), \
                    f"{dockerfile.name}: COPY {source} is not let through by its .dockerignore"
                assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"


def test_serve_image_has_no_torch():
    for name in ("serve.Dockerfile", "serve-constraints.txt", "serve.Dockerfile.dockerignore"):
        code = [line for line in (DOCKER / name).read_text().splitlines() if not line.lstrip().startswith("#")]
        assert "torch" not in "\n".join(code).lower(), name
    build = parse(DOCKER / "serve.Dockerfile")[0]
    assert build.all("RUN") == ["sh deploy/docker/install.sh /opt/advguard"], "the plain serving install, no extra"


def test_serve_image_volume_healthcheck_and_ports():
    final = parse(DOCKER / "serve.Dockerfile")[-1]
    cmd = words(final.last("CMD"))
    assert words(final.last("ENTRYPOINT")) == ["advguard", "serve"]
    flags = dict(zip(cmd[::2], cmd[1::2]))
    assert flags["--host"] == "0.0.0.0"
    assert words(final.last("VOLUME")) == [flags["--store"]]
    assert sorted(final.last("EXPOSE").split()) == sorted([flags["--port"], flags["--metrics-port"]])
    probe = healthcheck_command(final.last("HEALTHCHECK"))
    assert probe[1].endswith("health_probe.py") and probe[2] == f"127.0.0.1:{flags['--port']}"


def properties(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def test_torchserve_keeps_token_auth_on_and_management_private():
    dockerfile = (DOCKER / "torchserve.Dockerfile").read_text()
    config = properties(DOCKER / "torchserve.config.properties")
    assert "disable-token-auth" not in dockerfile and "disable_token_authorization" not in config
    assert config["management_address"].startswith("http://127.0.0.1:")
    assert config["enable_model_api"] == "false"
    allowed = re.compile(config["allowed_urls"])
    for url in ("https://example.com/model.mar", "s3://bucket/x.mar", "file:///etc/passwd", "x.mar", ""):
        assert not allowed.search(url), f"allowed_urls matches {url!r}"
    final = parse(DOCKER / "torchserve.Dockerfile")[-1]
    exposed = set(final.last("EXPOSE").split())
    assert exposed == {config["inference_address"].rsplit(":", 1)[1], config["metrics_address"].rsplit(":", 1)[1]}
    assert words(final.last("VOLUME")) == [config["model_store"]]
