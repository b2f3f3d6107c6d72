"""Serving fixtures: a calibrated bundle built from `trained_run`, a model store with two bundles,
and real `advguard serve` processes on free loopback ports (one shared by most tests).

Never import `protos.inference` (or `serving.grpc.server`/`serving.grpc.inference`) in the test process: its
message names are the same as tritonclient's, and the protobuf pool refuses duplicates.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from advguard.cli.serve import parse_ready
from protos.advguard.v1 import guard_pb2
from serving.native.build import PACKAGES, build, missing

REPO = Path(__file__).resolve().parents[2]
# the shared server's limits, small so the tests can hit them cheaply
LIMITS = {"max_queue_size": 512, "max_batch_size": 64, "max_image_bytes": 256 * 1024,
          "max_image_pixels": 1_000_000, "max_message_bytes": 1024 * 1024}


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    port: int
    metrics_port: int | None
    store: Path
    log: Path
    ready: dict = field(default_factory=dict)  # the ready line's JSON

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 60) -> tuple[int, dict]:
        """SIGTERM; wait for exit; (exit code, call counts the server printed on exit)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout)
        counts = {}
        for line in out.splitlines():
            if line.startswith("advguard stopped "):
                counts = json.loads(line[len("advguard stopped "):])
        return self.proc.returncode, counts

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def start_server(store: Path, log: Path, *args: str, env: dict | None = None) -> ServerProcess:
    """`advguard serve` on free ports; returns once it printed its ready line (all bundles loaded)."""
    cmd = [sys.executable, "-m", "advguard.cli.main", "serve", "--store", str(store), "--port", "0",
           "--metrics-port", "0", "--threads", "1", *args]
    proc, info = launch(cmd, log, env)
    return ServerProcess(proc, info["port"], info["metrics_port"], Path(store), log, info)


def launch(cmd: list[str], log: Path, env: dict | None = None) -> tuple[subprocess.Popen, dict]:
    """A server command that prints `advguard serve`'s ready line, started from the repository root
    (stderr to `log`); returns once that line came, with its fields, or raises with the log."""
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, **(env or {})})
    line = proc.stdout.readline()  # blocks until ready (or EOF if it died)
    try:
        return proc, parse_ready(line)
    except ValueError:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{cmd[2]} did not start: {line!r}\n{log.read_text()}") from None


def clone_bundle(src: Path, store: Path, name: str, version: str, guard: dict | None = None) -> Path:
    """Copy bundle folder `src` to `store/name/version` with the manifest's name and version
    (and guard, when given) changed; the manifest lands last, by rename, as an exporter's does."""
    from serving.bundle import MANIFEST

    dest = Path(store) / name / version
    staging = Path(store) / name / f".{version}.staging"
    shutil.copytree(src, staging)
    manifest = json.loads((staging / MANIFEST).read_text())
    manifest.update(name=name, version=version)
    if guard is not None:
        manifest["guard"] = guard
    (staging / MANIFEST).unlink()
    staging.rename(dest)
    tmp = dest / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(dest / MANIFEST)
    return dest


@pytest.fixture(scope="session")
def guarded_bundle(trained_run, tmp_path_factory) -> Path:
    """`trained_run` exported with both detectors calibrated to 5% on its validation split."""
    from training.export import export_bundle
    from training.export.calibrate import GuardSpec

    store = tmp_path_factory.mktemp("export")
    return export_bundle(trained_run, "fmnist-guarded", store, dataset_limit=64, guard=GuardSpec())


@pytest.fixture(scope="session")
def serving_store(guarded_bundle, tmp_path_factory) -> Path:
    """fmnist-guarded/1 (the default), fmnist-plain/1 (same model, no detectors) and
    fmnist-reject/1 (a threshold below every score, action `reject`: every image is withheld)."""
    store = tmp_path_factory.mktemp("store")
    clone_bundle(guarded_bundle, store, "fmnist-guarded", "1")
    clone_bundle(guarded_bundle, store, "fmnist-plain", "1", guard={"detectors": [], "policy": "any", "action": "flag"})
    clone_bundle(guarded_bundle, store, "fmnist-reject", "1", guard={
        "detectors": [{"name": "low-confidence", "threshold": -1.0, "target_fpr": 1.0, "options": {}}],
        "policy": "any", "action": "reject"})
    return store


@pytest.fixture(scope="session")
def server(serving_store, tmp_path_factory):
    """One server for the session's API, input, load and metrics tests."""
    log = tmp_path_factory.mktemp("logs") / "server.log"
    args = [f"--{key.replace('_', '-')}={value}" for key, value in LIMITS.items()]
    # an operator's server: full disclosure and skip_guard allowed, so the tests see every field
    # (the defaults, verdict-only and no skip_guard, are tested in test_security.py)
    proc = start_server(serving_store, log, "--default-model", "fmnist-guarded", "--poll-seconds", "0",
                        "--disclosure", "full", "--allow-skip-guard", *args)
    yield proc
    code, _ = proc.stop()
    assert code == 0, proc.log_text()


@pytest.fixture(scope="session")
def clean_images(fmnist_small) -> tuple[np.ndarray, np.ndarray]:
    """The small fixture's test images as uint8 N x 1 x 28 x 28, and labels."""
    x = np.round(fmnist_small.test.x.numpy() * 255).astype(np.uint8)
    return x, fmnist_small.test.y.numpy()


@pytest.fixture(scope="session")
def tools():
    """Helpers for tests that need their own server or store: start_server, clone_bundle."""
    from types import SimpleNamespace

    return SimpleNamespace(start_server=start_server, clone_bundle=clone_bundle)


@pytest.fixture
def secure_server(serving_store, tmp_path):
    """A server on serving_store with TLS (a self-signed certificate for 127.0.0.1) and a bearer
    token: (server, certificate path, token file holding `s3cret-token`)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl missing")
    cert, key, token_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "token"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    token_file.write_text("s3cret-token\n")
    server = start_server(serving_store, tmp_path / "server.log", "--poll-seconds", "0", "--tls-cert", str(cert),
                          "--tls-key", str(key), "--auth-token-file", str(token_file))
    yield server, cert, token_file
    if server.proc.poll() is None:
        server.stop()


def native_server(store: Path, log: Path, *args: str):
    """`advguard serve --front native` on free ports (skips, naming the packages, without a toolchain)."""
    why = missing()
    if why:
        pytest.skip(f"no C++ toolchain for the native front end ({why}): apt-get install {PACKAGES}")
    build()
    return start_server(store, log, "--front", "native", *args)


def tensor_image(x: np.ndarray) -> guard_pb2.Image:
    """A uint8 image as our API's tensor input."""
    return guard_pb2.Image(tensor=guard_pb2.Tensor(shape=list(x.shape), dtype=guard_pb2.DTYPE_UINT8, data=x.tobytes()))


@pytest.fixture(scope="session")
def carded_bundle(trained_run, robust_run, tmp_path_factory) -> Path:
    """`make serve`'s bundle config (configs/bundles/fmnist-guarded.yaml, which asks for the quick
    card) composed by `advguard bundle`'s code from the test runs, its card's rows at a tiny
    budget (40 images, a few steps each) so that it builds in seconds: a real card, small."""
    from dataclasses import replace

    from training.evaluate import card
    from training.export.compose import BundleConfig, compose_bundle

    config = BundleConfig.from_yaml(REPO / "configs/bundles/fmnist-guarded.yaml")
    assert config.card == "quick" and config.card_shards is None, "make serve's bundle is meant to carry its card"
    config = replace(config, primary=trained_run, fallback=robust_run, reference=robust_run)
    tiny = card.CardConfig(n=40, sweep=(), pgd_steps=5, restarts=1, cw_steps=5, cw_binary_steps=1,
                           square_queries=50, adaptive_steps=5, adaptive_restarts=1, penalties=(10.0,), batch_size=40)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(card.PROFILES, "quick", tiny)
        return compose_bundle(config, tmp_path_factory.mktemp("carded-store"))
