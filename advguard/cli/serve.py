"""`advguard serve`: flags -> ServerSettings -> serve(). Heavy imports wait until it runs.

On start-up it prints one line to stdout once every bundle is loaded and the port is open:
`advguard ready {"host": ..., "port": ..., "metrics_port": ..., "http_port": ..., "models": {...}}`
(http_port null unless --http-port; with --workers N > 1 also `"workers": [pid, ...]`; with
--front native also `"front": "native"`), and on exit `advguard stopped {"OK": n, ...}` (calls by
status code, summed over the workers). Logs go to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from advguard.cli._args import process_count

TOKEN_ENV = "ADVGUARD_AUTH_TOKEN"
READY = "advguard ready "  # then the JSON above, one line


def parse_ready(line: str) -> dict:
    """The JSON of a ready line `advguard serve` printed; ValueError for any other line."""
    if not line.startswith(READY):
        raise ValueError(f"not an advguard ready line: {line!r}")
    return json.loads(line[len(READY):])


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default="model_store", help="model store: <store>/<name>/<version>/manifest.json")
    p.add_argument("--host", default="127.0.0.1", help="address gRPC binds (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (0: any free port, printed when ready)")
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="address /metrics binds (default loopback whatever --host is: the page is unauthenticated)")
    p.add_argument("--metrics-port", type=int, default=9100, help="Prometheus /metrics port (0: any free port)")
    p.add_argument("--http-port", type=int, default=None,
                   help="Open Inference Protocol v2 over HTTP/JSON (REST) on --host at this port, same auth, "
                        "TLS and limits as gRPC (0: any free port, printed when ready; default: off)")
    p.add_argument("--no-metrics", action="store_true", help="no /metrics endpoint")
    p.add_argument("--default-model", default="", help="bundle used when a request names none (default: first by name)")
    p.add_argument("--poll-seconds", type=float, default=5.0,
                   help="hot reload: scan the store for new or removed version folders this often (0: never)")
    p.add_argument("--front", choices=("grpc", "native"), default="grpc",
                   help="gRPC front end: grpc (default: grpc.aio, every method, TLS, --workers, --http-port) or "
                        "native (C++ gRPC on Debian's libgrpc++ handing whole batches to the same Python core: "
                        "about 3-4x less CPU per call; the unary methods of both APIs, bearer token, TLS, "
                        "metrics, hot reload, draining and --workers, but no streams or --http-port; needs "
                        "`apt-get install g++ pkg-config libgrpc++-dev` or `make native-tools`)")
    p.add_argument("--workers", type=process_count, default=1,
                   help="server processes sharing --port and --http-port (SO_REUSEPORT) with one /metrics "
                        "over all of them (default 1: this process serves; more than the cores: a warning)")
    g = p.add_argument_group("engine and batching")
    g.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads per session (0: one per core)")
    g.add_argument("--spin", action="store_true", help="let ONNX Runtime's idle threads spin (only on a dedicated machine)")
    g.add_argument("--cpu-only", action="store_true", help="ignore a GPU even when onnxruntime-gpu is installed")
    g.add_argument("--max-batch-size", type=int, default=64, help="images gathered into one model run")
    g.add_argument("--max-queue-delay-us", type=int, default=None,
                   help="under concurrent load, microseconds a free model instance waits for a batch to fill "
                        "(default 2000; 0: never; a lone request runs at once unless --delay-lone-requests)")
    g.add_argument("--delay-lone-requests", action="store_true",
                   help="apply --max-queue-delay-us to a lone request too (Triton's behaviour)")
    g.add_argument("--max-queue-size", type=int, default=4096,
                   help="images allowed to wait; beyond it calls fail at once with RESOURCE_EXHAUSTED")
    g.add_argument("--instances", type=int, default=1, help="batches of one model run at the same time")
    g = p.add_argument_group("limits")
    g.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024, help="gRPC message size limit")
    g.add_argument("--max-image-bytes", type=int, default=4 * 1024 * 1024, help="encoded image size limit")
    g.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                   help="width x height limit of one image, checked before decoding (decompression bombs)")
    g.add_argument("--max-request-pixels", type=int, default=64 * 1024 * 1024,
                   help="width x height summed over one request's encoded images, checked before decoding any")
    g.add_argument("--max-concurrent-rpcs", type=int, default=1024,
                   help="calls handled at once; beyond it gRPC answers RESOURCE_EXHAUSTED (0: no limit)")
    g.add_argument("--default-deadline-seconds", type=float, default=60.0,
                   help="deadline of calls that set none (0: none)")
    g.add_argument("--grace-seconds", type=float, default=30.0, help="on SIGTERM, time allowed to finish accepted calls")
    g.add_argument("--drain-seconds", type=float, default=1.0,
                   help="on SIGTERM, time new calls are answered UNAVAILABLE before the port closes")
    g = p.add_argument_group("security")
    g.add_argument("--auth-token-file", default=None,
                   help=f"require 'authorization: Bearer <token>' with the token in this file (or ${TOKEN_ENV}); "
                        f"health checks stay open")
    g.add_argument("--tls-cert", default=None, help="PEM certificate chain: serve TLS")
    g.add_argument("--tls-key", default=None, help="PEM private key for --tls-cert")
    g.add_argument("--tls-client-ca", default=None, help="PEM CA bundle: require client certificates (mutual TLS)")
    g.add_argument("--allow-plaintext-token", action="store_true",
                   help="accept a bearer token without TLS on a non-loopback --host (refused by default)")
    g.add_argument("--disclosure", choices=["verdict", "full"], default="verdict",
                   help="what answers show of the guard: verdict (default: no detector scores, thresholds or "
                        "attack score, which would hand an attacker the guard's gradient signal) or full (operators)")
    g.add_argument("--allow-skip-guard", action="store_true",
                   help="honour requests' skip_guard (default: refused with PERMISSION_DENIED)")
    g.add_argument("--trust-key", default=None,
                   help="Ed25519 public key (PEM): serve only bundles whose manifest.sig verifies against it "
                        "(serving.signature.sign_manifest); default: signatures not required")
    g.add_argument("--max-model-bytes", type=int, default=1 << 30,
                   help="largest bundle file read (default 1 GiB); a larger one is refused")


def settings_from_args(args: argparse.Namespace):
    from serving.runtime.batcher import BatchingOptions
    from serving.engine import EngineOptions
    from serving.preprocess import Limits
    from serving.grpc.settings import ServerSettings, TLSFiles  # no grpc: --front native never imports grpcio
    from serving.bundle import BundleChecks

    token = os.environ.get(TOKEN_ENV) or None
    if args.auth_token_file:
        token = Path(args.auth_token_file).read_text().strip()
        if not token:
            raise ValueError(f"--auth-token-file {args.auth_token_file} is empty")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    tls = TLSFiles(Path(args.tls_cert), Path(args.tls_key),
                   Path(args.tls_client_ca) if args.tls_client_ca else None) if args.tls_cert else None
    trust_key = Path(args.trust_key).read_bytes() if args.trust_key else None
    try:
        checks = BundleChecks(max_file_bytes=args.max_model_bytes, trust_key=trust_key)
    except ValueError as err:
        raise ValueError(f"--trust-key {args.trust_key}: {err}" if args.trust_key else str(err)) from None
    return ServerSettings(
        store=Path(args.store), host=args.host, port=args.port,
        metrics_port=None if args.no_metrics else args.metrics_port, http_port=args.http_port,
        engine=EngineOptions(threads=args.threads, spin=args.spin, cpu_only=args.cpu_only),
        batching=BatchingOptions(max_batch_size=args.max_batch_size,
                                 max_queue_delay_us=(BatchingOptions.max_queue_delay_us if args.max_queue_delay_us is None
                                                     else args.max_queue_delay_us),
                                 max_queue_size=args.max_queue_size, instances=args.instances,
                                 delay_lone_requests=args.delay_lone_requests),
        limits=Limits(max_encoded_bytes=args.max_image_bytes, max_pixels=args.max_image_pixels,
                      max_images=args.max_queue_size, max_request_pixels=args.max_request_pixels),
        max_message_bytes=args.max_message_bytes, max_concurrent_rpcs=args.max_concurrent_rpcs or None,
        metrics_host=args.metrics_host, disclosure=args.disclosure, allow_skip_guard=args.allow_skip_guard,
        allow_plaintext_token=args.allow_plaintext_token,
        default_deadline_seconds=args.default_deadline_seconds or None,
        grace_seconds=args.grace_seconds, drain_seconds=args.drain_seconds, poll_seconds=args.poll_seconds, default_model=args.default_model,
        auth_token=token, tls=tls, bundle_checks=checks)


def serve_native_front(settings, workers: int, ready) -> tuple[int, dict]:
    """`--front native` (serving.native.server), with `workers` processes when more than one;
    a missing toolchain is a ValueError naming it (told before any worker starts)."""
    from serving.native.build import ToolchainMissing, build
    from serving.native.server import check_native, serve_native

    check_native(settings)
    try:
        if workers > 1:
            from serving.workers import serve_workers

            build()  # once, here: the workers load the module
            return serve_workers(settings, workers, on_ready=ready, front="native")
        return 0, serve_native(settings, on_ready=ready)
    except ToolchainMissing as err:
        raise ValueError(str(err)) from None


def run_serve(args: argparse.Namespace) -> int:
    import asyncio

    def ready(info: dict) -> None:
        print(f"{READY}{json.dumps(info)}", flush=True)

    settings = settings_from_args(args)
    if args.front == "native":
        code, counts = serve_native_front(settings, args.workers, ready)
    elif args.workers > 1:
        from serving.workers import serve_workers

        code, counts = serve_workers(settings, args.workers, on_ready=ready)
    else:
        from serving.grpc.server import serve

        code, counts = 0, asyncio.run(serve(settings, on_ready=ready))
    print(f"advguard stopped {json.dumps(counts)}", flush=True)
    sys.stdout.flush()
    return code


# The shape every subcommand module has (see `advguard.cli.main`).
HELP = "serve the bundles in a model store over gRPC (--front grpc or native)"
add_arguments = add_serve_args
run = run_serve
