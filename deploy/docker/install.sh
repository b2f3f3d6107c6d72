#!/bin/sh
# The install every image runs (serve.Dockerfile, train.Dockerfile, torchserve.Dockerfile), and
# tests/deploy/test_serve_install.py too: it runs `install.sh VENV` into a fresh venv and checks
# the serve image's promise (no torch; `advguard serve` answers) without a container runtime.
#
#   deploy/docker/install.sh VENV [EXTRA]      (from the repository root)
#
# 1. generates the protobuf code (gitignored) with grpcio-tools in a throwaway venv;
# 2. creates VENV; with $TORCH_INDEX_URL set, installs $TORCH_PACKAGES (default: torch) from that
#    index first (the CPU wheels: https://download.pytorch.org/whl/cpu);
# 3. runs `pip install .` (no EXTRA: the serving install, base dependencies only) or
#    `pip install '.[EXTRA]'`, every package pinned by <EXTRA or serve>-constraints.txt.
set -eu
venv=${1:?usage: install.sh VENV [EXTRA]}
extra=${2:-}
here=deploy/docker
python=${PYTHON:-python3}
constraints="$here/${extra:-serve}-constraints.txt"
spec=.
[ -z "$extra" ] || spec=".[$extra]"
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT

"$python" -m venv "$tools/venv"
"$tools/venv/bin/pip" install --quiet --constraint "$here/serve-constraints.txt" grpcio-tools
"$tools/venv/bin/python" -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. \
  protos/advguard/v1/*.proto protos/inference/*.proto

"$python" -m venv "$venv"
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "$venv/bin/pip" install --quiet --index-url "$TORCH_INDEX_URL" --constraint "$constraints" ${TORCH_PACKAGES:-torch}
fi
"$venv/bin/pip" install --quiet --constraint "$constraints" "$spec"
"$venv/bin/pip" check
