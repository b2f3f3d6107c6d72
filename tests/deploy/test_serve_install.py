"""The serve image's promise, without a container runtime: the build stage's files, installed by
the same script (deploy/docker/install.sh) into a fresh venv, hold no torch and only pinned
packages, and `advguard serve` from there, started with the image's own CMD, passes the image's
health probe and classifies an image for `advguard classify` from the same venv."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from advguard.cli.serve import parse_ready
from tests.deploy.conftest import DEPLOY, REPO
from tests.deploy.dockerfile import parse, words
from tests.support import encode_image

DOCKERFILE = DEPLOY / "docker" / "serve.Dockerfile"
GENERATED = re.compile(r"(_pb2(_grpc)?\.pyi?|\.pyc)$")


def copy_build_context(dest: Path) -> None:
    """What the build stage COPYs, at the same paths (the stage mirrors the repo under its WORKDIR)."""
    for args in parse(DOCKERFILE)[0].all("COPY"):
        *sources, target = words(args)
        for source in sources:
            expected = {source, source.rstrip("/"), "./", str(Path(source).parent) + "/"}
            assert target in expected, f"COPY {source} {target}: the build stage must mirror the repo layout"
            src = REPO / source
            if src.is_dir():
                shutil.copytree(src, dest / source, ignore=lambda d, names: [
                    n for n in names if n == "__pycache__" or GENERATED.search(n)])
            else:
                (dest / source).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / source)


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("serve-image")
    copy_build_context(work / "src")
    (install,) = parse(DOCKERFILE)[0].all("RUN")
    script = words(install)[1]
    venv = work / "venv"
    done = subprocess.run(["sh", script, str(venv)], cwd=work / "src", capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout + done.stderr
    return venv


@pytest.mark.slow
def test_install_holds_no_torch_and_only_pinned_packages(serve_venv):
    done = subprocess.run([str(serve_venv / "bin" / "python"), "-c", "import torch"], capture_output=True, text=True)
    assert done.returncode != 0 and "No module named 'torch'" in done.stderr
    pins = {}
    for line in (DEPLOY / "docker" / "serve-constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = version
    freeze = subprocess.run([str(serve_venv / "bin" / "pip"), "freeze"], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    for line in freeze:
        if line.startswith("advguard @"):
            continue
        name, version = line.split("==")
        assert pins.get(re.sub(r"[-_.]+", "-", name).lower()) == version, f"{line} not pinned by serve-constraints.txt"


@pytest.mark.slow
def test_image_command_serves_probes_and_classifies(serve_venv, serving_store, clean_images, tmp_path):
    bin_ = serve_venv / "bin"
    cmd = words(parse(DOCKERFILE)[-1].last("CMD"))
    # the image's CMD, on loopback and free ports, over the test store
    for flag, value in (("--store", str(serving_store)), ("--host", "127.0.0.1"), ("--port", "0"),
                        ("--metrics-port", "0")):
        cmd[cmd.index(flag) + 1] = value
    proc = subprocess.Popen([str(bin_ / "advguard"), "serve", *cmd, "--threads", "1", "--poll-seconds", "0",
                             "--default-model", "fmnist-guarded"],
                            stdout=subprocess.PIPE, stderr=open(tmp_path / "server.log", "w"), text=True,
                            cwd=tmp_path, env={"PATH": f"{bin_}:/usr/bin:/bin"})
    try:
        info = parse_ready(proc.stdout.readline())
        target = f"127.0.0.1:{info['port']}"
        probe = subprocess.run([str(bin_ / "python"), str(DEPLOY / "docker" / "health_probe.py"), target],
                               capture_output=True, text=True, timeout=30)
        assert probe.returncode == 0 and "SERVING" in probe.stderr, probe.stderr
        image = tmp_path / "image.png"
        image.write_bytes(encode_image(clean_images[0][0, 0]))
        done = subprocess.run([str(bin_ / "advguard"), "classify", "--target", target, str(image)],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        fields = done.stdout.split()
        assert fields[0].endswith("image.png") and fields[-1] in {"CLEAN", "SUSPICIOUS", "ADVERSARIAL"}, done.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0, (tmp_path / "server.log").read_text()
    after = subprocess.run([str(bin_ / "python"), str(DEPLOY / "docker" / "health_probe.py"), target],
                           capture_output=True, text=True, timeout=30)
    assert after.returncode == 1
