"""A small client: `advguard classify --target HOST:PORT IMAGE...` (TLS and a bearer token
optional, as `advguard serve` offers them)."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc

from protos.advguard.v1 import guard_pb2, guard_pb2_grpc
from serving.grpc.settings import is_loopback

VERDICTS = {v: k for k, v in guard_pb2.Verdict.items()}


@dataclass(frozen=True)
class Connection:
    """How to reach the server: tls_ca turns TLS on (the CA or self-signed certificate to trust);
    tls_cert/tls_key add a client certificate (mutual TLS); token is sent as
    `authorization: Bearer <token>`."""

    target: str = "127.0.0.1:50051"
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token: str = ""

    @classmethod
    def from_files(cls, target: str, tls_ca: str | None = None, tls_cert: str | None = None,
                   tls_key: str | None = None, token_file: str | None = None) -> "Connection":
        """Token from token_file, else $ADVGUARD_AUTH_TOKEN; ValueError names what is wrong."""
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together (mutual TLS)")
        if tls_cert and not tls_ca:
            raise ValueError("a client certificate needs TLS: add --tls-ca")
        token = os.environ.get("ADVGUARD_AUTH_TOKEN", "")
        if token_file:
            token = Path(token_file).read_text().strip()
        if token and not tls_ca and not is_loopback(target):
            raise ValueError(f"refusing to send the bearer token in clear text to {target}: add --tls-ca "
                             "(the server's certificate or CA), or reach it over loopback")
        return cls(target, *(Path(p) if p else None for p in (tls_ca, tls_cert, tls_key)), token=token)

    def channel(self) -> grpc.Channel:
        if self.tls_ca is None:
            return grpc.insecure_channel(self.target)
        pair = (self.tls_key.read_bytes(), self.tls_cert.read_bytes()) if self.tls_cert else (None, None)
        credentials = grpc.ssl_channel_credentials(self.tls_ca.read_bytes(), *pair)
        return grpc.secure_channel(self.target, credentials)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def classify_files(target: str | Connection, images: list[Path], model: str = "", timeout: float = 10.0) -> int:
    """Classify each file; prints `file class name probability verdict`. Returns an exit code."""
    failures = 0
    connection = target if isinstance(target, Connection) else Connection(target)
    with connection.channel() as channel:
        stub = guard_pb2_grpc.GuardedClassifierStub(channel)
        for path in images:
            try:
                data = Path(path).read_bytes()
            except OSError as err:
                print(f"{path}\terror: {err}", file=sys.stderr)
                failures += 1
                continue
            request = guard_pb2.ClassifyRequest(model=model, image=guard_pb2.Image(encoded=data))
            try:
                reply = stub.Classify(request, timeout=timeout, metadata=connection.metadata)
            except grpc.RpcError as err:
                print(f"{path}\terror: {err.code().name}: {err.details()}", file=sys.stderr)
                failures += 1
                continue
            prob = reply.probabilities[reply.class_index]
            print(f"{path}\t{reply.class_index}\t{reply.class_name}\t{prob:.4f}\t{VERDICTS[reply.verdict]}")
    return 1 if failures else 0
