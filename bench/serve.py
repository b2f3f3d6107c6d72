"""`python -m bench.serve`: serving throughput and latency side by side, one run, one bundle.

(a) the guarded pipeline in-process (ONNX Runtime, no server), in batches of 1, 8, 32, 256
    (measured before and after the server runs; the faster run is kept);
(b) grpc.health Check on our server: the transport floor of this server;
(c) unary Classify (one uint8 28x28 tensor per call), unguarded and guarded;
(d) ClassifyBatch and ClassifyStream with 256 images per message (and, for reference, one
    stream of 1,024 one-image messages);
(e) TorchServe REST with advguard's handler on the same bundle (its .mar, or one built into a
    temporary folder), PNG bodies, with 1 and with 2 workers (TorchServe's own default is one
    per core);
each of (b)-(e) at concurrency 1, 8 and 32, then the ratios against the goals. The unary rows
(b), (c) and (e) come from load generators written in C when they are installed (`--client c`:
h2load for gRPC, `bench/h2load.py`; wrk for TorchServe's HTTP/1.1, `bench/wrk.py`), so that the
client does not take the CPU the servers need on a 2-core machine; `--client python` (or either
tool missing) runs them from one asyncio gRPC/HTTP client process instead, as (d) always does.
Every client runs on the same machine as the servers. Example:
    python -m bench.serve --store model_store --model fmnist-fast
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import h2load, wrk
from bench.classify import CLASSIFY, classify_once, classify_request, image_messages
from bench.loadgen import LoadResult, run_load
from bench.probe import ServerProbe
from protos.advguard.v1 import guard_pb2, guard_pb2_grpc
from serving.runtime.batcher import BatchingOptions
from advguard.cli.serve import parse_ready

CONCURRENCY = (1, 8, 32)
BATCH = 256
QUEUE = 32 * 1024 * 2  # images the server may queue: 32 streams x their 1,024-image window, twice


def clean_images(n: int) -> np.ndarray:
    from training.data.mnist_family import load_fashion_mnist

    _, _, test_images, _ = load_fashion_mnist()
    return np.ascontiguousarray(test_images[:n, None])  # uint8 N x 1 x 28 x 28


def row(section: str, name: str, c, result: LoadResult, per_call: int = 1, unit: str = "") -> dict:
    return {"section": section, "name": name, "c": c, "calls": result.ok, "errors": result.errors,
            "rate": result.rate * per_call, "unit": unit or ("img/s" if per_call > 1 else "req/s"),
            "p50_ms": result.percentile(50) * 1e3, "p99_ms": result.percentile(99) * 1e3}


def bench_in_process(bundle: Path, images: np.ndarray, threads: int) -> list[dict]:
    from serving.engine import EngineOptions
    from serving.pipeline import Pipeline

    pipeline = Pipeline.load(bundle, EngineOptions(threads=threads))
    x = images.astype(np.float32) / 255
    rows = []
    for size in (1, 8, 32, BATCH):
        result, batch = LoadResult(), x[:size]
        pipeline.run(batch)
        began = time.perf_counter()
        while time.perf_counter() - began < 3.0 or len(result.latencies) < 5:
            t = time.perf_counter()
            pipeline.run(batch)
            result.latencies.append(time.perf_counter() - t)
            result.codes["OK"] += 1
        result.seconds = time.perf_counter() - began
        rows.append(row("a", f"in-process guarded pipeline, batch {size}", "-", result, size))
    return rows


def h2load_unary_rows(target: str, model: str, images: np.ndarray, calls: dict[int, int],
                      probe: ServerProbe) -> list[dict]:
    """(b) and (c) from h2load: every call carries the first test image; each row also gives the
    server's CPU time per call and its mean batch (see ServerProbe)."""
    health = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()
    check = "/grpc.health.v1.Health/Check"
    h2load.grpc_load(target, check, b"", len(health), 200, 8)  # warm up

    def unary_row(section: str, name: str, c: int, method: str, message: bytes, answer: int) -> dict:
        spent = probe.measure(lambda: h2load.grpc_load(target, method, message, answer, calls[c], c))
        return {**row(section, name, c, spent.pop("result")), **spent}

    rows = [unary_row("b", "grpc.health Check", c, check, b"", len(health)) for c in CONCURRENCY]
    for guard in (False, True):
        request = classify_request(model, images[0], skip_guard=not guard)
        answer = classify_once(target, request)[1]
        rows += [unary_row("c", f"Classify {'guarded' if guard else 'unguarded'}", c, CLASSIFY,
                           request.SerializeToString(), answer) for c in CONCURRENCY]
    return rows


async def bench_grpc(target: str, model: str, images: np.ndarray, calls: dict[int, int], unary: bool) -> list[dict]:
    """(d), and (b) and (c) too when `unary`, from this process's asyncio gRPC client."""
    rows = []
    tensors = image_messages(images)
    batch = guard_pb2.ClassifyBatchRequest(model=model, batch=guard_pb2.Tensor(
        shape=[BATCH, 1, 28, 28], dtype=guard_pb2.DTYPE_UINT8, data=images[:BATCH].tobytes()))
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = guard_pb2_grpc.GuardedClassifierStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest()
        await run_load(lambda i: health.Check(check), 200, 8)  # warm the channel
        if unary:
            for c in CONCURRENCY:
                result = await run_load(lambda i: health.Check(check), calls[c], c)
                rows.append(row("b", "grpc.health Check", c, result))
            for guard in (False, True):
                requests = [guard_pb2.ClassifyRequest(model=model, image=t, skip_guard=not guard) for t in tensors]
                for c in CONCURRENCY:
                    result = await run_load(lambda i: stub.Classify(requests[i % len(requests)], timeout=60), calls[c], c)
                    rows.append(row("c", f"Classify {'guarded' if guard else 'unguarded'}", c, result))
        for c in CONCURRENCY:
            result = await run_load(lambda i: stub.ClassifyBatch(batch, timeout=300), max(8, c), c)
            rows.append(row("d", f"ClassifyBatch guarded, {BATCH}/message", c, result, BATCH))
        item = guard_pb2.ClassifyRequest(model=model, batch=batch.batch)
        for c in CONCURRENCY:
            rows.append(await bench_stream(stub, model, item, BATCH, c, max(8 // c, 4)))
        one = guard_pb2.ClassifyRequest(model=model, image=tensors[0])
        rows.append(await bench_stream(stub, model, one, 1, 1, 1024))  # the one-image-per-item floor
    return rows


async def bench_stream(stub, model: str, item: guard_pb2.ClassifyRequest, per_item: int, c: int,
                       per_stream: int) -> dict:
    """c streams of `per_stream` items of `per_item` images each; latency per item, send to answer."""
    result = LoadResult()

    async def one_stream() -> None:
        sent: list[float] = []

        async def requests():
            for _ in range(per_stream):
                sent.append(time.perf_counter())
                yield item

        i = 0
        async for reply in stub.ClassifyStream(requests(), timeout=600):
            if reply.error.code:
                result.codes[str(reply.error.code)] += 1
            else:
                result.latencies.append(time.perf_counter() - sent[i])
                result.codes["OK"] += 1
            i += 1

    began = time.perf_counter()
    await asyncio.gather(*(one_stream() for _ in range(c)))
    result.seconds = time.perf_counter() - began
    return row("d", f"ClassifyStream guarded, {per_item}/message, {per_stream}/stream", c, result, per_item, "img/s")


def torchserve_rows(bundle: Path, images: np.ndarray, calls: dict[int, int], workers: int, client: str) -> list[dict]:
    """(e): TorchServe with advguard's handler on the same bundle, PNG bodies over REST."""
    from bench.torchserve_rest import TorchServe, png_files, rest_load

    def load(ts: TorchServe, bodies: list[bytes], total: int, c: int):
        if client == "c":  # the first image, as in (c); for about as long as `total` calls take at 500/s
            return wrk.post_load(f"http://127.0.0.1:{ts.port}{ts.path}", bodies[0], "application/octet-stream",
                                 max(1.0, total / 500), c, token=ts.token)
        return asyncio.run(rest_load(ts.port, ts.path, bodies, total, c, token=ts.token))

    try:
        with TorchServe(bundle, workers=workers) as ts:
            bodies = png_files(images[:256])
            load(ts, bodies, 50, 4)  # warm up
            return [row("e", f"TorchServe REST guarded (PNG body), {workers} worker(s)", c,
                        load(ts, bodies, calls[c], c)) for c in CONCURRENCY]
    except (OSError, RuntimeError, TimeoutError, subprocess.SubprocessError) as err:
        return [{"section": "e", "name": "TorchServe REST", "note": f"n/a: {err}"}]


def start_server(args, extra: list[str]) -> tuple[subprocess.Popen, dict]:
    cmd = [sys.executable, "-m", "advguard.cli.main", "serve", "--store", args.store, "--port", "0", "--metrics-port", "0",
           "--poll-seconds", "0", "--threads", str(args.threads), "--instances", str(args.instances),
           "--max-batch-size", str(args.max_batch_size), "--max-queue-delay-us", str(args.max_queue_delay_us),
           "--max-queue-size", str(QUEUE), "--allow-skip-guard",  # the unguarded rows skip the guard
           *(["--delay-lone-requests"] if args.delay_lone_requests else []), *extra]
    return start_ready(cmd)


def start_ready(cmd: list[str], cwd: Path | None = None) -> tuple[subprocess.Popen, dict]:
    """Start `advguard serve` (`cmd`); (the process, its ready line's JSON) once it is ready."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    try:
        return proc, parse_ready(line)
    except ValueError:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r} ({' '.join(cmd)}{f' in {cwd}' if cwd else ''})") from None


def report(rows: list[dict]) -> None:
    print(f"{'':2} {'what':52} {'c':>3} {'calls':>6} {'err':>4} {'rate':>10} {'unit':6} {'p50 ms':>8} {'p99 ms':>8}"
          f"  {'server CPU/call':>15}  {'loop CPU/call':>13}  {'loop busy':>9}  mean batch")
    for r in rows:
        if "note" in r:
            print(f"({r['section']}) {r['name']:52} {r['note']}")
            continue
        cpu = f"{r['server_cpu_us']:.0f} us" if r.get("server_cpu_us") else ""
        loop = f"{r['loop_cpu_us']:.0f} us" if r.get("loop_cpu_us") else ""
        busy = f"{100 * r['loop_busy']:.0f}%" if r.get("loop_busy") is not None else ""
        batch = f"{r['mean_batch']:.1f}" if r.get("mean_batch") else ""
        print(f"({r['section']}) {r['name']:52} {r['c']:>3} {r['calls']:>6} {r['errors']:>4} {r['rate']:>10.0f} "
              f"{r['unit']:6} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}  {cpu:>15}  {loop:>13}  {busy:>9}  {batch}".rstrip())

    def get(section: str, prefix: str, c) -> dict:
        return next(r for r in rows if r["section"] == section and r["name"].startswith(prefix) and r.get("c") == c)

    raw = get("a", f"in-process guarded pipeline, batch {BATCH}", "-")["rate"]
    guarded, health = get("c", "Classify guarded", 32), get("b", "grpc.health", 32)
    best_batch = max(get("d", "ClassifyBatch", c)["rate"] for c in CONCURRENCY)
    best_stream = max(get("d", f"ClassifyStream guarded, {BATCH}/", c)["rate"] for c in CONCURRENCY)
    print("\nratios (goal in brackets):")
    print(f"  guarded Classify c=32 / health Check c=32: {guarded['rate'] / health['rate']:.2f}  [>= 0.50]")
    print(f"  guarded Classify c=32 p99: {guarded['p99_ms']:.1f} ms  [<= 10 ms]")
    print(f"  ClassifyBatch best / in-process batch {BATCH}: {best_batch / raw:.2f}  [>= 0.60]")
    print(f"  ClassifyStream best / in-process batch {BATCH}: {best_stream / raw:.2f}  [>= 0.60]")
    print(f"  guarded Classify c=32 / in-process batch {BATCH}: {guarded['rate'] / raw:.2f}  (share of the model's capacity)")
    ts = sorted((r for r in rows if r["section"] == "e" and r.get("c") == 32), key=lambda r: -r["rate"])
    print(f"  guarded Classify c=32 / TorchServe c=32 (its fastest setting): {guarded['rate'] / ts[0]['rate']:.2f}  [>= 5]" if ts
          else "  guarded Classify c=32 / TorchServe: n/a  [>= 5]")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="model_store")
    p.add_argument("--model", default="fmnist-fast")
    p.add_argument("--version", default="", help="default: the latest")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads, server and in-process (0: one per core)")
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-queue-delay-us", type=int, default=BatchingOptions.max_queue_delay_us,
                   help=f"the server's (its default: {BatchingOptions.max_queue_delay_us})")
    p.add_argument("--delay-lone-requests", action="store_true", help="the server's: a fixed queue delay, as Triton's")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the number of unary calls")
    p.add_argument("--no-torchserve", dest="torchserve", action="store_false",
                   help="skip (e) (it needs Java and torchserve, and builds a .mar when the bundle has none)")
    p.add_argument("--client", choices=("c", "python"), default="c" if h2load.available() and wrk.available() else "python",
                   help="load generators for the unary rows (b), (c), (e): h2load and wrk (default when installed) "
                        "or this process's asyncio clients")
    p.add_argument("--torchserve-workers", type=int, nargs="+", default=[1, 2],
                   help="TorchServe worker counts to run (e) with; the ratio uses the fastest")
    args = p.parse_args(argv)
    from serving.bundle import version_dirs

    folders = version_dirs(Path(args.store), args.model)
    bundle = next((f for f in folders if f.name == args.version), folders[-1] if folders else None)
    if bundle is None:
        raise SystemExit(f"no bundle {args.model} in {args.store}: run `make bundle`")
    print(f"bundle {bundle}; {platform.node()} {os.cpu_count()} CPUs; load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}; server --threads {args.threads} --instances "
          f"{args.instances} --max-batch-size {args.max_batch_size} --max-queue-delay-us {args.max_queue_delay_us} "
          f"{'--delay-lone-requests ' if args.delay_lone_requests else ''}"
          f"--max-queue-size {QUEUE}; unary client {args.client}")
    images = clean_images(1024)
    before = bench_in_process(bundle, images, args.threads)
    proc, ready = start_server(args, ["--default-model", args.model])
    port = ready["port"]
    probe = ServerProbe(proc.pid, ready["metrics_port"], args.model)
    try:
        # the C clients are cheap enough for longer runs, whose p99 rests on more than 20 calls
        base = {1: 1000, 8: 4000, 32: 12000} if args.client == "c" else {1: 500, 8: 1000, 32: 2000}
        calls = {c: int(n * args.scale) for c, n in base.items()}
        target = f"127.0.0.1:{port}"
        served = h2load_unary_rows(target, args.model, images, calls, probe) if args.client == "c" else []
        served += asyncio.run(bench_grpc(target, args.model, images, calls, unary=args.client == "python"))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    # (a) is measured before and after the server runs; the faster of the two is kept, so that
    # other load on a shared machine cannot flatter the ratios against it
    after = bench_in_process(bundle, images, args.threads)
    rows = [max(b, a, key=lambda r: r["rate"]) for b, a in zip(before, after)] + served
    if args.torchserve:
        for workers in args.torchserve_workers:
            rows += torchserve_rows(bundle, images, {c: max(c * 4, n // 4) for c, n in calls.items()}, workers,
                                   args.client)
    else:
        rows.append({"section": "e", "name": "TorchServe REST", "note": "skipped (--no-torchserve)"})
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
