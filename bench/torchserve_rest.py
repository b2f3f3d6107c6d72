"""TorchServe's REST API under the same closed-loop load as bench.serve's gRPC rows.

Builds a .mar from the bundle (advguard's handler: the same guard core) into a temporary folder
unless the bundle ships one, starts TorchServe on free loopback ports with one worker, and POSTs
PNG files to /predictions/<name> over keep-alive HTTP/1.1 connections (one per client task).
Token authorization stays on, as deployed (deploy/torchserve/config.properties): every call
carries `Authorization: Bearer <key>` with the keys TorchServe writes to key_file.json.
"""
from __future__ import annotations

import asyncio
import io
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from bench.loadgen import LoadResult


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_keys(work: Path, deadline: float) -> dict[str, str]:
    """The keys TorchServe's token authorization wrote to key_file.json in its working folder:
    {"inference": key, "management": key}, waiting for the file until `deadline` (monotonic)."""
    while time.monotonic() < deadline:
        try:
            keys = json.loads((Path(work) / "key_file.json").read_text())
            return {kind: keys[kind]["key"] for kind in ("inference", "management")}
        except (OSError, ValueError, KeyError):
            time.sleep(0.5)  # polling: TorchServe gives no other sign that it wrote the file
    raise TimeoutError(f"TorchServe wrote no key_file.json in {work}")


def wait_ready(url: str, key: str, deadline: float) -> None:
    """Poll TorchServe's management API at `url` (/models/<name>, with the management `key`)
    until the model reports a READY worker, or raise TimeoutError at `deadline` (monotonic)."""
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
            with urllib.request.urlopen(request, timeout=2) as reply:
                if b"READY" in reply.read():
                    return
        except OSError:
            pass
        time.sleep(0.5)  # an external JVM: polling its management API is the only sign
    raise TimeoutError(f"TorchServe model not READY at {url}")


def png_files(images: np.ndarray) -> list[bytes]:
    from PIL import Image

    files = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image[0]).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


class TorchServe:
    """A running TorchServe serving `bundle` (context manager), token authorization on: `port` and
    `path` locate the predictions API, `token` is the inference key to send as a bearer token."""

    def __init__(self, bundle: Path, startup_seconds: float = 180, workers: int = 1) -> None:
        self.workers = workers
        self.bundle, self.startup_seconds = Path(bundle).resolve(), startup_seconds  # TorchServe runs in self.work
        self.work = Path(tempfile.mkdtemp(prefix="advguard-ts-"))
        self.binary = shutil.which("torchserve") or str(Path(sys.executable).parent / "torchserve")

    def __enter__(self) -> "TorchServe":
        from serving.bundle import load_bundle
        from training.export.torchserve import build_mar

        name = load_bundle(self.bundle).name
        mar = next(iter(sorted(self.bundle.glob("*.mar"))), None) or build_mar(self.bundle, self.work / "store")
        ports = {kind: _free_port() for kind in ("inference", "management", "metrics")}
        config = self.work / "config.properties"
        config.write_text("".join(f"{kind}_address=http://127.0.0.1:{port}\n" for kind, port in ports.items())
                          + f"default_workers_per_model={self.workers}\ndisable_system_metrics=true\n")
        self.proc = subprocess.Popen(  # token authorization on (TorchServe's default), as deployed
            [self.binary, "--start", "--foreground", "--ncs", "--ts-config", str(config),
             "--model-store", str(mar.parent), "--models", f"{name}={mar.name}"],
            cwd=self.work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.port, self.path = ports["inference"], f"/predictions/{name}"
        deadline = time.monotonic() + self.startup_seconds
        try:
            keys = read_keys(self.work, deadline)
            wait_ready(f"http://127.0.0.1:{ports['management']}/models/{name}", keys["management"], deadline)
        except TimeoutError:
            self.__exit__()
            raise
        self.token = keys["inference"]
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run([self.binary, "--stop"], cwd=self.work, capture_output=True, timeout=60)
        self.proc.terminate()
        self.proc.wait(timeout=60)
        shutil.rmtree(self.work, ignore_errors=True)


async def _post_worker(port: int, path: str, bodies: list[bytes], counter, result: LoadResult,
                       token: str | None) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    try:
        for i in counter:
            body = bodies[i % len(bodies)]
            began = time.perf_counter()
            writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                         f"{auth}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status = int((await reader.readline()).split()[1])
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                key, _, value = line.decode().partition(":")
                headers[key.strip().lower()] = value.strip()
            if headers.get("transfer-encoding") == "chunked":
                while (size := int((await reader.readline()).strip(), 16)):
                    await reader.readexactly(size + 2)
                await reader.readline()
            else:
                await reader.readexactly(int(headers.get("content-length", 0)))
            if status == 200:
                result.latencies.append(time.perf_counter() - began)
                result.codes["OK"] += 1
            else:
                result.codes[f"HTTP {status}"] += 1
    finally:
        writer.close()


async def rest_load(port: int, path: str, bodies: list[bytes], total: int, concurrency: int,
                    token: str | None = None) -> LoadResult:
    """POST `total` bodies to `path` from `concurrency` keep-alive connections (`token`: sent as a
    bearer token, TorchServe's inference key)."""
    result, counter = LoadResult(), iter(range(total))
    began = time.perf_counter()
    await asyncio.gather(*(_post_worker(port, path, bodies, counter, result, token) for _ in range(concurrency)))
    result.seconds = time.perf_counter() - began
    return result
