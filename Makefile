# advguard: `make serve` and `make test` each work as the first command on a fresh clone.
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
DATA_DIR  ?= /usr/share/datasets/fashion-mnist
HOST      ?= 127.0.0.1
PORT      ?= 50051
METRICS_PORT ?= 9100
MODEL     ?= fmnist-fast
BUNDLE    ?= model_store/$(MODEL)
BUNDLE_EPOCHS ?= 10
PROTOS    := $(wildcard protos/advguard/v1/*.proto protos/inference/*.proto)
PROTO_STAMP := protos/.generated

.PHONY: setup data protos test serve bundle clean lint prometheus loadgen-tools bench-serve

setup: $(STAMP) $(PROTO_STAMP) data

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $@

protos: $(PROTO_STAMP)
$(PROTO_STAMP): $(STAMP) $(PROTOS)
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)
	touch $@

# Debian's dataset-fashion-mnist puts the IDX files under /usr/share/datasets/fashion-mnist.
data:
	@if [ -f $(DATA_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST present at $(DATA_DIR)"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)); \
	else \
	  echo "Fashion-MNIST missing at $(DATA_DIR). Run: sudo apt-get install dataset-fashion-mnist" >&2; exit 1; \
	fi

# Prometheus (Debian's package) is used by the integration tests.
prometheus:
	@command -v prometheus >/dev/null 2>&1 || \
	  ( [ "$$(id -u)" = 0 ] && (apt-get install -y -q prometheus || (apt-get update -q && apt-get install -y -q prometheus)) ) || \
	  echo "prometheus missing: sudo apt-get install prometheus" >&2

# h2load (Debian's nghttp2-client) and wrk: bench/serve.py's load generators for unary calls.
loadgen-tools:
	@(command -v h2load && command -v wrk) >/dev/null 2>&1 || \
	  ( [ "$$(id -u)" = 0 ] && (apt-get install -y -q nghttp2-client wrk || (apt-get update -q && apt-get install -y -q nghttp2-client wrk)) ) || \
	  echo "h2load/wrk missing: sudo apt-get install nghttp2-client wrk (bench.serve falls back to its Python clients)" >&2

bench-serve: bundle loadgen-tools
	$(BIN)/python -m bench.serve --store model_store --model $(MODEL)

bundle: setup
	@if [ -f $(BUNDLE)/latest/manifest.json ] || ls $(BUNDLE)/*/manifest.json >/dev/null 2>&1; then \
	  echo "bundle present under $(BUNDLE)"; \
	else \
	  $(BIN)/advguard train --model $(MODEL) --dataset fashion-mnist --epochs $(BUNDLE_EPOCHS) --out runs/$(MODEL)-default && \
	  $(BIN)/advguard export --run runs/$(MODEL)-default --name $(MODEL) --store model_store --torchserve; \
	fi

serve: bundle
	$(BIN)/advguard serve --store model_store --default-model $(MODEL) --host $(HOST) --port $(PORT) --metrics-port $(METRICS_PORT)

test: setup prometheus loadgen-tools
	$(BIN)/python -m pytest -q -ra

clean:
	rm -rf runs .pytest_cache $(PROTO_STAMP)
