"""deploy/ checks: paths, the tools `make setup` / `make deploy-tools` install, the manifests parsed,
and the serving fixtures (a model store with three bundles, a shared server) reused from
tests/serving/conftest.py."""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.serving.conftest import clean_images, guarded_bundle, server, serving_store  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
CRD_CHECK = REPO / "build" / "crd-check" / "node_modules"
K8S_VERSION = "1.33.0"  # the Kubernetes release the manifests are validated against (kubernetes-validate)


def tool(name: str, fix: str = "run `make setup` (the dev extra installs it)") -> str:
    """Path of command `name` (the venv's first); fails the test with the fix when missing."""
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} missing: {fix}")
    return str(path)


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def load(path: Path) -> dict:
    (doc,) = load_all(path)
    return doc


def serve_parser() -> argparse.ArgumentParser:
    """The real `advguard serve` parser (advguard.cli.serve.add_serve_args), erroring instead of exiting."""
    from advguard.cli.serve import add_serve_args

    parser = argparse.ArgumentParser(prog="advguard serve", exit_on_error=False)
    add_serve_args(parser)

    def error(message: str):
        raise ValueError(message)

    parser.error = error  # unknown flags call error() even with exit_on_error=False
    return parser
