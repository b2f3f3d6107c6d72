"""What `advguard serve` can set, for every front end (`--front grpc`: `serving.grpc.server`;
`--front native`: `serving.native.server`). Imports no grpc (this package's `__init__` imports
nothing), so the native front end's process, another gRPC core, reads the same settings."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from serving.bundle import BundleChecks
from serving.engine import EngineOptions
from serving.preprocess import Limits
from serving.runtime.batcher import BatchingOptions


@dataclass(frozen=True)
class TLSFiles:
    """PEM files: the server's certificate chain and key; `client_ca` turns on mutual TLS."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> "grpc.ServerCredentials":
        import grpc  # here, not at the top: the native front end reads these settings without grpcio

        ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials([(self.key.read_bytes(), self.cert.read_bytes())],
                                           root_certificates=ca, require_client_auth=ca is not None)


@dataclass(frozen=True)
class ServerSettings:
    """Everything `advguard serve` can set. port/metrics_port 0: any free port (reported to
    `on_ready`); metrics_port None: no metrics endpoint; poll_seconds 0: no hot reload;
    auth_token: require `authorization: Bearer <token>` on every call but health checks (refused
    over plaintext off loopback unless allow_plaintext_token); metrics_host: where /metrics
    listens (loopback by default, whatever `host` is); disclosure: what answers show of the
    guard (`serving.answer`: verdict | full); allow_skip_guard: honour requests' skip_guard;
    default_deadline_seconds: the deadline of calls that set none (None: none);
    drain_seconds: after SIGTERM, how long new calls are answered UNAVAILABLE (health
    NOT_SERVING) before the port closes, so calls already on their way are not cut off;
    reuse_port: share port and http_port with other processes that set it (SO_REUSEPORT: the
    workers of `serving.workers`); off, a port already in use is an error."""

    store: Path = Path("model_store")
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int | None = 9100
    http_port: int | None = None  # OIP v2 over HTTP/JSON (serving.rest) on `host`; None: off, 0: any free port
    metrics_host: str = "127.0.0.1"
    disclosure: str = "verdict"
    allow_skip_guard: bool = False
    allow_plaintext_token: bool = False
    default_deadline_seconds: float | None = 60.0
    engine: EngineOptions = field(default_factory=EngineOptions)
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    limits: Limits = field(default_factory=Limits)
    max_message_bytes: int = 64 * 1024 * 1024
    max_concurrent_rpcs: int | None = 1024
    grace_seconds: float = 30.0
    drain_seconds: float = 1.0
    poll_seconds: float = 5.0
    default_model: str = ""
    auth_token: str | None = None
    tls: TLSFiles | None = None
    bundle_checks: BundleChecks = field(default_factory=BundleChecks)  # file size cap, --trust-key
    reuse_port: bool = False


def is_loopback(address: str) -> bool:
    """True for an address on this machine: a host (`--host`) or a HOST:PORT target, with or
    without a `dns:///` scheme: localhost, 127.0.0.0/8 or ::1 (bare or in brackets). Anything
    else, a name resolving to loopback included, counts as off the machine.

    Example: is_loopback("127.0.0.1:50051") and is_loopback("[::1]:50051") and is_loopback("::1")
    """
    host = address.split("///")[-1]
    if host.startswith("["):
        host = host[1:].split("]")[0]
    elif host.count(":") == 1:  # HOST:PORT; more colons: a bare IPv6 address
        host = host.split(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

def check_exposure(settings: ServerSettings) -> None:
    """Refuse settings that would send a bearer token in clear text over a network."""
    if settings.auth_token and settings.tls is None and not is_loopback(settings.host) and not settings.allow_plaintext_token:
        raise ValueError(f"a bearer token over plaintext gRPC on {settings.host} would travel in clear text: "
                         "add --tls-cert/--tls-key, serve on loopback behind a TLS proxy, or pass "
                         "--allow-plaintext-token if the network is trusted")
