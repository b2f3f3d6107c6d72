"""`python -m serving.native`: the native front end as a process (prototype: ModelInfer only,
unary, insecure, no auth, no metrics endpoint, no hot reload; see serving/native/__init__.py).

Loads every bundle version in --store (as `advguard serve` does), starts C++ gRPC on --host:--port,
prints `advguard serve`'s ready line (`advguard ready {"host", "port", "metrics_port": null,
"models"}`), then answers batches on this thread until SIGTERM or SIGINT; queued calls then end
UNAVAILABLE and the process prints `advguard stopped {"OK": n, ...}` and `native batches
{"batches": b, "calls": n}` (the batches taken, and the calls in them). Batches form as the
dynamic batcher's do (`serving.runtime.batch_wait`): a call whose previous batch held one runs at
once, otherwise the thread waits (at most --max-queue-delay-us, or a quarter of it after the
latest arrival) for as many calls as the largest of the last 16 batches. Example:
    python -m serving.native --store model_store --default-model fmnist-guarded --port 50061 --threads 1
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import signal
import sys
from pathlib import Path

from serving.bundle import bundle_names, version_dirs
from serving.engine import EngineOptions
from serving.grpc.codes import CODE_NUMBERS
from serving.native.build import load_extension
from serving.native.front import BatchAnswerer
from serving.pipeline import Pipeline
from serving.preprocess import Limits
from serving.runtime.batch_wait import GAP_FRACTION, RECENT_BATCHES
from serving.runtime.batcher import BatchingOptions
from serving.runtime.repository import ModelRepository

READY = "advguard ready "  # advguard.cli.serve's
TAKE_TIMEOUT_MS = 100  # how often the waiting thread returns to Python (signals are handled there)
log = logging.getLogger("serving.native")


def load_repository(store: Path, default_model: str, engine: EngineOptions) -> ModelRepository:
    repo: ModelRepository = ModelRepository(store, default_model)
    for name in bundle_names(store):
        for folder in version_dirs(store, name):
            pipeline = Pipeline.load(folder, engine)
            pipeline.warm_up()
            repo.add(pipeline)
    if not repo.names():
        raise SystemExit(f"no bundle in {store}: build one with `advguard bundle` (or `make bundle`)")
    return repo


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="model_store")
    p.add_argument("--default-model", default="", help="bundle used when a request names none (default: first by name)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50061, help="0: any free port, printed when ready")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    p.add_argument("--disclosure", choices=("verdict", "full"), default="verdict")
    p.add_argument("--allow-skip-guard", action="store_true")
    p.add_argument("--max-batch-size", type=int, default=BatchingOptions.max_batch_size)
    p.add_argument("--max-queue-delay-us", type=int, default=BatchingOptions.max_queue_delay_us)
    p.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    front = load_extension()
    store = Path(args.store)
    repo = load_repository(store, args.default_model, EngineOptions(threads=args.threads))
    answerer = BatchAnswerer(repo, Limits(), args.disclosure, args.allow_skip_guard, args.max_batch_size)
    port = front.start(f"{args.host}:{args.port}", args.max_message_bytes)
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    models = {name: repo.versions(name) for name in repo.names()}
    print(READY + json.dumps({"host": args.host, "port": port, "metrics_port": None, "http_port": None,
                              "models": models, "front": "native"}), flush=True)
    log.info("serving %s on %s:%d (native front end: ModelInfer only)", ", ".join(models), args.host, port)
    recent = collections.deque([0], maxlen=RECENT_BATCHES)  # calls per batch, as BatchWait keeps images
    delay = args.max_queue_delay_us
    batches = taken = 0
    try:
        while not stopping:
            want = 1 if recent[-1] <= 1 else max(recent)
            calls = front.take(args.max_batch_size, want, delay, delay // GAP_FRACTION, TAKE_TIMEOUT_MS)
            if calls:
                try:
                    replies = answerer.answer(calls)
                except Exception:  # a bug: every call of the batch still gets a status, and the server goes on
                    log.exception("answering a batch of %d calls failed", len(calls))
                    replies = [(handle, None, CODE_NUMBERS["INTERNAL"], "internal error") for handle, _ in calls]
                front.finish(replies)
                recent.append(len(calls))
                batches, taken = batches + 1, taken + len(calls)
    finally:
        front.stop(5.0)
    print(f"advguard stopped {json.dumps(dict(answerer.counts))}", flush=True)
    print(f"native batches {json.dumps({'batches': batches, 'calls': taken})}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
