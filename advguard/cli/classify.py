"""`advguard classify`: classify image files through a running `advguard serve` (no torch)."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "classify image files through a running server"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of `advguard serve`")
    p.add_argument("--model", default="", help="bundle name (default: the server's only/first)")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--tls-ca", default=None, help="PEM certificate(s) to trust; turns TLS on")
    p.add_argument("--tls-cert", default=None, help="client certificate (PEM), for mutual TLS")
    p.add_argument("--tls-key", default=None, help="client key (PEM), for mutual TLS")
    p.add_argument("--auth-token-file", default=None,
                   help="file holding the bearer token (default: $ADVGUARD_AUTH_TOKEN, else none)")
    p.add_argument("images", nargs="+", help="PNG or JPEG files")


def run(args: argparse.Namespace) -> int:
    from serving.client import Connection, classify_files

    try:
        connection = Connection.from_files(args.target, args.tls_ca, args.tls_cert, args.tls_key,
                                           args.auth_token_file)
    except (ValueError, OSError) as err:
        raise SystemExit(f"advguard classify: {err}") from None
    return classify_files(connection, [Path(p) for p in args.images], model=args.model, timeout=args.timeout)
