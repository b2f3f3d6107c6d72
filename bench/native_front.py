"""`python -m bench.native_front`: server CPU time per answered OIP `ModelInfer` (or `Classify`) call, `advguard
serve` (Python gRPC, grpc.aio) against the native front end (`python -m serving.native`: C++ gRPC
handing whole batches to the same Python core), on the same bundle, guarded and with skip_guard.

As `bench/percall_cpu.py`: each server runs as its own process on loopback (`--threads 1`,
`--allow-skip-guard`, the default batching), the kinds interleaved over `--rounds` (the order
reversed every other round); each row is `--calls` unary calls from h2load (one pre-serialized
request carrying the first Fashion-MNIST test image as FP32 in `raw_input_contents`, all outputs
of the `verdict` disclosure), and the server's CPU time per answered call comes from /proc: the
whole process, and its main thread (advguard serve: the event loop, which runs grpc.aio and all of
the Python but the model runs; native: the Python thread that parses, checks, runs the pipeline
and encodes answers; the model runs on it too). CPU time counts only what the server ran, so it
holds still on a busy machine where req/s do not (printed for information). `--rps N` offers N
calls a second instead of closed-loop load, the same to every server, so that a server's batches
(and with them its CPU per call) do not grow only because it answers faster. `--kserve` adds KServe's
ModelServer (bench/peers/kserve_model.py in build/peers/kserve, `make peers-venvs`) running the
bundle's primary model alone, the peer of docs/RESULTS.md, with one row (it has no guard to skip).
`--api classify` measures our `Classify` instead (one uint8 1 x 28 x 28 tensor; no KServe row).
Example:
    python -m bench.native_front --store /tmp/pc/store --model fmnist-guarded --rounds 3 --kserve
    python -m bench.native_front --store /tmp/pc/store --model fmnist-guarded --rounds 2 --api classify
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench import h2load
from bench.classify import CLASSIFY, classify_request
from bench.percall_cpu import INFER, answer_size, oip_request
from bench.probe import ServerProbe
from bench.serve import start_ready

KINDS = ("advguard serve", "native")
KSERVE = "KServe 0.21"


def server_cmd(kind: str, args: argparse.Namespace) -> list[str]:
    store = str(Path(args.store).resolve())
    common = ["--store", store, "--port", "0", "--threads", str(args.threads), "--allow-skip-guard",
              "--default-model", args.model]
    if kind == "native":
        return [sys.executable, "-m", "serving.native", *common]
    return [sys.executable, "-m", "advguard.cli.main", "serve", *common, "--metrics-port", "0", "--poll-seconds", "0"]


def start_kind(kind: str, args: argparse.Namespace):
    """(a stop function, the gRPC target, the process id, the /metrics port or None) of a fresh server."""
    if kind == KSERVE:
        from bench.peers import start
        from serving.bundle import version_dirs

        bundle = version_dirs(Path(args.store), args.model)[-1]
        server = start("kserve", argparse.Namespace(threads=args.threads), bundle, bundle / "model.onnx", args.model)
        server.wait_ready()
        return (lambda: (server.stop(), "")[1]), server.grpc, server.proc.pid, None
    proc, ready = start_ready(server_cmd(kind, args))

    def stop() -> str:
        proc.terminate()
        return proc.communicate(timeout=60)[0]

    return stop, f"127.0.0.1:{ready['port']}", proc.pid, ready.get("metrics_port")


def measure_kind(kind: str, rows: list[tuple[str, bytes]], args: argparse.Namespace) -> dict[str, dict]:
    """Every row against one fresh server process of `kind`."""
    stop, target, pid, metrics_port = start_kind(kind, args)
    probe = ServerProbe(pid, metrics_port or 0, args.model)
    out = {}
    try:
        for name, message in rows:
            size = answer_size(target, args.path, message)
            h2load.grpc_load(target, args.path, message, size, 500, 8)  # warm up
            spent = probe.measure(lambda: h2load.grpc_load(target, args.path, message, size, args.calls,
                                                           args.concurrency, args.rps)) if metrics_port else None
            if spent is None:  # no /metrics (native, KServe): the CPU columns only
                cpu, main = probe.cpu_seconds(), probe.cpu_seconds(pid)
                result = h2load.grpc_load(target, args.path, message, size, args.calls, args.concurrency, args.rps)
                cpu_after, main_after = probe.cpu_seconds(), probe.cpu_seconds(pid)
                spent = {"result": result, "server_cpu_us": (cpu_after - cpu) / max(result.ok, 1) * 1e6,
                         "loop_cpu_us": (main_after - main) / max(result.ok, 1) * 1e6, "mean_batch": None}
            result = spent["result"]
            if result.errors or not result.ok:
                raise SystemExit(f"{kind} {name}: {result.errors} calls failed ({dict(result.codes)})")
            row = out[name] = {"cpu": spent["server_cpu_us"], "main": spent["loop_cpu_us"], "rate": result.rate,
                               "p50": result.percentile(50) * 1e3, "batch": spent["mean_batch"]}
            batch = f", mean batch {row['batch']:.1f}" if row["batch"] else ""
            print(f"  {kind:15} {name:10}: server {row['cpu']:5.0f} us/call, main thread {row['main']:5.0f} us/call, "
                  f"{row['rate']:5.0f} req/s, p50 {row['p50']:.2f} ms{batch}, load average {os.getloadavg()[0]:.2f}",
                  file=sys.stderr, flush=True)
    finally:
        stopped = stop()
    for line in stopped.splitlines():
        if line.startswith("advguard stopped "):
            out["_stopped"] = json.loads(line[len("advguard stopped "):])
        if line.startswith("native batches "):
            taken = json.loads(line[len("native batches "):])
            out["_stopped"]["mean batch"] = round(taken["calls"] / max(taken["batches"], 1), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="model_store")
    p.add_argument("--model", default="fmnist-guarded")
    p.add_argument("--calls", type=int, default=6000, help="calls per row (default 6000)")
    p.add_argument("--concurrency", type=int, default=32, help="h2load streams on one connection (default 32)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="the servers' ONNX Runtime intra-op threads (default 1)")
    p.add_argument("--rps", type=int, default=None, help="offer this many calls a second (default: closed loop)")
    p.add_argument("--kserve", action="store_true", help="add KServe's ModelServer on the primary model (one row)")
    p.add_argument("--api", choices=("oip", "classify"), default="oip",
                   help="the call measured: OIP ModelInfer (FP32, default) or our Classify (a uint8 tensor; no KServe)")
    args = p.parse_args(argv)
    args.path = INFER if args.api == "oip" else CLASSIFY
    if args.api == "classify" and args.kserve:
        raise SystemExit("--kserve measures ModelInfer only: leave out --api classify")
    if not h2load.available():
        raise SystemExit("h2load missing: apt-get install nghttp2-client")
    from serving.native.build import build

    build()  # before any timing: a first build takes a while
    from training.data.mnist_family import load_fashion_mnist

    image = np.ascontiguousarray(load_fashion_mnist()[2][0][None])  # the first test image, uint8 1 x 28 x 28
    x = image[None].astype(np.float32) / 255
    if args.api == "oip":
        rows = [("guarded", oip_request(args.model, x, False, [])), ("skip_guard", oip_request(args.model, x, True, []))]
    else:
        rows = [("guarded", classify_request(args.model, image, False).SerializeToString()),
                ("skip_guard", classify_request(args.model, image, True).SerializeToString())]
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} {platform.node()}: {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}; {args.model} from {args.store}, --threads {args.threads}, "
          f"{args.calls} calls a row at c={args.concurrency} ({f'{args.rps} a second' if args.rps else 'closed loop'}), "
          f"{args.rounds} rounds", flush=True)
    kinds = KINDS + ((KSERVE,) if args.kserve else ())
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for round_ in range(args.rounds):
        for kind in (kinds if round_ % 2 == 0 else tuple(reversed(kinds))):
            runs[kind].append(measure_kind(kind, rows[1:] if kind == KSERVE else rows, args))
        print(f"round {round_ + 1} done, load average {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    print(f"{'ModelInfer' if args.api == 'oip' else 'Classify':11} {'server':15} {'server us/call (range)':>24} {'main thread us/call':>22} {'req/s':>7} "
          f"{'p50 ms':>7} {'batch':>6}  serve/native, server CPU")
    kserve = statistics.median(run["skip_guard"]["cpu"] for run in runs[KSERVE]) if args.kserve else None
    for name, _ in rows:
        medians = {}
        for kind in kinds:
            if kind == KSERVE and name != "skip_guard":
                continue
            got = [run[name] for run in runs[kind]]
            cpu, main = [g["cpu"] for g in got], [g["main"] for g in got]
            medians[kind] = statistics.median(cpu)
            ratio = f"{medians[KINDS[0]] / medians[kind]:.2f}x" if kind == "native" else ""
            if kind == "native" and kserve:
                ratio += f"; KServe/native {kserve / medians[kind]:.2f}x"
            batches = [g["batch"] for g in got if g["batch"]]
            if kind == "native":
                batches = [run["_stopped"].get("mean batch") for run in runs[kind] if run.get("_stopped")]
            batch = f"{statistics.median(batches):6.1f}" if batches else f"{'':6}"
            label = f"{name if kind != KSERVE else 'unguarded':11}"
            print(f"{label} {kind:15} {statistics.median(cpu):8.0f} ({min(cpu):.0f}-{max(cpu):.0f}){'':6} "
                  f"{statistics.median(main):8.0f} ({min(main):.0f}-{max(main):.0f}) "
                  f"{statistics.median(g['rate'] for g in got):7.0f} {statistics.median(g['p50'] for g in got):7.2f} "
                  f"{batch}  {ratio}")
    print("native's batch: calls per batch over its whole process (both rows and the warm-ups)")
    for kind in KINDS:
        print(f"{kind}: calls by status on exit, per round: {[run.get('_stopped') for run in runs[kind]]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
