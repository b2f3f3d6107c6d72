"""`python -m bench.percall_cpu`: the server's CPU time per answered call, for the Open Inference
Protocol's `ModelInfer` and advguard's own `Classify`, guarded and with `skip_guard`.

Wall-clock rates move by 20-30% on a shared 2-core machine; the CPU time the server process
spends per answered call moves much less, so that is the figure to compare code by. Each tree
(`--tree NAME=PATH`, a checkout or an exported copy of one; default: this one) runs as its own
`advguard serve` process (`python -m advguard.cli.main serve` with the tree as working
directory, so its `serving` package is the one imported), one at a time, in `--rounds`
interleaved rounds (the order reversed every other round). Each row is `--calls` unary calls
from h2load (`bench/h2load.py`: one pre-serialized request, one HTTP/2 connection, `c` streams)
carrying one 1 x 28 x 28 test image (OIP: FP32 in `raw_input_contents`, all outputs unless
`--outputs`; Classify: a uint8 tensor); the server's CPU time per call comes from /proc, of the
whole process and of its main thread, the event loop that runs every handler and all of the
Python but the model runs (`bench/probe.py`). Printed per row and tree: the median over rounds
(and the range) of both, the req/s, the mean batch, and the ratio of each tree's median to the
first tree's. Example (before/after a change, the old code exported with `git archive`):
    mkdir /tmp/before && git archive HEAD | tar -x -C /tmp/before && (cd /tmp/before && $OLDPWD/.venv/bin/python \
        -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. protos/*/*.proto protos/*/*/*.proto)
    python -m bench.percall_cpu --store model_store --model fmnist-guarded --tree before=/tmp/before --tree after=.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from bench import h2load
from bench.classify import CLASSIFY, classify_request
from bench.probe import ServerProbe
from bench.serve import start_ready

REPO = Path(__file__).resolve().parents[1]
INFER = "/inference.GRPCInferenceService/ModelInfer"
APIS = ("oip", "classify")


@dataclass(frozen=True)
class Call:
    """One kind of row: the method, its serialized request, and how the row is named."""

    api: str
    guard: bool
    method: str
    message: bytes

    @property
    def name(self) -> str:
        return f"{'ModelInfer' if self.api == 'oip' else 'Classify'} {'guarded' if self.guard else 'skip_guard'}"


def tree_arg(text: str) -> tuple[str, Path]:
    """--tree NAME=PATH: a folder holding serving/, protos/ (generated) and advguard/."""
    name, sep, path = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    folder = Path(path).resolve()
    if not (folder / "serving").is_dir() or not (folder / "protos").is_dir():
        raise argparse.ArgumentTypeError(f"{folder} holds no serving/ and protos/: export a tree there "
                                         "(git archive HEAD | tar -x -C DIR, then generate its protos: see --help)")
    return name, folder


def oip_request(model: str, x: np.ndarray, skip_guard: bool, outputs: list[str]) -> bytes:
    from protos.inference import grpc_service_pb2 as pb

    message = pb.ModelInferRequest(model_name=model, id="bench")
    message.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    message.raw_input_contents.append(x.astype("<f4").tobytes())
    for name in outputs:
        message.outputs.add(name=name)
    if skip_guard:
        message.parameters["skip_guard"].bool_param = True
    return message.SerializeToString()


def calls_for(model: str, image: np.ndarray, apis: list[str], outputs: list[str]) -> list[Call]:
    """`image`: uint8 1 x 28 x 28."""
    out = []
    for api in apis:
        for guard in (True, False):
            if api == "oip":
                message = oip_request(model, image[None].astype(np.float32) / 255, not guard, outputs)
                out.append(Call(api, guard, INFER, message))
            else:
                out.append(Call(api, guard, CLASSIFY, classify_request(model, image, not guard).SerializeToString()))
    return out


def answer_size(target: str, method: str, message: bytes) -> int:
    """One real call: the size of its answer on the wire (h2load counts answers by bytes)."""
    with grpc.insecure_channel(target) as channel:
        return len(channel.unary_unary(method)(message, timeout=60))


def start(tree: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, dict]:
    cmd = [sys.executable, "-m", "advguard.cli.main", "serve", "--store", str(Path(args.store).resolve()),
           "--port", "0", "--metrics-port", "0", "--poll-seconds", "0", "--threads", str(args.threads),
           "--allow-skip-guard", "--default-model", args.model, "--disclosure", args.disclosure]
    return start_ready(cmd, cwd=tree)


def measure_tree(tree: Path, calls: list[Call], args: argparse.Namespace) -> dict[tuple[str, int], dict]:
    """Every (call, concurrency) row against one server process from `tree`."""
    proc, ready = start(tree, args)
    target = f"127.0.0.1:{ready['port']}"
    probe = ServerProbe(proc.pid, ready["metrics_port"], args.model)
    rows = {}
    try:
        for call in calls:
            size = answer_size(target, call.method, call.message)
            h2load.grpc_load(target, call.method, call.message, size, 500, 8)  # warm up
            for c in args.concurrency:
                spent = probe.measure(lambda: h2load.grpc_load(target, call.method, call.message, size,
                                                               args.calls, c, args.rps))
                result = spent["result"]
                if result.errors:
                    raise SystemExit(f"{call.name} c={c} in {tree}: {result.errors} calls failed ({dict(result.codes)})")
                row = rows[(call.name, c)] = {"cpu": spent["server_cpu_us"], "loop": spent["loop_cpu_us"],
                                              "rate": result.rate, "batch": spent["mean_batch"] or 1.0,
                                              "p50": result.percentile(50) * 1e3}
                print(f"  {call.name} c={c}: server {row['cpu']:.0f} us/call, loop {row['loop']:.0f} us/call, "
                      f"{row['rate']:.0f} req/s, load average {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return rows


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):6.0f} ({min(values):.0f}-{max(values):.0f})"


def report(trees: list[str], calls: list[Call], concurrency: list[int], runs: dict[str, list[dict]]) -> None:
    print(f"{'row':24} {'c':>3} {'tree':10} {'server us/call (range)':>22} {'loop us/call (range)':>21} "
          f"{'req/s':>7} {'batch':>6} {'p50 ms':>7}  vs {trees[0]} (server, loop)")
    for call in calls:
        for c in concurrency:
            base = None
            for name in trees:
                rows = [run[(call.name, c)] for run in runs[name]]
                cpu, loop = [r["cpu"] for r in rows], [r["loop"] for r in rows]
                med = (statistics.median(cpu), statistics.median(loop))
                base = base or med
                ratio = f"{med[0] / base[0]:.2f}x, {med[1] / base[1]:.2f}x" if name != trees[0] else ""
                print(f"{call.name:24} {c:>3} {name:10} {summary(cpu):>22} {summary(loop):>21} "
                      f"{statistics.median(r['rate'] for r in rows):7.0f} "
                      f"{statistics.median(r['batch'] for r in rows):6.1f} "
                      f"{statistics.median(r['p50'] for r in rows):7.2f}  {ratio}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="model_store")
    p.add_argument("--model", default="fmnist-guarded")
    p.add_argument("--tree", type=tree_arg, action="append", dest="trees", metavar="NAME=PATH",
                   help="a source tree to serve from (repeatable; the first is the baseline; default: this one)")
    p.add_argument("--calls", type=int, default=6000, help="calls per row (default 6000)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32], help="h2load streams (default 1 32)")
    p.add_argument("--rps", type=int, default=None,
                   help="offer this many calls a second instead of closed-loop load: the same rate for every tree, "
                        "so that batching (and with it the CPU per call) cannot differ because one tree got less "
                        "CPU from a busy machine (pick a rate every tree sustains)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the trees (default 3)")
    p.add_argument("--threads", type=int, default=1, help="the server's ONNX Runtime intra-op threads (default 1)")
    p.add_argument("--api", choices=APIS, nargs="+", default=list(APIS), dest="apis")
    p.add_argument("--outputs", nargs="*", default=[], help="OIP outputs to request (default: none named, so all)")
    p.add_argument("--disclosure", choices=("verdict", "full"), default="verdict", help="the server's (default verdict)")
    args = p.parse_args(argv)
    if not h2load.available():
        raise SystemExit("h2load missing: make loadgen-tools (or apt-get install nghttp2-client)")
    trees = dict(args.trees or [("this", REPO)])
    from training.data.mnist_family import load_fashion_mnist

    image = np.ascontiguousarray(load_fashion_mnist()[2][0][None])  # the first test image, uint8 1 x 28 x 28
    calls = calls_for(args.model, image, args.apis, args.outputs)
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} {platform.node()}: {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}; {args.model} from {args.store}, --threads {args.threads}, "
          f"--disclosure {args.disclosure}, {args.calls} calls a row "
          f"({f'{args.rps} a second' if args.rps else 'closed loop'}), {args.rounds} rounds", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for round_ in range(args.rounds):
        order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for name in order:
            runs[name].append(measure_tree(trees[name], calls, args))
            print(f"round {round_ + 1}: {name} done, load average {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    report(list(trees), calls, args.concurrency, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
