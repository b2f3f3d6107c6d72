"""`python -m serving.native`: the native front end with a few of `advguard serve`'s flags (no
metrics endpoint, no hot reload: what the benchmark needs). `advguard serve --front native` is
the same server with every flag; see serving/native/server.py.

Prints `advguard serve`'s ready line, and on exit `advguard stopped {"OK": n, ...}` and
`native batches {"batches": b, "calls": n}` (the model runs, and the batched calls in them).
Example:
    python -m serving.native --store model_store --default-model fmnist-guarded --port 50061 --threads 1
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from serving.engine import EngineOptions
from serving.grpc.settings import ServerSettings
from serving.native.server import serve_native
from serving.runtime.batcher import BatchingOptions

READY = "advguard ready "  # advguard.cli.serve's


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
    settings = ServerSettings(
        store=Path(args.store), host=args.host, port=args.port, metrics_port=None, default_model=args.default_model,
        engine=EngineOptions(threads=args.threads), disclosure=args.disclosure, allow_skip_guard=args.allow_skip_guard,
        batching=BatchingOptions(max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us),
        max_message_bytes=args.max_message_bytes, poll_seconds=0, drain_seconds=0)
    stats: dict = {}
    counts = serve_native(settings, on_ready=lambda info: print(READY + json.dumps(info), flush=True), stats=stats)
    print(f"advguard stopped {json.dumps(counts)}", flush=True)
    print(f"native batches {json.dumps(stats)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
